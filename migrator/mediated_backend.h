// The mediated pass-through backend and the direct pass-through backend.
//
// Mediated: vGPUs are mdev instances named by UUID, driven through VFIO
// migration v2 by the mediated agent (agents/mediated/mediated_agent.h).
// Hosts without VFIO (no /dev/vfio; vgpu-vfio-probe says so) can run the
// reference mediated GPU instead: vgpud then hosts that many reference
// vGPU instances of one type, as a vendor driver would, created when a VM
// is registered with an unused UUID or when a vGPU arrives, each with an
// optional guest workload that keeps its contexts busy.
//
// Direct pass-through: a whole PCI device bound to vfio-pci (or a variant
// driver), named by its PCI address and read from sysfs. Whether its
// driver offers VFIO migration decides: with it, the device moves through
// the mediated agent over the real ioctls; without it, the compatibility
// check refuses the move before anything happens.
//
// Both are thread-safe; main() builds them and hands them to the daemon.
#ifndef VGPU_MIGRATOR_MEDIATED_BACKEND_H_
#define VGPU_MIGRATOR_MEDIATED_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "migrator/backend.h"

namespace vgpu::migrator {

struct ReferenceGpuOptions {
  bool enabled = false;
  std::string type = "REF-4C";  // the vGPU type every instance has
  uint32_t instances = 4;       // how many can exist at once
  uint64_t vram_bytes = 64ull << 20;  // VRAM share of each instance
  uint32_t contexts = 4;
  // Guest work on each instance, in bytes of VRAM stamped per second
  // (0: the instances sit idle).
  uint64_t workload_bytes_per_second = 0;
};

std::unique_ptr<StrategyBackend> NewMediatedBackend(
    const ReferenceGpuOptions& reference,
    std::function<void(const std::string&)> log);

struct PassthroughOptions {
  std::string sys_root = "/sys";
  std::string dev_root = "/dev";
};

std::unique_ptr<StrategyBackend> NewPassthroughBackend(
    const PassthroughOptions& options);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_MEDIATED_BACKEND_H_
