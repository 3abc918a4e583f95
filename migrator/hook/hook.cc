#include "migrator/hook/hook.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "migrator/compat.h"
#include "migrator/hook/domain_xml.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/control.capnp.h"

namespace vgpu::hook {
namespace {

using migrator::internal::GetError;
using migrator::internal::RpcClient;
using schema::Control;

constexpr char kSnapshotTag[] = "libvirt-stopped";

// One connection to vgpud, with every call bounded by the invocation's
// deadline.
class Vgpud {
 public:
  static absl::StatusOr<Vgpud> Connect(const HookOptions& o,
                                       absl::Time deadline) {
    auto rpc = RpcClient::ConnectUnix(o.socket);
    if (!rpc.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "cannot reach vgpud at ", o.socket, ": ", rpc.status().message()));
    }
    Vgpud v;
    v.rpc_ = std::move(*rpc);
    v.api_ = std::make_unique<Control::Client>(v.rpc_->Bootstrap<Control>());
    v.deadline_ = deadline;
    v.socket_ = o.socket;
    return v;
  }

  template <typename T>
  auto Call(kj::Promise<T>&& p, const std::string& what) {
    absl::Duration left = deadline_ - absl::Now();
    if (left < absl::Milliseconds(1)) left = absl::Milliseconds(1);
    return rpc_->Wait(kj::mv(p), left,
                      absl::StrCat(what, " (vgpud at ", socket_, ")"));
  }

  Control::Client& api() { return *api_; }

  // The endpoints of VM `vm`'s devices here, in order; nullopt when vgpud
  // does not have the VM.
  absl::StatusOr<std::optional<std::vector<std::string>>> Devices(
      const std::string& vm) {
    auto reply = Call(api_->listVmsRequest().send(), "list");
    if (!reply.ok()) return reply.status();
    for (auto v : reply->getVms()) {
      if (vm != v.getName().cStr()) continue;
      std::vector<std::string> out;
      for (auto d : v.getDevices()) out.push_back(d.getEndpoint());
      return std::optional<std::vector<std::string>>(std::move(out));
    }
    return std::optional<std::vector<std::string>>();
  }

  // Whether vgpud has a VM of that name.
  absl::StatusOr<bool> Has(const std::string& vm) {
    auto devices = Devices(vm);
    if (!devices.ok()) return devices.status();
    return devices->has_value();
  }

  // The migration moving VM `vm` away from here ("" when none).
  absl::StatusOr<std::string> LeavingWith(const std::string& vm) {
    auto reply = Call(api_->jobsRequest().send(), "jobs");
    if (!reply.ok()) return reply.status();
    for (auto j : reply->getJobs()) {
      if (vm == j.getVm().cStr() &&
          std::string(j.getKind().cStr()) == "migrate" &&
          std::string(j.getState().cStr()) == "running") {
        return std::string(j.getId().cStr());
      }
    }
    return std::string();
  }

  absl::StatusOr<std::string> HostName() {
    auto reply = Call(api_->hostInfoRequest().send(), "hostInfo");
    if (!reply.ok()) return reply.status();
    return std::string(reply->getHost().cStr());
  }

  // What a finished job says of its devices here and the other host.
  struct JobEnd {
    std::vector<std::string> endpoints;
    std::string peer;
  };
  // Waits for a job to end; its error, if it failed.
  absl::Status WaitJob(const std::string& job, JobEnd* end = nullptr) {
    uint64_t seq = 0;
    for (;;) {
      auto req = api_->watchRequest();
      req.setJob(job);
      req.setAfterSeq(seq);
      req.setWaitMs(500);
      auto reply = Call(req.send(), absl::StrCat("watch ", job));
      if (!reply.ok()) return reply.status();
      if (auto s = GetError(reply->getError()); !s.ok()) return s;
      auto st = reply->getStatus();
      seq = st.getSeq();
      const std::string state = st.getState();
      if (state == "done") {
        if (end != nullptr) {
          for (auto e : st.getEndpoints()) end->endpoints.push_back(e);
          end->peer = st.getPeer();
        }
        return absl::OkStatus();
      }
      if (state == "failed" || state == "cancelled") {
        absl::Status e = GetError(st.getError());
        return e.ok() ? absl::AbortedError(absl::StrCat("job ", job, " ",
                                                         state))
                      : e;
      }
    }
  }

 private:
  std::unique_ptr<RpcClient> rpc_;
  std::unique_ptr<Control::Client> api_;
  absl::Time deadline_;
  std::string socket_;
};

struct Context {
  const std::vector<std::string>& args;  // domain, op, sub-op, extra
  const std::string& xml;
  const DomainInfo& domain;
  const HookOptions& options;
  absl::Time deadline;
  HookResult* result;

  // One connection to vgpud per invocation, opened when first needed.
  std::optional<Vgpud> vgpud;
  absl::StatusOr<Vgpud*> Daemon() {
    if (!vgpud.has_value()) {
      auto v = Vgpud::Connect(options, deadline);
      if (!v.ok()) return v.status();
      vgpud = std::move(*v);
    }
    return &*vgpud;
  }

  const std::string& name() const { return args[0]; }
  std::string Marker() const {
    return absl::StrCat(options.state_dir, "/", name(), ".restoring");
  }
};

// --- what each operation does ---

// The destination's veto: may this host run the domain's vGPUs? Descriptors
// come from the metadata the source wrote; devices without one cannot be
// checked here (vgpud checks them again before any state moves).
absl::Status CheckHere(Context& c) {
  std::vector<const Descriptor*> descs;
  std::vector<std::string> unchecked;
  for (size_t i = 0; i < c.domain.vgpus->size(); ++i) {
    const MetaDevice& d = (*c.domain.vgpus)[i];
    if (d.descriptor.has_value()) {
      descs.push_back(&*d.descriptor);
    } else {
      unchecked.push_back(absl::StrCat(i, " (", d.strategy, " ", d.endpoint,
                                       ")"));
    }
  }
  if (!unchecked.empty()) {
    absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(),
                    ": no descriptor in the metadata for device(s) ",
                    absl::StrJoin(unchecked, ", "),
                    "; vgpud checks them when their state moves\n");
  }
  if (descs.empty()) return absl::OkStatus();
  auto conn = c.Daemon();
  if (!conn.ok()) return conn.status();
  Vgpud* v = *conn;
  auto req = v->api().checkHereRequest();
  auto list = req.initDevices(static_cast<unsigned>(descs.size()));
  for (size_t i = 0; i < descs.size(); ++i) {
    list.setWithCaveats(static_cast<unsigned>(i), descs[i]->root());
  }
  auto reply = v->Call(req.send(), "checkHere");
  if (!reply.ok()) return reply.status();
  return GetError(reply->getError());
}

// The domain XML for this host: mdev UUIDs and the metadata's endpoints
// (mdev UUIDs, device model sockets) name the source's devices; rewrite
// them to `here` (this host's endpoints, by device order), and name this
// host as the one holding the vGPUs, for the next move.
absl::Status RewriteForThisHost(Context& c, const std::vector<std::string>& here,
                                const std::string& host) {
  std::map<std::string, std::string> map;
  const auto& there = *c.domain.vgpus;
  for (size_t i = 0; i < there.size() && i < here.size(); ++i) {
    if (here[i] != there[i].endpoint) map[there[i].endpoint] = here[i];
  }
  auto out = RewriteDomain(c.xml, map, nullptr, &host);
  if (!out.ok()) return out.status();
  c.result->out = *out;
  for (const auto& [from, to] : map) {
    absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(), ": ",
                    from, " is ", to, " on this host\n");
  }
  return absl::OkStatus();
}

// An incoming migration. Either the vGPU state already arrived
// (`vgpu-migrate --to` ran first), or this host pulls it from the host the
// metadata names: that host's vgpud pre-copies while libvirt copies the
// guest, stops the vGPUs when libvirt pauses the guest, and hands them
// over once the guest has left it (docs/LIBVIRT.md). Either way the domain
// XML is rewritten to this host's devices.
absl::Status OnMigrateBegin(Context& c) {
  if (absl::Status s = CheckHere(c); !s.ok()) return s;
  auto conn = c.Daemon();
  if (!conn.ok()) return conn.status();
  Vgpud* v = *conn;
  auto host = v->HostName();
  if (!host.ok()) return host.status();
  auto here = v->Devices(c.name());
  if (!here.ok()) return here.status();
  if (here->has_value()) return RewriteForThisHost(c, **here, *host);
  // The host the metadata names is asked first; vgpud asks its other
  // peers if that one does not send the VM (metadata from an older
  // definition, or none).
  auto req = v->api().pullRequest();
  req.setVm(c.name());
  req.setFrom(c.domain.source);
  auto started = v->Call(req.send(), "pull");
  if (!started.ok()) return started.status();
  if (auto s = GetError(started->getError()); !s.ok()) return s;
  Vgpud::JobEnd end;
  if (auto s = v->WaitJob(started->getJob(), &end); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("pulling the vGPUs: ", s.message()));
  }
  absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(),
                  ": vGPUs follow the guest from ", end.peer, " (",
                  end.endpoints.size(), " device(s) prepared here)\n");
  return RewriteForThisHost(c, end.endpoints, *host);
}

absl::Status OnRestoreBegin(Context& c) {
  if (absl::Status s = CheckHere(c); !s.ok()) return s;
  // prepare begin follows for the same domain: remember it is a restore.
  mkdir(c.options.state_dir.c_str(), 0700);
  std::ofstream(c.Marker()) << c.domain.uuid << "\n";
  return absl::OkStatus();
}

// Before QEMU starts (a fresh start, a restore, an incoming migration):
// vgpud must know the VM; a restore brings back the vGPU state saved when
// the domain stopped.
absl::Status OnPrepareBegin(Context& c) {
  const bool restoring = access(c.Marker().c_str(), F_OK) == 0;
  unlink(c.Marker().c_str());
  auto conn = c.Daemon();
  if (!conn.ok()) return conn.status();
  Vgpud* v = *conn;
  auto has = v->Has(c.name());
  if (!has.ok()) return has.status();
  if (restoring) {
    if (*has) {
      return absl::FailedPreconditionError(absl::StrCat(
          "vgpud already runs a VM named ", c.name(),
          "; its vGPUs cannot be restored over it"));
    }
    auto req = v->api().snapshotsRequest();
    req.setVm(c.name());
    auto list = v->Call(req.send(), "snapshots");
    if (!list.ok()) return list.status();
    if (auto s = GetError(list->getError()); !s.ok()) return s;
    std::string newest;
    int64_t newest_at = -1;
    for (auto s : list->getSnapshots()) {
      if (std::string(s.getTag().cStr()) != kSnapshotTag) continue;
      if (s.getCreatedUnixNanos() > newest_at) {
        newest_at = s.getCreatedUnixNanos();
        newest = s.getId();
      }
    }
    if (newest.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no snapshot tagged ", kSnapshotTag, " of ", c.name(),
          " in vgpud's store: its vGPU state was not saved here"));
    }
    auto r = v->api().restoreRequest();
    r.setSnapshot(newest);
    r.setAs(c.name());
    auto started = v->Call(r.send(), "restore");
    if (!started.ok()) return started.status();
    if (auto s = GetError(started->getError()); !s.ok()) return s;
    if (auto s = v->WaitJob(started->getJob()); !s.ok()) return s;
    absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(),
                    ": vGPU state restored from snapshot ", newest, "\n");
    return absl::OkStatus();
  }
  // Registered by its launcher, or reserved by its arriving vGPUs (an
  // incoming migration): nothing to do.
  if (*has) return absl::OkStatus();
  auto req = v->api().registerVmRequest();
  auto vm = req.initVm();
  vm.setName(c.name());
  vm.setUuid(c.domain.uuid);
  auto devs = vm.initDevices(static_cast<unsigned>(c.domain.vgpus->size()));
  for (size_t i = 0; i < c.domain.vgpus->size(); ++i) {
    devs[static_cast<unsigned>(i)].setStrategy((*c.domain.vgpus)[i].strategy);
    devs[static_cast<unsigned>(i)].setEndpoint((*c.domain.vgpus)[i].endpoint);
  }
  auto reply = v->Call(req.send(), "register");
  if (!reply.ok()) return reply.status();
  return GetError(reply->getError());
}

// The domain stopped (shut down, saved, or migrated away): keep its vGPU
// state, so that `virsh restore` can bring it back.
absl::Status OnStoppedEnd(Context& c) {
  auto conn = c.Daemon();
  if (!conn.ok()) return conn.status();
  Vgpud* v = *conn;
  auto job = v->LeavingWith(c.name());
  if (!job.ok()) return job.status();
  auto has = v->Has(c.name());
  if (!has.ok()) return has.status();
  if (!*has) return absl::OkStatus();  // it left with a migration
  if (!job->empty()) {
    // Its vGPUs are moving with the guest (a pull): they are the
    // destination's now. (Waiting here would hold libvirt's lock on the
    // domain, which that migration watches.)
    absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(),
                    ": vGPUs are leaving with job ", *job,
                    "; nothing to save\n");
    return absl::OkStatus();
  }
  auto req = v->api().snapshotRequest();
  req.setVm(c.name());
  req.setTag(kSnapshotTag);
  auto started = v->Call(req.send(), "snapshot");
  if (!started.ok()) return started.status();
  if (auto s = GetError(started->getError()); !s.ok()) return s;
  if (auto s = v->WaitJob(started->getJob()); !s.ok()) return s;
  absl::StrAppend(&c.result->err, "vgpu-libvirt-hook: ", c.name(),
                  ": vGPU state saved (", kSnapshotTag, ")\n");
  return absl::OkStatus();
}

// libvirt is done with the domain here: vgpud forgets the VM (and ends the
// devices it started for it).
absl::Status OnReleaseEnd(Context& c) {
  auto conn = c.Daemon();
  if (!conn.ok()) return conn.status();
  Vgpud* v = *conn;
  auto has = v->Has(c.name());
  if (!has.ok()) return has.status();
  if (!*has) return absl::OkStatus();
  auto req = v->api().unregisterVmRequest();
  req.setName(c.name());
  auto reply = v->Call(req.send(), "unregister");
  if (!reply.ok()) return reply.status();
  return GetError(reply->getError());
}

struct Operation {
  const char* op;
  const char* sub;
  // Whether a failure cancels what libvirt is doing (exit 1); otherwise it
  // is reported and the hook exits 0, as libvirt cannot undo a stop.
  bool vetoes;
  absl::Status (*run)(Context&);
  const char* what;
};

// Operations not listed (start, started, reconnect, attach, ...) pass.
constexpr Operation kOperations[] = {
    {"migrate", "begin", true, OnMigrateBegin,
     "incoming migration: refuse vGPUs this host cannot run; pull them from "
     "the source unless they are here; rewrite mdev UUIDs to this host's"},
    {"restore", "begin", true, OnRestoreBegin,
     "virsh restore: refuse vGPUs this host cannot run; mark the restore"},
    {"prepare", "begin", true, OnPrepareBegin,
     "before QEMU starts: register the VM, or restore its vGPU state"},
    {"stopped", "end", false, OnStoppedEnd,
     "after the domain stopped: save its vGPU state"},
    {"release", "end", false, OnReleaseEnd,
     "libvirt released the domain: vgpud forgets the VM"},
};

}  // namespace

HookResult RunHook(const std::vector<std::string>& args, const std::string& xml,
                   const HookOptions& options) {
  HookResult result;
  if (args.size() != 4) {
    result.exit_code = 2;
    result.err = absl::StrCat(
        "vgpu-libvirt-hook: expected DOMAIN OPERATION SUB-OPERATION EXTRA, "
        "got ", args.size(), " argument(s)\n");
    return result;
  }
  const Operation* op = nullptr;
  for (const Operation& o : kOperations) {
    if (args[1] == o.op && args[2] == o.sub) op = &o;
  }
  if (op == nullptr) return result;  // not an operation vGPUs care about
  auto domain = ReadDomain(xml);
  if (!domain.ok()) {
    // A domain XML the hook cannot read might still carry vGPUs: refuse
    // where refusing is possible, say so either way.
    result.exit_code = op->vetoes ? 1 : 0;
    result.err = absl::StrCat("vgpu-libvirt-hook: ", args[0], " ", args[1],
                              " ", args[2], ": ", domain.status().message(),
                              "\n");
    return result;
  }
  if (!domain->vgpus.has_value()) return result;  // not ours
  Context c{args, xml, *domain,
            options, absl::Now() + options.timeout,
            &result, std::nullopt};
  absl::Status s = op->run(c);
  if (!s.ok()) {
    result.exit_code = op->vetoes ? 1 : 0;
    absl::StrAppend(&result.err, "vgpu-libvirt-hook: ", args[0], " ",
                    args[1], " ", args[2], ": ",
                    op->vetoes ? "refused: " : "failed: ", s.message(), "\n");
  }
  return result;
}

absl::StatusOr<InstallResult> Install(const std::string& hooks_dir,
                                      const std::string& binary,
                                      const HookOptions& options) {
  const std::string dir = absl::StrCat(hooks_dir, "/qemu.d");
  InstallResult r;
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    mkdir(hooks_dir.c_str(), 0755);
    if (mkdir(dir.c_str(), 0755) != 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          "cannot create ", dir, ": ", std::strerror(errno)));
    }
    // libvirtd looks for hook directories when it starts.
    r.restart_needed = true;
  }
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat(binary, " is not an executable file"));
  }
  r.path = absl::StrCat(dir, "/50-vgpu-migrate");
  const std::string tmp = r.path + ".tmp";
  {
    std::ofstream f(tmp);
    f << "#!/bin/sh\n"
      << "# vgpu-migrate's libvirt hook; written by `vgpu-libvirt-hook "
         "install`.\n"
      << absl::StrFormat(
             "exec '%s' --socket '%s' --timeout %d --state-dir '%s' \"$@\"\n",
             binary, options.socket,
             static_cast<int>(absl::ToInt64Seconds(options.timeout)),
             options.state_dir);
    if (!f) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
    }
  }
  if (chmod(tmp.c_str(), 0755) != 0 || rename(tmp.c_str(), r.path.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot install ", r.path, ": ", std::strerror(errno)));
  }
  return r;
}

}  // namespace vgpu::hook
