// StrategyBackend: what the daemon needs from each vGPU strategy. A backend
// opens source agents for devices registered with vgpud, creates fresh
// target devices (with destination agents) for incoming migrations and
// restores, and says what this host can offer for the compatibility
// check. vgpud's main() builds one per strategy and hands them to the
// daemon in a BackendRegistry (no self-registration).
// Backends are called from job and connection threads concurrently and
// must be thread-safe; each agent they return is used by one thread.
#ifndef VGPU_MIGRATOR_BACKEND_H_
#define VGPU_MIGRATOR_BACKEND_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agents/agent.h"
#include "migrator/compat.h"

namespace vgpu::migrator {

// A device vgpud created for an incoming vGPU. Destroying it ends the
// device (the process exits, its socket goes) unless Keep() was called
// once the VM is confirmed here; then the backend owns it until
// StrategyBackend::Destroy.
class TargetDevice {
 public:
  virtual ~TargetDevice() = default;
  virtual agents::Agent& agent() = 0;
  virtual const std::string& endpoint() const = 0;
  virtual void Keep() = 0;
  // What the source's agent needs to know about this device
  // (Agent::SetDestinationHint); empty for most strategies.
  virtual std::string hint() const { return ""; }
};

class StrategyBackend {
 public:
  virtual ~StrategyBackend() = default;

  // "emulation", as in config files and DeviceRecord.strategy.
  virtual const std::string& name() const = 0;
  virtual schema::Strategy strategy() const = 0;

  // The descriptor of a registered device, without holding it.
  virtual absl::StatusOr<agents::Descriptor> Describe(
      const std::string& endpoint) = 0;
  // A source agent attached to a registered device (RUNNING).
  virtual absl::StatusOr<std::unique_ptr<agents::Agent>> OpenSource(
      const std::string& endpoint) = 0;
  // A fresh device able to take `source`'s state, with its destination
  // agent (PREPARED). `vm` and `index` name it in logs and paths.
  virtual absl::StatusOr<std::unique_ptr<TargetDevice>> CreateTarget(
      const agents::Descriptor& source, const std::string& vm,
      uint32_t index) = 0;
  // Ends a device this backend created and kept (the VM moved away or was
  // unregistered). Unknown endpoints are left alone.
  virtual void Destroy(const std::string& endpoint) = 0;
  // Adds what this host offers for the strategy.
  virtual void Offer(HostProfile* profile) = 0;
  // A short word on a device's health for `vgpu-migrate list` (e.g. a
  // reference device's own consistency check); empty when there is
  // nothing to say.
  virtual std::string Health(const std::string& endpoint) { return ""; }
};

// Strategy name -> backend. Built by main(); the daemon borrows it.
using BackendRegistry = std::map<std::string, std::unique_ptr<StrategyBackend>>;

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_BACKEND_H_
