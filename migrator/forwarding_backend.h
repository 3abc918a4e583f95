// The API-forwarding backend of vgpud: sessions of the local vgpu-cl-backend
// (agents/forwarding/backend), reached through its control sockets.
//
// A registered device's endpoint is a session worker's control address
// ("unix:/run/vgpu/cl/s3.ctl"; `vgpu-cl-backend`'s supervisor lists them).
// An incoming session gets a fresh, empty worker from the supervisor; its
// hint (TargetDevice::hint) tells the source where the guest library must
// reconnect: this backend's guest address, the new session id and token.
#ifndef VGPU_MIGRATOR_FORWARDING_BACKEND_H_
#define VGPU_MIGRATOR_FORWARDING_BACKEND_H_

#include <memory>
#include <string>

#include "migrator/backend.h"
#include "migrator/libvirt_inventory.h"

namespace vgpu::migrator {

struct ForwardingOptions {
  // The supervisor's control address; empty: no API forwarding here.
  std::string control;
  // What this host offers, for the compatibility check.
  std::string vendor = "pocl";
  std::string architecture = "cpu";
  uint64_t memory_bytes = 0;  // 0: the backend sets no limit
  std::vector<std::string> features = {"cl1.2", "resume"};
  // The device the backend serves (its CL_DEVICE_NAME); sessions holding
  // programs built from binaries need the same one ("cl-binary:<device>").
  std::string device;
};

std::unique_ptr<StrategyBackend> NewForwardingBackend(
    const ForwardingOptions& options);

// Registers the backend's sessions with vgpud as they come and go: each
// VM a session names (the guest library's VGPU_VM) becomes a VM with one
// apiForwarding device per session, its endpoint the session's control
// address. Polls the supervisor at `control` every `interval`.
std::unique_ptr<InventoryWatcher> NewForwardingWatcher(
    const std::string& control, absl::Duration interval, Inventory* inventory,
    InventoryWatcher::AcceptFn accept, InventoryWatcher::LogFn log);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_FORWARDING_BACKEND_H_
