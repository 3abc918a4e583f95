#include "agents/forwarding/backend/session.h"

#include <CL/cl.h>
#include <sys/random.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::backend {
namespace {

using proto::Enqueue;
using proto::Reply;
using proto::Request;

class StreamPayload : public executor::PayloadSource {
 public:
  StreamPayload(Stream* stream, uint64_t size) : stream_(stream), size_(size) {}
  uint64_t size() const override { return size_; }
  absl::Status ReadInto(void* dst, size_t n) override {
    return stream_->ReadFull(dst, n);
  }

 private:
  Stream* stream_;
  uint64_t size_;
};

class MemoryPayload : public executor::PayloadSource {
 public:
  explicit MemoryPayload(std::vector<uint8_t> bytes)
      : bytes_(std::move(bytes)) {}
  uint64_t size() const override { return bytes_.size(); }
  absl::Status ReadInto(void* dst, size_t n) override {
    if (n > bytes_.size() - pos_) {
      return absl::OutOfRangeError("payload read past its end");
    }
    std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }

 private:
  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
};

// A replay gives creates their declared payload as zeros: contents come
// back separately, from the memory sections.
class ZeroPayload : public executor::PayloadSource {
 public:
  explicit ZeroPayload(uint64_t size) : size_(size) {}
  uint64_t size() const override { return size_; }
  absl::Status ReadInto(void* dst, size_t n) override {
    std::memset(dst, 0, n);
    return absl::OkStatus();
  }

 private:
  uint64_t size_;
};

// Calls that may wait for the device or for another guest thread run on a
// thread of their own (see session.h).
bool MayBlock(Request::Reader r) {
  switch (r.which()) {
    case Request::WAIT_FOR_EVENTS:
    case Request::FINISH:
    case Request::BUILD_PROGRAM:
    case Request::COMPILE_PROGRAM:
    case Request::LINK_PROGRAM:
      return true;
    case Request::ENQUEUE: {
      Enqueue::Reader e = r.getEnqueue();
      if (e.getWaitList().size() > 0) return true;
      switch (e.which()) {
        case Enqueue::READ_BUFFER:
        case Enqueue::READ_BUFFER_RECT:
        case Enqueue::READ_IMAGE:
          return true;
        default:
          return false;
      }
    }
    default:
      return false;
  }
}

const char* KindName(Request::Which w) {
  switch (w) {
    case Request::CREATE_CONTEXT: return "createContext";
    case Request::CREATE_CONTEXT_FROM_TYPE: return "createContextFromType";
    case Request::CREATE_QUEUE: return "createQueue";
    case Request::CREATE_BUFFER: return "createBuffer";
    case Request::CREATE_SUB_BUFFER: return "createSubBuffer";
    case Request::CREATE_IMAGE: return "createImage";
    case Request::CREATE_SAMPLER: return "createSampler";
    case Request::CREATE_PROGRAM_WITH_SOURCE: return "createProgramWithSource";
    case Request::CREATE_PROGRAM_WITH_BINARY: return "createProgramWithBinary";
    case Request::CREATE_PROGRAM_WITH_BUILT_IN_KERNELS:
      return "createProgramWithBuiltInKernels";
    case Request::BUILD_PROGRAM: return "buildProgram";
    case Request::COMPILE_PROGRAM: return "compileProgram";
    case Request::LINK_PROGRAM: return "linkProgram";
    case Request::CREATE_KERNEL: return "createKernel";
    case Request::CREATE_KERNELS_IN_PROGRAM: return "createKernelsInProgram";
    case Request::SET_KERNEL_ARG: return "setKernelArg";
    case Request::RETAIN: return "retain";
    case Request::RELEASE: return "release";
    case Request::RESTORE_EVENT: return "restoreEvent";
    default: return "request";
  }
}

}  // namespace

std::string RandomToken() {
  std::string t(32, '\0');
  size_t got = 0;
  while (got < t.size()) {
    const ssize_t n = getrandom(&t[got], t.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return t;
}

struct Session::Connection {
  std::unique_ptr<Stream> stream;
  std::mutex send_mu;
  std::atomic<bool> closed{false};

  absl::Status Send(capnp::MessageBuilder& m,
                    absl::Span<const iovec> payload = {}) {
    std::lock_guard<std::mutex> l(send_mu);
    if (closed.load()) return absl::UnavailableError("guest connection closed");
    return SendFrame(*stream, m, payload);
  }
  void Close() {
    std::lock_guard<std::mutex> l(send_mu);
    closed.store(true);
    stream->Shutdown();
  }
};

Session::Session(SessionIdentity identity,
                 std::unique_ptr<executor::Executor> exec)
    : identity_(std::move(identity)), exec_(std::move(exec)) {
  exec_->SetNotifier(
      [this](uint64_t cookie, cl_int status) { Notify(cookie, status); });
}

Session::~Session() {
  End();
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return threads_live_ == 0; });
}

// Threads are detached and counted: a long session makes many blocking
// calls, and joining each at the end would keep them all.
void Session::SpawnLocked(std::function<void()> fn) {
  ++threads_live_;
  std::thread([this, fn = std::move(fn)] {
    fn();
    std::lock_guard<std::mutex> l(mu_);
    --threads_live_;
    cv_.notify_all();
  }).detach();
}

absl::Status Session::Attach(std::unique_ptr<Stream> guest,
                             proto::Request::Reader hello_request) {
  auto conn = std::make_shared<Connection>();
  conn->stream = std::move(guest);
  capnp::MallocMessageBuilder reply_msg;
  Reply::Builder reply = reply_msg.initRoot<Reply>();
  reply.setSeq(hello_request.getSeq());
  if (!hello_request.isHello()) {
    reply.setCode(CL_INVALID_OPERATION);
    reply.setMessage("the first message must be a hello");
    (void)conn->Send(reply_msg);
    conn->Close();
    return absl::InvalidArgumentError("the first message was not a hello");
  }
  proto::Hello::Reader hello = hello_request.getHello();
  std::string refusal;
  std::shared_ptr<Connection> old;
  {
    std::lock_guard<std::mutex> l(mu_);
    const uint64_t resume = hello.getResumeSession();
    if (handed_off_) {
      refusal = absl::StrCat("session ", identity_.id,
                             " has moved away from this backend");
    } else if (resume != 0) {
      const auto token = hello.getResumeToken();
      if (resume != identity_.id) {
        refusal = absl::StrCat("resume of session ", resume,
                               " reached session ", identity_.id);
      } else if (token.size() != identity_.token.size() ||
                 std::memcmp(token.begin(), identity_.token.data(),
                             token.size()) != 0) {
        refusal = absl::StrCat("resume of session ", resume,
                               ": the token does not match");
      } else if (!ever_attached_ && !activated_) {
        refusal = absl::StrCat("session ", resume,
                               " is not ready to be resumed here yet");
      }
    } else if (ever_attached_ || activated_) {
      refusal = absl::StrCat("session ", identity_.id,
                             " already belongs to a guest");
    }
    if (refusal.empty()) {
      if (!ever_attached_ && !activated_) {
        guest_.vm = hello.getVm();
        guest_.library = hello.getLibrary();
        guest_.abi_major = hello.getAbi().getMajor();
        guest_.abi_minor = hello.getAbi().getMinor();
        for (auto f : hello.getFeatures()) guest_.features.push_back(f);
      }
      ever_attached_ = true;
      old = conn_;
      conn_ = conn;
    }
  }
  if (!refusal.empty()) {
    reply.setCode(CL_INVALID_VALUE);
    reply.setMessage(refusal);
    (void)conn->Send(reply_msg);
    conn->Close();
    return absl::FailedPreconditionError(refusal);
  }
  // A newer connection of the same guest replaces a stale one.
  if (old) old->Close();
  auto h = reply.initHello();
  h.setSession(identity_.id);
  h.setToken(kj::arrayPtr(
      reinterpret_cast<const capnp::byte*>(identity_.token.data()),
      identity_.token.size()));
  h.initAbi().setMajor(proto::ABI_MAJOR);
  h.getAbi().setMinor(proto::ABI_MINOR);
  h.setBackend(identity_.backend);
  absl::Status s = conn->Send(reply_msg);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> l(mu_);
  SpawnLocked([this, conn] { ReadLoop(conn); });
  return absl::OkStatus();
}

void Session::WaitDetached() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return handed_off_ || (ever_attached_ && !conn_); });
}

uint64_t Session::EnterCall() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !frozen_ || handed_off_; });
  if (handed_off_) return 0;
  ++in_flight_;
  const uint64_t token = next_call_++;
  started_[token] = absl::Now();
  return token;
}

void Session::LeaveCall(uint64_t token) {
  std::lock_guard<std::mutex> l(mu_);
  --in_flight_;
  started_.erase(token);
  cv_.notify_all();
}

absl::Duration Session::LongestCall() const {
  std::lock_guard<std::mutex> l(mu_);
  if (started_.empty()) return absl::ZeroDuration();
  // Tokens grow with time: the first entry is the oldest call.
  return absl::Now() - started_.begin()->second;
}

void Session::ReadLoop(std::shared_ptr<Connection> conn) {
  while (true) {
    uint64_t payload = 0;
    auto msg = RecvFrame<Request>(*conn->stream, &payload);
    if (!msg.ok()) {
      if (absl::IsDataLoss(msg.status()) &&
          absl::StrContains(msg.status().message(), "frame header") == false &&
          !IsClosedByPeer(msg.status()) && !conn->closed.load()) {
        // The frame arrived whole but its message is malformed: refuse it
        // and go on, the stream is still in step.
        capnp::MallocMessageBuilder m;
        Reply::Builder r = m.initRoot<Reply>();
        r.setCode(CL_INVALID_VALUE);
        r.setMessage(absl::StrCat("malformed request refused: ",
                                  msg.status().message()));
        if (SkipPayload(*conn->stream, payload).ok() && conn->Send(m).ok()) {
          continue;
        }
      }
      break;
    }
    auto request =
        std::make_shared<codec::Message<Request>>(std::move(*msg));
    Request::Reader r = request->root();
    if (r.isHello()) {
      capnp::MallocMessageBuilder m;
      Reply::Builder rep = m.initRoot<Reply>();
      rep.setSeq(r.getSeq());
      rep.setCode(CL_INVALID_OPERATION);
      rep.setMessage("hello after the session started");
      if (!SkipPayload(*conn->stream, payload).ok() || !conn->Send(m).ok()) {
        break;
      }
      continue;
    }
    const uint64_t token = EnterCall();
    if (token == 0) break;
    if (!MayBlock(r)) {
      StreamPayload p(conn->stream.get(), payload);
      RunCall(conn, *request, p, token);
      continue;
    }
    // The payload must leave the stream before the next frame is read.
    std::vector<uint8_t> bytes;
    if (payload > 0) {
      if (payload > (1ull << 32)) {
        LeaveCall(token);
        break;
      }
      bytes.resize(payload);
      if (!conn->stream->ReadFull(bytes.data(), bytes.size()).ok()) {
        LeaveCall(token);
        break;
      }
    }
    auto held = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
    std::lock_guard<std::mutex> l(mu_);
    SpawnLocked([this, conn, request, held, token] {
      MemoryPayload p(std::move(*held));
      RunCall(conn, *request, p, token);
    });
  }
  conn->Close();
  std::lock_guard<std::mutex> l(mu_);
  if (conn_ == conn) conn_.reset();
  cv_.notify_all();
}

void Session::RunCall(const std::shared_ptr<Connection>& conn,
                      const codec::Message<Request>& request,
                      executor::PayloadSource& p, uint64_t token) {
  capnp::MallocMessageBuilder reply_msg;
  Reply::Builder reply = reply_msg.initRoot<Reply>();
  reply.setSeq(request.root().getSeq());
  bool sent = false;
  auto sink = [&](capnp::MessageBuilder& m, const std::vector<iovec>& v) {
    sent = true;
    return conn->Send(m, v);
  };
  absl::Status s = exec_->Execute(request.root(), p, reply, reply_msg, sink,
                                  /*replay=*/false);
  if (s.ok() && reply.getCode() == CL_SUCCESS) {
    std::lock_guard<std::mutex> l(mu_);
    log_.Record(request.root(), p.size());
    MarkDirty(request.root());
  }
  if (s.ok() && !sent) s = conn->Send(reply_msg);
  calls_.fetch_add(1);
  LeaveCall(token);
  if (!s.ok()) conn->Close();
}

// Called with mu_ held, after a call succeeded.
void Session::MarkDirty(Request::Reader r) {
  auto mark = [&](uint64_t mem) {
    if (mem != 0) dirty_.insert(log_.StorageOf(mem));
  };
  switch (r.which()) {
    case Request::CREATE_BUFFER:
      mark(r.getCreateBuffer().getId());
      return;
    case Request::CREATE_IMAGE:
      mark(r.getCreateImage().getId());
      return;
    case Request::ENQUEUE:
      break;
    default:
      return;
  }
  Enqueue::Reader e = r.getEnqueue();
  switch (e.which()) {
    case Enqueue::ND_RANGE:
    case Enqueue::TASK: {
      const uint64_t k =
          e.isNdRange() ? e.getNdRange().getKernel() : e.getTask();
      for (uint64_t mem : log_.KernelMemArgs(k)) {
        if (!log_.IsReadOnly(mem)) mark(mem);
      }
      return;
    }
    case Enqueue::WRITE_BUFFER: mark(e.getWriteBuffer().getMem()); return;
    case Enqueue::WRITE_BUFFER_RECT: mark(e.getWriteBufferRect().getMem()); return;
    case Enqueue::COPY_BUFFER: mark(e.getCopyBuffer().getDst()); return;
    case Enqueue::COPY_BUFFER_RECT: mark(e.getCopyBufferRect().getDst()); return;
    case Enqueue::FILL_BUFFER: mark(e.getFillBuffer().getMem()); return;
    case Enqueue::WRITE_IMAGE: mark(e.getWriteImage().getMem()); return;
    case Enqueue::COPY_IMAGE: mark(e.getCopyImage().getDst()); return;
    case Enqueue::FILL_IMAGE: mark(e.getFillImage().getMem()); return;
    case Enqueue::COPY_IMAGE_TO_BUFFER: mark(e.getCopyImageToBuffer().getBuffer()); return;
    case Enqueue::COPY_BUFFER_TO_IMAGE: mark(e.getCopyBufferToImage().getImage()); return;
    case Enqueue::MIGRATE_MEM_OBJECTS:
      for (uint64_t m : e.getMigrateMemObjects().getMems()) mark(m);
      return;
    default:
      return;
  }
}

void Session::Notify(uint64_t cookie, int32_t status) {
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard<std::mutex> l(mu_);
    conn = conn_;
  }
  if (!conn) return;
  capnp::MallocMessageBuilder m;
  Reply::Builder r = m.initRoot<Reply>();
  auto cb = r.initCallback();
  cb.setCookie(cookie);
  cb.setStatus(status);
  (void)conn->Send(m);
}

absl::Status Session::Freeze() {
  {
    std::unique_lock<std::mutex> l(mu_);
    if (handed_off_) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", identity_.id, " was handed off"));
    }
    frozen_ = true;
    cv_.wait(l, [&] { return in_flight_ == 0; });
  }
  absl::Status s = exec_->Drain();
  if (!s.ok()) {
    Thaw();
    return s;
  }
  return absl::OkStatus();
}

void Session::Thaw() {
  std::lock_guard<std::mutex> l(mu_);
  frozen_ = false;
  cv_.notify_all();
}

bool Session::frozen() const {
  std::lock_guard<std::mutex> l(mu_);
  return frozen_;
}

absl::StatusOr<std::vector<uint8_t>> Session::SaveLog() {
  std::lock_guard<std::mutex> l(mu_);
  if (!frozen_) {
    return absl::FailedPreconditionError(
        "the session log is saved only while the session is frozen");
  }
  std::vector<ReplayCall> calls = log_.Replay();
  for (const executor::EventInfo& ev : exec_->LiveEvents()) {
    capnp::MallocMessageBuilder b;
    auto g = b.initRoot<Request>().initRestoreEvent();
    g.setId(ev.id);
    g.setContext(ev.context);
    g.setQueue(ev.queue);
    g.setCommandType(ev.command_type);
    g.setStatus(ev.status);
    calls.push_back({codec::EncodeMessageBytes(b), 0});
  }
  return SessionLog::Encode(calls);
}

std::vector<MemState> Session::Mems(bool clear_dirty) {
  std::vector<executor::MemInfo> all = exec_->LiveMems();
  std::lock_guard<std::mutex> l(mu_);
  std::vector<MemState> out;
  for (const executor::MemInfo& m : all) {
    if (m.parent != 0) continue;  // a view of another object's storage
    out.push_back({m, dirty_.count(m.id) > 0});
  }
  if (clear_dirty) dirty_.clear();
  return out;
}

absl::Status Session::ReadMem(uint64_t id, void* dst, uint64_t offset,
                              uint64_t bytes) {
  bool paused_here = false;
  {
    std::unique_lock<std::mutex> l(mu_);
    if (!frozen_) {
      frozen_ = true;
      paused_here = true;
      cv_.wait(l, [&] { return in_flight_ == 0; });
    }
  }
  absl::Status s;
  if (paused_here) s = exec_->Drain();
  if (s.ok()) s = exec_->ReadMem(id, dst, offset, bytes);
  if (paused_here) Thaw();
  return s;
}

absl::Status Session::Replay(absl::Span<const uint8_t> blob) {
  absl::StatusOr<std::vector<ReplayCall>> calls = SessionLog::Decode(blob);
  if (!calls.ok()) return calls.status();
  codec::MessageLimits limits;
  limits.max_bytes = 64 << 20;
  for (size_t i = 0; i < calls->size(); ++i) {
    const ReplayCall& c = (*calls)[i];
    auto msg = codec::DecodeMessage<Request>(c.request, limits);
    if (!msg.ok()) return msg.status();
    ZeroPayload p(c.payload_bytes);
    capnp::MallocMessageBuilder reply_msg;
    Reply::Builder reply = reply_msg.initRoot<Reply>();
    auto sink = [](capnp::MessageBuilder&, const std::vector<iovec>&) {
      return absl::OkStatus();
    };
    absl::Status s = exec_->Execute(msg->root(), p, reply, reply_msg, sink,
                                    /*replay=*/true);
    if (!s.ok()) return s;
    if (reply.getCode() != CL_SUCCESS) {
      return absl::FailedPreconditionError(absl::StrCat(
          "replaying call ", i + 1, " of ", calls->size(), " (",
          KindName(msg->root().which()), "): CL error ", reply.getCode(),
          reply.hasMessage() ? absl::StrCat(": ", reply.getMessage().cStr())
                             : ""));
    }
    std::lock_guard<std::mutex> l(mu_);
    log_.Record(msg->root(), c.payload_bytes);
  }
  return absl::OkStatus();
}

absl::Status Session::WriteMem(uint64_t id, const void* src, uint64_t offset,
                               uint64_t bytes) {
  return exec_->WriteMem(id, src, offset, bytes);
}

absl::Status Session::Activate(const GuestInfo& guest, uint64_t session,
                               const std::string& token) {
  std::lock_guard<std::mutex> l(mu_);
  if (ever_attached_) {
    return absl::FailedPreconditionError(
        "only a restored session that no guest has reached can be activated");
  }
  if (session == 0 || token.size() != 32) {
    return absl::InvalidArgumentError(
        "activate needs the session's id and its 32-byte token");
  }
  guest_ = guest;
  identity_.id = session;
  identity_.token = token;
  activated_ = true;
  cv_.notify_all();
  return absl::OkStatus();
}

SessionIdentity Session::identity() const {
  std::lock_guard<std::mutex> l(mu_);
  return identity_;
}

absl::Status Session::HandOff(const std::string& address) {
  std::shared_ptr<Connection> conn;
  uint64_t session = 0;
  std::string token;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!frozen_) {
      return absl::FailedPreconditionError(
          "a session is handed off only while frozen");
    }
    conn = conn_;
    session = identity_.id;
    token = identity_.token;
  }
  if (conn) {
    capnp::MallocMessageBuilder m;
    Reply::Builder r = m.initRoot<Reply>();
    auto mv = r.initMoved();
    mv.setAddress(address);
    mv.setSession(session);
    mv.setToken(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(token.data()),
                             token.size()));
    (void)conn->Send(m);
    conn->Close();
  }
  std::lock_guard<std::mutex> l(mu_);
  handed_off_ = true;
  cv_.notify_all();
  return absl::OkStatus();
}

void Session::End() {
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard<std::mutex> l(mu_);
    handed_off_ = true;
    conn = conn_;
    cv_.notify_all();
  }
  if (conn) conn->Close();
}

GuestInfo Session::guest() const {
  std::lock_guard<std::mutex> l(mu_);
  return guest_;
}

bool Session::attached() const {
  std::lock_guard<std::mutex> l(mu_);
  return conn_ != nullptr;
}

uint64_t Session::log_entries() const {
  std::lock_guard<std::mutex> l(mu_);
  return log_.entry_count();
}

std::vector<std::string> Session::required_features() const {
  std::vector<std::string> out;
  bool binary = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    binary = log_.HasBinaryPrograms();
  }
  if (binary) out.push_back("cl-binary:" + exec_->device_name());
  return out;
}

uint64_t Session::log_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return log_.encoded_bytes();
}

}  // namespace vgpu::forwarding::backend
