// The device-emulation agent: the agent contract (agents/agent.h) for a
// reference emulated vGPU process, reached through DeviceControl.
//
// Source: PRE_COPY turns on the device's dirty tracking; each Save writes
// the pages written since the previous one as a memory-region section
// ("vram", an initial full pass first); STOP_COPY quiesces the engine and
// the final Save adds the last dirty pages, the DISPI register bank
// ("dispi") and the command ring with its queued commands and fences
// ("ring"). Abort resumes the device with tracking off.
//
// Destination: the device was started with --incoming, so it is quiesced
// and has never run; its VRAM is the staging area (a failed or aborted
// load wipes it back to zeros). A section's header is checked against the
// device before any of its data is read; VRAM pages land as each chunk is
// verified; registers and ring are checked and applied, and the engine
// resumed, only on RESUMING -> RUNNING.
#ifndef VGPU_AGENTS_EMULATED_EMULATED_AGENT_H_
#define VGPU_AGENTS_EMULATED_EMULATED_AGENT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "agents/agent.h"
#include "agents/emulated/device_control.h"

namespace vgpu::agents::emulated {

// The descriptor of the device behind `device` (its VRAM size, DISPI id and
// state-blob ABI), as the compatibility checker reads it.
absl::StatusOr<Descriptor> DescribeDevice(DeviceControl& device);

absl::StatusOr<std::unique_ptr<Agent>> NewEmulatedSource(
    std::unique_ptr<DeviceControl> device);
// Refuses (FAILED_PRECONDITION) a device that cannot hold `source`: another
// VRAM size, another state-blob major version, or one that is not a fresh
// incoming device.
absl::StatusOr<std::unique_ptr<Agent>> NewEmulatedDestination(
    std::unique_ptr<DeviceControl> device, const Descriptor& source);

// The device an emulated agent drives (for tests and tools).
DeviceControl& DeviceOf(Agent& agent);

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_EMULATED_AGENT_H_
