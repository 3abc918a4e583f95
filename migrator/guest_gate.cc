#include "migrator/guest_gate.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "absl/strings/str_cat.h"

namespace vgpu::migrator {
namespace {

const char* StateName(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: return "running";
    case VIR_DOMAIN_BLOCKED: return "blocked";
    case VIR_DOMAIN_PAUSED: return "paused";
    case VIR_DOMAIN_SHUTDOWN: return "shutting down";
    case VIR_DOMAIN_SHUTOFF: return "shut off";
    case VIR_DOMAIN_CRASHED: return "crashed";
    case VIR_DOMAIN_PMSUSPENDED: return "suspended";
    default: return "in an unknown state";
  }
}

void Quiet(void*, virErrorPtr) {}

class LibvirtGate final : public GuestGate {
 public:
  LibvirtGate(virConnectPtr conn, std::string uri, std::string domain,
              GuestSide side)
      : conn_(conn), uri_(std::move(uri)), domain_(std::move(domain)), side_(side) {}
  ~LibvirtGate() override { virConnectClose(conn_); }

  absl::StatusOr<GuestMove> Poll(std::string* why) override {
    DomainObservation o;
    // A domain on its way out can fail a query between its lookup and its
    // removal: look again before calling libvirt unreachable.
    absl::Status failed;
    for (int attempt = 0; attempt < 3; ++attempt) {
      failed = Observe(&o);
      if (failed.ok()) break;
    }
    if (!failed.ok()) return failed;
    std::string phrase;
    GuestMove m = side_ == GuestSide::kSource ? JudgeDomain(o, &phrase)
                                              : JudgeArrival(o, &phrase);
    if (why != nullptr) *why = absl::StrCat("domain ", domain_, " ", phrase);
    return m;
  }

  absl::Status CancelGuestMove() override {
    // The only write vgpud makes to libvirt, on a connection of its own
    // for the moment it takes.
    virConnectPtr rw = virConnectOpen(uri_.c_str());
    if (rw == nullptr) return Unreachable("opening read-write to cancel");
    absl::Status s;
    virDomainPtr dom = virDomainLookupByName(rw, domain_.c_str());
    if (dom == nullptr) {
      s = Unreachable("looking up");
    } else {
      if (virDomainAbortJob(dom) != 0) s = Unreachable("cancelling the job of");
      virDomainFree(dom);
    }
    virConnectClose(rw);
    return s;
  }

 private:
  absl::Status Observe(DomainObservation* o) {
    *o = DomainObservation();
    virDomainPtr dom = virDomainLookupByName(conn_, domain_.c_str());
    if (dom == nullptr) {
      if (ErrorCode() != VIR_ERR_NO_DOMAIN) return Unreachable("looking up");
      o->exists = false;
      return absl::OkStatus();
    }
    // Every libvirt call clears the thread's last error (virDomainFree
    // too): read it right after the call that failed.
    absl::Status failed;
    if (virDomainGetState(dom, &o->state, &o->reason, 0) != 0) {
      if (ErrorCode() == VIR_ERR_NO_DOMAIN) {
        o->exists = false;
      } else {
        failed = Unreachable("querying");
      }
    } else {
      int type = VIR_DOMAIN_JOB_NONE;
      virTypedParameterPtr params = nullptr;
      int nparams = 0;
      if (virDomainGetJobStats(dom, &type, &params, &nparams, 0) == 0) {
        int op = VIR_DOMAIN_JOB_OPERATION_UNKNOWN;
        virTypedParamsGetInt(params, nparams, VIR_DOMAIN_JOB_OPERATION, &op);
        virTypedParamsFree(params, nparams);
        // A save or dump is a job too, but not one the vGPUs follow.
        o->migrating_out = type != VIR_DOMAIN_JOB_NONE &&
                           op == VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT;
      } else {
        // Drivers without jobs (the test driver), inactive domains and an
        // incoming migration's destination report none.
        const int code = ErrorCode();
        if (code == VIR_ERR_NO_DOMAIN) {
          o->exists = false;
        } else if (code != VIR_ERR_NO_SUPPORT &&
                   code != VIR_ERR_OPERATION_INVALID &&
                   code != VIR_ERR_OPERATION_UNSUPPORTED) {
          failed = Unreachable("querying the job of");
        }
      }
    }
    virDomainFree(dom);
    return failed;
  }

  static int ErrorCode() {
    virErrorPtr e = virGetLastError();
    return e != nullptr ? e->code : VIR_ERR_OK;
  }

  absl::Status Unreachable(const char* doing) {
    const char* m = virGetLastErrorMessage();
    return absl::UnavailableError(
        absl::StrCat("libvirt ", uri_, ": ", doing, " domain ", domain_, ": ",
                     m != nullptr ? m : "unknown libvirt error"));
  }

  virConnectPtr conn_;
  const std::string uri_;
  const std::string domain_;
  const GuestSide side_;
};

}  // namespace

GuestMove JudgeDomain(const DomainObservation& o, std::string* why) {
  if (!o.exists) {
    *why = "is gone from this host";
    return GuestMove::kLeft;
  }
  if (o.state == VIR_DOMAIN_SHUTOFF && o.reason == VIR_DOMAIN_SHUTOFF_MIGRATED) {
    *why = "is shut off here, migrated";
    return GuestMove::kLeft;
  }
  if (o.state == VIR_DOMAIN_PAUSED) {
    if (o.reason == VIR_DOMAIN_PAUSED_POSTCOPY) {
      *why = "runs on the destination (post-copy)";
      return GuestMove::kLeft;
    }
    if (o.reason == VIR_DOMAIN_PAUSED_MIGRATION) {
      *why = "is paused for migration";
      return GuestMove::kStopped;
    }
  }
  if (o.state == VIR_DOMAIN_SHUTOFF || o.state == VIR_DOMAIN_CRASHED ||
      o.state == VIR_DOMAIN_SHUTDOWN) {
    *why = absl::StrCat("is ", StateName(o.state), " without migrating");
    return GuestMove::kStayed;
  }
  if (o.migrating_out) {
    *why = absl::StrCat("is ", StateName(o.state), ", its migration under way");
    return GuestMove::kRunning;
  }
  *why = absl::StrCat("is ", StateName(o.state),
                      " here with no migration under way");
  return GuestMove::kStayed;
}

GuestMove JudgeArrival(const DomainObservation& o, std::string* why) {
  if (!o.exists) {
    *why = "is gone from the destination: its migration failed";
    return GuestMove::kStayed;
  }
  if (o.state == VIR_DOMAIN_RUNNING ||
      (o.state == VIR_DOMAIN_PAUSED && o.reason == VIR_DOMAIN_PAUSED_POSTCOPY)) {
    *why = "runs on the destination";
    return GuestMove::kLeft;
  }
  if (o.state == VIR_DOMAIN_SHUTOFF || o.state == VIR_DOMAIN_CRASHED ||
      o.state == VIR_DOMAIN_SHUTDOWN) {
    *why = absl::StrCat("is ", StateName(o.state),
                        " on the destination: its migration failed");
    return GuestMove::kStayed;
  }
  *why = absl::StrCat("is ", StateName(o.state),
                      " on the destination, waiting for its state");
  return GuestMove::kStopped;
}

absl::StatusOr<std::unique_ptr<GuestGate>> NewLibvirtGate(
    const std::string& uri, const std::string& domain, GuestSide side) {
  virSetErrorFunc(nullptr, Quiet);
  virConnectPtr conn = virConnectOpenReadOnly(uri.c_str());
  if (conn == nullptr) {
    const char* m = virGetLastErrorMessage();
    return absl::UnavailableError(absl::StrCat(
        "libvirt ", uri, " (read-only): ", m != nullptr ? m : "unknown error"));
  }
  auto gate = std::make_unique<LibvirtGate>(conn, uri, domain, side);
  if (side == GuestSide::kDestination) return gate;
  std::string why;
  auto first = gate->Poll(&why);
  if (!first.ok()) return first.status();
  if (*first == GuestMove::kLeft) {
    return absl::NotFoundError(absl::StrCat(
        "libvirt ", uri, " has no running domain ", domain, " to follow (",
        why, ")"));
  }
  if (*first == GuestMove::kStayed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "libvirt is not migrating ", domain, " away (", why,
        "): its vGPUs go only where its guest goes"));
  }
  return gate;
}

}  // namespace vgpu::migrator
