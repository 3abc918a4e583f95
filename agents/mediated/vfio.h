// VFIO migration v2 as the mediated agent sees it: the device states and
// the kernel's rules for moving between them (linux/vfio.h and
// drivers/vfio/vfio_main.c), and the small interface over a device's file
// operations. Two implementations: kernel_device.h issues the real ioctls
// on a VFIO device fd; reference_device.h is a software mediated vGPU with
// the same states, arcs and errors. The agent (mediated_agent.h) only ever
// talks to this interface.
//
// Errors carry the errno the kernel would return (ErrnoOf), so callers and
// tests can tell EINVAL (an arc the FSM refuses) from ENOMSG (no pre-copy
// data right now) from ENOTTY (no such feature) on either implementation.
// A VfioDevice and its DataStream are used from one thread at a time.
#ifndef VGPU_AGENTS_MEDIATED_VFIO_H_
#define VGPU_AGENTS_MEDIATED_VFIO_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace vgpu::agents::mediated {

// enum vfio_device_mig_state; the numbers are the kernel's.
enum class MigState : uint32_t {
  kError = 0,
  kStop = 1,
  kRunning = 2,
  kStopCopy = 3,
  kResuming = 4,
  kRunningP2p = 5,
  kPreCopy = 6,
  kPreCopyP2p = 7,
};
inline constexpr uint32_t kMigStateCount = 8;

// struct vfio_device_feature_migration flags.
inline constexpr uint64_t kMigFlagStopCopy = 1u << 0;
inline constexpr uint64_t kMigFlagP2p = 1u << 1;
inline constexpr uint64_t kMigFlagPreCopy = 1u << 2;

const char* MigStateName(MigState s);
// "STOP_COPY|P2P|PRE_COPY"
std::string MigFlagsString(uint64_t flags);

// Whether a device with `flags` offers state `s` at all.
bool StateSupported(uint64_t flags, MigState s);

// vfio_mig_get_next_state(): the next single arc the kernel takes from
// `cur` toward `target` for a device with `flags`. Combination transitions
// are walked one step at a time; optional states the device lacks are
// skipped. EINVAL for an unsupported state, for STOP_COPY -> PRE_COPY(_P2P),
// and from ERROR.
absl::StatusOr<MigState> NextStep(uint64_t flags, MigState cur,
                                  MigState target);

// Whether cur -> next is an arc a driver implements itself (a single step
// of NextStep), as opposed to a combination the core walks through.
bool IsDriverArc(uint64_t flags, MigState from, MigState to);

// Whether the arc into `to` from `from` opens a new data transfer session
// (RUNNING -> PRE_COPY, RUNNING_P2P -> PRE_COPY_P2P, STOP -> STOP_COPY,
// STOP -> RESUMING), and whether it ends one.
bool ArcOpensSession(MigState from, MigState to);
bool ArcEndsSession(MigState from, MigState to);
// PRE_COPY, PRE_COPY_P2P, STOP_COPY: the states that share one session.
bool InSavingGroup(MigState s);

// Statuses that carry the errno a kernel driver would give.
absl::Status ErrnoError(int err, absl::string_view message);
// The errno carried by `s`, or 0 if none.
int ErrnoOf(const absl::Status& s);

// struct vfio_precopy_info.
struct PrecopyInfo {
  uint64_t initial_bytes = 0;
  uint64_t dirty_bytes = 0;
};

// struct vfio_device_feature_dma_logging_range.
struct DmaRange {
  uint64_t iova = 0;
  uint64_t length = 0;
};

// One data transfer session: the data_fd a state change returned.
class DataStream {
 public:
  virtual ~DataStream() = default;
  // Saving group. Returns bytes read; 0 is the end of the stream (only in
  // STOP_COPY, and from then on always 0). In PRE_COPY, ENOMSG when
  // nothing is pending right now.
  virtual absl::StatusOr<size_t> Read(absl::Span<uint8_t> out) = 0;
  // RESUMING. Any segmentation; the bytes must be those read on the
  // source, in order. A record the device cannot take fails (EINVAL).
  virtual absl::Status Write(absl::Span<const uint8_t> data) = 0;
  // VFIO_MIG_GET_PRECOPY_INFO: only in PRE_COPY states (EINVAL otherwise).
  virtual absl::StatusOr<PrecopyInfo> GetPrecopyInfo() = 0;
};

class VfioDevice {
 public:
  virtual ~VfioDevice() = default;

  // The device's name: an mdev UUID or a PCI address.
  virtual const std::string& name() const = 0;

  // VFIO_DEVICE_FEATURE_MIGRATION (GET). ENOTTY if the driver has no
  // migration support.
  virtual absl::StatusOr<uint64_t> MigrationFlags() = 0;
  // VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET).
  virtual absl::StatusOr<MigState> GetState() = 0;
  // VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (SET): the whole combination
  // transition. Returns the new session when the path opened one, else
  // nullptr. On failure the device may be in any state along the path,
  // or ERROR; GetState tells.
  virtual absl::StatusOr<std::unique_ptr<DataStream>> SetState(
      MigState target) = 0;
  // VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: bytes a STOP_COPY now would stream.
  virtual absl::StatusOr<uint64_t> StopCopyBytes() = 0;
  // VFIO_DEVICE_RESET: back to RUNNING from any state, ERROR included;
  // device state is lost and any session ends.
  virtual absl::Status Reset() = 0;

  // Device DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*). ENOTTY
  // if not offered. Start returns the page size the device chose.
  virtual absl::StatusOr<uint64_t> DmaLoggingStart(
      absl::Span<const DmaRange> ranges, uint64_t page_size) = 0;
  virtual absl::Status DmaLoggingStop() = 0;
  // Sets (never clears) a bit per `page_size` of [iova, iova + length)
  // written by the device since the last report, and clears the log there.
  virtual absl::Status DmaLoggingReport(uint64_t iova, uint64_t length,
                                        uint64_t page_size,
                                        absl::Span<uint64_t> bitmap) = 0;
};

}  // namespace vgpu::agents::mediated

#endif  // VGPU_AGENTS_MEDIATED_VFIO_H_
