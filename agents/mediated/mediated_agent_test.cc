// The mediated agent over the reference mediated vGPU: the contract kit,
// then what is particular to VFIO: pre-copy converging while contexts run,
// context images as sections, damaged context images, recovery after an
// injected ERROR, several vGPUs of one VM through the P2P states, drivers
// without PRE_COPY, and opaque vendor streams.
#include "agents/mediated/mediated_agent.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "agents/mediated/reference_device.h"
#include "agents/testing/contract_kit.h"

namespace vgpu::agents::mediated {
namespace {

using ::testing::HasSubstr;
using agents::testing::AgentContractTest;
using agents::testing::AgentHarness;
using agents::testing::Migrate;
using agents::testing::Receive;

RefVgpuConfig Config(const std::string& name, uint64_t vram = 4 << 20) {
  RefVgpuConfig c;
  c.name = name;
  c.contexts = 4;
  c.vram_bytes = vram;
  c.guest_memory_bytes = 1 << 20;
  return c;
}

absl::Status Stamps(RefVgpu& d, int per_context, uint64_t salt) {
  for (int i = 0; i < per_context; ++i) {
    for (uint32_t c = 0; c < 4; ++c) {
      RefCommand cmd;
      cmd.op = RefCommand::kStamp;
      cmd.arg1 = c + 4 * ((salt * 131 + i * 7) % 200);
      if (auto s = d.Submit(c, cmd); !s.ok()) return s;
    }
  }
  d.WaitIdle();
  return absl::OkStatus();
}

class MediatedHarness : public AgentHarness {
 public:
  std::string name() const override { return "mediated"; }
  absl::StatusOr<std::unique_ptr<Agent>> MakeSource() override {
    auto dev = RefVgpu::Create(Config(absl::StrCat("src", devices_.size())));
    if (!dev.ok()) return dev.status();
    if (auto s = Stamps(**dev, 20, 1); !s.ok()) return s;
    auto agent = NewMediatedSource(dev->get(), RefInfo((*dev)->config()));
    if (!agent.ok()) return agent.status();
    devices_[agent->get()] = std::move(*dev);
    return agent;
  }
  absl::StatusOr<std::unique_ptr<Agent>> MakeDestination(
      const Agent& source) override {
    auto dev = RefVgpu::Create(Config(absl::StrCat("dst", devices_.size())));
    if (!dev.ok()) return dev.status();
    auto agent = NewMediatedDestination(
        dev->get(), RefInfo((*dev)->config()), source.descriptor());
    if (!agent.ok()) return agent.status();
    devices_[agent->get()] = std::move(*dev);
    return agent;
  }
  absl::Status Mutate(Agent& source) override {
    return Stamps(*devices_.at(&source), 3, ++salt_);
  }
  absl::StatusOr<std::string> Fingerprint(Agent& agent) override {
    return devices_.at(&agent)->Fingerprint();
  }
  absl::Status CheckRunning(Agent& agent) override {
    RefCommand nop;
    return devices_.at(&agent)->Submit(0, nop);
  }

 private:
  std::map<const Agent*, std::unique_ptr<RefVgpu>> devices_;
  uint64_t salt_ = 0;
};

INSTANTIATE_TEST_SUITE_P(
    Mediated, AgentContractTest,
    ::testing::Values(agents::testing::HarnessFactory(
        [] { return std::make_unique<MediatedHarness>(); })));

// Section names, kinds and context ids of an image.
std::vector<std::string> Sections(const std::vector<uint8_t>& image) {
  codec::MemorySource src(image, "image");
  auto reader = codec::ImageReader::Open(&src);
  EXPECT_TRUE(reader.ok());
  std::vector<std::string> out;
  for (;;) {
    auto next = (*reader)->NextSection();
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !next->has_value()) break;
    auto h = (**next).root();
    std::string d = absl::StrCat(h.getName().cStr(), "/",
                                 codec::SectionKindName(h.which()));
    if (h.isContextImage()) {
      absl::StrAppend(&d, "/", h.getContextImage().getContextId());
    }
    out.push_back(d);
  }
  return out;
}

TEST(MediatedAgent, ContextImagesAndVramBecomeSections) {
  MediatedHarness h;
  auto src = h.MakeSource();
  ASSERT_TRUE(src.ok()) << src.status();
  auto want = h.Fingerprint(**src);
  auto image = Migrate(h, **src, 2);
  ASSERT_TRUE(image.ok()) << image.status();
  std::vector<std::string> s = Sections(*image);
  EXPECT_EQ(s.front(), "mdev/vendor-blob");
  EXPECT_EQ(s.back(), "end/vendor-blob");
  for (int c = 0; c < 4; ++c) {
    EXPECT_THAT(s, ::testing::Contains(absl::StrCat("ctx", c,
                                                    "/context-image/", c)));
  }
  EXPECT_THAT(s, ::testing::Contains("vram/memory-region"));
  auto dst = h.MakeDestination(**src);
  ASSERT_TRUE(dst.ok()) << dst.status();
  ASSERT_TRUE(Receive(**dst, *image).ok());
  EXPECT_EQ(*h.Fingerprint(**dst), *h.Fingerprint(**src));
  EXPECT_NE(*h.Fingerprint(**dst), *want) << "rounds mutated the source";
}

// Copies an image, letting `edit` change a section's data on the way; the
// copy's own checksums are right, so only the device can notice.
std::vector<uint8_t> Rewrite(
    const std::vector<uint8_t>& image,
    const std::function<void(const std::string&, std::vector<uint8_t>&)>&
        edit) {
  codec::MemorySource src(image, "image");
  auto reader = codec::ImageReader::Open(&src);
  EXPECT_TRUE(reader.ok());
  codec::MemorySink sink;
  auto writer = codec::ImageWriter::Create(&sink, (*reader)->manifest(), {});
  EXPECT_TRUE(writer.ok());
  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok() || !next->has_value()) break;
    auto data = (*reader)->ReadSection(1ull << 30);
    EXPECT_TRUE(data.ok());
    edit((**next).root().getName().cStr(), *data);
    codec::SectionHeader h;
    h.builder().setRoot((**next).root());
    if (!h.root().isMemoryRegion()) h.mutable_root().setDeclaredBytes(data->size());
    auto added = (*writer)->AddSection(h, *data);
    EXPECT_TRUE(added.ok()) << added.status();
  }
  EXPECT_TRUE((*writer)->Finish().ok());
  return sink.bytes();
}

TEST(MediatedAgent, DamagedContextImagesAreRefused) {
  MediatedHarness h;
  auto src = h.MakeSource();
  ASSERT_TRUE(src.ok());
  auto image = Migrate(h, **src, 1);
  ASSERT_TRUE(image.ok());
  struct Case {
    const char* what;
    std::function<void(const std::string&, std::vector<uint8_t>&)> edit;
    const char* message;
  };
  const Case cases[] = {
      {"flipped byte", [](const std::string& n, std::vector<uint8_t>& d) {
         if (n == "ctx1") d[600] ^= 4;
       }, "checksum mismatch"},
      {"truncated", [](const std::string& n, std::vector<uint8_t>& d) {
         if (n == "ctx2") d.resize(d.size() - 9);
       }, "record"},
      {"another context's image", [](const std::string& n,
                                     std::vector<uint8_t>& d) {
         static std::vector<uint8_t> ctx0;
         if (n == "ctx0") ctx0 = d;
         if (n == "ctx3") d = ctx0;
       }, "context record 0"},
      {"image of another length", [](const std::string& n,
                                     std::vector<uint8_t>& d) {
         if (n == "mdev") d[16] += 1;
       }, "record"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto dst = h.MakeDestination(**src);
    ASSERT_TRUE(dst.ok());
    absl::Status s = Receive(**dst, Rewrite(*image, c.edit));
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
    EXPECT_NE((*dst)->state(), State::kRunning);
    // The coordinator aborts: back to PREPARED, and a good image loads.
    if ((*dst)->state() == State::kResuming) {
      ASSERT_TRUE((*dst)->TransitionTo(State::kPrepared).ok());
    }
    ASSERT_EQ((*dst)->state(), State::kPrepared);
    ASSERT_TRUE(Receive(**dst, *image).ok());
    EXPECT_EQ(*h.Fingerprint(**dst), *h.Fingerprint(**src));
  }
}

TEST(MediatedAgent, PrecopyConvergesWhileContextsRun) {
  RefVgpuConfig cfg = Config("busy", 64 << 20);
  auto dev = RefVgpu::Create(cfg);
  ASSERT_TRUE(dev.ok());
  // Stamp half the VRAM share first, so the initial pass has weight.
  for (uint64_t p = 0; p < 8192; ++p) {
    RefCommand stamp;
    stamp.op = RefCommand::kStamp;
    stamp.arg1 = p;
    while (!(*dev)->Submit(static_cast<uint32_t>(p % 4), stamp).ok()) {
      (*dev)->WaitIdle();
    }
  }
  (*dev)->WaitIdle();
  auto agent = NewMediatedSource(dev->get(), RefInfo(cfg));
  ASSERT_TRUE(agent.ok());
  RefWorkload work(dev->get(), 16 << 20, 7);  // 16 MiB/s of stamps
  ASSERT_TRUE((*agent)->TransitionTo(State::kPreCopy).ok());
  codec::Manifest m;
  m.mutable_root().initVm().setName("vm");
  m.mutable_root().initDevices(1)[0].setDescriptor((*agent)->descriptor().root());
  codec::MemorySink sink;
  auto writer = codec::ImageWriter::Create(&sink, m, {});
  ASSERT_TRUE(writer.ok());
  auto first = (*agent)->Pending();
  ASSERT_TRUE(first.ok());
  EXPECT_GT(first->initial, 8u << 20);
  uint64_t last = first->total();
  int round = 0;
  for (; round < 10; ++round) {
    ASSERT_TRUE((*agent)->Save(**writer, 0, round).ok());
    auto p = (*agent)->Pending();
    ASSERT_TRUE(p.ok());
    last = p->total();
    EXPECT_GT(last, 0u) << "never zero while the device runs";
    if (last < (2u << 20)) break;
  }
  EXPECT_LT(last, 2u << 20) << "after " << round << " rounds";
  EXPECT_LT(last, first->total() / 4);
  ASSERT_TRUE(TransitionGroup({agent->get()}, State::kStopCopy).ok());
  work.Stop();
  const std::string stopped = (*dev)->Fingerprint();
  ASSERT_TRUE((*agent)->Save(**writer, 0, round + 1).ok());
  EXPECT_EQ((*(*agent)->Pending()).total(), 0u);
  ASSERT_TRUE((*writer)->Finish().ok());
  auto dst_dev = RefVgpu::Create(Config("busy-dst", 64 << 20));
  ASSERT_TRUE(dst_dev.ok());
  auto dst = NewMediatedDestination(dst_dev->get(), RefInfo(cfg),
                                    (*agent)->descriptor());
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(Receive(**dst, sink.bytes()).ok());
  (*dst_dev)->WaitIdle();
  EXPECT_TRUE((*dst_dev)->CheckStamps().ok()) << (*dst_dev)->CheckStamps();
  // The source was idle when it stopped only if its rings were empty; the
  // destination ran whatever was queued, so compare once both are idle.
  if ((*dst_dev)->executed() == 0) {
    EXPECT_EQ((*dst_dev)->Fingerprint(), stopped);
  }
}

// Records the VFIO state changes of several devices in one log.
class LoggedDevice : public VfioDevice {
 public:
  LoggedDevice(RefVgpu* dev, std::vector<std::string>* log, std::mutex* mu)
      : dev_(dev), log_(log), mu_(mu) {}
  const std::string& name() const override { return dev_->name(); }
  absl::StatusOr<uint64_t> MigrationFlags() override {
    return dev_->MigrationFlags();
  }
  absl::StatusOr<MigState> GetState() override { return dev_->GetState(); }
  absl::StatusOr<std::unique_ptr<DataStream>> SetState(MigState t) override {
    {
      std::lock_guard<std::mutex> lock(*mu_);
      log_->push_back(absl::StrCat(dev_->name(), ":", MigStateName(t)));
    }
    return dev_->SetState(t);
  }
  absl::StatusOr<uint64_t> StopCopyBytes() override {
    return dev_->StopCopyBytes();
  }
  absl::Status Reset() override { return dev_->Reset(); }
  absl::StatusOr<uint64_t> DmaLoggingStart(absl::Span<const DmaRange> r,
                                           uint64_t p) override {
    return dev_->DmaLoggingStart(r, p);
  }
  absl::Status DmaLoggingStop() override { return dev_->DmaLoggingStop(); }
  absl::Status DmaLoggingReport(uint64_t i, uint64_t l, uint64_t p,
                                absl::Span<uint64_t> b) override {
    return dev_->DmaLoggingReport(i, l, p, b);
  }

 private:
  RefVgpu* dev_;
  std::vector<std::string>* log_;
  std::mutex* mu_;
};

TEST(MediatedAgent, SeveralVgpusOfOneVmStopAndStartTogetherThroughP2p) {
  std::vector<std::string> log;
  std::mutex mu;
  std::vector<std::unique_ptr<RefVgpu>> devs;
  std::vector<std::unique_ptr<LoggedDevice>> logged;
  std::vector<std::unique_ptr<Agent>> src, dst;
  for (int i = 0; i < 3; ++i) {
    devs.push_back(*RefVgpu::Create(Config(absl::StrCat("a", i))));
    ASSERT_TRUE(Stamps(*devs.back(), 10 + i, i).ok());
    logged.push_back(std::make_unique<LoggedDevice>(devs.back().get(), &log, &mu));
    src.push_back(*NewMediatedSource(logged.back().get(),
                                     RefInfo(devs.back()->config())));
    devs.push_back(*RefVgpu::Create(Config(absl::StrCat("b", i))));
    logged.push_back(std::make_unique<LoggedDevice>(devs.back().get(), &log, &mu));
    dst.push_back(*NewMediatedDestination(logged.back().get(),
                                          RefInfo(devs.back()->config()),
                                          src.back()->descriptor()));
  }
  // Device a1 has a peer write queued: it must not run once P2P is quiesced.
  RefCommand peer;
  peer.op = RefCommand::kPeerWrite;
  peer.arg2 = 1;
  std::vector<Agent*> sources, targets;
  for (auto& a : src) {
    ASSERT_TRUE(a->TransitionTo(State::kPreCopy).ok());
    sources.push_back(a.get());
  }
  for (auto& a : dst) targets.push_back(a.get());
  codec::Manifest m;
  auto devices = m.mutable_root().initDevices(3);
  for (int i = 0; i < 3; ++i) {
    devices[i].setIndex(i);
    devices[i].setDescriptor(src[i]->descriptor().root());
  }
  codec::MemorySink sink;
  auto writer = codec::ImageWriter::Create(&sink, m, {});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(src[i]->Save(**writer, i, 0).ok());
  log.clear();
  ASSERT_TRUE(TransitionGroup(sources, State::kStopCopy).ok());
  EXPECT_EQ(log, (std::vector<std::string>{
                     "a0:PRE_COPY_P2P", "a1:PRE_COPY_P2P", "a2:PRE_COPY_P2P",
                     "a0:STOP_COPY", "a1:STOP_COPY", "a2:STOP_COPY"}));
  std::vector<std::string> want;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(src[i]->Save(**writer, i, 1).ok());
    want.push_back(devs[2 * i]->Fingerprint());
  }
  ASSERT_TRUE((*writer)->Finish().ok());

  for (auto& a : dst) ASSERT_TRUE(a->TransitionTo(State::kResuming).ok());
  codec::MemorySource in(sink.bytes(), "vm image");
  auto reader = codec::ImageReader::Open(&in);
  for (;;) {
    auto next = (*reader)->NextSection();
    ASSERT_TRUE(next.ok());
    if (!next->has_value()) break;
    ASSERT_TRUE(dst[(**next).root().getDevice()]->Load(**next, **reader).ok());
  }
  log.clear();
  ASSERT_TRUE(TransitionGroup(targets, State::kRunning).ok());
  EXPECT_EQ(log, (std::vector<std::string>{
                     "b0:RUNNING_P2P", "b1:RUNNING_P2P", "b2:RUNNING_P2P",
                     "b0:RUNNING", "b1:RUNNING", "b2:RUNNING"}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(devs[2 * i + 1]->Fingerprint(), want[i]) << i;
    ASSERT_TRUE(src[i]->TransitionTo(State::kReleased).ok());
  }
}

// A whole image of `a` (RUNNING): one pre-copy round, then stop-copy.
absl::StatusOr<std::vector<uint8_t>> Image(Agent& a) {
  codec::Manifest m;
  m.mutable_root().initDevices(1)[0].setDescriptor(a.descriptor().root());
  codec::MemorySink sink;
  auto writer = codec::ImageWriter::Create(&sink, m, {});
  if (!writer.ok()) return writer.status();
  if (auto s = a.TransitionTo(State::kPreCopy); !s.ok()) return s;
  if (auto s = a.Save(**writer, 0, 0); !s.ok()) return s;
  if (auto s = TransitionGroup({&a}, State::kStopCopy); !s.ok()) return s;
  if (auto s = a.Save(**writer, 0, 1); !s.ok()) return s;
  if (auto s = (*writer)->Finish(); !s.ok()) return s;
  return sink.bytes();
}

TEST(MediatedAgent, InjectedErrorIsRecoveredAndARetryWorks) {
  auto src_dev = RefVgpu::Create(Config("s"));
  ASSERT_TRUE(Stamps(**src_dev, 5, 1).ok());
  auto src = NewMediatedSource(src_dev->get(), RefInfo((*src_dev)->config()));
  ASSERT_TRUE(src.ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kPreCopy).ok());
  (*src_dev)->InjectArcFault(MigState::kPreCopyP2p, MigState::kStopCopy);
  absl::Status s = TransitionGroup({src->get()}, State::kStopCopy);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("injected fault"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("state was lost"));
  // QEMU's last resort: the device was reset and runs again.
  EXPECT_EQ((*src)->state(), State::kRunning);
  EXPECT_EQ(*(*src_dev)->GetState(), MigState::kRunning);
  // A recovery that needs no reset keeps the state: fail entering P2P
  // from PRE_COPY, and the device goes back to RUNNING untouched.
  ASSERT_TRUE(Stamps(**src_dev, 5, 2).ok());
  const std::string before = (*src_dev)->Fingerprint();
  ASSERT_TRUE((*src)->TransitionTo(State::kPreCopy).ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kRunning).ok());
  EXPECT_EQ((*src_dev)->Fingerprint(), before);

  // A fault on the destination's final check leaves it PREPARED; a
  // fault-free retry then lands the whole state.
  auto image = Image(**src);
  ASSERT_TRUE(image.ok()) << image.status();
  const std::string want = (*src_dev)->Fingerprint();
  auto dst_dev = RefVgpu::Create(Config("d"));
  auto dst = NewMediatedDestination(dst_dev->get(),
                                    RefInfo((*dst_dev)->config()),
                                    (*src)->descriptor());
  ASSERT_TRUE(dst.ok());
  (*dst_dev)->InjectArcFault(MigState::kResuming, MigState::kStop);
  s = Receive(**dst, *image);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("injected fault"));
  // The device was reset to STOP at once; the coordinator's abort then
  // takes the agent back to PREPARED.
  EXPECT_EQ(*(*dst_dev)->GetState(), MigState::kStop);
  ASSERT_EQ((*dst)->state(), State::kResuming);
  ASSERT_TRUE((*dst)->TransitionTo(State::kPrepared).ok());
  EXPECT_EQ(*(*dst_dev)->GetState(), MigState::kStop);
  ASSERT_TRUE(Receive(**dst, *image).ok());
  EXPECT_EQ((*dst_dev)->Fingerprint(), want);
  // The source, still in STOP_COPY, is released.
  ASSERT_TRUE((*src)->TransitionTo(State::kReleased).ok());
  EXPECT_EQ(*(*src_dev)->GetState(), MigState::kStop);
}

TEST(MediatedAgent, DriverWithoutPrecopySendsEverythingAtStop) {
  RefVgpuConfig cfg = Config("plain");
  cfg.migration_flags = kMigFlagStopCopy;
  auto dev = RefVgpu::Create(cfg);
  ASSERT_TRUE(Stamps(**dev, 8, 3).ok());
  auto src = NewMediatedSource(dev->get(), RefInfo(cfg));
  ASSERT_TRUE(src.ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kPreCopy).ok());
  auto p = (*src)->Pending();
  ASSERT_TRUE(p.ok());
  EXPECT_GT(p->initial, 32u * 4096) << "pessimistic: everything";
  auto image = Image(**src);
  // Image() starts from RUNNING; this agent is in PRE_COPY already.
  EXPECT_FALSE(image.ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kRunning).ok());
  image = Image(**src);
  ASSERT_TRUE(image.ok()) << image.status();
  const std::string want = (*dev)->Fingerprint();
  RefVgpuConfig dcfg = cfg;
  dcfg.name = "plain-dst";
  auto ddev = RefVgpu::Create(dcfg);
  auto dst = NewMediatedDestination(ddev->get(), RefInfo(dcfg),
                                    (*src)->descriptor());
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(Receive(**dst, *image).ok());
  EXPECT_EQ((*ddev)->Fingerprint(), want);
}

TEST(MediatedAgent, OpaqueVendorStreamsTravelInOrder) {
  RefVgpuConfig cfg = Config("opaque");
  auto dev = RefVgpu::Create(cfg);
  ASSERT_TRUE(Stamps(**dev, 8, 4).ok());
  MediatedInfo info = RefInfo(cfg);
  info.vendor = "acme";
  info.stream_format.clear();  // as for a vendor this agent cannot read
  auto src = NewMediatedSource(dev->get(), info);
  ASSERT_TRUE(src.ok());
  auto image = Image(**src);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(Sections(*image),
            (std::vector<std::string>{"vfio.r0/vendor-blob",
                                      "vfio.r1/vendor-blob"}));
  const std::string want = (*dev)->Fingerprint();
  RefVgpuConfig dcfg = cfg;
  dcfg.name = "opaque-dst";
  auto ddev = RefVgpu::Create(dcfg);
  auto dst = NewMediatedDestination(ddev->get(), info, (*src)->descriptor());
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(Receive(**dst, *image).ok());
  EXPECT_EQ((*ddev)->Fingerprint(), want);
  // A reference-format destination refuses an opaque source.
  auto other = RefVgpu::Create(Config("x"));
  EXPECT_FALSE(NewMediatedDestination(other->get(), RefInfo(cfg),
                                      (*src)->descriptor())
                   .ok());
}

TEST(MediatedAgent, NoMigrationSupportIsSaidUpFront) {
  RefVgpuConfig cfg = Config("busy");
  auto dev = RefVgpu::Create(cfg);
  ASSERT_TRUE((*dev)->SetState(MigState::kStop).ok());
  auto src = NewMediatedSource(dev->get(), RefInfo(cfg));
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("not RUNNING"));
}

}  // namespace
}  // namespace vgpu::agents::mediated
