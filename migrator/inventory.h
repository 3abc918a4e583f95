// The inventory: the VMs this host runs and their vGPUs (strategy and
// device endpoint), filled by device launchers and backends registering
// through the control API, by static config, and by incoming migrations
// and restores once confirmed. A VM is held by at most one job at a time,
// which is how two migrations of one VM are refused. Thread-safe.
#ifndef VGPU_MIGRATOR_INVENTORY_H_
#define VGPU_MIGRATOR_INVENTORY_H_

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vgpu::migrator {

struct VmDevice {
  std::string strategy;  // "emulation"
  std::string endpoint;
  bool owned = false;  // vgpud started the device (incoming, restore)
};

struct VmEntry {
  std::string name;
  std::string uuid;
  std::vector<VmDevice> devices;
  std::string job;        // the job holding it; empty when idle
  bool arriving = false;  // reserved by an incoming job, not yet confirmed
  // From a VmSource: the VM exists there but does not run (a shut-off
  // libvirt domain). A watcher does not register it, and does not drop it
  // if registered.
  bool dormant = false;
};

// Names are what users type: letters, digits, '.', '_', '-', 1..64.
absl::Status CheckVmName(const std::string& name);

class Inventory {
 public:
  // Adds a VM, or replaces the devices of an idle one. FAILED_PRECONDITION
  // while a job holds it.
  absl::Status Register(VmEntry vm);
  // FAILED_PRECONDITION while a job holds it; NOT_FOUND if unknown.
  absl::Status Unregister(const std::string& name);

  absl::StatusOr<VmEntry> Get(const std::string& name) const;
  std::vector<VmEntry> List() const;  // arriving VMs included, by name

  // Holds an existing, idle VM for `job`.
  absl::Status Acquire(const std::string& name, const std::string& job);
  // Ends `job`'s hold (no-op if another job holds it).
  void Release(const std::string& name, const std::string& job);

  // An incoming job reserves the name (ALREADY_EXISTS if the VM is here),
  // then either commits its devices or cancels the reservation.
  absl::Status Reserve(const std::string& name, const std::string& uuid,
                       const std::string& job);
  void Commit(const std::string& name, const std::string& job,
              std::vector<VmDevice> devices);
  void CancelReservation(const std::string& name, const std::string& job);

  // Drops a VM that left this host (held by `job`).
  void Remove(const std::string& name, const std::string& job);

 private:
  mutable std::mutex mu_;
  std::map<std::string, VmEntry> vms_;
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_INVENTORY_H_
