// Client without OpenCL: a scripted backend speaks raw frames, so the
// session logic (seq matching, resume after `moved`, the reconnect window,
// refusals) is tested on its own.
#include "agents/forwarding/guest/client.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"
#include "agents/forwarding/transport.h"
#include "gtest/gtest.h"

namespace vgpu::forwarding::guest {
namespace {

std::string Sock(const char* tag) {
  static std::atomic<int> n{0};
  // Unique even when sandboxed runs share /tmp and pids.
  static const std::string dir = [] {
    char templ[] = "/tmp/vgpu-ct-XXXXXX";
    const char* d = mkdtemp(templ);
    return std::string(d ? d : "/tmp");
  }();
  return absl::StrCat("unix:", dir, "/", tag, n++);
}

// Answers a hello on `s`; returns the hello.
codec::Message<proto::Request> AnswerHello(Stream& s, int32_t code = 0) {
  uint64_t p = 0;
  auto h = RecvFrame<proto::Request>(s, &p);
  EXPECT_TRUE(h.ok()) << h.status();
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Reply>();
  r.setCode(code);
  if (code != 0) {
    r.setMessage("go away");
  } else {
    auto hr = r.initHello();
    hr.setSession(9);
    hr.setToken(kj::StringPtr("tok").asBytes());
    hr.setBackend("scripted");
  }
  EXPECT_TRUE(SendFrame(s, m).ok());
  return std::move(*h);
}

void Reply(Stream& s, uint64_t seq, int32_t code) {
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Reply>();
  r.setSeq(seq);
  r.setCode(code);
  ASSERT_TRUE(SendFrame(s, m).ok());
}

TEST(ClientTest, RefusedHelloIsAnErrorWithTheMessage) {
  auto l = Listener::Listen(Sock("refuse"));
  ASSERT_TRUE(l.ok());
  std::thread server([&] {
    auto s = (*l)->Accept();
    ASSERT_TRUE(s.ok());
    AnswerHello(**s, -30);
  });
  ClientOptions o;
  o.address = (*l)->address();
  auto c = Client::Connect(o);
  server.join();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("go away"), std::string::npos) << c.status();
}

TEST(ClientTest, MovedResumesAndSendsUnansweredRequestsAgain) {
  auto a = Listener::Listen(Sock("a"));
  auto b = Listener::Listen(Sock("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  std::thread server([&] {
    auto s = (*a)->Accept();
    ASSERT_TRUE(s.ok());
    AnswerHello(**s);
    uint64_t p = 0;
    auto req = RecvFrame<proto::Request>(**s, &p);  // unanswered here
    ASSERT_TRUE(req.ok());
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Reply>();
    auto mv = r.initMoved();
    mv.setAddress((*b)->address());
    mv.setSession(9);
    mv.setToken(kj::StringPtr("tok").asBytes());
    ASSERT_TRUE(SendFrame(**s, m).ok());
    auto t = (*b)->Accept();
    ASSERT_TRUE(t.ok());
    auto hello = AnswerHello(**t);
    EXPECT_EQ(hello.root().getHello().getResumeSession(), 9u);
    EXPECT_EQ(hello.root().getHello().getLastSeqAnswered(), 0u);
    auto again = RecvFrame<proto::Request>(**t, &p);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->root().getSeq(), req->root().getSeq());
    EXPECT_TRUE(again->root().isPing());
    Reply(**t, again->root().getSeq(), 0);
    auto next = RecvFrame<proto::Request>(**t, &p);
    ASSERT_TRUE(next.ok());
    Reply(**t, next->root().getSeq(), -36);
  });
  ClientOptions o;
  o.address = (*a)->address();
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  Call ping;
  ping.request.setPing();
  EXPECT_EQ((*c)->Run(ping), 0);
  Call flush;
  flush.request.setFlush(1);
  EXPECT_EQ((*c)->Run(flush), -36);
  EXPECT_EQ((*c)->connections(), 2);
  server.join();
}

TEST(ClientTest, ABrokenConnectionFailsCallsAfterTheWindow) {
  auto a = Listener::Listen(Sock("gone"));
  ASSERT_TRUE(a.ok());
  std::promise<void> got_request;
  std::thread server([&] {
    auto s = (*a)->Accept();
    ASSERT_TRUE(s.ok());
    AnswerHello(**s);
    uint64_t p = 0;
    auto req = RecvFrame<proto::Request>(**s, &p);
    got_request.set_value();
    (*a)->Close();
    (*s)->Shutdown();
  });
  ClientOptions o;
  o.address = (*a)->address();
  o.reconnect_window = absl::Milliseconds(500);
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok());
  const auto start = std::chrono::steady_clock::now();
  Call ping;
  ping.request.setPing();
  EXPECT_EQ((*c)->Run(ping), kBackendLost);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(s, 0.4);
  EXPECT_LT(s, 5.0);
  EXPECT_TRUE((*c)->lost());
  Call later;
  later.request.setPing();
  EXPECT_EQ((*c)->Run(later), kBackendLost);
  server.join();
}

}  // namespace
}  // namespace vgpu::forwarding::guest
