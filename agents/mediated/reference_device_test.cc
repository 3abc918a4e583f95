// The reference mediated vGPU against the VFIO migration v2 semantics: every
// arc valid and invalid, the data session's reads and writes, precopy info,
// damaged streams, injected faults, P2P quiescence and DMA logging.
#include "agents/mediated/reference_device.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "agents/mediated/internal/stream_format.h"

namespace vgpu::agents::mediated {
namespace {

using S = MigState;

RefVgpuConfig SmallConfig(const std::string& name = "ref0") {
  RefVgpuConfig c;
  c.name = name;
  c.contexts = 4;
  c.vram_bytes = 4 << 20;
  c.guest_memory_bytes = 1 << 20;
  return c;
}

std::unique_ptr<RefVgpu> MakeDevice(const RefVgpuConfig& c = SmallConfig()) {
  auto d = RefVgpu::Create(c);
  EXPECT_TRUE(d.ok()) << d.status();
  return std::move(*d);
}

void Stamp(RefVgpu& d, uint32_t ctx, uint64_t page) {
  RefCommand c;
  c.op = RefCommand::kStamp;
  c.arg1 = page;
  ASSERT_TRUE(d.Submit(ctx, c).ok());
}

// Some work on every context, then idle.
void Work(RefVgpu& d, int n, uint64_t first_page = 0) {
  for (int i = 0; i < n; ++i) {
    for (uint32_t c = 0; c < 4; ++c) Stamp(d, c, first_page + c + 4 * i);
  }
  d.WaitIdle();
}

std::vector<uint8_t> ReadAll(DataStream& s, bool until_eof) {
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(100000);
  for (;;) {
    auto n = s.Read(absl::MakeSpan(buf));
    if (!n.ok()) {
      EXPECT_EQ(ErrnoOf(n.status()), ENOMSG) << n.status();
      EXPECT_FALSE(until_eof) << "ENOMSG in STOP_COPY";
      break;
    }
    if (*n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + *n);
  }
  return out;
}

absl::Status WriteInPieces(DataStream& s, const std::vector<uint8_t>& bytes,
                           size_t piece) {
  for (size_t o = 0; o < bytes.size(); o += piece) {
    const size_t n = std::min(piece, bytes.size() - o);
    if (auto st = s.Write(absl::MakeConstSpan(bytes).subspan(o, n)); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

// Saves `src` with STOP_COPY only and returns the stream.
std::vector<uint8_t> SaveStopped(RefVgpu& src) {
  auto s = src.SetState(S::kStopCopy);
  EXPECT_TRUE(s.ok()) << s.status();
  EXPECT_NE(*s, nullptr);
  std::vector<uint8_t> bytes = ReadAll(**s, true);
  // End of stream stays end of stream.
  std::vector<uint8_t> buf(16);
  auto again = (*s)->Read(absl::MakeSpan(buf));
  EXPECT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
  return bytes;
}

absl::Status Load(RefVgpu& dst, const std::vector<uint8_t>& bytes,
                  size_t piece = 4099) {
  if (auto s = dst.SetState(S::kStop); !s.ok()) return s.status();
  auto r = dst.SetState(S::kResuming);
  if (!r.ok()) return r.status();
  if (*r == nullptr) return absl::InternalError("no session");
  if (auto s = WriteInPieces(**r, bytes, piece); !s.ok()) return s;
  return dst.SetState(S::kRunning).status();
}

TEST(RefVgpu, RunsCommandsAndKeepsTheStampInvariant) {
  auto d = MakeDevice();
  Work(*d, 50);
  EXPECT_EQ(d->executed(), 200u);
  EXPECT_EQ(d->Register(2, 0), 50u);
  EXPECT_TRUE(d->CheckStamps().ok()) << d->CheckStamps();
}

TEST(RefVgpu, StopCopyRoundTripCarriesEverything) {
  auto src = MakeDevice();
  Work(*src, 100);
  // Queue work that will only run on the destination.
  ASSERT_TRUE(src->SetState(S::kRunningP2p).ok());
  RefCommand peer;
  peer.op = RefCommand::kPeerWrite;
  peer.arg2 = 5;
  ASSERT_TRUE(src->Submit(1, peer).ok());
  Stamp(*src, 1, 1 + 4 * 200);
  src->WaitIdle();
  const std::string before = src->Fingerprint();
  std::vector<uint8_t> bytes = SaveStopped(*src);
  EXPECT_EQ(src->Fingerprint(), before) << "saving changed the source";

  auto dst = MakeDevice(SmallConfig("ref1"));
  ASSERT_TRUE(Load(*dst, bytes).ok());
  dst->WaitIdle();
  // The queued peer write and stamp ran on the destination.
  EXPECT_EQ(dst->Register(1, 2), 5u);
  EXPECT_EQ(dst->Register(1, 0), 101u);
  EXPECT_TRUE(dst->CheckStamps().ok()) << dst->CheckStamps();
  // Without the queued commands the two would match exactly.
  auto src2 = MakeDevice();
  Work(*src2, 10);
  const std::string fp = src2->Fingerprint();
  auto dst2 = MakeDevice(SmallConfig("ref2"));
  ASSERT_TRUE(Load(*dst2, SaveStopped(*src2), 1).ok());
  EXPECT_EQ(dst2->Fingerprint(), fp);
}

TEST(RefVgpu, PrecopyInfoShrinksAndGrows) {
  auto d = MakeDevice();
  Work(*d, 20);
  auto s = d->SetState(S::kPreCopy);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_NE(*s, nullptr);
  auto info0 = (*s)->GetPrecopyInfo();
  ASSERT_TRUE(info0.ok());
  EXPECT_GT(info0->initial_bytes, 80u * 4096);
  EXPECT_EQ(info0->dirty_bytes, 0u);
  std::vector<uint8_t> buf(64 << 10);
  ASSERT_TRUE((*s)->Read(absl::MakeSpan(buf)).ok());
  auto info1 = (*s)->GetPrecopyInfo();
  EXPECT_LT(info1->initial_bytes, info0->initial_bytes);
  std::vector<uint8_t> round0 = ReadAll(**s, false);
  auto info2 = (*s)->GetPrecopyInfo();
  EXPECT_EQ(info2->initial_bytes, 0u);
  EXPECT_EQ(info2->dirty_bytes, 0u);
  // ENOMSG at the temporary end of stream.
  auto none = (*s)->Read(absl::MakeSpan(buf));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(ErrnoOf(none.status()), ENOMSG);
  // The guest dirties pages: dirty bytes grow by at least those pages.
  Work(*d, 5, 400);
  auto info3 = (*s)->GetPrecopyInfo();
  EXPECT_GE(info3->dirty_bytes, 20u * 4096);
  auto size = d->StopCopyBytes();
  ASSERT_TRUE(size.ok());
  EXPECT_GE(*size, info3->dirty_bytes);
  // Outside PRE_COPY the ioctl is refused.
  ASSERT_TRUE(d->SetState(S::kPreCopyP2p).ok());
  EXPECT_TRUE((*s)->GetPrecopyInfo().ok());
  auto same = d->SetState(S::kStopCopy);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, nullptr) << "PRE_COPY_P2P -> STOP_COPY keeps the session";
  EXPECT_EQ(ErrnoOf((*s)->GetPrecopyInfo().status()), EINVAL);
}

TEST(RefVgpu, PrecopyThenStopCopyRestoresTheStoppedState) {
  auto src = MakeDevice();
  Work(*src, 30);
  auto s = src->SetState(S::kPreCopy);
  ASSERT_TRUE(s.ok());
  std::vector<uint8_t> bytes = ReadAll(**s, false);
  Work(*src, 30, 300);  // dirty after the first pass
  std::vector<uint8_t> more = ReadAll(**s, false);
  bytes.insert(bytes.end(), more.begin(), more.end());
  Work(*src, 3, 800);
  ASSERT_TRUE(src->SetState(S::kStopCopy).ok());
  const std::string fp = src->Fingerprint();
  std::vector<uint8_t> last = ReadAll(**s, true);
  bytes.insert(bytes.end(), last.begin(), last.end());
  auto dst = MakeDevice(SmallConfig("ref1"));
  absl::Status loaded = Load(*dst, bytes, 65536);
  ASSERT_TRUE(loaded.ok()) << loaded;
  EXPECT_EQ(dst->Fingerprint(), fp);
  EXPECT_TRUE(dst->CheckStamps().ok());
  // Back to RUNNING, the source runs again.
  ASSERT_TRUE(src->SetState(S::kRunning).ok());
  Work(*src, 1);
  EXPECT_EQ(src->Register(0, 0), 64u);
}

// Drives a fresh device into `s` (ERROR through an injected fault).
std::unique_ptr<RefVgpu> DeviceIn(S s) {
  auto d = MakeDevice();
  Work(*d, 2);
  if (s == S::kError) {
    d->InjectArcFault(S::kRunning, S::kRunningP2p);
    EXPECT_FALSE(d->SetState(S::kRunningP2p).ok());
  } else if (s != S::kRunning) {
    EXPECT_TRUE(d->SetState(s).ok()) << MigStateName(s);
  }
  EXPECT_EQ(*d->GetState(), s);
  return d;
}

// Every (from, to) pair: the FSM's answer decides, and a refused arc
// changes nothing.
TEST(RefVgpu, EveryArcValidAndInvalid) {
  const uint64_t flags = kMigFlagStopCopy | kMigFlagP2p | kMigFlagPreCopy;
  int allowed = 0, refused = 0;
  for (uint32_t f = 0; f < kMigStateCount; ++f) {
    for (uint32_t t = 0; t < kMigStateCount; ++t) {
      const S from = static_cast<S>(f), to = static_cast<S>(t);
      auto d = DeviceIn(from);
      auto r = d->SetState(to);
      const bool fsm_ok = from == to ? from != S::kError
                                     : NextStep(flags, from, to).ok();
      SCOPED_TRACE(std::string(MigStateName(from)) + " -> " +
                   MigStateName(to));
      if (!fsm_ok) {
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(ErrnoOf(r.status()), EINVAL);
        EXPECT_EQ(*d->GetState(), from);
        ++refused;
      } else if (from == S::kResuming && to != S::kResuming) {
        // Nothing was written: leaving RESUMING fails its final check and
        // the device goes to ERROR, as drivers may.
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(ErrnoOf(r.status()), EINVAL);
        EXPECT_EQ(*d->GetState(), S::kError);
        ++refused;
      } else {
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(*d->GetState(), to);
        const bool new_session =
            from != to && ((InSavingGroup(to) && !InSavingGroup(from)) ||
                           to == S::kResuming);
        EXPECT_EQ(*r != nullptr, new_session);
        ++allowed;
      }
      // Reset always brings the device back.
      ASSERT_TRUE(d->Reset().ok());
      EXPECT_EQ(*d->GetState(), S::kRunning);
    }
  }
  EXPECT_EQ(allowed + refused, 64);
  EXPECT_GE(refused, 8 + 2);  // from ERROR, and STOP_COPY -> PRE_COPY(_P2P)
}

TEST(RefVgpu, DeviceWithoutOptionalStatesRefusesThem) {
  RefVgpuConfig c = SmallConfig();
  c.migration_flags = kMigFlagStopCopy;
  auto d = MakeDevice(c);
  for (S s : {S::kPreCopy, S::kPreCopyP2p, S::kRunningP2p}) {
    auto r = d->SetState(s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(ErrnoOf(r.status()), EINVAL);
  }
  // RUNNING -> STOP_COPY goes straight through STOP.
  auto r = d->SetState(S::kStopCopy);
  ASSERT_TRUE(r.ok());
  EXPECT_NE(*r, nullptr);
}

TEST(RefVgpu, InjectedFaultMeansErrorUntilReset) {
  auto d = MakeDevice();
  Work(*d, 3);
  auto s = d->SetState(S::kPreCopy);
  ASSERT_TRUE(s.ok());
  d->InjectArcFault(S::kPreCopy, S::kPreCopyP2p);
  auto r = d->SetState(S::kStopCopy);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ErrnoOf(r.status()), EIO);
  EXPECT_EQ(*d->GetState(), S::kError);
  std::vector<uint8_t> buf(10);
  EXPECT_EQ(ErrnoOf((*s)->Read(absl::MakeSpan(buf)).status()), EBADF);
  EXPECT_EQ(ErrnoOf(d->SetState(S::kRunning).status()), EINVAL);
  RefCommand c;
  EXPECT_EQ(d->Submit(0, c).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(d->Reset().ok());
  EXPECT_EQ(*d->GetState(), S::kRunning);
  EXPECT_EQ(d->Register(0, 0), 0u) << "reset clears the contexts";
  Work(*d, 1);
  EXPECT_EQ(d->Register(0, 0), 1u);
}

class DamagedStream : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = MakeDevice();
    Work(*src_, 10);
    bytes_ = SaveStopped(*src_);
    dst_ = MakeDevice(SmallConfig("dst"));
  }
  // Loads `bytes` and expects the load to fail with EINVAL and leave the
  // device in ERROR, recoverable by reset.
  void ExpectRefused(const std::vector<uint8_t>& bytes, const char* what) {
    absl::Status s = Load(*dst_, bytes);
    ASSERT_FALSE(s.ok()) << what;
    EXPECT_EQ(ErrnoOf(s), EINVAL) << s;
    EXPECT_NE(s.message().find(what), std::string::npos) << s;
    if (*dst_->GetState() == S::kResuming) {
      // A refused write leaves RESUMING; leaving it then fails for good.
      auto left = dst_->SetState(S::kRunning);
      ASSERT_FALSE(left.ok());
      EXPECT_EQ(ErrnoOf(left.status()), EINVAL);
      EXPECT_NE(left.status().message().find(what), std::string::npos)
          << left.status();
    }
    EXPECT_EQ(*dst_->GetState(), S::kError);
    ASSERT_TRUE(dst_->Reset().ok());
    ASSERT_TRUE(Load(*dst_, bytes_).ok()) << "a good stream still loads";
    ASSERT_TRUE(dst_->Reset().ok());
  }
  std::unique_ptr<RefVgpu> src_, dst_;
  std::vector<uint8_t> bytes_;
};

TEST_F(DamagedStream, FlippedContextByte) {
  std::vector<uint8_t> b = bytes_;
  // The first context record follows the device record.
  auto dev = stream::DecodeHeader(b);
  ASSERT_TRUE(dev.ok());
  const size_t ctx0 = stream::kHeaderBytes + dev->length;
  b[ctx0 + stream::kHeaderBytes + 100] ^= 0x10;
  ExpectRefused(b, "checksum mismatch");
}

TEST_F(DamagedStream, Truncated) {
  std::vector<uint8_t> b(bytes_.begin(), bytes_.end() - 40);
  ExpectRefused(b, "stream");
}

TEST_F(DamagedStream, WrongMagic) {
  std::vector<uint8_t> b = bytes_;
  b[0] ^= 0xff;
  ExpectRefused(b, "magic");
}

TEST_F(DamagedStream, InflatedLength) {
  std::vector<uint8_t> b = bytes_;
  b[16 + 3] = 0x7f;  // length of the device record, high bytes
  ExpectRefused(b, "exceeds");
}

TEST_F(DamagedStream, MissingEnd) {
  std::vector<uint8_t> b(bytes_.begin(),
                         bytes_.end() - (stream::kHeaderBytes + 8));
  ExpectRefused(b, "no end record");
}

TEST_F(DamagedStream, OtherShape) {
  RefVgpuConfig c = SmallConfig("other");
  c.contexts = 2;
  dst_ = MakeDevice(c);
  absl::Status s = Load(*dst_, bytes_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(ErrnoOf(s), EINVAL);
  EXPECT_NE(s.message().find("4 contexts"), std::string::npos) << s;
}

TEST_F(DamagedStream, InjectedLoadFault) {
  ASSERT_TRUE(dst_->SetState(S::kResuming).ok() ||
              dst_->SetState(S::kStop).ok());
  ASSERT_TRUE(dst_->Reset().ok());
  ASSERT_TRUE(dst_->SetState(S::kStop).ok());
  auto r = dst_->SetState(S::kResuming);
  ASSERT_TRUE(r.ok());
  dst_->InjectResumeFault();
  absl::Status s = (*r)->Write(bytes_);
  EXPECT_EQ(ErrnoOf(s), EIO);
  EXPECT_EQ(*dst_->GetState(), S::kError);
}

TEST(RefVgpu, P2pQuiescenceHoldsPeerWrites) {
  auto d = MakeDevice();
  ASSERT_TRUE(d->SetState(S::kRunningP2p).ok());
  RefCommand peer;
  peer.op = RefCommand::kPeerWrite;
  peer.arg2 = 7;
  ASSERT_TRUE(d->Submit(0, peer).ok());
  Stamp(*d, 1, 1);  // other contexts keep running
  d->WaitIdle();
  EXPECT_EQ(d->Register(0, 2), 0u);
  EXPECT_EQ(d->Register(1, 0), 1u);
  ASSERT_TRUE(d->SetState(S::kRunning).ok());
  d->WaitIdle();
  EXPECT_EQ(d->Register(0, 2), 7u);
}

TEST(RefVgpu, GuestIsPausedWhileStopped) {
  auto d = MakeDevice();
  ASSERT_TRUE(d->SetState(S::kStop).ok());
  RefCommand c;
  EXPECT_EQ(d->Submit(0, c).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RefVgpu, DmaLoggingReportsWrittenGuestPages) {
  auto d = MakeDevice();
  std::vector<uint64_t> bitmap(4, 0);
  EXPECT_EQ(ErrnoOf(d->DmaLoggingReport(0, 1 << 20, 4096,
                                        absl::MakeSpan(bitmap))),
            EINVAL)
      << "report before start";
  const DmaRange bad[] = {{100, 4096}};
  EXPECT_EQ(ErrnoOf(d->DmaLoggingStart(bad, 4096).status()), EINVAL);
  const DmaRange overlap[] = {{0, 8192}, {4096, 4096}};
  EXPECT_EQ(ErrnoOf(d->DmaLoggingStart(overlap, 4096).status()), EINVAL);
  const DmaRange ranges[] = {{0, 1 << 20}};
  auto page = d->DmaLoggingStart(ranges, 4096);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(*page, 4096u);
  EXPECT_EQ(ErrnoOf(d->DmaLoggingStart(ranges, 4096).status()), EINVAL)
      << "a second start";
  // Map GTT entries 0 and 1 to guest pages 3 and 200; DMA through both.
  RefCommand map;
  map.op = RefCommand::kMapGtt;
  map.arg0 = 0;
  map.arg1 = (3 << 12) | 1;
  ASSERT_TRUE(d->Submit(0, map).ok());
  map.arg0 = 1;
  map.arg1 = (200 << 12) | 1;
  ASSERT_TRUE(d->Submit(0, map).ok());
  RefCommand dma;
  dma.op = RefCommand::kDmaWrite;
  dma.arg0 = 0;
  dma.arg1 = 16;
  dma.arg2 = 0xfeed;
  ASSERT_TRUE(d->Submit(0, dma).ok());
  dma.arg0 = 1;
  ASSERT_TRUE(d->Submit(0, dma).ok());
  d->WaitIdle();
  EXPECT_EQ(d->GuestWord(3 * 4096 + 16), 0xfeedu);
  ASSERT_TRUE(d->DmaLoggingReport(0, 1 << 20, 4096, absl::MakeSpan(bitmap)).ok());
  EXPECT_EQ(bitmap[0], uint64_t{1} << 3);
  EXPECT_EQ(bitmap[3], uint64_t{1} << (200 - 192));
  // Reading cleared the log; a coarser report replicates bits.
  std::vector<uint64_t> again(4, 0);
  ASSERT_TRUE(d->DmaLoggingReport(0, 1 << 20, 4096, absl::MakeSpan(again)).ok());
  EXPECT_EQ(again[0] | again[3], 0u);
  ASSERT_TRUE(d->Submit(0, dma).ok());
  d->WaitIdle();
  std::vector<uint64_t> coarse(1, 0);
  ASSERT_TRUE(
      d->DmaLoggingReport(0, 1 << 20, 65536, absl::MakeSpan(coarse)).ok());
  EXPECT_EQ(coarse[0], uint64_t{1} << (200 * 4096 / 65536));
  std::vector<uint64_t> tiny(1, 0);
  EXPECT_EQ(ErrnoOf(d->DmaLoggingReport(0, 1 << 20, 4096, absl::MakeSpan(tiny))),
            EFAULT);
  ASSERT_TRUE(d->DmaLoggingStop().ok());
  RefVgpuConfig no = SmallConfig();
  no.dma_logging = false;
  auto plain = MakeDevice(no);
  EXPECT_EQ(ErrnoOf(plain->DmaLoggingStart(ranges, 4096).status()), ENOTTY);
}

TEST(RefVgpu, WorkloadDirtiesAtItsRateAndPausesWhenStopped) {
  RefVgpuConfig c = SmallConfig();
  c.vram_bytes = 16 << 20;
  auto d = MakeDevice(c);
  {
    RefWorkload w(d.get(), 8 << 20, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ASSERT_TRUE(d->SetState(S::kStop).ok());
    const uint64_t at_stop = d->executed();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(d->executed(), at_stop) << "a stopped device runs nothing";
    EXPECT_GT(at_stop, 100u);
    ASSERT_TRUE(d->SetState(S::kRunning).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  d->WaitIdle();
  EXPECT_TRUE(d->CheckStamps().ok()) << d->CheckStamps();
}

}  // namespace
}  // namespace vgpu::agents::mediated
