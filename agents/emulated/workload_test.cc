// The counter workload: its checker on synthetic images, then the workload
// against real device processes, including a pre-copy live migration driven
// by dirty tracking whose final copy must equal the quiesced source.
#include "agents/emulated/workload.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agents/emulated/device_control.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/testing/device_process.h"

namespace vgpu::agents::emulated {
namespace {

using testing::DeviceProcess;
using testing::DeviceProcessOptions;

constexpr uint64_t kVram = 8 << 20;

// --- the checker

struct Image {
  WorkloadLayout layout = *WorkloadLayout::For(kVram);
  std::vector<uint8_t> vram = std::vector<uint8_t>(kVram, 0xCC);

  void Set(uint64_t page, uint64_t value) {
    std::memcpy(&vram[layout.PageOffset(page)], &value, 8);
  }
  // base + 1 on pages [0, prefix), base on the rest.
  void Fill(uint64_t base, uint64_t prefix) {
    for (uint64_t p = 0; p < layout.page_count; ++p) {
      Set(p, p < prefix ? base + 1 : base);
    }
  }
  absl::StatusOr<CounterState> Check() const {
    return CheckCounters(vram, layout);
  }
};

TEST(WorkloadChecker, Layout) {
  const WorkloadLayout l = *WorkloadLayout::For(kVram);
  EXPECT_EQ(l.first_page, 768u);  // 1024 x 768 x 4 bytes
  EXPECT_EQ(l.page_count, kVram / 4096 - 768);
  EXPECT_EQ(l.PageOffset(0), 768u * 4096);
  EXPECT_TRUE(absl::IsInvalidArgument(WorkloadLayout::For(3 << 20).status()));
}

TEST(WorkloadChecker, AcceptsEveryStateOfAPass) {
  Image img;
  for (uint64_t base : {uint64_t{0}, uint64_t{1}, uint64_t{41}}) {
    for (uint64_t prefix : {uint64_t{0}, uint64_t{1}, uint64_t{500},
                            uint64_t{img.layout.page_count - 1}}) {
      img.Fill(base, prefix);
      absl::StatusOr<CounterState> s = img.Check();
      ASSERT_TRUE(s.ok()) << base << "/" << prefix << ": " << s.status();
      EXPECT_EQ(s->base, base);
      EXPECT_EQ(s->prefix, prefix);
    }
  }
  // The framebuffer is not the checker's business.
  img.Fill(7, 3);
  std::memset(img.vram.data(), 0x5A, img.layout.PageOffset(0));
  EXPECT_TRUE(img.Check().ok());
  // Nor is anything past a counter's 8 bytes.
  img.vram[img.layout.PageOffset(10) + 8] ^= 0xFF;
  EXPECT_TRUE(img.Check().ok());
}

TEST(WorkloadChecker, RejectsAPageThatWentBackwards) {
  Image img;
  img.Fill(5, 100);
  img.Set(50, 4);  // inside the prefix, behind even the base
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
  img.Fill(5, 100);
  img.Set(1000, 4);  // after the prefix
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
  img.Fill(5, 0);
  img.Set(0, 4);  // the very first page
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
}

TEST(WorkloadChecker, RejectsANonPrefixPattern) {
  Image img;
  img.Fill(5, 100);
  img.Set(300, 6);  // a page ahead of the pass, after a gap
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
  img.Fill(5, 100);
  img.Set(40, 5);  // a hole in the prefix
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
  img.Fill(5, 100);
  img.Set(10, 7);  // two ahead
  EXPECT_TRUE(absl::IsDataLoss(img.Check().status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      CheckCounters(absl::MakeConstSpan(img.vram).subspan(1), img.layout)
          .status()));
}

TEST(WorkloadChecker, ProgressNeverGoesBackwards) {
  const CounterState a{3, 10}, b{3, 11}, c{4, 0};
  EXPECT_TRUE(CheckProgress(a, b, true).ok());
  EXPECT_TRUE(CheckProgress(b, c, true).ok());
  EXPECT_TRUE(CheckProgress(a, a, false).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(CheckProgress(a, a, true)));
  EXPECT_TRUE(absl::IsDataLoss(CheckProgress(b, a, false)));
  EXPECT_TRUE(absl::IsDataLoss(CheckProgress(c, b, false)));
}

// --- against devices

std::unique_ptr<DeviceProcess> StartDevice(DeviceProcessOptions o = {}) {
  auto p = DeviceProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

// Runs a workload on its own thread and connection until stopped.
class Background {
 public:
  Background(const std::string& socket, WorkloadOptions options) {
    thread_ = std::thread([this, socket, options] {
      auto guest = GuestClient::Connect(socket, "workload");
      if (!guest.ok()) {
        result_ = guest.status();
        started_.Notify();
        return;
      }
      auto w = Workload::Start(guest->get(), options);
      if (!w.ok()) {
        result_ = w.status();
        started_.Notify();
        return;
      }
      started_.Notify();
      result_ = (*w)->Run(&stop_);
      stats_ = (*w)->stats();
    });
    started_.WaitForNotification();
  }
  ~Background() { Join().IgnoreError(); }
  absl::Status Join() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  const WorkloadStats& stats() const { return stats_; }

 private:
  std::atomic<bool> stop_{false};
  absl::Notification started_;
  absl::Status result_;
  WorkloadStats stats_;
  std::thread thread_;
};

// Quiesces, checks the invariant on the agent's mapping, resumes.
absl::StatusOr<CounterState> CheckLive(DeviceControl& agent,
                                       const WorkloadLayout& layout) {
  absl::Status s = agent.Quiesce();
  if (!s.ok()) return s;
  absl::StatusOr<CounterState> state = CheckCounters(agent.vram(), layout);
  s = agent.Resume();
  if (!s.ok()) return s;
  return state;
}

TEST(Workload, KeepsTheInvariantAndProgresses) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto agent = *DeviceControl::Connect(dev->socket_path());
  const WorkloadLayout layout = *WorkloadLayout::For(kVram);
  WorkloadOptions o;
  o.frame_every_pages = 256;
  Background run(dev->socket_path(), o);
  // Checks until the counters have wrapped at least once (or 20 s pass,
  // which only a badly stalled machine would need).
  CounterState last;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int checks = 0;
  while (last.base < 1 || checks < 5) {
    ASSERT_LT(absl::Now(), deadline) << "no progress: " << last.base;
    absl::SleepFor(absl::Milliseconds(20));
    absl::StatusOr<CounterState> now = CheckLive(*agent, layout);
    ASSERT_TRUE(now.ok()) << now.status();
    absl::Status s = CheckProgress(last, *now, /*require_progress=*/false);
    ASSERT_TRUE(s.ok()) << "check " << checks << ": " << s;
    last = *now;
    ++checks;
  }
  ASSERT_TRUE(run.Join().ok());
  EXPECT_GT(run.stats().frames, 0u);
  EXPECT_EQ(run.stats().state, *CheckCounters(agent->vram(), layout));
  // The mode is the workload's.
  auto guest = *GuestClient::Connect(dev->socket_path());
  EXPECT_EQ(*guest->ReadReg(dispi::kIndexXres), kWorkloadXres);
  EXPECT_EQ(*guest->ReadReg(dispi::kIndexBpp), kWorkloadBpp);
}

TEST(Workload, RateLimitAndResumeFromVram) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto guest = *GuestClient::Connect(dev->socket_path());
  WorkloadOptions o;
  o.pages_per_second = 2000;
  o.duration = absl::Milliseconds(500);
  auto w = *Workload::Start(guest.get(), o);
  ASSERT_TRUE(w->Run().ok());
  EXPECT_GE(w->stats().pages_written, 300u);
  EXPECT_LE(w->stats().pages_written, 1000u + 40u);

  // A second workload picks up where the first left the VRAM.
  WorkloadOptions more;
  more.max_pages = w->layout().page_count + 5;  // wraps into the next pass
  auto w2 = *Workload::Start(guest.get(), more);
  EXPECT_EQ(w2->stats().state, w->stats().state);
  ASSERT_TRUE(w2->Run().ok());
  CounterState want = w->stats().state;
  want.base += 1;
  want.prefix += 5;
  EXPECT_EQ(w2->stats().state, want);
  EXPECT_EQ(w2->stats().pages_written, more.max_pages);
}

// Pre-copy with dirty tracking while the workload runs, then stop-and-copy;
// the copy must equal the quiesced source exactly, and the workload must go
// on from it on the destination.
TEST(Workload, SurvivesLiveMigration) {
  auto src = StartDevice({.name = "src"});
  ASSERT_NE(src, nullptr);
  auto src_agent = *DeviceControl::Connect(src->socket_path());
  const WorkloadLayout layout = *WorkloadLayout::For(kVram);
  WorkloadOptions o;
  o.pages_per_second = 20000;
  o.frame_every_pages = 500;
  auto run = std::make_unique<Background>(src->socket_path(), o);

  std::vector<uint8_t> copy(kVram);
  auto copy_dirty = [&]() -> size_t {
    std::vector<uint64_t> bitmap = *src_agent->FetchDirtyBitmap();
    size_t pages = 0;
    for (uint64_t p = 0; p < kVram / kPageBytes; ++p) {
      if (!(bitmap[p / 64] >> (p % 64) & 1)) continue;
      std::memcpy(&copy[p * kPageBytes],
                  src_agent->vram().data() + p * kPageBytes, kPageBytes);
      ++pages;
    }
    return pages;
  };
  ASSERT_TRUE(src_agent->StartDirtyTracking().ok());
  EXPECT_EQ(copy_dirty(), kVram / kPageBytes);  // round 0: everything
  // Rounds while the guest writes, until some have found dirty pages.
  size_t rounds_with_pages = 0;
  for (int round = 1; rounds_with_pages < 3 && round < 1000; ++round) {
    absl::SleepFor(absl::Milliseconds(10));
    if (copy_dirty() > 0) ++rounds_with_pages;
  }
  EXPECT_EQ(rounds_with_pages, 3u);
  ASSERT_TRUE(src_agent->Quiesce().ok());
  copy_dirty();
  ASSERT_TRUE(std::memcmp(copy.data(), src_agent->vram().data(), kVram) == 0)
      << "dirty tracking missed a page";
  absl::StatusOr<CounterState> cut = CheckCounters(copy, layout);
  ASSERT_TRUE(cut.ok()) << cut.status();
  std::vector<uint8_t> regs = *src_agent->SaveRegisters();
  std::vector<uint8_t> ring = *src_agent->SaveRing();

  // The source goes away with the workload's connection to it.
  src.reset();
  EXPECT_FALSE(run->Join().ok());
  run.reset();

  auto dst = StartDevice({.name = "dst", .incoming = true});
  ASSERT_NE(dst, nullptr);
  auto dst_agent = *DeviceControl::Connect(dst->socket_path());
  std::memcpy(dst_agent->mutable_vram()->data(), copy.data(), kVram);
  ASSERT_TRUE(dst_agent->LoadRegisters(regs).ok());
  ASSERT_TRUE(dst_agent->LoadRing(ring).ok());
  ASSERT_TRUE(dst_agent->Resume().ok());

  // The guest comes back on the destination and carries on.
  WorkloadOptions again;
  again.max_pages = 3000;
  auto guest = *GuestClient::Connect(dst->socket_path());
  auto w = Workload::Start(guest.get(), again);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(CheckProgress(*cut, (*w)->stats().state, false).ok());
  ASSERT_TRUE((*w)->Run().ok());
  absl::StatusOr<CounterState> after = CheckLive(*dst_agent, layout);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(CheckProgress(*cut, *after, true).ok());
  EXPECT_EQ(after->Total(layout), (*w)->stats().state.Total(layout));
}

}  // namespace
}  // namespace vgpu::agents::emulated
