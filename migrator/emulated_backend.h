// The device-emulation backend: registered devices are reference emulated
// vGPU processes (vgpu-emu-device) reached through their control sockets;
// incoming vGPUs get a fresh `vgpu-emu-device --incoming` that vgpud starts
// under run_dir. See agents/emulated/emulated_agent.h for the agent.
#ifndef VGPU_MIGRATOR_EMULATED_BACKEND_H_
#define VGPU_MIGRATOR_EMULATED_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "migrator/backend.h"
#include "migrator/internal/spawner.h"

namespace vgpu::migrator {

struct EmulatedBackendOptions {
  std::string device_binary;  // vgpu-emu-device
  std::string run_dir;        // sockets and logs of the devices it starts
  uint64_t max_vram_bytes = 4ull << 30;
};

// `spawner` must outlive the backend.
std::unique_ptr<StrategyBackend> NewEmulatedBackend(
    const EmulatedBackendOptions& options, internal::Spawner* spawner);

// Where vgpu-emu-device is when not configured: beside `self` (an installed
// layout) or in Bazel's output tree next to migrator/. Empty if neither.
std::string FindEmulatedDeviceBinary(const std::string& self);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_EMULATED_BACKEND_H_
