// The emulated agent against real vgpu-emu-device processes: the contract
// kit, then migration with the counter workload running, pre-copy
// convergence, and refusal of sections that do not fit.
#include "agents/emulated/emulated_agent.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/testing/device_process.h"
#include "agents/emulated/workload.h"
#include "agents/testing/contract_kit.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace vgpu::agents::emulated {
namespace {

using agents::testing::AgentContractTest;
using agents::testing::AgentHarness;
using agents::testing::HarnessFactory;
using agents::testing::Receive;
using emulated::testing::DeviceProcess;
using emulated::testing::DeviceProcessOptions;
using ::testing::HasSubstr;

struct Started {
  std::unique_ptr<DeviceProcess> process;
  std::unique_ptr<Agent> agent;
};

absl::StatusOr<Started> StartSource(const std::string& name,
                                    const std::string& vram,
                                    uint64_t workload_pages) {
  Started out;
  DeviceProcessOptions o;
  o.name = name;
  o.vram = vram;
  auto p = DeviceProcess::Start(o);
  if (!p.ok()) return p.status();
  out.process = std::move(*p);
  if (workload_pages > 0) {
    auto guest = GuestClient::Connect(out.process->socket_path());
    if (!guest.ok()) return guest.status();
    WorkloadOptions wo;
    wo.max_pages = workload_pages;
    auto w = Workload::Start(guest->get(), wo);
    if (!w.ok()) return w.status();
    if (auto s = (*w)->Run(); !s.ok()) return s;
  }
  auto dc = DeviceControl::Connect(out.process->socket_path());
  if (!dc.ok()) return dc.status();
  auto agent = NewEmulatedSource(std::move(*dc));
  if (!agent.ok()) return agent.status();
  out.agent = std::move(*agent);
  return out;
}

absl::StatusOr<Started> StartDestination(const std::string& name,
                                         const std::string& vram,
                                         const Agent& source) {
  Started out;
  DeviceProcessOptions o;
  o.name = name;
  o.vram = vram;
  o.incoming = true;
  auto p = DeviceProcess::Start(o);
  if (!p.ok()) return p.status();
  out.process = std::move(*p);
  auto dc = DeviceControl::Connect(out.process->socket_path());
  if (!dc.ok()) return dc.status();
  auto agent = NewEmulatedDestination(std::move(*dc), source.descriptor());
  if (!agent.ok()) return agent.status();
  out.agent = std::move(*agent);
  return out;
}

// Registers, ring and VRAM of the device behind `agent`, quiescing it for
// the moment it takes if it runs.
absl::StatusOr<std::string> DeviceFingerprint(Agent& agent) {
  DeviceControl& dc = DeviceOf(agent);
  auto info = dc.Info();
  if (!info.ok()) return info.status();
  if (!info->quiesced) {
    if (auto s = dc.Quiesce(); !s.ok()) return s;
  }
  auto regs = dc.SaveRegisters();
  auto ring = dc.SaveRing();
  uint64_t vram = XXH3_64bits(dc.vram().data(), dc.vram().size());
  if (!info->quiesced) {
    if (auto s = dc.Resume(); !s.ok()) return s;
  }
  if (!regs.ok()) return regs.status();
  if (!ring.ok()) return ring.status();
  return absl::StrCat(XXH3_64bits(regs->data(), regs->size()), "/",
                      XXH3_64bits(ring->data(), ring->size()), "/", vram);
}

class EmulatedHarness : public AgentHarness {
 public:
  std::string name() const override { return "emulated"; }
  absl::StatusOr<std::unique_ptr<Agent>> MakeSource() override {
    auto s = StartSource(absl::StrCat("src", ++count_), "4M", 64);
    if (!s.ok()) return s.status();
    // A new agent may reuse a destroyed one's address: forget its guest.
    guests_.erase(s->agent.get());
    sockets_[s->agent.get()] = s->process->socket_path();
    processes_.push_back(std::move(s->process));
    return std::move(s->agent);
  }
  absl::StatusOr<std::unique_ptr<Agent>> MakeDestination(
      const Agent& source) override {
    auto d = StartDestination(absl::StrCat("dst", ++count_), "4M", source);
    if (!d.ok()) return d.status();
    guests_.erase(d->agent.get());
    sockets_[d->agent.get()] = d->process->socket_path();
    processes_.push_back(std::move(d->process));
    return std::move(d->agent);
  }
  absl::Status Mutate(Agent& source) override {
    GuestClient* g = Guest(source);
    if (g == nullptr) return absl::InternalError("no guest connection");
    ++mutations_;
    if (auto s = g->Submit(Command::Fill((mutations_ * 5 % 500) * 4096, 4096,
                                         0xC0DE0000u + mutations_));
        !s.ok()) {
      return s.status();
    }
    auto fence = g->Fence();
    if (!fence.ok()) return fence.status();
    return g->WaitFence(*fence, absl::Seconds(10));
  }
  absl::StatusOr<std::string> Fingerprint(Agent& agent) override {
    return DeviceFingerprint(agent);
  }
  absl::Status CheckRunning(Agent& agent) override {
    GuestClient* g = Guest(agent);
    if (g == nullptr) return absl::InternalError("no guest connection");
    auto fence = g->Fence();
    if (!fence.ok()) return fence.status();
    return g->WaitFence(*fence, absl::Seconds(3));
  }

 private:
  GuestClient* Guest(Agent& agent) {
    auto it = guests_.find(&agent);
    if (it != guests_.end()) return it->second.get();
    auto g = GuestClient::Connect(sockets_.at(&agent));
    if (!g.ok()) return nullptr;
    return (guests_[&agent] = std::move(*g)).get();
  }

  int count_ = 0;
  uint64_t mutations_ = 0;
  std::vector<std::unique_ptr<DeviceProcess>> processes_;
  std::map<const Agent*, std::string> sockets_;
  std::map<const Agent*, std::unique_ptr<GuestClient>> guests_;
};

INSTANTIATE_TEST_SUITE_P(Emulated, AgentContractTest,
                         ::testing::Values(HarnessFactory([] {
                           return std::make_unique<EmulatedHarness>();
                         })));

// Writes a migration image while `workload` keeps the device busy.
absl::StatusOr<std::vector<uint8_t>> MigrateLive(Agent& source, int max_rounds,
                                                 uint64_t stop_below,
                                                 std::vector<uint64_t>* left) {
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  auto dev = root.initDevices(1)[0];
  dev.setDescriptor(source.descriptor().root());
  codec::MemorySink sink;
  auto w = codec::ImageWriter::Create(&sink, m, {});
  if (!w.ok()) return w.status();
  if (auto s = source.TransitionTo(State::kPreCopy); !s.ok()) return s;
  int round = 0;
  for (; round < max_rounds; ++round) {
    if (auto s = source.Save(**w, 0, round); !s.ok()) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto p = source.Pending();
    if (!p.ok()) return p.status();
    if (left != nullptr) left->push_back(p->total());
    if (p->total() < stop_below) break;
  }
  if (auto s = source.TransitionTo(State::kStopCopy); !s.ok()) return s;
  if (auto s = source.Save(**w, 0, round + 1); !s.ok()) return s;
  if (auto s = (*w)->Finish(); !s.ok()) return s;
  return sink.bytes();
}

TEST(EmulatedAgentTest, LiveMigrationWithTheWorkloadRunning) {
  auto src = StartSource("live-src", "16M", 0);
  ASSERT_TRUE(src.ok()) << src.status();
  auto guest = GuestClient::Connect(src->process->socket_path());
  ASSERT_TRUE(guest.ok());
  WorkloadOptions wo;
  wo.pages_per_second = 4000;  // 16 MB/s of counter writes
  auto workload = Workload::Start(guest->get(), wo);
  ASSERT_TRUE(workload.ok()) << workload.status();
  std::atomic<bool> stop{false};
  absl::Status run_status;
  std::thread runner([&] { run_status = (*workload)->Run(&stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  auto image = MigrateLive(*src->agent, 8, 256 << 10, nullptr);
  ASSERT_TRUE(image.ok()) << image.status();
  // The source is stopped: its VRAM must not change any more.
  auto layout = WorkloadLayout::For(16 << 20);
  ASSERT_TRUE(layout.ok());
  DeviceControl& sdc = DeviceOf(*src->agent);
  auto frozen = CheckCounters(sdc.vram(), *layout);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  uint64_t frozen_sum = XXH3_64bits(sdc.vram().data(), sdc.vram().size());

  auto dst = StartDestination("live-dst", "16M", *src->agent);
  ASSERT_TRUE(dst.ok()) << dst.status();
  ASSERT_TRUE(Receive(*dst->agent, *image).ok());
  ASSERT_TRUE(src->agent->TransitionTo(State::kReleased).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(XXH3_64bits(sdc.vram().data(), sdc.vram().size()), frozen_sum)
      << "the stopped source's VRAM changed";

  // The destination holds the stopped source's counters, plus whatever the
  // commands still queued in the ring (they travel with it) have written
  // since it started running: never less, at most a ring's worth more...
  DeviceControl& ddc = DeviceOf(*dst->agent);
  auto moved = CheckCounters(ddc.vram(), *layout);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_TRUE(CheckProgress(*frozen, *moved, false).ok())
      << "the destination is behind the stopped source";
  EXPECT_LE(moved->Total(*layout) - frozen->Total(*layout), kRingCapacity);
  EXPECT_GT(moved->Total(*layout), 0u);

  // ...and a workload there carries on from them.
  auto dguest = GuestClient::Connect(dst->process->socket_path());
  ASSERT_TRUE(dguest.ok());
  WorkloadOptions more;
  more.max_pages = 3000;
  auto dwork = Workload::Start(dguest->get(), more);
  ASSERT_TRUE(dwork.ok()) << dwork.status();
  ASSERT_TRUE((*dwork)->Run().ok());
  auto later = CheckCounters(ddc.vram(), *layout);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_TRUE(CheckProgress(*moved, *later, /*require_progress=*/true).ok());
  EXPECT_EQ(later->Total(*layout), moved->Total(*layout) + 3000);

  // The source's workload is blocked on a stopped device; end it.
  stop = true;
  src->process.reset();
  runner.join();
}

// Pre-copy reads VRAM while the guest writes it. A chunk whose bytes change
// between the encoder's checksum and its compression would reach the
// destination as damage (DATA_LOSS) and fail the migration: every chunk of
// every round must verify however busy the guest is.
TEST(EmulatedAgentTest, PreCopyUnderAFullSpeedGuestNeverTearsAChunk) {
  auto src = StartSource("tear-src", "16M", 0);
  ASSERT_TRUE(src.ok()) << src.status();
  auto guest = GuestClient::Connect(src->process->socket_path());
  ASSERT_TRUE(guest.ok());
  WorkloadOptions wo;
  wo.pages_per_second = 0;     // as fast as the engine goes
  wo.frame_every_pages = 64;   // and big FILL/BLIT writes often
  auto workload = Workload::Start(guest->get(), wo);
  ASSERT_TRUE(workload.ok()) << workload.status();
  std::atomic<bool> stop{false};
  absl::Status run_status;
  std::thread runner([&] { run_status = (*workload)->Run(&stop); });

  codec::Manifest m;
  m.mutable_root().initDevices(1)[0].setDescriptor(
      src->agent->descriptor().root());
  codec::MemorySink sink;
  codec::WriterOptions opts;
  opts.chunk_size = 4096;  // many small chunks: many chances to tear
  auto w = codec::ImageWriter::Create(&sink, m, opts);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(src->agent->TransitionTo(State::kPreCopy).ok());
  for (uint32_t round = 0; round < 30; ++round) {
    ASSERT_TRUE(src->agent->Save(**w, 0, round).ok());
  }
  ASSERT_TRUE(src->agent->TransitionTo(State::kRunning).ok());
  stop = true;
  runner.join();
  ASSERT_TRUE((*w)->Finish().ok());

  codec::MemorySource in(sink.bytes(), "pre-copy image");
  auto reader = codec::ImageReader::Open(&in);
  ASSERT_TRUE(reader.ok()) << reader.status();
  int sections = 0;
  while (true) {
    auto next = (*reader)->NextSection();
    ASSERT_TRUE(next.ok()) << next.status();
    if (!next->has_value()) break;
    absl::Status verified = (*reader)->SkipSection(/*verify=*/true);
    ASSERT_TRUE(verified.ok()) << verified;
    ++sections;
  }
  EXPECT_GE(sections, 2) << "the guest dirtied nothing between rounds";
}

TEST(EmulatedAgentTest, PreCopyConvergesUnderASteadyDirtyRate) {
  auto src = StartSource("conv-src", "64M", 0);
  ASSERT_TRUE(src.ok()) << src.status();
  auto guest = GuestClient::Connect(src->process->socket_path());
  ASSERT_TRUE(guest.ok());
  WorkloadOptions wo;
  wo.pages_per_second = 1000;  // 4 MB/s against 64 MiB of VRAM
  auto workload = Workload::Start(guest->get(), wo);
  ASSERT_TRUE(workload.ok());
  std::atomic<bool> stop{false};
  std::thread runner([&] { (void)(*workload)->Run(&stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  std::vector<uint64_t> left;
  auto image = MigrateLive(*src->agent, 20, 1 << 20, &left);
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_FALSE(left.empty());
  // After the 64 MiB initial pass, each round only carries what the guest
  // dirtied meanwhile (about 4 MB/s * round time), so it converges.
  EXPECT_LT(left.back(), 1u << 20) << "no convergence in " << left.size()
                                   << " rounds";
  EXPECT_LE(left.size(), 10u);
  stop = true;
  ASSERT_TRUE(src->agent->TransitionTo(State::kRunning).ok());  // abort
  runner.join();
}

TEST(EmulatedAgentTest, MismatchedDeviceAndSectionsAreRefusedBeforeApplying) {
  auto src = StartSource("mm-src", "4M", 200);
  ASSERT_TRUE(src.ok()) << src.status();
  // Another VRAM size: refused when the destination agent is made.
  auto wrong = StartDestination("mm-wrong", "8M", *src->agent);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong.status().message(), HasSubstr("cannot take"));

  auto dst = StartDestination("mm-dst", "4M", *src->agent);
  ASSERT_TRUE(dst.ok());
  DeviceControl& ddc = DeviceOf(*dst->agent);
  auto zeros = [&] {
    for (uint8_t b : ddc.vram()) {
      if (b != 0) return false;
    }
    return true;
  };
  ASSERT_TRUE(zeros());

  // A VRAM section of another size.
  {
    codec::Manifest m;
    m.mutable_root().initDevices(1)[0].setDescriptor(
        src->agent->descriptor().root());
    codec::MemorySink sink;
    auto w = codec::ImageWriter::Create(&sink, m, {});
    ASSERT_TRUE(w.ok());
    codec::SectionHeader h;
    auto r = h.mutable_root();
    r.setName("vram");
    r.setDeclaredBytes(4096);
    auto region = r.initMemoryRegion();
    region.setPageSize(4096);
    region.setTotalPages(2048);  // 8 MiB
    auto pr = region.initPresentRanges(1)[0];
    pr.setFirst(0);
    pr.setCount(1);
    std::vector<uint8_t> page(4096, 0xAB);
    ASSERT_TRUE((*w)->AddSection(h, page).ok());
    ASSERT_TRUE((*w)->Finish().ok());
    absl::Status s = Receive(*dst->agent, sink.bytes());
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("another memory"));
    EXPECT_TRUE(zeros()) << "a refused section reached VRAM";
    ASSERT_TRUE(dst->agent->TransitionTo(State::kPrepared).ok());
  }

  // A ring whose blob is malformed (valid image checksums, bad contents):
  // the activation fails, the destination falls back to PREPARED, and
  // nothing of the loaded VRAM survives.
  auto image = MigrateLive(*src->agent, 1, UINT64_MAX, nullptr);
  ASSERT_TRUE(image.ok()) << image.status();
  codec::MemorySource in(*image);
  auto reader = codec::ImageReader::Open(&in);
  ASSERT_TRUE(reader.ok());
  codec::MemorySink tampered;
  auto w = codec::ImageWriter::Create(&tampered, (*reader)->manifest(), {});
  ASSERT_TRUE(w.ok());
  for (;;) {
    auto next = (*reader)->NextSection();
    ASSERT_TRUE(next.ok());
    if (!next->has_value()) break;
    auto data = (*reader)->ReadSection(1 << 30);
    ASSERT_TRUE(data.ok());
    if ((**next).root().getName() == "ring" && data->size() > 8) {
      (*data)[4] ^= 0xFF;  // inside the blob's header
    }
    ASSERT_TRUE((*w)->AddSection(**next, *data).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
  absl::Status s = Receive(*dst->agent, tampered.bytes());
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(dst->agent->state(), State::kPrepared);
  EXPECT_TRUE(zeros()) << "VRAM of a failed activation survived";
  // The intact image still goes in afterwards.
  ASSERT_TRUE(Receive(*dst->agent, *image).ok());
  EXPECT_EQ(*DeviceFingerprint(*dst->agent), *DeviceFingerprint(*src->agent));
}

}  // namespace
}  // namespace vgpu::agents::emulated
