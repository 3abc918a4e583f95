#include "agents/forwarding/backend/worker.h"

#include <CL/cl.h>
#include <CL/cl_ext.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agents/forwarding/backend/control.capnp.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/backend/session.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::backend {
namespace {

using control::ControlReply;
using control::ControlRequest;

constexpr char kVersion[] = "1.0.0";
constexpr uint32_t kMaxHelloBytes = 64 * 1024;

void Log(const char* who, const std::string& line) {
  std::fprintf(stderr, "vgpu-cl-backend %s: %s\n", who, line.c_str());
}

// --- hand-over of guest connections between the processes -------------
// One datagram-like message on a stream socketpair: u32 length, the hello
// frame's bytes, and the guest's fd as SCM_RIGHTS with the first byte.

absl::Status PassGuest(int channel, int guest_fd,
                       const std::vector<uint8_t>& hello) {
  std::vector<uint8_t> buf(4 + hello.size());
  const uint32_t n = static_cast<uint32_t>(hello.size());
  std::memcpy(buf.data(), &n, 4);
  std::memcpy(buf.data() + 4, hello.data(), hello.size());
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &guest_fd, sizeof(int));
  ssize_t sent;
  do {
    sent = sendmsg(channel, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent != static_cast<ssize_t>(buf.size())) {
    return absl::UnavailableError("worker's hand-over channel is gone");
  }
  return absl::OkStatus();
}

absl::Status ReceiveGuest(int channel, int* guest_fd,
                          std::vector<uint8_t>* hello) {
  uint8_t head[4];
  iovec iov{head, 4};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t got;
  do {
    got = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  } while (got < 0 && errno == EINTR);
  if (got != 4) return absl::CancelledError("supervisor channel closed");
  *guest_fd = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      std::memcpy(guest_fd, CMSG_DATA(c), sizeof(int));
    }
  }
  uint32_t n;
  std::memcpy(&n, head, 4);
  if (n > kMaxHelloBytes || *guest_fd < 0) {
    if (*guest_fd >= 0) close(*guest_fd);
    return absl::DataLossError("bad hand-over message from the supervisor");
  }
  hello->resize(n);
  // Exactly this message's bytes: the next hand-over may already be
  // waiting behind them (so no buffered Stream here).
  size_t done = 0;
  while (done < n) {
    const ssize_t r = recv(channel, hello->data() + done, n - done, MSG_WAITALL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      close(*guest_fd);
      return absl::DataLossError("supervisor channel cut inside a hand-over");
    }
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

void FillInfo(Session& session, const WorkerOptions& o,
              control::SessionInfo::Builder out) {
  const GuestInfo g = session.guest();
  const SessionIdentity id = session.identity();
  out.setSession(id.id);
  out.setToken(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(id.token.data()),
                            id.token.size()));
  auto gi = out.initGuest();
  gi.setVm(g.vm);
  gi.setLibrary(g.library);
  gi.initAbi().setMajor(g.abi_major);
  gi.getAbi().setMinor(g.abi_minor);
  auto fl = gi.initFeatures(static_cast<unsigned>(g.features.size()));
  for (size_t i = 0; i < g.features.size(); ++i) fl.set(i, g.features[i]);
  out.setControl(o.control_address);
  out.setGuestAddress(o.guest_address);
  out.setMemoryBytes(session.memory_bytes());
  out.setLogEntries(session.log_entries());
  out.setLogBytes(session.log_bytes());
  out.setCalls(session.calls());
  out.setAttached(session.attached());
  out.setFrozen(session.frozen());
  out.setPlatform(session.executor().platform_name());
  out.setDevice(session.executor().device_name());
  out.setPid(getpid());
  out.setMemoryLimit(o.memory_limit);
  const std::vector<std::string> req = session.required_features();
  auto rl = out.initRequiredFeatures(static_cast<unsigned>(req.size()));
  for (size_t i = 0; i < req.size(); ++i) rl.set(i, req[i]);
}

}  // namespace

bool ServeSessionControl(Stream& stream, Session& session,
                         const WorkerOptions& o) {
  // Kept across requests: a restore writes a large object in many pieces,
  // and fresh buffers would be cleared and faulted in for every one.
  std::vector<uint8_t> out;  // reply payload
  std::vector<uint8_t> in;   // request payload
  while (true) {
    out.clear();
    uint64_t payload = 0;
    auto req = RecvFrame<ControlRequest>(stream, &payload);
    if (!req.ok()) return false;
    capnp::MallocMessageBuilder reply_msg;
    ControlReply::Builder reply = reply_msg.initRoot<ControlReply>();
    absl::Status s;
    if (payload > (1ull << 34)) return false;
    in.resize(payload);
    if (payload > 0 && !stream.ReadFull(in.data(), in.size()).ok()) {
      return false;
    }
    bool quit = false;
    ControlRequest::Reader r = req->root();
    switch (r.which()) {
      case ControlRequest::DESCRIBE:
        FillInfo(session, o, reply.initSession());
        break;
      case ControlRequest::FREEZE:
        s = session.Freeze();
        break;
      case ControlRequest::THAW:
        session.Thaw();
        break;
      case ControlRequest::SAVE_LOG: {
        auto log = session.SaveLog();
        if (log.ok()) {
          out = std::move(*log);
        } else {
          s = log.status();
        }
        break;
      }
      case ControlRequest::MEMS: {
        std::vector<MemState> mems = session.Mems(r.getMems());
        auto list = reply.initMems(static_cast<unsigned>(mems.size()));
        for (size_t i = 0; i < mems.size(); ++i) {
          list[i].setId(mems[i].info.id);
          list[i].setType(mems[i].info.type);
          list[i].setBytes(mems[i].info.bytes);
          list[i].setDirty(mems[i].dirty);
        }
        break;
      }
      case ControlRequest::READ_MEM: {
        auto g = r.getReadMem();
        if (g.getBytes() > (1ull << 32)) {
          s = absl::InvalidArgumentError("readMem: at most 4 GiB per call");
          break;
        }
        out.resize(g.getBytes());
        s = session.ReadMem(g.getId(), out.data(), g.getOffset(), out.size());
        if (!s.ok()) out.clear();
        break;
      }
      case ControlRequest::REPLAY:
        s = session.Replay(in);
        break;
      case ControlRequest::WRITE_MEM: {
        auto g = r.getWriteMem();
        s = session.WriteMem(g.getId(), in.data(), g.getOffset(), in.size());
        break;
      }
      case ControlRequest::ACTIVATE: {
        auto a = r.getActivate();
        auto g = a.getGuest();
        GuestInfo info;
        info.vm = g.getVm();
        info.library = g.getLibrary();
        info.abi_major = g.getAbi().getMajor();
        info.abi_minor = g.getAbi().getMinor();
        for (auto f : g.getFeatures()) info.features.push_back(f);
        s = session.Activate(
            info, a.getSession(),
            std::string(reinterpret_cast<const char*>(a.getToken().begin()),
                        a.getToken().size()));
        break;
      }
      case ControlRequest::HAND_OFF:
        s = session.HandOff(r.getHandOff());
        break;
      case ControlRequest::QUIT:
        quit = true;
        break;
      default:
        s = absl::InvalidArgumentError(
            "this is a session worker: listSessions and createTarget go to "
            "the supervisor's control socket");
    }
    if (!s.ok()) {
      reply.setCode(static_cast<int>(s.code()));
      reply.setError(std::string(s.message()));
    }
    iovec v{out.data(), out.size()};
    if (!SendFrame(stream, reply_msg,
                   out.empty() ? absl::Span<const iovec>()
                               : absl::MakeConstSpan(&v, 1))
             .ok()) {
      return quit;
    }
    if (quit) return true;
  }
}

int RunWorker(const WorkerOptions& o) {
  const std::string who = absl::StrCat("session ", o.session);
  executor::ExecutorOptions eo;
  eo.memory_limit_bytes = o.memory_limit;
  auto exec = executor::Executor::Create(eo);
  if (!exec.ok()) {
    Log(who.c_str(), absl::StrCat("cannot open the OpenCL platform: ",
                                  exec.status().message()));
    return 1;
  }
  SessionIdentity id;
  id.id = o.session;
  id.token = o.token;
  id.backend = absl::StrCat("vgpu-cl-backend ", kVersion, " on ",
                            (*exec)->platform_name());
  Session session(id, std::move(*exec));

  auto listener = Listener::Listen(o.control_address);
  if (!listener.ok()) {
    Log(who.c_str(), std::string(listener.status().message()));
    return 1;
  }
  // Ready: the supervisor waits for this byte before it answers anyone.
  const char ready = 'R';
  if (write(o.attach_fd, &ready, 1) != 1) return 1;

  std::atomic<bool> quit{false};
  // Each control connection has a thread: a tool may hold one open while
  // the agent it drives opens another.
  std::thread control([&] {
    while (!quit.load()) {
      auto c = (*listener)->Accept();
      if (!c.ok()) return;
      std::shared_ptr<Stream> conn(std::move(*c));
      std::thread([&, conn] {
        if (ServeSessionControl(*conn, session, o)) {
          quit.store(true);
          // Unblock the main thread's wait.
          shutdown(o.attach_fd, SHUT_RDWR);
        }
      }).detach();
    }
  });
  control.detach();
  std::thread attach([&] {
    while (true) {
      int fd = -1;
      std::vector<uint8_t> hello_bytes;
      if (!ReceiveGuest(o.attach_fd, &fd, &hello_bytes).ok()) {
        // The supervisor is gone, or `quit`: end the session.
        quit.store(true);
        session.End();
        return;
      }
      auto hello = codec::DecodeMessage<proto::Request>(hello_bytes,
                                                        FrameLimits());
      auto stream = std::make_unique<Stream>(fd, "guest");
      if (!hello.ok() || !hello->root().isHello()) {
        stream->Shutdown();
        continue;
      }
      absl::Status s = session.Attach(std::move(stream), hello->root());
      if (!s.ok()) Log(who.c_str(), std::string(s.message()));
    }
  });
  attach.detach();
  if (o.call_limit_ms > 0) {
    // The watchdog: the OpenCL runtime cannot cancel a running kernel, so
    // a call past its limit ends the whole worker. Only this session is
    // lost; its guest's calls fail with CL_OUT_OF_RESOURCES.
    std::thread([&session, &o, who] {
      const absl::Duration limit = absl::Milliseconds(o.call_limit_ms);
      while (true) {
        absl::SleepFor(absl::Milliseconds(100));
        const absl::Duration d = session.LongestCall();
        if (d > limit) {
          Log(who.c_str(),
              absl::StrCat("a call has run for ", absl::FormatDuration(d),
                           ", past the limit of ", absl::FormatDuration(limit),
                           ": ending the session"));
          std::fflush(stderr);
          _exit(3);
        }
      }
    }).detach();
  }
  session.WaitDetached();
  (*listener)->Close();
  std::fflush(stderr);
  _exit(0);
}

// --- supervisor --------------------------------------------------------

namespace {

struct Worker {
  pid_t pid = 0;
  int channel = -1;
  uint64_t session = 0;
  std::string control;
  std::string token;
  bool target = false;
};

class Supervisor {
 public:
  explicit Supervisor(const SupervisorOptions& o) : o_(o) {}

  int Run() {
    signal(SIGPIPE, SIG_IGN);
    auto guests = Listener::Listen(o_.guest_address);
    if (!guests.ok()) {
      Log("supervisor", std::string(guests.status().message()));
      return 1;
    }
    auto controls = Listener::Listen(o_.control_address);
    if (!controls.ok()) {
      Log("supervisor", std::string(controls.status().message()));
      return 1;
    }
    guest_address_ = (*guests)->address();
    if (!o_.quiet) {
      std::printf("vgpu-cl-backend: guests on %s, control on %s\n",
                  guest_address_.c_str(), (*controls)->address().c_str());
      std::fflush(stdout);
    }
    std::thread([this] { Reap(); }).detach();
    std::thread([this, l = controls->get()] {
      while (true) {
        auto c = l->Accept();
        if (!c.ok()) return;
        std::shared_ptr<Stream> s(std::move(*c));
        std::thread([this, s] { ServeControl(*s); }).detach();
      }
    }).detach();
    while (true) {
      auto c = (*guests)->Accept();
      if (!c.ok()) return 1;
      std::shared_ptr<Stream> s(std::move(*c));
      std::thread([this, s] { Admit(*s); }).detach();
    }
  }

 private:
  void Refuse(Stream& s, uint64_t seq, const std::string& why) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Reply>();
    r.setSeq(seq);
    r.setCode(CL_PLATFORM_NOT_FOUND_KHR);
    r.setMessage(why);
    (void)SendFrame(s, m);
    Log("supervisor", absl::StrCat("refused a guest: ", why));
  }

  // Reads a guest's hello and hands the connection to its worker.
  void Admit(Stream& s) {
    timeval tv{10, 0};
    setsockopt(s.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::vector<uint8_t> bytes;
    auto h = internal::RecvHeaderAndBytes(s, &bytes);
    if (!h.ok()) return;
    auto msg = codec::DecodeMessage<proto::Request>(bytes, FrameLimits());
    if (!msg.ok() || !msg->root().isHello() || h->payload_bytes != 0) {
      Refuse(s, 0, "the first message must be a hello");
      return;
    }
    auto hello = msg->root().getHello();
    if (hello.getAbi().getMajor() != proto::ABI_MAJOR) {
      Refuse(s, msg->root().getSeq(),
             absl::StrCat("guest library ", hello.getLibrary().cStr(),
                          " speaks forwarding ABI ", hello.getAbi().getMajor(),
                          ".", hello.getAbi().getMinor(),
                          "; this backend speaks ", proto::ABI_MAJOR, ".x "
                          "(install a matching libvgpu-opencl)"));
      return;
    }
    timeval none{0, 0};
    setsockopt(s.fd(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    int channel = -1;
    const uint64_t resume = hello.getResumeSession();
    if (resume != 0) {
      channel = FindSession(resume);
      if (channel < 0) {
        Refuse(s, msg->root().getSeq(),
               absl::StrCat("no session ", resume, " on this backend"));
        return;
      }
    } else {
      auto w = Spawn(false);
      if (!w.ok()) {
        Refuse(s, msg->root().getSeq(), std::string(w.status().message()));
        return;
      }
      channel = w->channel;
      Log("supervisor", absl::StrCat("session ", w->session, " for vm '",
                                     hello.getVm().cStr(), "' (",
                                     hello.getLibrary().cStr(), ")"));
    }
    (void)PassGuest(channel, s.fd(), bytes);
  }

  // The hand-over channel of the worker serving session `id`: one started
  // with it, or a restored one that took it over (asked through describe).
  int FindSession(uint64_t id) {
    std::vector<Worker> ws;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = workers_.find(id);
      if (it != workers_.end() && !it->second.target) return it->second.channel;
      for (auto& [key, w] : workers_) {
        if (w.target) ws.push_back(w);
      }
    }
    for (const Worker& w : ws) {
      auto c = ControlClient::Connect(w.control, absl::Seconds(2));
      if (!c.ok()) continue;
      auto d = (*c)->Describe();
      if (d.ok() && d->root().getSession() == id) return w.channel;
    }
    return -1;
  }

  absl::StatusOr<Worker> Spawn(bool target) {
    Worker w;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (workers_.size() >= o_.max_sessions) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "this backend already serves ", workers_.size(),
            " sessions (its limit)"));
      }
    }
    // Random ids: a session keeps its id when it moves to another backend,
    // so ids must not collide across hosts.
    do {
      const std::string r = RandomToken();
      std::memcpy(&w.session, r.data(), sizeof(w.session));
      w.session &= 0x7fffffffffffffffull;
    } while (w.session == 0);
    w.token = RandomToken();
    w.target = target;
    w.control = absl::StrCat("unix:", o_.run_dir, "/s", w.session, ".ctl");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      return absl::InternalError("socketpair failed");
    }
    const std::string fd_arg = "3";
    std::vector<std::string> args = {
        o_.self, "worker", "--session", std::to_string(w.session),
        "--control", w.control, "--attach-fd", fd_arg, "--guest-address",
        guest_address_, "--memory-limit", std::to_string(o_.memory_limit),
        "--call-limit-ms", std::to_string(o_.call_limit_ms)};
    if (target) args.push_back("--target");
    const std::string token_env =
        absl::StrCat("VGPU_CL_SESSION_TOKEN=", absl::BytesToHexString(w.token));
    const pid_t pid = fork();
    if (pid == 0) {
      dup2(sv[1], 3);  // dup2 clears close-on-exec on the copy
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      putenv(const_cast<char*>(token_env.c_str()));
      execv(o_.self.c_str(), argv.data());
      _exit(127);
    }
    close(sv[1]);
    if (pid < 0) {
      close(sv[0]);
      return absl::InternalError("fork failed");
    }
    w.pid = pid;
    w.channel = sv[0];
    char ready = 0;
    if (read(w.channel, &ready, 1) != 1 || ready != 'R') {
      close(w.channel);
      return absl::UnavailableError(absl::StrCat(
          "session worker ", w.session, " failed to start (see its log)"));
    }
    std::lock_guard<std::mutex> l(mu_);
    workers_[w.session] = w;
    return w;
  }

  void Reap() {
    while (true) {
      int status = 0;
      const pid_t pid = waitpid(-1, &status, 0);
      if (pid < 0) {
        if (errno == ECHILD) {
          usleep(100 * 1000);
          continue;
        }
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      for (auto it = workers_.begin(); it != workers_.end(); ++it) {
        if (it->second.pid != pid) continue;
        std::string how =
            WIFEXITED(status)
                ? absl::StrCat("exited with status ", WEXITSTATUS(status))
                : absl::StrCat("killed by signal ", WTERMSIG(status));
        Log("supervisor", absl::StrCat("session ", it->first, " ended: ", how));
        close(it->second.channel);
        workers_.erase(it);
        break;
      }
    }
  }

  void ServeControl(Stream& s) {
    while (true) {
      uint64_t payload = 0;
      auto req = RecvFrame<ControlRequest>(s, &payload);
      if (!req.ok() || payload != 0) return;
      capnp::MallocMessageBuilder m;
      auto reply = m.initRoot<ControlReply>();
      if (req->root().isListSessions()) {
        std::vector<Worker> ws;
        {
          std::lock_guard<std::mutex> l(mu_);
          for (auto& [id, w] : workers_) ws.push_back(w);
        }
        std::vector<SessionInfo> infos;
        for (const Worker& w : ws) {
          auto c = ControlClient::Connect(w.control, absl::Seconds(2));
          if (!c.ok()) continue;
          auto d = (*c)->Describe();
          if (d.ok()) infos.push_back(std::move(*d));
        }
        auto list = reply.initSessions(static_cast<unsigned>(infos.size()));
        for (size_t i = 0; i < infos.size(); ++i) {
          list.setWithCaveats(i, infos[i].root());
        }
      } else if (req->root().isCreateTarget()) {
        auto w = Spawn(true);
        if (!w.ok()) {
          reply.setCode(static_cast<int>(w.status().code()));
          reply.setError(std::string(w.status().message()));
        } else {
          auto info = reply.initSession();
          info.setSession(w->session);
          info.setControl(w->control);
          info.setGuestAddress(guest_address_);
          info.setToken(kj::arrayPtr(
              reinterpret_cast<const capnp::byte*>(w->token.data()),
              w->token.size()));
          info.setPid(w->pid);
        }
      } else {
        reply.setCode(static_cast<int>(absl::StatusCode::kInvalidArgument));
        reply.setError(
            "this is the supervisor: session operations go to the session's "
            "own control socket (listSessions gives it)");
      }
      if (!SendFrame(s, m).ok()) return;
    }
  }

  const SupervisorOptions o_;
  std::string guest_address_;
  std::mutex mu_;
  std::map<uint64_t, Worker> workers_;  // by the id each was started with
};

}  // namespace

int RunSupervisor(const SupervisorOptions& options) {
  Supervisor s(options);
  return s.Run();
}

}  // namespace vgpu::forwarding::backend
