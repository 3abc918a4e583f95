#include "tests/e2e/checks.h"

#include <unistd.h>

#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agents/emulated/command.h"
#include "agents/emulated/device_control.h"
#include "agents/emulated/guest_client.h"
#include "xxhash.h"

namespace vgpu::e2e {

using agents::emulated::CheckCounters;
using agents::emulated::CheckProgress;
using agents::emulated::Command;
using agents::emulated::CounterState;
using agents::emulated::DeviceControl;
using agents::emulated::GuestClient;
using agents::emulated::Workload;
using agents::emulated::WorkloadLayout;
using agents::emulated::WorkloadOptions;

// Attaches as the device's agent. A daemon that has just handed a device
// over may still be detaching from it for a few milliseconds.
absl::StatusOr<std::unique_ptr<DeviceControl>> Attach(const std::string& socket) {
  absl::StatusOr<std::unique_ptr<DeviceControl>> dc;
  for (int i = 0; i < 100; ++i) {
    dc = DeviceControl::Connect(socket);
    if (dc.ok() || dc.status().code() != absl::StatusCode::kFailedPrecondition) {
      break;
    }
    usleep(20 * 1000);
  }
  return dc;
}

absl::StatusOr<CounterState> CountersOf(const std::string& socket) {
  auto dc = Attach(socket);
  if (!dc.ok()) return dc.status();
  auto layout = WorkloadLayout::For((*dc)->vram().size());
  if (!layout.ok()) return layout.status();
  return CheckCounters((*dc)->vram(), *layout);
}

absl::StatusOr<CounterState> RunWorkload(const std::string& socket,
                                         const CounterState& earlier,
                                         uint64_t pages) {
  auto guest = GuestClient::Connect(socket);
  if (!guest.ok()) return guest.status();
  WorkloadOptions options;
  options.max_pages = pages;
  auto workload = Workload::Start(guest->get(), options);
  if (!workload.ok()) return workload.status();
  const CounterState start = (*workload)->stats().state;
  if (auto s = CheckProgress(earlier, start, false); !s.ok()) return s;
  if (auto s = (*workload)->Run(); !s.ok()) return s;
  const CounterState end = (*workload)->stats().state;
  if (auto s = CheckProgress(start, end, true); !s.ok()) return s;
  auto layout = WorkloadLayout::For((*guest)->vram().size());
  if (!layout.ok()) return layout.status();
  auto after = CheckCounters((*guest)->vram(), *layout);
  if (!after.ok()) return after.status();
  return *after;
}

absl::Status FillRandom(const std::string& socket, uint64_t bytes,
                        uint64_t seed) {
  auto guest = GuestClient::Connect(socket);
  if (!guest.ok()) return guest.status();
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> block(agents::emulated::kMaxWriteBytes);
  std::vector<Command> batch;
  for (uint64_t off = 0; off < bytes; off += block.size()) {
    for (size_t i = 0; i < block.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(block.data() + i, &v, 8);
    }
    batch.push_back(Command::Write(off, block));
    if (batch.size() == 64) {
      if (auto s = (*guest)->SubmitBatch(batch); !s.ok()) return s.status();
      batch.clear();
    }
  }
  if (!batch.empty()) {
    if (auto s = (*guest)->SubmitBatch(batch); !s.ok()) return s.status();
  }
  auto fence = (*guest)->Fence();
  if (!fence.ok()) return fence.status();
  return (*guest)->WaitFence(*fence, absl::Seconds(30));
}

absl::StatusOr<uint64_t> VramHash(const std::string& socket) {
  auto dc = Attach(socket);
  if (!dc.ok()) return dc.status();
  auto vram = (*dc)->vram();
  return XXH3_64bits(vram.data(), vram.size());
}

bool DeviceRuns(const std::string& socket) {
  auto guest = GuestClient::Connect(socket);
  if (!guest.ok()) return false;
  auto fence = (*guest)->Fence();
  if (!fence.ok()) return false;
  return (*guest)->WaitFence(*fence, absl::Seconds(2)).ok();
}

}  // namespace vgpu::e2e
