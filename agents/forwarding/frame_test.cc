#include "agents/forwarding/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <thread>

#include "agents/forwarding/transport.h"
#include "gtest/gtest.h"

namespace vgpu::forwarding {
namespace {

std::pair<std::unique_ptr<Stream>, std::unique_ptr<Stream>> Pair() {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  return {std::make_unique<Stream>(sv[0], "a"),
          std::make_unique<Stream>(sv[1], "b")};
}

TEST(FrameTest, MessageAndPayloadArriveIntact) {
  auto [a, b] = Pair();
  std::vector<uint8_t> bulk(3 << 20);
  for (size_t i = 0; i < bulk.size(); ++i) bulk[i] = static_cast<uint8_t>(i * 7);
  std::thread writer([&, &a = a] {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Request>();
    r.setSeq(42);
    auto w = r.initEnqueue();
    w.setQueue(0x10001);
    w.initWriteBuffer().setSize(bulk.size());
    iovec v[2] = {{bulk.data(), 1000}, {bulk.data() + 1000, bulk.size() - 1000}};
    ASSERT_TRUE(SendFrame(*a, m, absl::MakeConstSpan(v, 2)).ok());
  });
  uint64_t payload = 0;
  auto msg = RecvFrame<proto::Request>(*b, &payload);
  ASSERT_TRUE(msg.ok()) << msg.status();
  EXPECT_EQ(msg->root().getSeq(), 42u);
  ASSERT_TRUE(msg->root().isEnqueue());
  EXPECT_EQ(msg->root().getEnqueue().getWriteBuffer().getSize(), bulk.size());
  ASSERT_EQ(payload, bulk.size());
  std::vector<uint8_t> got(payload);
  ASSERT_TRUE(b->ReadFull(got.data(), got.size()).ok());
  EXPECT_EQ(got, bulk);
  writer.join();
}

TEST(FrameTest, BadMagicIsRefusedWithWhatItSaw) {
  auto [a, b] = Pair();
  const char junk[] = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_TRUE(a->Write(junk, 16).ok());
  uint64_t payload = 0;
  auto msg = RecvFrame<proto::Request>(*b, &payload);
  ASSERT_FALSE(msg.ok());
  EXPECT_TRUE(absl::IsDataLoss(msg.status()));
  EXPECT_NE(msg.status().message().find("not VCL1"), std::string::npos)
      << msg.status();
}

TEST(FrameTest, OversizedAndMisalignedMessagesAreRefused) {
  for (uint32_t bytes : {kMaxMessageBytes + 8, 12u, 0u}) {
    auto [a, b] = Pair();
    uint8_t h[kFrameHeaderBytes];
    EncodeFrameHeader({bytes, 0}, h);
    ASSERT_TRUE(a->Write(h, sizeof(h)).ok());
    uint64_t payload = 0;
    auto msg = RecvFrame<proto::Request>(*b, &payload);
    ASSERT_FALSE(msg.ok()) << bytes;
    EXPECT_NE(msg.status().message().find("multiple of 8"), std::string::npos)
        << msg.status();
  }
}

TEST(FrameTest, GarbageMessageBodyIsDataLoss) {
  auto [a, b] = Pair();
  uint8_t h[kFrameHeaderBytes];
  EncodeFrameHeader({64, 0}, h);
  std::vector<uint8_t> body(64, 0xff);
  ASSERT_TRUE(a->Write(h, sizeof(h)).ok());
  ASSERT_TRUE(a->Write(body.data(), body.size()).ok());
  uint64_t payload = 0;
  auto msg = RecvFrame<proto::Request>(*b, &payload);
  ASSERT_FALSE(msg.ok());
  EXPECT_TRUE(absl::IsDataLoss(msg.status())) << msg.status();
}

TEST(FrameTest, CleanCloseBetweenFramesVersusCutFrame) {
  {
    auto [a, b] = Pair();
    a.reset();
    uint64_t payload = 0;
    auto msg = RecvFrame<proto::Request>(*b, &payload);
    EXPECT_TRUE(IsClosedByPeer(msg.status())) << msg.status();
  }
  {
    auto [a, b] = Pair();
    uint8_t h[kFrameHeaderBytes];
    EncodeFrameHeader({64, 0}, h);
    ASSERT_TRUE(a->Write(h, sizeof(h)).ok());
    a.reset();
    uint64_t payload = 0;
    auto msg = RecvFrame<proto::Request>(*b, &payload);
    EXPECT_TRUE(absl::IsDataLoss(msg.status())) << msg.status();
  }
}

TEST(TransportTest, TcpAndUnixListenDialAndAddresses) {
  const std::string sock = "/tmp/vgpu-frame-test-" + std::to_string(getpid());
  for (const std::string& addr : {std::string("tcp:127.0.0.1:0"), "unix:" + sock}) {
    auto l = Listener::Listen(addr);
    ASSERT_TRUE(l.ok()) << l.status();
    if (addr.rfind("tcp:", 0) == 0) {
      EXPECT_NE((*l)->address(), "tcp:127.0.0.1:0");
    }
    std::thread t([&] {
      auto s = (*l)->Accept();
      ASSERT_TRUE(s.ok());
      char c;
      ASSERT_TRUE((*s)->ReadFull(&c, 1).ok());
      ASSERT_TRUE((*s)->Write(&c, 1).ok());
    });
    auto c = Dial((*l)->address(), absl::Seconds(2));
    ASSERT_TRUE(c.ok()) << c.status();
    char x = 'x', y = 0;
    ASSERT_TRUE((*c)->Write(&x, 1).ok());
    ASSERT_TRUE((*c)->ReadFull(&y, 1).ok());
    EXPECT_EQ(y, 'x');
    t.join();
  }
  // The unix socket file went with the listener; dialing now fails fast.
  auto gone = Dial("unix:" + sock, absl::Seconds(1));
  EXPECT_TRUE(absl::IsUnavailable(gone.status())) << gone.status();
}

TEST(TransportTest, BadAddressesSayWhatIsExpected) {
  for (const char* a : {"vsock:3:9", "tcp:nohost", "tcp:1.2.3.4:99999", "unix:"}) {
    auto d = Dial(a, absl::Seconds(1));
    ASSERT_FALSE(d.ok()) << a;
    EXPECT_TRUE(absl::IsInvalidArgument(d.status())) << a << d.status();
  }
  const std::string file = "/tmp/vgpu-frame-test-file-" + std::to_string(getpid());
  std::ofstream(file) << "keep me";
  auto l = Listener::Listen("unix:" + file);
  EXPECT_TRUE(absl::IsAlreadyExists(l.status())) << l.status();
  EXPECT_EQ(access(file.c_str(), F_OK), 0);
  unlink(file.c_str());
}

}  // namespace
}  // namespace vgpu::forwarding
