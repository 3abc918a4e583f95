#include "agents/emulated/workload.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agents/emulated/device_control.h"

namespace vgpu::agents::emulated {
namespace {

constexpr uint64_t kPitch = uint64_t{kWorkloadXres} * (kWorkloadBpp / 8);
constexpr uint64_t kFramebufferBytes = kPitch * kWorkloadYres;
constexpr uint32_t kBandRows = 64;

uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only
  return v;
}

// The invariant on the counters alone, in page order.
absl::StatusOr<CounterState> CheckValues(absl::Span<const uint64_t> v) {
  CounterState state;
  if (v.empty()) return state;
  size_t i = 1;
  while (i < v.size() && v[i] == v[0]) ++i;
  if (i == v.size()) {
    state.base = v[0];
    return state;
  }
  // Pages [0, i) hold the first value, which must be one more than the rest.
  if (v[i] + 1 != v[0]) {
    return absl::DataLossError(absl::StrFormat(
        "counter page %u holds %u after %u pages holding %u: expected %u "
        "(the pass in progress) or %u",
        i, v[i], i, v[0], v[0], v[0] - 1));
  }
  state.base = v[i];
  state.prefix = i;
  for (size_t j = i + 1; j < v.size(); ++j) {
    if (v[j] != state.base) {
      return absl::DataLossError(absl::StrFormat(
          "counter page %u holds %u; pages from %u on must hold %u (pages "
          "before %u hold %u)",
          j, v[j], i, state.base, i, state.base + 1));
    }
  }
  return state;
}

}  // namespace

absl::StatusOr<WorkloadLayout> WorkloadLayout::For(uint64_t vram_bytes) {
  WorkloadLayout layout;
  layout.vram_bytes = vram_bytes;
  layout.first_page = (kFramebufferBytes + kPageBytes - 1) / kPageBytes;
  const uint64_t pages = vram_bytes / kPageBytes;
  if (pages <= layout.first_page) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u bytes of VRAM leave no page past the %ux%ux%u framebuffer",
        vram_bytes, kWorkloadXres, kWorkloadYres, kWorkloadBpp));
  }
  layout.page_count = pages - layout.first_page;
  return layout;
}

uint64_t WorkloadLayout::PageOffset(uint64_t counter_page) const {
  return (first_page + counter_page) * kPageBytes;
}

absl::StatusOr<CounterState> CheckCounters(absl::Span<const uint8_t> vram,
                                           const WorkloadLayout& layout) {
  if (vram.size() != layout.vram_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("VRAM image of %u bytes; the layout is for %u",
                        vram.size(), layout.vram_bytes));
  }
  std::vector<uint64_t> values(layout.page_count);
  for (uint64_t p = 0; p < layout.page_count; ++p) {
    values[p] = LoadLe64(vram.data() + layout.PageOffset(p));
  }
  return CheckValues(values);
}

absl::Status CheckProgress(const CounterState& earlier,
                           const CounterState& later, bool require_progress) {
  if (later < earlier) {
    return absl::DataLossError(absl::StrFormat(
        "counters went backwards: base %u prefix %u, earlier base %u prefix "
        "%u",
        later.base, later.prefix, earlier.base, earlier.prefix));
  }
  if (require_progress && later == earlier) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no progress: still base %u prefix %u", later.base, later.prefix));
  }
  return absl::OkStatus();
}

Workload::Workload(GuestClient* guest, const WorkloadOptions& options,
                   const WorkloadLayout& layout, const CounterState& state)
    : guest_(guest), options_(options), layout_(layout), next_(state) {
  stats_.state = state;
}

absl::StatusOr<std::unique_ptr<Workload>> Workload::Start(
    GuestClient* guest, const WorkloadOptions& options) {
  absl::StatusOr<WorkloadLayout> layout =
      WorkloadLayout::For(guest->vram_bytes());
  if (!layout.ok()) return layout.status();

  auto reg = [guest](uint16_t index) { return guest->ReadReg(index); };
  absl::StatusOr<uint16_t> enable = reg(dispi::kIndexEnable);
  absl::StatusOr<uint16_t> xres = reg(dispi::kIndexXres);
  absl::StatusOr<uint16_t> yres = reg(dispi::kIndexYres);
  absl::StatusOr<uint16_t> bpp = reg(dispi::kIndexBpp);
  for (const auto* r : {&enable, &xres, &yres, &bpp}) {
    if (!r->ok()) return r->status();
  }
  const bool mode_set = (*enable & dispi::kEnabled) && *xres == kWorkloadXres &&
                        *yres == kWorkloadYres && *bpp == kWorkloadBpp &&
                        !(*enable & dispi::kGetCaps);
  if (!mode_set) {
    // The Linux bochs driver's sequence: disable, program, enable.
    const std::pair<uint16_t, uint16_t> writes[] = {
        {dispi::kIndexEnable, 0},
        {dispi::kIndexBpp, kWorkloadBpp},
        {dispi::kIndexXres, kWorkloadXres},
        {dispi::kIndexYres, kWorkloadYres},
        {dispi::kIndexEnable, dispi::kEnabled | dispi::kLfbEnabled},
    };
    for (const auto& [index, value] : writes) {
      absl::Status s = guest->WriteReg(index, value);
      if (!s.ok()) return s;
    }
    absl::StatusOr<uint16_t> got = reg(dispi::kIndexEnable);
    if (!got.ok()) return got.status();
    if (!(*got & dispi::kEnabled)) {
      return absl::FailedPreconditionError(
          "the device refused the workload's 1024x768x32 mode");
    }
  }

  // Let commands still queued (a migrated ring, an earlier run) land first,
  // then read where the counters are.
  absl::StatusOr<uint64_t> fence = guest->Fence();
  if (!fence.ok()) return fence.status();
  absl::Status s = guest->WaitFence(*fence);
  if (!s.ok()) return s;
  // Nothing else writes the counter pages, so after the fence the mapping
  // holds a stable image of them.
  std::vector<uint64_t> values(layout->page_count);
  for (uint64_t p = 0; p < layout->page_count; ++p) {
    values[p] = LoadLe64(guest->vram().data() + layout->PageOffset(p));
  }
  absl::StatusOr<CounterState> state = CheckValues(values);
  if (!state.ok()) return state.status();
  return std::unique_ptr<Workload>(
      new Workload(guest, options, *layout, *state));
}

void Workload::DrawFrame(uint64_t frame, std::vector<Command>* out) const {
  // A band of solid colour moving down the screen, and part of it XORed
  // elsewhere: exercises FILL and an overlapping-capable BLIT each frame.
  const uint32_t span = kWorkloadYres - kBandRows;
  const uint32_t y0 = static_cast<uint32_t>((frame * 16) % span);
  const uint32_t colour =
      0xFF000000u | static_cast<uint32_t>((frame * 0x9E3779B1u) & 0xFFFFFF);
  out->push_back(Command::Fill(y0 * kPitch, kBandRows * kPitch, colour));
  BlitRect r;
  r.src_x = 0;
  r.src_y = y0;
  r.dst_x = kWorkloadXres / 2;
  r.dst_y = (y0 + 200) % span;
  r.width = kWorkloadXres / 4;
  r.height = kBandRows;
  r.rop = Rop::kXor;
  out->push_back(Command::Blit(r));
}

absl::Status Workload::Run(const std::atomic<bool>* stop) {
  struct InFlight {
    uint64_t fence;
    CounterState state;
    uint64_t pages;
    uint64_t frames;
  };
  std::deque<InFlight> in_flight;
  auto retire_one = [&]() -> absl::Status {
    absl::Status s = guest_->WaitFence(in_flight.front().fence);
    if (!s.ok()) return s;
    stats_.pages_written += in_flight.front().pages;
    stats_.frames += in_flight.front().frames;
    stats_.state = in_flight.front().state;
    in_flight.pop_front();
    return absl::OkStatus();
  };

  const absl::Time start = absl::Now();
  const absl::Time end = options_.duration == absl::InfiniteDuration()
                             ? absl::InfiniteFuture()
                             : start + options_.duration;
  // With a rate, batches shrink to about 20 ms worth of pages, so progress
  // is smooth rather than bursty.
  uint64_t batch = std::max<uint32_t>(1, options_.batch_pages);
  if (options_.pages_per_second > 0) {
    batch = std::min<uint64_t>(
        batch, std::max<uint64_t>(
                   1, static_cast<uint64_t>(options_.pages_per_second / 50)));
  }
  absl::Time next_progress = start + options_.progress_every;
  uint64_t submitted = 0;  // counter writes this run
  absl::Status status;
  std::vector<Command> commands;
  while (status.ok()) {
    if (stop != nullptr && stop->load()) break;
    const absl::Time now = absl::Now();
    if (now >= end) break;
    if (options_.progress && now >= next_progress) {
      options_.progress(stats_);
      next_progress = now + options_.progress_every;
    }
    uint64_t n = batch;
    if (options_.max_pages > 0) {
      if (submitted >= options_.max_pages) break;
      n = std::min(n, options_.max_pages - submitted);
    }
    if (options_.pages_per_second > 0) {
      const double due = std::floor(options_.pages_per_second *
                                    absl::ToDoubleSeconds(now - start));
      if (due < static_cast<double>(submitted + n)) {
        const absl::Time when =
            start + absl::Seconds(static_cast<double>(submitted + n) /
                                  options_.pages_per_second);
        absl::SleepFor(std::min(when - now, absl::Milliseconds(20)));
        continue;
      }
    }
    commands.clear();
    uint64_t frames = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint8_t value[8];
      const uint64_t v = next_.base + 1;
      std::memcpy(value, &v, 8);
      commands.push_back(
          Command::Write(layout_.PageOffset(next_.prefix), value));
      if (++next_.prefix == layout_.page_count) {
        ++next_.base;
        next_.prefix = 0;
      }
      // Frames are numbered by the counter state, so a workload resumed on
      // a migrated device draws what the original would have drawn.
      const uint64_t total = next_.Total(layout_);
      if (options_.frame_every_pages > 0 &&
          total % options_.frame_every_pages == 0) {
        DrawFrame(total / options_.frame_every_pages, &commands);
        ++frames;
      }
    }
    absl::StatusOr<std::vector<uint64_t>> seqs = guest_->SubmitBatch(commands);
    if (!seqs.ok()) return seqs.status();
    absl::StatusOr<uint64_t> fence = guest_->Fence();
    if (!fence.ok()) return fence.status();
    submitted += n;
    in_flight.push_back({*fence, next_, n, frames});
    // Two batches in flight keep the engine busy while this thread builds
    // the next one.
    while (status.ok() && in_flight.size() > 2) status = retire_one();
  }
  while (status.ok() && !in_flight.empty()) status = retire_one();
  return status;
}

}  // namespace vgpu::agents::emulated
