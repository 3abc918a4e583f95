// EmuGpu: the device core of the reference emulated vGPU, independent of any
// socket. It owns VRAM (a memfd, so it can be shared), the DISPI registers,
// the command ring and the engine thread that executes it, dirty tracking,
// quiesce/resume and state save/load.
//
// Thread-safe: the server calls it from one thread per client. Calls that
// change guest-visible state (WriteReg, Submit, SubmitFence) block while the
// device is quiesced; WaitFence blocks until the fence completes. Shutdown()
// (or the destructor) wakes every blocked caller with CANCELLED.
//
// Ordering: commands execute one at a time in submission order. A register
// write takes effect between two commands; the engine samples the mode for
// a BLIT when the command starts.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_EMU_GPU_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_EMU_GPU_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agents/emulated/command.h"
#include "agents/emulated/internal/dispi.h"

namespace vgpu::agents::emulated::internal {

// Dirty-tracking granularity; equals kPageBytes of device_control.h (the
// client side asserts it).
inline constexpr uint64_t kDirtyPageBytes = 4096;
inline constexpr uint64_t kMinVramBytes = 1 << 20;
// VIDEO_MEMORY_64K is 16 bits wide.
inline constexpr uint64_t kMaxVramBytes = uint64_t{0xFFFF} << 16;
// Results of CHECKSUM commands kept until the guest takes them; beyond this
// the oldest are dropped.
inline constexpr size_t kMaxPendingChecksums = 1024;

// The device's lifecycle. What each state allows, and where Quiesce and
// Resume lead from it, is the table kStateRules in emu_gpu.cc.
enum class DeviceState : uint8_t {
  kRunning,   // the engine executes; guests submit and program registers
  kQuiesced,  // the engine is stopped between commands; guests wait
  kIncoming,  // started with --incoming, never run: state may be loaded
};
const char* DeviceStateName(DeviceState state);

struct EmuGpuOptions {
  std::string name = "emu0";
  uint64_t vram_bytes = 64 << 20;  // multiple of 64 KiB, within the limits
  uint32_t ring_capacity = kRingCapacity;
  // Starts quiesced and "fresh": state may be loaded and VRAM written until
  // the first Resume().
  bool incoming = false;
  // Time the engine spends on each command before executing it: models a
  // slow GPU so that tests can find commands still queued.
  absl::Duration command_latency = absl::ZeroDuration();
  // Receives one line per skipped command, on the engine thread.
  std::function<void(const std::string&)> log;
};

class EmuGpu {
 public:
  static absl::StatusOr<std::unique_ptr<EmuGpu>> Create(
      const EmuGpuOptions& options);
  ~EmuGpu();
  EmuGpu(const EmuGpu&) = delete;
  EmuGpu& operator=(const EmuGpu&) = delete;

  const std::string& name() const { return options_.name; }
  uint64_t vram_bytes() const { return options_.vram_bytes; }
  uint32_t ring_capacity() const { return options_.ring_capacity; }
  // The memfd behind VRAM (read-write; owned by the device).
  int vram_fd() const { return vram_fd_; }
  // Live VRAM; the engine may be writing it.
  absl::Span<const uint8_t> vram() const {
    return absl::MakeConstSpan(vram_, options_.vram_bytes);
  }

  // --- registers
  uint16_t ReadReg(uint16_t index);
  // An invalid write is ignored (OK is still returned, as hardware would).
  absl::Status WriteReg(uint16_t index, uint16_t value);

  // --- command ring
  // Queues `command` and returns its sequence number. Blocks while the ring
  // is full or the device quiesced. INVALID_ARGUMENT for a malformed
  // command (an oversized WRITE, an unknown raster op); VRAM bounds are
  // checked when it executes.
  absl::StatusOr<uint64_t> Submit(Command command);
  // Queues FENCE(submitted fence + 1) and returns that value.
  absl::StatusOr<uint64_t> SubmitFence();
  // Waits until the completed fence is >= `value` (DEADLINE_EXCEEDED after
  // `timeout`).
  absl::Status WaitFence(uint64_t value, absl::Duration timeout);
  // Takes (and forgets) the result of the CHECKSUM command `seq`:
  // FAILED_PRECONDITION if it has not executed, NOT_FOUND if taken or
  // dropped, OUT_OF_RANGE if the engine skipped it.
  absl::StatusOr<uint64_t> TakeChecksum(uint64_t seq);
  EngineStatus Status();
  // Bytes of payload held by queued (not yet executed) commands, and their
  // count: what a ring blob will have to carry beyond its fixed part.
  std::pair<uint64_t, uint64_t> QueuedCommandBytes();
  // A copy of VRAM bytes taken between two commands.
  absl::StatusOr<std::vector<uint8_t>> ReadVram(uint64_t offset,
                                                uint64_t length);

  // --- dirty tracking (see device_control.h)
  void StartDirtyTracking();
  void StopDirtyTracking();
  bool tracking() const { return tracking_.load(); }
  absl::StatusOr<std::vector<uint64_t>> FetchDirtyBitmap();

  // --- quiesce
  // Returns once the command in progress (if any) has finished.
  void Quiesce();
  void Resume();
  DeviceState state();
  bool quiesced() { return state() != DeviceState::kRunning; }
  // Started with `incoming` and never resumed since.
  bool incoming_fresh() { return state() == DeviceState::kIncoming; }
  // OK while VRAM may be written from outside (quiesced and fresh).
  absl::Status CheckVramWritable();

  // --- state (formats in docs/formats/emulated-device.md)
  // Both need a quiesced device (FAILED_PRECONDITION otherwise).
  absl::StatusOr<std::vector<uint8_t>> SaveRegisters();
  absl::StatusOr<std::vector<uint8_t>> SaveRing();
  // Need a quiesced, fresh device. A blob is checked in full before any of
  // it is applied, so a refused blob leaves the device as it was.
  absl::Status LoadRegisters(absl::Span<const uint8_t> blob);
  absl::Status LoadRing(absl::Span<const uint8_t> blob);

  // Stops the engine after its current command and fails every blocked and
  // later call that would wait with CANCELLED. Idempotent.
  void Shutdown();

 private:
  struct ChecksumEntry {
    uint64_t value = 0;
    EngineError error = EngineError::kNone;
  };
  struct Outcome {
    EngineError error = EngineError::kNone;
    std::string message;
    uint64_t checksum = 0;
  };

  EmuGpu(const EmuGpuOptions& options, int fd, uint8_t* vram);
  void EngineLoop();
  Outcome Execute(const Command& command, const DisplayMode& mode);
  Outcome ExecuteBlit(const BlitRect& rect, const DisplayMode& mode);
  bool InBounds(uint64_t offset, uint64_t length) const;
  void MarkDirty(uint64_t offset, uint64_t length);
  // OK if the current state allows loading state (FAILED_PRECONDITION
  // naming `what` otherwise).
  absl::Status CheckLoadableLocked(absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a completed command's effects (fence, checksum, error).
  void CompleteLocked(uint64_t seq, const Command& command,
                      const Outcome& outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const EmuGpuOptions options_;
  const int vram_fd_;
  uint8_t* const vram_;
  const uint64_t pages_;

  absl::Mutex mu_;
  DispiRegisters regs_ ABSL_GUARDED_BY(mu_);
  std::vector<Command> ring_ ABSL_GUARDED_BY(mu_);  // slot = seq % capacity
  uint64_t head_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tail_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t submitted_fence_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t completed_fence_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, ChecksumEntry> checksums_ ABSL_GUARDED_BY(mu_);
  uint64_t error_count_ ABSL_GUARDED_BY(mu_) = 0;
  EngineError last_error_ ABSL_GUARDED_BY(mu_) = EngineError::kNone;
  uint64_t last_error_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_message_ ABSL_GUARDED_BY(mu_);
  DeviceState state_ ABSL_GUARDED_BY(mu_) = DeviceState::kRunning;
  bool executing_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;

  // Held while VRAM is written or copied by the device (engine commands,
  // clear-on-enable, ReadVram), so those never interleave. Taken after mu_
  // when both are held.
  absl::Mutex vram_mu_;

  // Bit p of word p/64: page p written since the last fetch. Set after the
  // write it records, so a fetch never clears a mark whose write is still
  // to come.
  std::atomic<bool> tracking_{false};
  std::unique_ptr<std::atomic<uint64_t>[]> dirty_;
  size_t dirty_words_ = 0;

  std::thread engine_;
};

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_EMU_GPU_H_
