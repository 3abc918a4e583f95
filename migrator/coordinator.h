// The coordinator: the jobs that move vGPU state.
//
//  - RunMigration (source): Begin (attach a source agent to every vGPU of
//    the VM, collect descriptors) -> Prepare (over the peer link: the
//    destination checks compatibility and creates target devices) ->
//    Perform (pre-copy rounds streamed as one image, chunks compressed on
//    every core while the previous ones are on the wire; stop-copy once the
//    pending bytes fit the downtime budget at the measured rate, or after
//    the round limit or when rounds stop converging) -> Finish (the
//    destination loads, verifies, activates) -> Confirm (the source
//    releases). Until Finish succeeds the source can resume, and any
//    failure or cancel resumes it; after, cancel is refused.
//  - NewPeerService (destination): the Peer capability a connection thread
//    serves; prepare creates an incoming job whose Incoming capability
//    receives the stream and tears everything down unless confirmed.
//  - RunSnapshot / RunRestore: the same flow with the store at one end.
//  - Pulls (libvirt's live migration): the destination's hook asks its
//    vgpud to pull a VM; RunPull asks the source over the peer link, whose
//    PeerService starts a RunMigration to the asking host that follows the
//    guest (guest_gate.h): pre-copy until libvirt pauses the guest, confirm
//    once it has left the source. RunPull ends when the destination is
//    prepared, with the new devices' endpoints.
//
// Each job runs on its own thread; everything it borrows (Env) outlives
// it. Logs carry host, job, VM and device.
#ifndef VGPU_MIGRATOR_COORDINATOR_H_
#define VGPU_MIGRATOR_COORDINATOR_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "capnp/capability.h"
#include "migrator/backend.h"
#include "migrator/compat.h"
#include "migrator/config.h"
#include "migrator/guest_gate.h"
#include "migrator/inventory.h"
#include "migrator/job.h"
#include "migrator/tls.h"
#include "store/store.h"

namespace vgpu::migrator {

using LogFn = std::function<void(const std::string& line)>;

// What jobs borrow from the daemon.
struct Env {
  const Config* config = nullptr;
  Inventory* inventory = nullptr;
  BackendRegistry* backends = nullptr;
  store::Store* store = nullptr;
  const TlsFiles* tls = nullptr;  // null: plaintext (--insecure)
  std::function<HostProfile()> profile;  // what this host offers now
  LogFn log;
  absl::Duration peer_timeout = absl::Seconds(10);
  // Runs a job body on a thread of its own, joined at shutdown.
  std::function<absl::Status(std::function<void()>)> launch;
  // The gate on the guest of VM `vm` (its libvirt domain), seen from this
  // host as the migration's source or destination; null when this host has
  // no hypervisor connection to follow guests with.
  std::function<absl::StatusOr<std::unique_ptr<GuestGate>>(
      const std::string& vm, GuestSide side)>
      guest_gate;
};

struct MigrateRequest {
  std::string vm;
  std::string to;  // peer host name
  uint32_t downtime_ms = 0;  // 0: configured
  uint64_t bandwidth = 0;    // 0: configured
  uint32_t max_rounds = 0;   // 0: configured
  bool compress = true;
  // Follow the guest's own migration (pre-copy until it stops, confirm
  // once it left); null: stop-copy as soon as pre-copy converges.
  std::shared_ptr<GuestGate> follow;
};

struct PullRequest {
  std::string vm;
  // The peer to ask first (the domain's metadata names it); the other
  // peers follow. Empty: ask every peer.
  std::string from;
};

// Job bodies: each runs to the end and records the outcome in `job`.
void RunMigration(const Env& env, Job& job, const MigrateRequest& request);
void RunSnapshot(const Env& env, Job& job, const std::string& vm,
                 const std::string& tag);
void RunRestore(const Env& env, Job& job, const std::string& snapshot,
                const std::string& as_name);

// Destination: asks `from` to migrate the VM here following its guest;
// done once this host is prepared (JobData::endpoints are the new devices,
// remote_job the source's migration). `jobs` holds the incoming job.
void RunPull(const Env& env, Job& job, JobTable* jobs,
             const PullRequest& request);

// The compatibility report of VM `vm` (registered here) on host `to`.
absl::StatusOr<CompatReport> CheckMove(const Env& env, const std::string& vm,
                                       const std::string& to);

// Incoming migrations of this daemon by the source's job id, so that a
// source whose confirm went unanswered can learn the outcome on a new
// connection. Thread-safe; owned by the daemon.
class IncomingRegistry {
 public:
  IncomingRegistry();
  ~IncomingRegistry();
  struct Impl;
  Impl& impl() { return *impl_; }
  // Tears down every incoming migration not yet confirmed (shutdown).
  void AbortAll(const std::string& why);

 private:
  std::unique_ptr<Impl> impl_;
};

// The bootstrap capability for one accepted peer connection. `jobs`
// records incoming migrations; both outlive every connection.
// `peer_is` says whether the connection's authenticated peer may call
// itself a given host name (its TLS certificate names it); hello refuses a
// peer claiming another name, and nothing else is served before a good
// hello.
capnp::Capability::Client NewPeerService(
    const Env& env, JobTable* jobs, IncomingRegistry* incoming,
    std::function<bool(const std::string&)> peer_is);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_COORDINATOR_H_
