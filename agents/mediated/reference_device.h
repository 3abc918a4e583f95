// The reference mediated vGPU: a software device that behaves like one
// vGPU instance of a mediated GPU, so the whole VFIO migration v2 path runs
// on machines without one. It has N GPU contexts, each with a register
// file, a command ring (head/tail, 32-byte commands), a GTT-style page table
// mapping guest pages, and a context save area; a share of VRAM; a
// scheduler thread that runs the contexts' commands, dirtying VRAM and
// context state; and a guest-memory window its commands DMA into.
//
// Its migration interface (VfioDevice) follows the kernel's rules exactly:
// the states and arcs of vfio.h (an arc the FSM refuses fails with EINVAL
// and changes nothing), one data session per saving group, precopy info
// that shrinks as initial bytes are read and grows as state is dirtied,
// ENOMSG at the temporary end of pre-copy data, EOF after STOP_COPY's END
// record, RESUMING validated on leaving it, and ERROR (left only by Reset)
// when an injected fault hits. Stream format: docs/formats/mediated-stream.md.
//
// Thread-safe: the guest side (Submit, the workload) and the migration side
// (VfioDevice, DataStream) may be used from different threads; one lock
// guards the device state, and the scheduler takes it per batch.
#ifndef VGPU_AGENTS_MEDIATED_REFERENCE_DEVICE_H_
#define VGPU_AGENTS_MEDIATED_REFERENCE_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agents/mediated/vfio.h"

namespace vgpu::agents::mediated {

struct RefVgpuConfig {
  std::string name;             // the mdev UUID
  std::string type = "REF-4C";  // vGPU type
  uint32_t contexts = 4;
  uint64_t vram_bytes = 64ull << 20;
  uint64_t guest_memory_bytes = 4ull << 20;  // DMA window at IOVA 0
  uint64_t migration_flags = kMigFlagStopCopy | kMigFlagP2p | kMigFlagPreCopy;
  bool dma_logging = true;
  // Commands per context per scheduler pass.
  uint32_t batch = 64;
};

// The 32-byte command of a context's ring.
struct RefCommand {
  enum Op : uint32_t {
    kNop = 0,
    // Bumps register 0 (the context's sequence number) and stamps VRAM page
    // arg1 with (context << 48 | sequence) in its first and last words.
    kStamp = 1,
    // Fills VRAM page arg1 with the 64-bit pattern arg2.
    kFill = 2,
    // Sets GTT entry arg0 to arg1 (guest page number << 12 | 1 = valid).
    kMapGtt = 3,
    // DMA: writes arg2 at byte arg1 of the guest page GTT entry arg0 maps.
    kDmaWrite = 4,
    // Peer-to-peer DMA to another device; waits while P2P is quiesced.
    kPeerWrite = 5,
    // Copies the register file into the context save area.
    kSaveContext = 6,
  };
  uint32_t op = kNop;
  uint32_t arg0 = 0;
  uint64_t arg1 = 0;
  uint64_t arg2 = 0;
  uint64_t arg3 = 0;
};

class RefVgpu : public VfioDevice {
 public:
  static absl::StatusOr<std::unique_ptr<RefVgpu>> Create(
      const RefVgpuConfig& config);
  ~RefVgpu() override;

  const RefVgpuConfig& config() const;

  // --- the guest's side ---
  // Queues a command on a context's ring. UNAVAILABLE when the ring is
  // full; FAILED_PRECONDITION while the device is not running (the VMM
  // has paused the guest in STOP, STOP_COPY, RESUMING and ERROR).
  absl::Status Submit(uint32_t context, const RefCommand& command);
  // Waits until every ring is empty (or the device stops running).
  void WaitIdle();
  // Commands executed since creation or the last reset, all contexts.
  uint64_t executed() const;
  // A digest of everything migration must carry: shape, every context
  // image (registers, ring with queued commands, GTT, save area) and VRAM.
  std::string Fingerprint() const;
  // Register `reg` of `context`; a VRAM word; a guest-memory word.
  uint64_t Register(uint32_t context, uint32_t reg) const;
  uint64_t VramWord(uint64_t page, uint32_t word) const;
  uint64_t GuestWord(uint64_t offset) const;
  // The stamp workload's invariant: every stamped page holds a stamp of
  // its context no newer than the context's sequence number, and each
  // context's newest stamp equals its sequence number when it stamped at
  // least one page and its ring is empty. Returns what broke.
  absl::Status CheckStamps() const;

  // --- test seams ---
  // The next time the device takes the single arc from -> to, it fails
  // with EIO and the device goes to ERROR.
  void InjectArcFault(MigState from, MigState to);
  // The next RESUMING write fails with EIO and the device goes to ERROR.
  void InjectResumeFault();

  // --- VfioDevice ---
  const std::string& name() const override;
  absl::StatusOr<uint64_t> MigrationFlags() override;
  absl::StatusOr<MigState> GetState() override;
  absl::StatusOr<std::unique_ptr<DataStream>> SetState(
      MigState target) override;
  absl::StatusOr<uint64_t> StopCopyBytes() override;
  absl::Status Reset() override;
  absl::StatusOr<uint64_t> DmaLoggingStart(absl::Span<const DmaRange> ranges,
                                           uint64_t page_size) override;
  absl::Status DmaLoggingStop() override;
  absl::Status DmaLoggingReport(uint64_t iova, uint64_t length,
                                uint64_t page_size,
                                absl::Span<uint64_t> bitmap) override;

  struct Impl;

 private:
  explicit RefVgpu(std::shared_ptr<Impl> impl);
  // Shared with the data sessions it hands out, which may outlive it.
  std::shared_ptr<Impl> impl_;
};

// A guest driver for tests and benchmarks: one thread that keeps every
// context busy with kStamp commands over its own VRAM pages (context c
// stamps pages c, c + N, c + 2N, ...), dirtying about `bytes_per_second`
// of VRAM, and pausing while the device is not running.
class RefWorkload {
 public:
  RefWorkload(RefVgpu* device, uint64_t bytes_per_second, uint64_t seed);
  ~RefWorkload();  // stops the thread
  void Stop();
  uint64_t submitted() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace vgpu::agents::mediated

#endif  // VGPU_AGENTS_MEDIATED_REFERENCE_DEVICE_H_
