// The device core in-process: every command against a model, bounds errors,
// ring order and fences, exact dirty tracking, quiesce, and the state blobs
// (round trip, and every kind of damage refused with the device unchanged).
#include "agents/emulated/internal/emu_gpu.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agents/emulated/internal/state_blob.h"
#include "agents/emulated/state.capnp.h"
#include "state-codecs/message.h"

namespace vgpu::agents::emulated::internal {
namespace {

using namespace dispi;  // NOLINT

constexpr uint64_t kVram = 8 << 20;
constexpr uint64_t kPitch = 4096;  // 1024 pixels of 32 bpp

std::unique_ptr<EmuGpu> MakeGpu(EmuGpuOptions options = {}) {
  if (options.vram_bytes == EmuGpuOptions().vram_bytes) {
    options.vram_bytes = kVram;
  }
  auto gpu = EmuGpu::Create(options);
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  return *std::move(gpu);
}

void SetMode(EmuGpu& gpu, uint16_t x = 1024, uint16_t y = 768,
             uint16_t bpp = 32) {
  ASSERT_TRUE(gpu.WriteReg(kIndexEnable, 0).ok());
  ASSERT_TRUE(gpu.WriteReg(kIndexBpp, bpp).ok());
  ASSERT_TRUE(gpu.WriteReg(kIndexXres, x).ok());
  ASSERT_TRUE(gpu.WriteReg(kIndexYres, y).ok());
  ASSERT_TRUE(gpu.WriteReg(kIndexEnable, kEnabled | kLfbEnabled).ok());
}

// Submits `commands` and waits until they have all executed; returns their
// sequence numbers.
std::vector<uint64_t> Execute(EmuGpu& gpu,
                              const std::vector<Command>& commands) {
  std::vector<uint64_t> seqs;
  for (const Command& c : commands) {
    absl::StatusOr<uint64_t> seq = gpu.Submit(c);
    EXPECT_TRUE(seq.ok()) << seq.status();
    seqs.push_back(seq.value_or(0));
  }
  absl::StatusOr<uint64_t> fence = gpu.SubmitFence();
  EXPECT_TRUE(fence.ok());
  EXPECT_TRUE(gpu.WaitFence(*fence, absl::Seconds(10)).ok());
  return seqs;
}

std::vector<uint8_t> Snapshot(EmuGpu& gpu) {
  return std::vector<uint8_t>(gpu.vram().begin(), gpu.vram().end());
}

// A deterministic, non-trivial VRAM image to start tests from.
void Scribble(EmuGpu& gpu, uint64_t bytes = kVram) {
  std::vector<Command> writes;
  std::vector<uint8_t> chunk(kMaxWriteBytes);
  uint32_t x = 12345;
  for (uint64_t off = 0; off < bytes; off += chunk.size()) {
    for (uint8_t& b : chunk) {
      x = x * 1103515245 + 12345;
      b = static_cast<uint8_t>(x >> 16);
    }
    writes.push_back(Command::Write(off, chunk));
  }
  Execute(gpu, writes);
}

std::set<uint64_t> DirtyPages(const std::vector<uint64_t>& bitmap) {
  std::set<uint64_t> pages;
  for (size_t w = 0; w < bitmap.size(); ++w) {
    for (int b = 0; b < 64; ++b) {
      if (bitmap[w] >> b & 1) pages.insert(w * 64 + b);
    }
  }
  return pages;
}

void AddPages(std::set<uint64_t>* pages, uint64_t offset, uint64_t length) {
  for (uint64_t p = offset / 4096; p <= (offset + length - 1) / 4096; ++p) {
    pages->insert(p);
  }
}

TEST(EmuGpu, CreateRefusesBadSizes) {
  for (uint64_t size : {uint64_t{0}, uint64_t{1000}, uint64_t{512 << 10},
                        (uint64_t{8} << 20) + 4096, uint64_t{8} << 30}) {
    EmuGpuOptions o;
    o.vram_bytes = size;
    EXPECT_TRUE(absl::IsInvalidArgument(EmuGpu::Create(o).status())) << size;
  }
}

TEST(EmuGpu, FillRepeatsThePatternFromItsOffset) {
  auto gpu = MakeGpu();
  Scribble(*gpu, 1 << 20);
  std::vector<uint8_t> want = Snapshot(*gpu);
  Execute(*gpu, {Command::Fill(4097, 10001, 0xA1B2C3D4)});
  for (uint64_t i = 0; i < 10001; ++i) {
    want[4097 + i] = static_cast<uint8_t>(0xA1B2C3D4u >> (8 * (i % 4)));
  }
  EXPECT_EQ(Snapshot(*gpu), want);
  EXPECT_EQ(gpu->Status().error_count, 0u);
}

TEST(EmuGpu, CopyHasMemmoveSemantics) {
  auto gpu = MakeGpu();
  Scribble(*gpu, 1 << 20);
  std::vector<uint8_t> want = Snapshot(*gpu);
  Execute(*gpu, {Command::Copy(1000, 500000, 70000),  // disjoint
                 Command::Copy(100, 150, 4000),       // overlap, forwards
                 Command::Copy(9000, 8000, 4000)});   // overlap, backwards
  std::memmove(&want[500000], &want[1000], 70000);
  std::memmove(&want[150], &want[100], 4000);
  std::memmove(&want[8000], &want[9000], 4000);
  EXPECT_EQ(Snapshot(*gpu), want);
}

TEST(EmuGpu, WriteUploadsInlineBytes) {
  auto gpu = MakeGpu();
  std::vector<uint8_t> data(kMaxWriteBytes);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<uint8_t>(i * 7);
  Execute(*gpu, {Command::Write(kVram - data.size(), data)});
  EXPECT_EQ(std::memcmp(gpu->vram().data() + kVram - data.size(), data.data(),
                        data.size()),
            0);
  std::vector<uint8_t> too_big(kMaxWriteBytes + 1);
  EXPECT_TRUE(absl::IsInvalidArgument(
      gpu->Submit(Command::Write(0, too_big)).status()));
}

// The model of a BLIT: every source row read before any row is written.
void ModelBlit(std::vector<uint8_t>& v, const BlitRect& r, uint64_t pitch,
               uint64_t bpp) {
  std::vector<std::vector<uint8_t>> rows;
  for (uint32_t y = 0; y < r.height; ++y) {
    const uint8_t* src = &v[(r.src_y + y) * pitch + r.src_x * bpp];
    rows.emplace_back(src, src + r.width * bpp);
  }
  for (uint32_t y = 0; y < r.height; ++y) {
    uint8_t* dst = &v[(r.dst_y + y) * pitch + r.dst_x * bpp];
    for (uint64_t i = 0; i < r.width * bpp; ++i) {
      const uint8_t s = rows[y][i];
      switch (r.rop) {
        case Rop::kCopy:
          dst[i] = s;
          break;
        case Rop::kXor:
          dst[i] ^= s;
          break;
        case Rop::kAnd:
          dst[i] &= s;
          break;
        case Rop::kOr:
          dst[i] |= s;
          break;
        case Rop::kNotSrc:
          dst[i] = static_cast<uint8_t>(~s);
          break;
      }
    }
  }
}

TEST(EmuGpu, BlitEveryRasterOpMatchesTheModel) {
  auto gpu = MakeGpu();
  SetMode(*gpu);
  Scribble(*gpu);
  for (Rop rop : {Rop::kCopy, Rop::kXor, Rop::kAnd, Rop::kOr, Rop::kNotSrc}) {
    std::vector<uint8_t> want = Snapshot(*gpu);
    BlitRect r{10, 20, 300, 400, 123, 45, rop};
    ModelBlit(want, r, kPitch, 4);
    Execute(*gpu, {Command::Blit(r)});
    EXPECT_EQ(Snapshot(*gpu), want) << "rop " << static_cast<int>(rop);
  }
  EXPECT_EQ(gpu->Status().error_count, 0u);
}

TEST(EmuGpu, OverlappingBlitsReadBeforeWriting) {
  auto gpu = MakeGpu();
  SetMode(*gpu);
  Scribble(*gpu);
  const BlitRect cases[] = {
      {0, 0, 5, 3, 200, 100, Rop::kCopy},     // down and right
      {50, 60, 40, 10, 200, 100, Rop::kXor},  // up and left
      {0, 100, 7, 100, 300, 20, Rop::kCopy},  // same rows, to the right
      {9, 100, 0, 100, 300, 20, Rop::kOr},    // same rows, to the left
  };
  for (const BlitRect& r : cases) {
    std::vector<uint8_t> want = Snapshot(*gpu);
    ModelBlit(want, r, kPitch, 4);
    Execute(*gpu, {Command::Blit(r)});
    EXPECT_EQ(Snapshot(*gpu), want);
  }
}

TEST(EmuGpu, BlitUsesTheCurrentDepthAndPitch) {
  auto gpu = MakeGpu();
  SetMode(*gpu, 640, 480, 16);
  ASSERT_TRUE(gpu->WriteReg(kIndexVirtWidth, 800).ok());
  Scribble(*gpu);
  std::vector<uint8_t> want = Snapshot(*gpu);
  BlitRect r{1, 2, 700, 300, 99, 50, Rop::kCopy};
  ModelBlit(want, r, 800 * 2, 2);
  Execute(*gpu, {Command::Blit(r)});
  EXPECT_EQ(Snapshot(*gpu), want);
}

TEST(EmuGpu, BadCommandsAreSkippedAndRecorded) {
  auto gpu = MakeGpu();
  // No mode yet: a BLIT has nothing to draw on.
  std::vector<uint64_t> seqs =
      Execute(*gpu, {Command::Blit({0, 0, 8, 8, 4, 4})});
  EngineStatus s = gpu->Status();
  EXPECT_EQ(s.error_count, 1u);
  EXPECT_EQ(s.last_error, EngineError::kBadMode);
  EXPECT_EQ(s.last_error_seq, seqs[0]);

  SetMode(*gpu);
  const std::vector<uint8_t> before = Snapshot(*gpu);
  const std::vector<Command> bad = {
      Command::Fill(kVram - 3, 4, 1),
      Command::Fill(UINT64_MAX, 2, 1),  // offset + length overflows
      Command::Fill(4, UINT64_MAX, 1),
      Command::Copy(0, kVram - 10, 11),
      Command::Copy(kVram, 0, 1),
      Command::Write(kVram - 1, std::vector<uint8_t>(2)),
      Command::Checksum(kVram, 1),
      Command::Blit({1000, 0, 0, 0, 100, 1, Rop::kCopy}),  // past VIRT_WIDTH
      Command::Blit({0, 2040, 0, 0, 10, 10, Rop::kCopy}),  // past VRAM
      Command::Blit({0, 0, 0, 0xFFFFFFF0u, 10, 0x20, Rop::kCopy}),
  };
  seqs = Execute(*gpu, bad);
  s = gpu->Status();
  EXPECT_EQ(s.error_count, 1u + bad.size());
  EXPECT_EQ(s.last_error, EngineError::kOutOfBounds);
  EXPECT_EQ(s.last_error_seq, seqs.back());
  EXPECT_FALSE(s.last_error_message.empty());
  EXPECT_EQ(Snapshot(*gpu), before);

  // The engine goes on with the next command.
  Execute(*gpu, {Command::Fill(0, 4, 0x01020304)});
  EXPECT_EQ(gpu->vram()[0], 0x04);
  // An unknown raster op never enters the ring.
  BlitRect weird{0, 0, 0, 0, 1, 1, static_cast<Rop>(9)};
  EXPECT_TRUE(
      absl::IsInvalidArgument(gpu->Submit(Command::Blit(weird)).status()));
}

TEST(EmuGpu, ChecksumResultsAreReadBackOnce) {
  auto gpu = MakeGpu();
  Scribble(*gpu, 1 << 20);
  std::vector<uint64_t> seqs =
      Execute(*gpu, {Command::Checksum(123, 45678), Command::Checksum(kVram, 1),
                     Command::Checksum(0, 0)});
  EXPECT_EQ(*gpu->TakeChecksum(seqs[0]),
            XXH3_64bits(gpu->vram().data() + 123, 45678));
  EXPECT_TRUE(absl::IsNotFound(gpu->TakeChecksum(seqs[0]).status()));
  EXPECT_TRUE(absl::IsOutOfRange(gpu->TakeChecksum(seqs[1]).status()));
  EXPECT_EQ(*gpu->TakeChecksum(seqs[2]), XXH3_64bits(nullptr, 0));
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->TakeChecksum(1000000).status()));
}

TEST(EmuGpu, RingExecutesInOrderAndFencesComplete) {
  auto gpu = MakeGpu();
  // More commands than the ring holds: Submit waits for room. Each writes
  // its index into the same word, so only in-order execution ends with the
  // last index there; fences in between record progress.
  uint64_t last_fence = 0;
  std::vector<uint64_t> seqs;
  for (uint32_t i = 0; i < 3 * kRingCapacity; ++i) {
    uint8_t b[4];
    std::memcpy(b, &i, 4);
    seqs.push_back(*gpu->Submit(Command::Write(64, b)));
    if (i % 100 == 99) {
      const uint64_t f = *gpu->SubmitFence();
      EXPECT_EQ(f, last_fence + 1);
      last_fence = f;
    }
  }
  for (size_t i = 1; i < seqs.size(); ++i) ASSERT_GT(seqs[i], seqs[i - 1]);
  ASSERT_TRUE(gpu->WaitFence(last_fence, absl::Seconds(10)).ok());
  // The tail after the last fence may still be running; one more fence.
  ASSERT_TRUE(gpu->WaitFence(*gpu->SubmitFence(), absl::Seconds(10)).ok());
  uint32_t got;
  std::memcpy(&got, gpu->vram().data() + 64, 4);
  EXPECT_EQ(got, 3 * kRingCapacity - 1);
  EngineStatus s = gpu->Status();
  EXPECT_EQ(s.head, s.tail);
  EXPECT_EQ(s.completed_fence, s.submitted_fence);

  // Explicit fence values are the guest's; the engine just reports them.
  ASSERT_TRUE(gpu->Submit(Command::Fence(1000)).ok());
  EXPECT_EQ(gpu->Status().submitted_fence, 1000u);
  const uint64_t next = *gpu->SubmitFence();
  EXPECT_EQ(next, 1001u);
  ASSERT_TRUE(gpu->WaitFence(next, absl::Seconds(10)).ok());
  EXPECT_EQ(gpu->Status().completed_fence, 1001u);
}

TEST(EmuGpu, WaitFenceTimesOutWhileQuiesced) {
  auto gpu = MakeGpu();
  gpu->Quiesce();
  std::atomic<bool> submitted{false};
  uint64_t fence = 0;
  std::thread guest([&] {
    fence = *gpu->SubmitFence();  // blocks until Resume
    submitted = true;
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(submitted.load());
  gpu->Resume();
  guest.join();
  EXPECT_TRUE(gpu->WaitFence(fence, absl::Seconds(10)).ok());
  gpu->Quiesce();
  const uint64_t f2 = gpu->Status().completed_fence + 1;
  EXPECT_TRUE(
      absl::IsDeadlineExceeded(gpu->WaitFence(f2, absl::Milliseconds(20))));
}

TEST(EmuGpu, DirtyTrackingIsExact) {
  auto gpu = MakeGpu();
  SetMode(*gpu);
  const uint64_t pages = kVram / 4096;
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->FetchDirtyBitmap().status()));
  gpu->StartDirtyTracking();
  EXPECT_EQ(DirtyPages(*gpu->FetchDirtyBitmap()).size(), pages);
  EXPECT_TRUE(DirtyPages(*gpu->FetchDirtyBitmap()).empty());

  std::set<uint64_t> want;
  std::vector<Command> commands;
  auto add = [&](Command c, uint64_t offset, uint64_t length) {
    commands.push_back(std::move(c));
    if (length > 0) AddPages(&want, offset, length);
  };
  add(Command::Write(3 * 4096 + 4090, std::vector<uint8_t>(10, 1)),
      3 * 4096 + 4090, 10);  // pages 3, 4
  add(Command::Fill(10 * 4096 + 1, 2 * 4096, 7), 10 * 4096 + 1, 2 * 4096);
  add(Command::Copy(0, 100 * 4096 + 4095, 2), 100 * 4096 + 4095, 2);
  add(Command::Fill(kVram - 1, 1, 7), kVram - 1, 1);  // last page
  add(Command::Write(200 * 4096, {}), 0, 0);          // nothing
  add(Command::Checksum(0, kVram), 0, 0);             // reads only
  add(Command::Fill(kVram, 1, 7), 0, 0);              // refused
  // A BLIT marks the pages of its destination rows only (rows are 4096
  // bytes apart here, so the 3 rows dirty 3 pages, not the range between).
  BlitRect r{0, 0, 1014, 1000, 10, 3, Rop::kCopy};
  commands.push_back(Command::Blit(r));
  for (uint32_t y = 0; y < 3; ++y) {
    AddPages(&want, (1000 + y) * kPitch + 1014 * 4, 40);
  }
  Execute(*gpu, commands);
  EXPECT_EQ(DirtyPages(*gpu->FetchDirtyBitmap()), want);

  // Enabling a mode clears the framebuffer, which dirties it too.
  ASSERT_TRUE(gpu->WriteReg(kIndexEnable, 0).ok());
  ASSERT_TRUE(gpu->WriteReg(kIndexEnable, kEnabled).ok());
  want.clear();
  AddPages(&want, 0, 768 * kPitch);
  EXPECT_EQ(DirtyPages(*gpu->FetchDirtyBitmap()), want);

  gpu->StopDirtyTracking();
  Execute(*gpu, {Command::Fill(0, 4096, 1)});
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->FetchDirtyBitmap().status()));
  gpu->StartDirtyTracking();
  EXPECT_EQ(DirtyPages(*gpu->FetchDirtyBitmap()).size(), pages);
}

TEST(EmuGpu, QuiesceKeepsQueuedCommandsAndResumeRunsThem) {
  EmuGpuOptions o;
  o.command_latency = absl::Milliseconds(2);
  auto gpu = MakeGpu(o);
  for (uint32_t i = 0; i < 40; ++i) {
    ASSERT_TRUE(gpu->Submit(Command::Fill(i * 4096, 4096, i + 1)).ok());
  }
  gpu->Quiesce();
  const EngineStatus s = gpu->Status();
  EXPECT_TRUE(s.quiesced);
  ASSERT_LT(s.head, s.tail);
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(gpu->Status().head, s.head);  // nothing runs while quiesced
  // Submissions and register writes wait for Resume.
  absl::Notification done;
  std::thread guest([&] {
    EXPECT_TRUE(gpu->Submit(Command::Fill(0, 1, 0xFF)).ok());
    EXPECT_TRUE(gpu->WriteReg(kIndexXres, 640).ok());
    done.Notify();
  });
  EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  EXPECT_EQ(gpu->Status().tail, s.tail);
  gpu->Resume();
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  guest.join();
  ASSERT_TRUE(gpu->WaitFence(*gpu->SubmitFence(), absl::Seconds(10)).ok());
  for (uint32_t i = 1; i < 40; ++i) EXPECT_EQ(gpu->vram()[i * 4096], i + 1);
  EXPECT_EQ(gpu->vram()[0], 0xFF);
}

TEST(EmuGpu, ShutdownWakesBlockedCallers) {
  auto gpu = MakeGpu();
  gpu->Quiesce();
  absl::Status submit, wait;
  std::thread a([&] { submit = gpu->Submit(Command::Fence(1)).status(); });
  std::thread b([&] { wait = gpu->WaitFence(5, absl::InfiniteDuration()); });
  absl::SleepFor(absl::Milliseconds(20));
  gpu->Shutdown();
  a.join();
  b.join();
  EXPECT_TRUE(absl::IsCancelled(submit));
  EXPECT_TRUE(absl::IsCancelled(wait));
}

// --- state blobs

struct Saved {
  std::vector<uint8_t> regs, ring, vram;
};

Saved SaveAll(EmuGpu& gpu) {
  Saved s;
  s.regs = *gpu.SaveRegisters();
  s.ring = *gpu.SaveRing();
  s.vram = Snapshot(gpu);
  return s;
}

// A source with commands still queued: a mode, some drawing done, checksum
// results pending, an error recorded, and 60 commands left in the ring.
std::unique_ptr<EmuGpu> QueuedSource(std::vector<Command>* script) {
  EmuGpuOptions o;
  o.command_latency = absl::Milliseconds(2);
  auto gpu = MakeGpu(o);
  SetMode(*gpu);
  script->clear();
  for (uint32_t i = 0; i < 80; ++i) {
    switch (i % 6) {
      case 0:
        script->push_back(Command::Fill(i * 5000, 9000, i * 0x01010101u));
        break;
      case 1:
        script->push_back(Command::Copy(i * 100, 2 << 20, 30000));
        break;
      case 2:
        script->push_back(
            Command::Blit({i, i, 500, 300, 64, 32, static_cast<Rop>(i % 5)}));
        break;
      case 3:
        script->push_back(Command::Checksum(0, 1 << 20));
        break;
      case 4:
        script->push_back(
            Command::Write(i * 777, std::vector<uint8_t>(100, i)));
        break;
      case 5:
        script->push_back(Command::Fence(i));
        break;
    }
  }
  script->push_back(Command::Fill(kVram, 1, 0));  // an error, queued
  for (const Command& c : *script) EXPECT_TRUE(gpu->Submit(c).ok());
  // Cut once a few commands have run (so there are checksum results to
  // carry), long before the last: the ring needs 160 ms in all.
  while (gpu->Status().head < 4) absl::SleepFor(absl::Milliseconds(1));
  gpu->Quiesce();
  return gpu;
}

TEST(EmuGpuState, LoadedDeviceContinuesLikeAnUninterruptedOne) {
  std::vector<Command> script;
  auto source = QueuedSource(&script);
  const EngineStatus at_cut = source->Status();
  ASSERT_GT(at_cut.head, 0u);
  ASSERT_LT(at_cut.head, at_cut.tail);
  Saved saved = SaveAll(*source);

  EmuGpuOptions in;
  in.incoming = true;
  auto dest = MakeGpu(in);
  EXPECT_TRUE(dest->incoming_fresh());
  ASSERT_TRUE(dest->CheckVramWritable().ok());
  ASSERT_TRUE(dest->LoadRegisters(saved.regs).ok());
  ASSERT_TRUE(dest->LoadRing(saved.ring).ok());
  std::memcpy(const_cast<uint8_t*>(dest->vram().data()), saved.vram.data(),
              kVram);
  // What was loaded saves back byte for byte.
  EXPECT_EQ(*dest->SaveRegisters(), saved.regs);
  EXPECT_EQ(*dest->SaveRing(), saved.ring);
  dest->Resume();
  EXPECT_FALSE(dest->incoming_fresh());
  ASSERT_TRUE(dest->WaitFence(*dest->SubmitFence(), absl::Seconds(10)).ok());

  auto reference = MakeGpu();
  SetMode(*reference);
  Execute(*reference, script);
  EXPECT_TRUE(Snapshot(*dest) == Snapshot(*reference));
  const EngineStatus a = dest->Status(), b = reference->Status();
  EXPECT_EQ(a.error_count, b.error_count);
  EXPECT_EQ(a.last_error_seq, b.last_error_seq);
  EXPECT_EQ(a.submitted_fence, b.submitted_fence);
  for (uint16_t i = 0; i <= kIndexVideoMemory64k; ++i) {
    EXPECT_EQ(dest->ReadReg(i), reference->ReadReg(i)) << i;
  }
  for (uint64_t seq = 0; seq < script.size(); ++seq) {
    if (script[seq].op != CommandOp::kChecksum) continue;
    EXPECT_EQ(*dest->TakeChecksum(seq), *reference->TakeChecksum(seq)) << seq;
  }
}

TEST(EmuGpuState, SavingNeedsQuiesceLoadingNeedsAFreshIncomingDevice) {
  auto gpu = MakeGpu();
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->SaveRegisters().status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->SaveRing().status()));
  gpu->Quiesce();
  Saved s = SaveAll(*gpu);
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->LoadRegisters(s.regs)));
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->LoadRing(s.ring)));
  EXPECT_TRUE(absl::IsFailedPrecondition(gpu->CheckVramWritable()));

  EmuGpuOptions in;
  in.incoming = true;
  auto dest = MakeGpu(in);
  dest->Resume();
  dest->Quiesce();  // quiesced again, but it has run
  EXPECT_TRUE(absl::IsFailedPrecondition(dest->LoadRegisters(s.regs)));
  EXPECT_TRUE(absl::IsFailedPrecondition(dest->CheckVramWritable()));
}

// Re-encodes a registers body with a valid header, for semantic damage.
std::vector<uint8_t> RegistersBlob(uint64_t vram, std::vector<uint16_t> regs) {
  codec::Message<proto::RegistersState> m;
  m.mutable_root().setVramBytes(vram);
  auto list = m.mutable_root().initRegs(regs.size());
  for (size_t i = 0; i < regs.size(); ++i) list.set(i, regs[i]);
  return EncodeBlob(BlobKind::kRegisters,
                    codec::EncodeMessageBytes(m.builder()));
}

std::vector<uint8_t> Rehash(std::vector<uint8_t> blob) {
  const uint64_t h = XXH3_64bits(blob.data() + kBlobHeaderBytes,
                                 blob.size() - kBlobHeaderBytes);
  std::memcpy(blob.data() + 24, &h, 8);
  return blob;
}

TEST(EmuGpuState, DamagedBlobsAreRefusedAndChangeNothing) {
  std::vector<Command> script;
  auto source = QueuedSource(&script);
  Saved good = SaveAll(*source);

  EmuGpuOptions in;
  in.incoming = true;
  auto dest = MakeGpu(in);
  const Saved before = SaveAll(*dest);

  struct Case {
    const char* what;
    std::vector<uint8_t> blob;
    bool ring;
    absl::StatusCode code;
  };
  std::vector<Case> cases;
  auto both = [&](const char* what, auto mutate, absl::StatusCode code) {
    std::vector<uint8_t> r = good.regs, g = good.ring;
    mutate(r);
    mutate(g);
    cases.push_back({what, r, false, code});
    cases.push_back({what, g, true, code});
  };
  using C = absl::StatusCode;
  both(
      "empty", [](auto& b) { b.clear(); }, C::kInvalidArgument);
  both(
      "header cut", [](auto& b) { b.resize(20); }, C::kInvalidArgument);
  both(
      "bad magic", [](auto& b) { b[1] ^= 0x20; }, C::kInvalidArgument);
  both(
      "major 2", [](auto& b) { b[8] = 2; }, C::kUnimplemented);
  both(
      "major 0", [](auto& b) { b[8] = 0; }, C::kUnimplemented);
  both(
      "body cut", [](auto& b) { b.resize(b.size() - 8); }, C::kDataLoss);
  both(
      "extra byte", [](auto& b) { b.push_back(0); }, C::kDataLoss);
  both(
      "body bit flip", [](auto& b) { b[b.size() - 5] ^= 1; }, C::kDataLoss);
  both(
      "garbage body, good checksum",
      [](auto& b) {
        for (size_t i = kBlobHeaderBytes; i < b.size(); ++i) b[i] = 0xEE;
        b = Rehash(b);
      },
      C::kDataLoss);
  // A blob of the other kind.
  cases.push_back({"ring as registers", good.ring, false, C::kInvalidArgument});
  cases.push_back({"registers as ring", good.regs, true, C::kInvalidArgument});
  // Well-formed, but not a state this device can hold.
  RegisterArray regs{};
  for (uint16_t i = 0; i < kRegisterCount; ++i) regs[i] = source->ReadReg(i);
  std::vector<uint16_t> v(regs.begin(), regs.end());
  cases.push_back({"other VRAM size", RegistersBlob(16 << 20, v), false,
                   C::kFailedPrecondition});
  std::vector<uint16_t> short_regs(v.begin(), v.end() - 1);
  cases.push_back({"9 registers", RegistersBlob(kVram, short_regs), false,
                   C::kInvalidArgument});
  std::vector<uint16_t> bad_bpp = v;
  bad_bpp[kIndexBpp] = 13;
  cases.push_back(
      {"BPP 13", RegistersBlob(kVram, bad_bpp), false, C::kInvalidArgument});
  {
    codec::Message<proto::RingState> m;
    auto root = m.mutable_root();
    root.initCommands(kRingCapacity + 1);
    for (auto c : root.getCommands()) c.initFence().setValue(0);
    cases.push_back(
        {"ring overfull",
         EncodeBlob(BlobKind::kRing, codec::EncodeMessageBytes(m.builder())),
         true, C::kInvalidArgument});
  }
  {
    codec::Message<proto::RingState> m;
    auto w = m.mutable_root().initCommands(1)[0].initWrite();
    w.setData(kj::heapArray<kj::byte>(kMaxWriteBytes + 1));
    cases.push_back(
        {"oversized WRITE",
         EncodeBlob(BlobKind::kRing, codec::EncodeMessageBytes(m.builder())),
         true, C::kInvalidArgument});
  }
  {
    codec::Message<proto::RingState> m;
    m.mutable_root().setHead(5);
    auto r = m.mutable_root().initChecksums(1)[0];
    r.setSeq(9);  // a result for a command that has not run
    cases.push_back(
        {"checksum ahead of head",
         EncodeBlob(BlobKind::kRing, codec::EncodeMessageBytes(m.builder())),
         true, C::kInvalidArgument});
  }
  {
    codec::Message<proto::RingState> m;
    m.mutable_root().setCompletedFence(3);
    m.mutable_root().setSubmittedFence(2);
    cases.push_back(
        {"fence ahead of submissions",
         EncodeBlob(BlobKind::kRing, codec::EncodeMessageBytes(m.builder())),
         true, C::kInvalidArgument});
  }

  for (const Case& c : cases) {
    absl::Status s =
        c.ring ? dest->LoadRing(c.blob) : dest->LoadRegisters(c.blob);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
    EXPECT_FALSE(s.message().empty()) << c.what;
  }
  const Saved after = SaveAll(*dest);
  EXPECT_EQ(after.regs, before.regs);
  EXPECT_EQ(after.ring, before.ring);
  EXPECT_TRUE(after.vram == before.vram);
  // And the good blobs still load afterwards.
  EXPECT_TRUE(dest->LoadRegisters(good.regs).ok());
  EXPECT_TRUE(dest->LoadRing(good.ring).ok());
}

TEST(EmuGpuState, NewerMinorVersionIsAccepted) {
  auto gpu = MakeGpu();
  gpu->Quiesce();
  std::vector<uint8_t> regs = *gpu->SaveRegisters();
  regs[10] = 7;  // minor 7: fields appended later are ignored
  EmuGpuOptions in;
  in.incoming = true;
  auto dest = MakeGpu(in);
  EXPECT_TRUE(dest->LoadRegisters(regs).ok());
}

}  // namespace
}  // namespace vgpu::agents::emulated::internal
