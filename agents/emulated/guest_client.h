// GuestClient: a guest driver's connection to vgpu-emu-device, for
// workloads and tests. It programs the DISPI registers, submits commands to
// the ring, waits on fences and reads results back. Like a guest's view of
// a BAR, VRAM is also mapped read-only (the device passes a read-only memfd
// descriptor at connect): vram() is live and racy, ReadVram() copies bytes
// taken between two commands. Guests never write VRAM directly: every write
// is a command, which keeps the engine's dirty tracking exact.
//
// One thread per GuestClient; every call is a synchronous request. Calls
// that change device state block while the device is quiesced.
#ifndef VGPU_AGENTS_EMULATED_GUEST_CLIENT_H_
#define VGPU_AGENTS_EMULATED_GUEST_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agents/emulated/command.h"

namespace vgpu::agents::emulated {

namespace internal {
class Connection;
}

class GuestClient {
 public:
  static absl::StatusOr<std::unique_ptr<GuestClient>> Connect(
      const std::string& socket_path, absl::string_view client_name = "guest");
  ~GuestClient();

  const std::string& device_name() const { return device_name_; }
  uint64_t vram_bytes() const { return vram_bytes_; }
  // The live VRAM, read-only; the engine may be writing it. Valid for the
  // GuestClient's life (and readable even after the device has gone).
  absl::Span<const uint8_t> vram() const {
    return absl::MakeConstSpan(vram_, vram_bytes_);
  }

  // DISPI registers. An invalid write is ignored by the device, as
  // hardware would; read the register back to see what was taken.
  absl::Status WriteReg(uint16_t index, uint16_t value);
  absl::StatusOr<uint16_t> ReadReg(uint16_t index);

  // Queues commands; returns their sequence numbers. A batch is checked as
  // a whole before any of it is queued (INVALID_ARGUMENT). VRAM bounds are
  // checked when a command executes: see EngineStatus().
  absl::StatusOr<uint64_t> Submit(const Command& command);
  absl::StatusOr<std::vector<uint64_t>> SubmitBatch(
      absl::Span<const Command> commands);
  // Queues FENCE(last submitted fence + 1) and returns its value.
  absl::StatusOr<uint64_t> Fence();
  absl::Status WaitFence(uint64_t value,
                         absl::Duration timeout = absl::InfiniteDuration());
  // Submits CHECKSUM and a fence, waits, and returns the XXH3-64 of
  // VRAM[offset, offset + length) (OUT_OF_RANGE if out of bounds).
  absl::StatusOr<uint64_t> Checksum(uint64_t offset, uint64_t length);
  // The result of an earlier CHECKSUM command, once executed.
  absl::StatusOr<uint64_t> TakeChecksum(uint64_t seq);
  absl::StatusOr<EngineStatus> Status();

  // Copies VRAM bytes (any length; split into 16 MiB requests).
  absl::StatusOr<std::vector<uint8_t>> ReadVram(uint64_t offset,
                                                uint64_t length);

 private:
  GuestClient(std::unique_ptr<internal::Connection> conn, std::string name,
              uint64_t vram_bytes, const uint8_t* vram);
  std::unique_ptr<internal::Connection> conn_;
  std::string device_name_;
  uint64_t vram_bytes_;
  const uint8_t* vram_;  // mapped read-only
};

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_GUEST_CLIENT_H_
