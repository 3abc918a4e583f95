// The counter workload for the reference emulated vGPU and its checker, in
// the spirit of QEMU's migration-test guest. The workload sets a 1024x768x32
// mode, then walks the VRAM pages after the visible framebuffer in order,
// writing an incrementing 64-bit counter (little-endian) at the start of
// each page through the command ring, with a fence after every batch; now
// and then it draws into the framebuffer with FILL and BLIT.
//
// Invariant, checked on any VRAM image (a live mapping, a migrated copy):
// every counter page holds c or c + 1 for one c, the pages holding c + 1
// form a prefix (the pass in progress), and a later image never holds a
// smaller state than an earlier one.
//
// A Workload drives one GuestClient from one thread. The checker functions
// are pure and thread-compatible.
#ifndef VGPU_AGENTS_EMULATED_WORKLOAD_H_
#define VGPU_AGENTS_EMULATED_WORKLOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agents/emulated/guest_client.h"

namespace vgpu::agents::emulated {

inline constexpr uint16_t kWorkloadXres = 1024;
inline constexpr uint16_t kWorkloadYres = 768;
inline constexpr uint16_t kWorkloadBpp = 32;

// Where the counters live: every page from the first one past the visible
// framebuffer to the end of VRAM.
struct WorkloadLayout {
  uint64_t vram_bytes = 0;
  uint64_t first_page = 0;
  uint64_t page_count = 0;

  // INVALID_ARGUMENT if VRAM cannot hold the framebuffer and a counter page.
  static absl::StatusOr<WorkloadLayout> For(uint64_t vram_bytes);
  uint64_t PageOffset(uint64_t counter_page) const;
};

// The counters as (base, prefix): pages [0, prefix) hold base + 1, the rest
// base. States order lexicographically, which is the order the workload
// produces them in.
struct CounterState {
  uint64_t base = 0;
  uint64_t prefix = 0;

  // Counter pages written since VRAM was all zeros.
  uint64_t Total(const WorkloadLayout& layout) const {
    return base * layout.page_count + prefix;
  }
  bool operator<(const CounterState& o) const {
    return base != o.base ? base < o.base : prefix < o.prefix;
  }
  bool operator==(const CounterState& o) const {
    return base == o.base && prefix == o.prefix;
  }
};

// Checks the invariant on a whole VRAM image; DATA_LOSS names the first page
// that breaks it.
absl::StatusOr<CounterState> CheckCounters(absl::Span<const uint8_t> vram,
                                           const WorkloadLayout& layout);
// DATA_LOSS if `later` is behind `earlier`; with `require_progress`,
// FAILED_PRECONDITION if it is not ahead.
absl::Status CheckProgress(const CounterState& earlier,
                           const CounterState& later, bool require_progress);

struct WorkloadStats;

struct WorkloadOptions {
  double pages_per_second = 0;  // 0: as fast as the device takes them
  absl::Duration duration = absl::InfiniteDuration();
  uint64_t max_pages = 0;     // stop after this many counter writes (0: never)
  uint32_t batch_pages = 64;  // counter writes per submission
  uint32_t frame_every_pages = 1024;  // draw a frame this often
  // Called from Run's thread about every `progress_every`, if set.
  std::function<void(const WorkloadStats&)> progress;
  absl::Duration progress_every = absl::Seconds(1);
};

struct WorkloadStats {
  uint64_t pages_written = 0;  // counter writes whose fence completed
  uint64_t frames = 0;
  CounterState state;  // as of the last completed fence
};

class Workload {
 public:
  // Programs the mode unless it is already set, then reads the counters
  // back so that a workload started on a migrated (or restarted) device
  // carries on from where the VRAM says it was. DATA_LOSS if the VRAM
  // breaks the invariant.
  static absl::StatusOr<std::unique_ptr<Workload>> Start(
      GuestClient* guest, const WorkloadOptions& options);

  // Runs until the duration or max_pages is reached or `*stop` is set (if
  // given); waits for its last fence before returning.
  absl::Status Run(const std::atomic<bool>* stop = nullptr);

  const WorkloadStats& stats() const { return stats_; }
  const WorkloadLayout& layout() const { return layout_; }

 private:
  Workload(GuestClient* guest, const WorkloadOptions& options,
           const WorkloadLayout& layout, const CounterState& state);
  // Appends the commands that draw frame `frame`.
  void DrawFrame(uint64_t frame, std::vector<Command>* out) const;

  GuestClient* const guest_;
  const WorkloadOptions options_;
  const WorkloadLayout layout_;
  CounterState next_;  // state after everything submitted so far
  WorkloadStats stats_;
};

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_WORKLOAD_H_
