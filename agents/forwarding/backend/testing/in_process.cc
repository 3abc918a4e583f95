#include "agents/forwarding/backend/testing/in_process.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::testing {

absl::StatusOr<std::unique_ptr<InProcessSession>> InProcessSession::Start(
    uint64_t id, uint64_t memory_limit, const std::string& guest_address) {
  static std::atomic<int> counter{0};
  // Bazel sandboxes give parallel test runs the same pids: a fresh folder
  // keeps their sockets apart.
  char dir[] = "/tmp/vgpu-fwd-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
  std::unique_ptr<InProcessSession> p(new InProcessSession());
  p->dir_ = dir;
  p->options_.session = id;
  p->options_.token = backend::RandomToken();
  p->options_.control_address =
      absl::StrCat("unix:", dir, "/s", counter.fetch_add(1), ".ctl");
  p->options_.guest_address = guest_address;
  p->options_.memory_limit = memory_limit;
  executor::ExecutorOptions eo;
  eo.memory_limit_bytes = memory_limit;
  auto exec = executor::Executor::Create(eo);
  if (!exec.ok()) return exec.status();
  backend::SessionIdentity ident;
  ident.id = id;
  ident.token = p->options_.token;
  ident.backend = "in-process test backend";
  p->session_ = std::make_unique<backend::Session>(ident, std::move(*exec));
  auto l = Listener::Listen(p->options_.control_address);
  if (!l.ok()) return l.status();
  p->control_ = std::move(*l);
  InProcessSession* raw = p.get();
  p->control_thread_ = std::thread([raw] {
    while (true) {
      auto c = raw->control_->Accept();
      if (!c.ok()) return;
      backend::ServeSessionControl(**c, *raw->session_, raw->options_);
    }
  });
  return p;
}

InProcessSession::~InProcessSession() {
  control_->Close();
  if (control_thread_.joinable()) control_thread_.join();
  session_.reset();
  rmdir(dir_.c_str());
}

absl::StatusOr<std::unique_ptr<RawGuest>> InProcessSession::Connect(
    const std::string& vm, bool resume) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError("socketpair");
  }
  auto server = std::make_unique<Stream>(sv[1], "test guest");
  backend::Session* session = session_.get();
  // The backend side reads the hello as the supervisor would, then hands
  // the connection to the session.
  std::thread admit([session, s = std::move(server)]() mutable {
    uint64_t payload = 0;
    auto hello = RecvFrame<proto::Request>(*s, &payload);
    if (!hello.ok() || !hello->root().isHello()) return;
    (void)session->Attach(std::move(s), hello->root());
  });
  const backend::SessionIdentity id = session_->identity();
  auto g = RawGuest::Hello(std::make_unique<Stream>(sv[0], "test backend"), vm,
                           resume ? id.id : 0, resume ? id.token : "");
  admit.join();
  return g;
}

}  // namespace vgpu::forwarding::testing
