// Following a guest's own migration. libvirt moves a guest's memory and
// CPU state; vgpud moves its vGPUs. When libvirt drives the move (the
// destination's hook asks its vgpud to pull the vGPUs), the vGPU migration
// keeps pre-copying while the guest runs, stops the vGPUs when libvirt
// pauses the guest for its final copy, and commits only once the guest
// runs on the destination (or has left this host). If the guest's
// migration fails, the vGPUs resume here too; if theirs fails first, the
// guest's is cancelled. So guest and vGPUs end up on the same host.
//
// A GuestGate answers "what is the guest doing now?"; the coordinator polls
// it from the job's thread. NewLibvirtGate watches a libvirt domain.
#ifndef VGPU_MIGRATOR_GUEST_GATE_H_
#define VGPU_MIGRATOR_GUEST_GATE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace vgpu::migrator {

enum class GuestMove {
  kRunning,  // running here, its migration under way: keep pre-copying
  kStopped,  // paused for its migration's final copy: stop the vGPUs now
  kLeft,     // no longer runs here (moved, or running on the destination
             // after post-copy started): the vGPUs must follow
  kStayed,   // its migration ended and it runs (or died) here: the vGPUs
             // stay
};

class GuestGate {
 public:
  virtual ~GuestGate() = default;
  // What the guest does now; `why` gets a phrase for logs and errors
  // ("domain vm1 is paused for migration"). An error means the guest
  // cannot be observed (its hypervisor is unreachable).
  virtual absl::StatusOr<GuestMove> Poll(std::string* why) = 0;
  // The vGPUs cannot follow (their migration failed): asks the hypervisor
  // to cancel the guest's migration, so that guest and vGPUs stay together.
  virtual absl::Status CancelGuestMove() = 0;
};

// One observation of a libvirt domain, as libvirt reports it.
struct DomainObservation {
  bool exists = true;
  int state = 0;   // virDomainState
  int reason = 0;  // its reason (virDomainPausedReason, ...)
  bool migrating_out = false;  // an outgoing migration job runs on it
};

// The verdict on one observation from the source's side. A gate is made
// only while libvirt migrates the domain away, so a domain that runs here
// without that job any more stayed.
GuestMove JudgeDomain(const DomainObservation& o, std::string* why);

// The same from the destination's side: the guest arriving here. kLeft
// once it runs here (libvirt resumed it: the migration succeeded), kStayed
// when its incoming domain is gone or stopped (the migration failed), and
// kStopped while it waits paused for the rest of its state.
GuestMove JudgeArrival(const DomainObservation& o, std::string* why);

enum class GuestSide { kSource, kDestination };

// Watches domain `domain` through a read-only connection to `uri`, from
// the source's side (JudgeDomain) or the destination's (JudgeArrival).
// From the source's side, FAILED_PRECONDITION unless libvirt is migrating
// the domain away now: a peer may pull a VM only while its guest leaves
// (otherwise any host of the cluster could have a VM's vGPU state sent to
// it); NOT_FOUND when the domain is not there.
absl::StatusOr<std::unique_ptr<GuestGate>> NewLibvirtGate(
    const std::string& uri, const std::string& domain,
    GuestSide side = GuestSide::kSource);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_GUEST_GATE_H_
