#include "agents/forwarding/guest/testing/test_server.h"

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::testing {
namespace {

class StreamSource : public executor::PayloadSource {
 public:
  StreamSource(Stream& s, uint64_t n) : s_(s), n_(n) {}
  uint64_t size() const override { return n_; }
  absl::Status ReadInto(void* dst, size_t n) override {
    return s_.ReadFull(dst, n);
  }

 private:
  Stream& s_;
  uint64_t n_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TestServer>> TestServer::Start(
    const std::string& address, std::shared_ptr<TestSession> session) {
  std::unique_ptr<TestServer> s(new TestServer);
  auto l = Listener::Listen(address);
  if (!l.ok()) return l.status();
  s->listener_ = std::move(*l);
  s->address_ = s->listener_->address();
  s->session_ = std::move(session);
  s->acceptor_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

TestServer::~TestServer() {
  Kill();
  if (acceptor_.joinable()) acceptor_.join();
  std::vector<std::thread> threads;
  {
    absl::MutexLock l(&mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

void TestServer::MoveOnNextRequest(const std::string& address) {
  absl::MutexLock l(&mu_);
  move_to_ = address;
}

void TestServer::StallOnNextRequest() {
  absl::MutexLock l(&mu_);
  stall_ = true;
}

void TestServer::Kill() {
  absl::MutexLock l(&mu_);
  killed_ = true;
  if (listener_) listener_->Close();
  for (auto& s : streams_) s->Shutdown();
}

void TestServer::AcceptLoop() {
  while (true) {
    auto s = listener_->Accept();
    if (!s.ok()) return;
    absl::MutexLock l(&mu_);
    if (killed_) return;
    Stream* raw = s->get();
    streams_.push_back(std::move(*s));
    threads_.emplace_back([this, raw] { Serve(raw); });
  }
}

void TestServer::Serve(Stream* stream) {
  absl::Mutex write_mu;
  uint64_t payload = 0;
  auto hello = RecvFrame<proto::Request>(*stream, &payload);
  if (!hello.ok() || !hello->root().isHello() || payload != 0) return;
  ++hellos_;
  {
    auto h = hello->root().getHello();
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Reply>();
    r.setSeq(hello->root().getSeq());
    const std::string token(reinterpret_cast<const char*>(h.getResumeToken().begin()),
                            h.getResumeToken().size());
    if (h.getResumeSession() != 0 &&
        (h.getResumeSession() != session_->id || token != session_->token)) {
      r.setCode(-30);  // CL_INVALID_VALUE
      r.setMessage(absl::StrCat("no session ", h.getResumeSession(),
                                " here, or a wrong token"));
    } else {
      auto hr = r.initHello();
      hr.setSession(session_->id);
      hr.setToken(kj::arrayPtr(
          reinterpret_cast<const capnp::byte*>(session_->token.data()),
          session_->token.size()));
      hr.initAbi().setMajor(proto::ABI_MAJOR);
      hr.setBackend(absl::StrCat("vgpu-cl-testserver on ",
                                 session_->executor->platform_name()));
    }
    if (!SendFrame(*stream, m).ok()) return;
    if (r.getCode() != 0) return;
  }
  session_->executor->SetNotifier([stream, &write_mu](uint64_t cookie,
                                                      cl_int status) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Reply>();
    r.setSeq(0);
    auto c = r.initCallback();
    c.setCookie(cookie);
    c.setStatus(status);
    absl::MutexLock l(&write_mu);
    (void)SendFrame(*stream, m);
  });
  while (true) {
    auto req = RecvFrame<proto::Request>(*stream, &payload);
    if (!req.ok()) break;
    std::string move_to;
    bool stall = false;
    {
      absl::MutexLock l(&mu_);
      move_to.swap(move_to_);
      stall = stall_;
      stall_ = false;
    }
    if (stall) {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(&killed_));
      break;
    }
    if (!move_to.empty()) {
      (void)SkipPayload(*stream, payload);
      capnp::MallocMessageBuilder m;
      auto r = m.initRoot<proto::Reply>();
      r.setSeq(0);
      auto mv = r.initMoved();
      mv.setAddress(move_to);
      mv.setSession(session_->id);
      mv.setToken(kj::arrayPtr(
          reinterpret_cast<const capnp::byte*>(session_->token.data()),
          session_->token.size()));
      absl::MutexLock l(&write_mu);
      (void)SendFrame(*stream, m);
      stream->Shutdown();
      break;
    }
    ++requests_;
    capnp::MallocMessageBuilder m;
    auto reply = m.initRoot<proto::Reply>();
    reply.setSeq(req->root().getSeq());
    StreamSource src(*stream, payload);
    bool sent = false;
    absl::Status s = session_->executor->Execute(
        req->root(), src, reply, m,
        [&](capnp::MessageBuilder& msg, const std::vector<iovec>& p) {
          sent = true;
          absl::MutexLock l(&write_mu);
          return SendFrame(*stream, msg, p);
        },
        /*replay=*/false);
    if (!s.ok()) break;
    if (!sent) {
      absl::MutexLock l(&write_mu);
      if (!SendFrame(*stream, m).ok()) break;
    }
  }
  // Callbacks after this connection must not use its stream.
  session_->executor->SetNotifier(nullptr);
}

}  // namespace vgpu::forwarding::testing
