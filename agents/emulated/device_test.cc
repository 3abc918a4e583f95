// vgpu-emu-device as a process: the socket, the two roles, the agent's
// DeviceControl (VRAM mapping, dirty tracking, quiesce, state blobs) and a
// migration into a second, --incoming device process that must end with the
// same VRAM as an uninterrupted reference device.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agents/emulated/device_control.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/internal/wire.h"
#include "agents/emulated/testing/device_process.h"

namespace vgpu::agents::emulated {
namespace {

using namespace dispi;  // NOLINT
using testing::DeviceProcess;
using testing::DeviceProcessOptions;

constexpr uint64_t kVram = 8 << 20;

std::unique_ptr<DeviceProcess> StartDevice(DeviceProcessOptions o = {}) {
  auto p = DeviceProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::unique_ptr<GuestClient> Guest(const DeviceProcess& d) {
  auto g = GuestClient::Connect(d.socket_path(), "test-guest");
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *std::move(g) : nullptr;
}

std::unique_ptr<DeviceControl> Agent(const DeviceProcess& d) {
  auto a = DeviceControl::Connect(d.socket_path());
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *std::move(a) : nullptr;
}

void SetMode(GuestClient& g) {
  for (auto [index, value] : {std::pair<uint16_t, uint16_t>{kIndexEnable, 0},
                              {kIndexBpp, 32},
                              {kIndexXres, 1024},
                              {kIndexYres, 768},
                              {kIndexEnable, kEnabled | kLfbEnabled}}) {
    ASSERT_TRUE(g.WriteReg(index, value).ok());
  }
}

void Drain(GuestClient& g) {
  absl::StatusOr<uint64_t> f = g.Fence();
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_TRUE(g.WaitFence(*f, absl::Seconds(20)).ok());
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

TEST(Device, SocketIsOwnerOnlyAndSigtermExitsCleanly) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  struct stat st;
  ASSERT_EQ(stat(dev->socket_path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A guest blocked on the device must not hold up the exit.
  auto guest = Guest(*dev);
  auto agent = Agent(*dev);
  ASSERT_TRUE(agent->Quiesce().ok());
  std::thread blocked(
      [&] { EXPECT_FALSE(guest->Submit(Command::Fence(1)).ok()); });
  absl::SleepFor(absl::Milliseconds(50));
  const int status = dev->Stop();
  blocked.join();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(stat(dev->socket_path().c_str(), &st), 0);  // socket removed
}

TEST(Device, GuestProgramsRegistersAndRunsCommands) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto g = Guest(*dev);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->vram_bytes(), kVram);
  EXPECT_EQ(*g->ReadReg(kIndexId), kId5);
  EXPECT_EQ(*g->ReadReg(kIndexVideoMemory64k), kVram / 65536);
  ASSERT_TRUE(g->WriteReg(kIndexXres, 1023).ok());  // ignored, not an error
  EXPECT_EQ(*g->ReadReg(kIndexXres), 0);
  SetMode(*g);
  EXPECT_EQ(*g->ReadReg(kIndexVirtWidth), 1024);

  std::vector<uint8_t> bytes(3000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  ASSERT_TRUE(
      g->SubmitBatch({Command::Fill(0, 1 << 20, 0x55AA55AA),
                      Command::Write(100, bytes),
                      Command::Blit({0, 0, 100, 100, 64, 64, Rop::kXor})})
          .ok());
  absl::StatusOr<uint64_t> sum = g->Checksum(0, 1 << 20);
  ASSERT_TRUE(sum.ok()) << sum.status();
  absl::StatusOr<std::vector<uint8_t>> vram = g->ReadVram(0, 1 << 20);
  ASSERT_TRUE(vram.ok());
  EXPECT_EQ(*sum, XXH3_64bits(vram->data(), vram->size()));
  EXPECT_EQ(std::memcmp(vram->data() + 100, bytes.data(), bytes.size()), 0);

  // Refused at submission: nothing of the batch is queued.
  const EngineStatus before = *g->Status();
  EXPECT_TRUE(absl::IsInvalidArgument(
      g->SubmitBatch(
           {Command::Fill(0, 1, 1),
            Command::Write(0, std::vector<uint8_t>(kMaxWriteBytes + 1))})
          .status()));
  EXPECT_EQ(g->Status()->tail, before.tail);
  // Refused at execution: recorded, and the device carries on.
  absl::StatusOr<uint64_t> bad = g->Submit(Command::Copy(0, kVram - 1, 2));
  ASSERT_TRUE(bad.ok());
  Drain(*g);
  EngineStatus s = *g->Status();
  EXPECT_EQ(s.error_count, 1u);
  EXPECT_EQ(s.last_error, EngineError::kOutOfBounds);
  EXPECT_EQ(s.last_error_seq, *bad);
  EXPECT_TRUE(absl::IsOutOfRange(g->Checksum(kVram - 1, 2).status()));
  EXPECT_TRUE(absl::IsOutOfRange(g->ReadVram(kVram, 1).status()));
  EXPECT_TRUE(g->ReadVram(kVram - 1, 1).ok());
}

TEST(Device, OneAgentAtATime) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto first = Agent(*dev);
  ASSERT_NE(first, nullptr);
  auto second = DeviceControl::Connect(dev->socket_path());
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  EXPECT_NE(Guest(*dev), nullptr);  // guests are not limited
  first.reset();
  // The device frees the slot when it sees the first agent's socket close.
  absl::StatusOr<std::unique_ptr<DeviceControl>> third;
  for (int i = 0; i < 200; ++i) {
    third = DeviceControl::Connect(dev->socket_path());
    if (third.ok()) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(third.ok()) << third.status();
}

TEST(Device, RolesAndHelloAreEnforced) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  using internal::Connection;
  auto guest = Connection::Open(dev->socket_path(), proto::Hello::Role::GUEST,
                                "raw", nullptr, nullptr);
  ASSERT_TRUE(guest.ok());
  codec::Message<proto::Request> q;
  q.mutable_root().setQuiesce();
  EXPECT_TRUE(absl::IsPermissionDenied((*guest)->Call(q).status()));
  auto agent = Connection::Open(dev->socket_path(), proto::Hello::Role::AGENT,
                                "raw", nullptr, nullptr);
  ASSERT_TRUE(agent.ok());
  codec::Message<proto::Request> f;
  f.mutable_root().setFence();
  EXPECT_TRUE(absl::IsPermissionDenied((*agent)->Call(f).status()));
  codec::Message<proto::Request> hello;
  hello.mutable_root().initHello();
  EXPECT_TRUE(absl::IsFailedPrecondition((*agent)->Call(hello).status()));
  // Info is for both.
  codec::Message<proto::Request> info;
  info.mutable_root().setInfo();
  EXPECT_TRUE((*guest)->Call(info).ok());
  // Refused requests leave the connection usable.
  codec::Message<proto::Request> rr;
  rr.mutable_root().setReadReg(kIndexId);
  EXPECT_EQ((*guest)->Call(rr)->root().getValue(), kId5);
}

// Sends `bytes` on a fresh raw connection and returns what comes back
// before the device closes it (or 200 ms pass).
std::string RawExchange(const std::string& path, const std::string& bytes) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
  timeval tv{0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, n);
  close(fd);
  return got;
}

TEST(Device, SurvivesHostileClients) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto frame = [](uint32_t length, const std::string& body) {
    std::string f(4, '\0');
    std::memcpy(f.data(), &length, 4);
    return f + body;
  };
  // A length far past the hello limit: dropped without an allocation.
  EXPECT_EQ(RawExchange(dev->socket_path(), frame(0xFFFFFFF0u, "")), "");
  // A hello that is not a Cap'n Proto message: answered, then dropped.
  EXPECT_FALSE(
      RawExchange(dev->socket_path(), frame(16, std::string(16, '\xEE')))
          .empty());
  // A segment table promising more than the frame holds.
  std::string table = {'\0', '\0', '\0', '\0', '\x7f', '\0', '\0', '\0'};
  EXPECT_FALSE(RawExchange(dev->socket_path(), frame(8, table)).empty());
  // A frame cut short by the client going away.
  RawExchange(dev->socket_path(), frame(100, "short"));
  // The device still serves everyone else.
  auto g = Guest(*dev);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(*g->ReadReg(kIndexId), kId5);
  EXPECT_NE(Agent(*dev), nullptr);
}

TEST(Device, AgentMapsVramReadOnlyAndTracksDirtyPages) {
  auto dev = StartDevice({.name = "src", .vram = "8M"});
  ASSERT_NE(dev, nullptr);
  auto agent = Agent(*dev);
  auto g = Guest(*dev);
  ASSERT_NE(agent, nullptr);
  absl::StatusOr<DeviceInfo> info = agent->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->name, "src");
  EXPECT_EQ(info->vram_bytes, kVram);
  EXPECT_EQ(info->page_bytes, kPageBytes);
  EXPECT_EQ(info->dispi_id, kId5);
  EXPECT_EQ(info->abi_major, 1u);
  EXPECT_FALSE(info->quiesced);
  EXPECT_FALSE(info->tracking);
  ASSERT_EQ(agent->vram().size(), kVram);

  // Only a fresh --incoming device lends VRAM for writing or takes state.
  EXPECT_TRUE(absl::IsFailedPrecondition(agent->mutable_vram().status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(agent->FetchDirtyBitmap().status()));

  ASSERT_TRUE(agent->StartDirtyTracking().ok());
  EXPECT_TRUE(agent->Info()->tracking);
  EXPECT_EQ(DirtyPages(*agent->FetchDirtyBitmap()).size(), kVram / kPageBytes);
  ASSERT_TRUE(g->SubmitBatch({Command::Write(5 * 4096 + 100, {1, 2, 3}),
                              Command::Fill(77 * 4096, 3 * 4096, 0xDEADBEEF),
                              Command::Copy(0, 2047 * 4096 + 4000, 96),
                              Command::Checksum(0, kVram)})
                  .ok());
  Drain(*g);
  const std::set<uint64_t> want = {5, 77, 78, 79, 2047};
  EXPECT_EQ(DirtyPages(*agent->FetchDirtyBitmap()), want);
  // The mapping is live VRAM.
  EXPECT_EQ(agent->vram()[5 * 4096 + 101], 2);
  uint32_t word;
  std::memcpy(&word, agent->vram().data() + 78 * 4096, 4);
  EXPECT_EQ(word, 0xDEADBEEF);
  ASSERT_TRUE(agent->StopDirtyTracking().ok());

  ASSERT_TRUE(agent->Quiesce().ok());
  EXPECT_TRUE(agent->Info()->quiesced);
  absl::StatusOr<std::vector<uint8_t>> regs = agent->SaveRegisters();
  ASSERT_TRUE(regs.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(agent->LoadRegisters(*regs)));
  ASSERT_TRUE(agent->Resume().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(agent->SaveRing().status()));
}

TEST(Device, GuestWaitsWhileQuiesced) {
  auto dev = StartDevice();
  ASSERT_NE(dev, nullptr);
  auto agent = Agent(*dev);
  auto g = Guest(*dev);
  ASSERT_TRUE(agent->Quiesce().ok());
  absl::Notification done;
  std::thread guest([&] {
    EXPECT_TRUE(g->Submit(Command::Fill(0, 16, 0x11111111)).ok());
    Drain(*g);
    done.Notify();
  });
  EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  EXPECT_EQ(agent->vram()[0], 0);
  ASSERT_TRUE(agent->Resume().ok());
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  guest.join();
  EXPECT_EQ(agent->vram()[0], 0x11);
}

// The script both the migrated and the reference device run.
std::vector<Command> Script() {
  std::vector<Command> s;
  for (uint32_t i = 0; i < 120; ++i) {
    switch (i % 7) {
      case 0:
        s.push_back(Command::Fill(i * 20000, 50000, i * 0x01020304u));
        break;
      case 1:
        s.push_back(Command::Copy(i * 1000, (4 << 20) + i * 64, 100000));
        break;
      case 2:
        s.push_back(Command::Blit(
            {i, 2 * i, 300 + i, 400, 200, 100, static_cast<Rop>(i % 5)}));
        break;
      case 3:
        s.push_back(Command::Checksum(i * 4096, 1 << 20));
        break;
      case 4:
        s.push_back(Command::Write(i * 9999, std::vector<uint8_t>(5000, i)));
        break;
      case 5:
        s.push_back(Command::Fence(i));
        break;
      case 6:
        s.push_back(Command::Fill(kVram - i, 2 * i, 0));
        break;  // error
    }
  }
  return s;
}

TEST(Migration, IncomingDeviceContinuesTheQueuedCommands) {
  const std::vector<Command> script = Script();

  // Source: a slow engine, so that most of the script is still queued
  // when the agent quiesces.
  auto src = StartDevice({.name = "src", .command_latency_us = 2000});
  ASSERT_NE(src, nullptr);
  auto src_guest = Guest(*src);
  auto src_agent = Agent(*src);
  SetMode(*src_guest);
  ASSERT_TRUE(src_guest->SubmitBatch(script).ok());
  // Cut after a few commands (so checksum results travel too), long before
  // the last: the source needs 240 ms for the script.
  while (src_guest->Status()->head < 4) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_TRUE(src_agent->Quiesce().ok());
  const EngineStatus cut = *src_guest->Status();
  ASSERT_LT(cut.head, cut.tail) << "nothing left queued to migrate";
  absl::StatusOr<std::vector<uint8_t>> regs = src_agent->SaveRegisters();
  absl::StatusOr<std::vector<uint8_t>> ring = src_agent->SaveRing();
  ASSERT_TRUE(regs.ok() && ring.ok());

  auto dst = StartDevice({.name = "dst", .incoming = true});
  ASSERT_NE(dst, nullptr);
  auto dst_agent = Agent(*dst);
  ASSERT_TRUE(dst_agent->Info()->quiesced);
  absl::StatusOr<absl::Span<uint8_t>> vram = dst_agent->mutable_vram();
  ASSERT_TRUE(vram.ok()) << vram.status();
  ASSERT_EQ(vram->size(), kVram);
  std::memcpy(vram->data(), src_agent->vram().data(), kVram);
  ASSERT_TRUE(dst_agent->LoadRegisters(*regs).ok());
  ASSERT_TRUE(dst_agent->LoadRing(*ring).ok());
  ASSERT_TRUE(dst_agent->Resume().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(dst_agent->mutable_vram().status()));
  src.reset();  // the source is gone for good

  auto dst_guest = Guest(*dst);
  Drain(*dst_guest);

  auto ref = StartDevice({.name = "ref"});
  ASSERT_NE(ref, nullptr);
  auto ref_guest = Guest(*ref);
  auto ref_agent = Agent(*ref);
  SetMode(*ref_guest);
  ASSERT_TRUE(ref_guest->SubmitBatch(script).ok());
  Drain(*ref_guest);

  EXPECT_TRUE(std::memcmp(dst_agent->vram().data(), ref_agent->vram().data(),
                          kVram) == 0);
  const EngineStatus a = *dst_guest->Status(), b = *ref_guest->Status();
  EXPECT_EQ(a.head, b.head);
  EXPECT_EQ(a.error_count, b.error_count);
  EXPECT_EQ(a.last_error_seq, b.last_error_seq);
  EXPECT_EQ(a.completed_fence, b.completed_fence);
  for (uint16_t i = 0; i <= kIndexVideoMemory64k; ++i) {
    EXPECT_EQ(*dst_guest->ReadReg(i), *ref_guest->ReadReg(i)) << i;
  }
  // Checksums computed before the cut travelled in the ring blob.
  for (uint64_t seq = 0; seq < script.size(); ++seq) {
    if (script[seq].op != CommandOp::kChecksum) continue;
    absl::StatusOr<uint64_t> x = dst_guest->TakeChecksum(seq);
    absl::StatusOr<uint64_t> y = ref_guest->TakeChecksum(seq);
    ASSERT_TRUE(x.ok() && y.ok()) << seq << " " << x.status() << y.status();
    EXPECT_EQ(*x, *y) << seq;
  }
}

TEST(Migration, DamagedBlobsAreRefusedOverTheSocket) {
  auto src = StartDevice({.name = "src"});
  ASSERT_NE(src, nullptr);
  auto src_agent = Agent(*src);
  SetMode(*Guest(*src));
  ASSERT_TRUE(src_agent->Quiesce().ok());
  std::vector<uint8_t> regs = *src_agent->SaveRegisters();
  std::vector<uint8_t> ring = *src_agent->SaveRing();

  auto dst = StartDevice({.name = "dst", .incoming = true});
  ASSERT_NE(dst, nullptr);
  auto dst_agent = Agent(*dst);
  const std::vector<uint8_t> regs_before = *dst_agent->SaveRegisters();
  const std::vector<uint8_t> ring_before = *dst_agent->SaveRing();

  std::vector<uint8_t> bad = regs;
  bad[0] ^= 1;
  EXPECT_TRUE(absl::IsInvalidArgument(dst_agent->LoadRegisters(bad)));
  bad = regs;
  bad[8] = 9;
  EXPECT_TRUE(absl::IsUnimplemented(dst_agent->LoadRegisters(bad)));
  bad = ring;
  bad.back() ^= 0x80;
  EXPECT_TRUE(absl::IsDataLoss(dst_agent->LoadRing(bad)));
  EXPECT_TRUE(absl::IsInvalidArgument(dst_agent->LoadRing(regs)));
  // A device of another VRAM size is not a destination for these registers.
  auto small = StartDevice({.name = "small", .vram = "4M", .incoming = true});
  ASSERT_NE(small, nullptr);
  EXPECT_TRUE(absl::IsFailedPrecondition(Agent(*small)->LoadRegisters(regs)));

  EXPECT_EQ(*dst_agent->SaveRegisters(), regs_before);
  EXPECT_EQ(*dst_agent->SaveRing(), ring_before);
  EXPECT_TRUE(dst_agent->LoadRegisters(regs).ok());
  EXPECT_TRUE(dst_agent->LoadRing(ring).ok());
  EXPECT_EQ(*dst_agent->SaveRegisters(), regs);
}

}  // namespace
}  // namespace vgpu::agents::emulated
