// The mediated agent: the agent contract (agents/agent.h) over any
// VfioDevice, the way QEMU's VFIO migration drives a mediated vGPU.
//
// Source: PRE_COPY opens the device's PRE_COPY session (when the driver
// offers it) and each Save drains what the device has now, as much as its
// precopy info announced at the start of the round; STOP_COPY moves the
// device to STOP_COPY (through PRE_COPY_P2P or RUNNING_P2P when the group
// step below ran) and the final Save reads the session to its end; abort
// sets RUNNING; release sets STOP. Destination: the fresh device is put in
// STOP (PREPARED), RESUMING opens its session, each section is written to
// it in order, and RUNNING makes the driver check and run what it got.
//
// Every failed VFIO transition is recovered as QEMU does: the device is
// moved to the state the contract falls back to, and if even that fails it
// is reset (its state is then lost, which the error says).
//
// Streams in the reference device's format (docs/formats/mediated-stream.md)
// are split into image sections: "mdev" (the device record), "ctx<N>" (one
// context image each), "vram" (the VRAM share as a memory region, so pages
// overlay across rounds and in snapshots) and "end". Any other vendor's
// stream is opaque and travels as "vfio.r<round>" sections, in order.
//
// One thread drives an agent; the device must outlive it.
#ifndef VGPU_AGENTS_MEDIATED_MEDIATED_AGENT_H_
#define VGPU_AGENTS_MEDIATED_MEDIATED_AGENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agents/agent.h"
#include "agents/mediated/vfio.h"

namespace vgpu::agents::mediated {

// The reference device's stream format, as named in descriptors.
inline constexpr char kRefStreamFormat[] = "vgpu-ref-mdev";

// What the VFIO interface does not tell: from sysfs and the vendor driver
// on real hosts, from RefVgpuConfig for the reference device.
struct MediatedInfo {
  std::string vendor;        // "nvidia", "vgpu-migrate"
  uint32_t pci_vendor_id = 0;
  uint32_t pci_device_id = 0;
  std::string architecture;  // "hopper", "reference"
  std::string type;          // vGPU type, e.g. "GRID H100-4C", "REF-4C"
  uint32_t driver_major = 0, driver_minor = 0, driver_patch = 0;
  uint64_t vram_bytes = 0;
  uint32_t contexts = 0;
  bool ecc = false;
  // kRefStreamFormat when the data stream is the reference format (the
  // agent then splits it into sections); empty for an opaque stream.
  std::string stream_format;
};

// The info the reference device gives about itself.
struct RefVgpuConfig;
MediatedInfo RefInfo(const RefVgpuConfig& config);

absl::StatusOr<Descriptor> DescribeMediated(VfioDevice& device,
                                            const MediatedInfo& info);

// The device must be RUNNING (a running guest's vGPU) and offer STOP_COPY.
absl::StatusOr<std::unique_ptr<Agent>> NewMediatedSource(
    VfioDevice* device, const MediatedInfo& info);
// A fresh device (RUNNING, never run by a guest, or STOP) of the source's
// type, context count and VRAM share; it is put in STOP.
absl::StatusOr<std::unique_ptr<Agent>> NewMediatedDestination(
    VfioDevice* device, const MediatedInfo& info, const Descriptor& source);

}  // namespace vgpu::agents::mediated

#endif  // VGPU_AGENTS_MEDIATED_MEDIATED_AGENT_H_
