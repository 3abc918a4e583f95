// DeviceControl: the migration agent's connection to a running reference
// emulated vGPU process (vgpu-emu-device). Through it the agent reads the
// device's registers, command ring and VRAM, tracks dirty pages, quiesces
// and resumes the device, and on a destination loads state into a fresh
// device before it runs. VRAM is shared with the device as a memfd mapping
// (read-only for a running device, writable while a fresh device is
// quiesced), so extracting pages costs a memcpy, not a round trip.
//
// Used from one thread (the agent's). Every call is a synchronous request
// on the device's control socket; calls may block for the device's reply
// (Quiesce waits for the command in progress to finish).
#ifndef VGPU_AGENTS_EMULATED_DEVICE_CONTROL_H_
#define VGPU_AGENTS_EMULATED_DEVICE_CONTROL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vgpu::agents::emulated {

inline constexpr uint32_t kPageBytes = 4096;

struct DeviceInfo {
  std::string name;          // the instance name given at start
  uint64_t vram_bytes = 0;   // multiple of 64 KiB
  uint32_t page_bytes = kPageBytes;
  uint16_t dispi_id = 0;     // 0xB0C5 for the DISPI version implemented
  uint32_t abi_major = 1;    // of the device model's state blobs
  uint32_t abi_minor = 0;
  bool quiesced = false;
  bool tracking = false;
  // Commands queued in the ring and their payload bytes: the ring blob a
  // final copy carries grows with them (up to 1024 x 64 KiB).
  uint64_t queued_commands = 0;
  uint64_t queued_command_bytes = 0;
};

class DeviceControl {
 public:
  // Connects to the device's control socket. Only one agent may be attached
  // at a time (FAILED_PRECONDITION otherwise).
  static absl::StatusOr<std::unique_ptr<DeviceControl>> Connect(
      const std::string& socket_path);
  virtual ~DeviceControl() = default;

  virtual absl::StatusOr<DeviceInfo> Info() = 0;

  // The live VRAM, mapped read-only. Valid for the DeviceControl's life.
  virtual absl::Span<const uint8_t> vram() const = 0;
  // Writable VRAM; only while the device is quiesced and has never run
  // since it was started with --incoming (FAILED_PRECONDITION otherwise).
  virtual absl::StatusOr<absl::Span<uint8_t>> mutable_vram() = 0;

  // Dirty tracking at page granularity, done by the device model, which
  // performs every write. Start marks every page dirty (the initial pass).
  virtual absl::Status StartDirtyTracking() = 0;
  virtual absl::Status StopDirtyTracking() = 0;
  // Returns and clears the dirty bitmap: bit p of word p/64 = page p was
  // written since the previous call. Fetch before reading the pages: a page
  // written after the fetch shows up again in the next one.
  virtual absl::StatusOr<std::vector<uint64_t>> FetchDirtyBitmap() = 0;

  // Stops the command engine after the command in progress; queued
  // commands stay in the ring; guest submissions block until Resume.
  virtual absl::Status Quiesce() = 0;
  virtual absl::Status Resume() = 0;

  // Device state other than VRAM, as versioned opaque blobs (format in
  // docs/formats/emulated-device.md). Saving needs a quiesced device.
  virtual absl::StatusOr<std::vector<uint8_t>> SaveRegisters() = 0;
  virtual absl::StatusOr<std::vector<uint8_t>> SaveRing() = 0;
  // Loading needs a quiesced --incoming device; malformed blobs are
  // refused (INVALID_ARGUMENT / DATA_LOSS) and leave the device unchanged.
  virtual absl::Status LoadRegisters(absl::Span<const uint8_t> blob) = 0;
  virtual absl::Status LoadRing(absl::Span<const uint8_t> blob) = 0;
};

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_DEVICE_CONTROL_H_
