#include "agents/forwarding/guest/client.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::guest {

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  std::unique_ptr<Client> c(new Client(std::move(options)));
  {
    absl::MutexLock l(&c->mu_);
    c->address_ = c->options_.address;
  }
  absl::StatusOr<std::unique_ptr<Stream>> s =
      c->Handshake(c->options_.address, absl::Seconds(5));
  if (!s.ok()) return s.status();
  {
    absl::MutexLock w(&c->write_mu_);
    c->stream_ = std::move(*s);
    c->connected_ = true;
  }
  c->reader_ = std::thread([p = c.get()] { p->ReaderLoop(); });
  c->callbacks_ = std::thread([p = c.get()] { p->CallbackLoop(); });
  return c;
}

Client::~Client() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  {
    absl::MutexLock w(&write_mu_);
    if (stream_) stream_->Shutdown();
  }
  if (reader_.joinable()) reader_.join();
  {
    absl::MutexLock l(&cb_mu_);
    cb_stop_ = true;
  }
  if (callbacks_.joinable()) callbacks_.join();
}

uint64_t Client::session() const {
  absl::MutexLock l(&mu_);
  return session_;
}

int Client::connections() const {
  absl::MutexLock l(&mu_);
  return connections_;
}

bool Client::lost() const {
  absl::MutexLock l(&mu_);
  return lost_;
}

void Client::SetCallbackHandler(std::function<void(uint64_t, int32_t)> fn) {
  absl::MutexLock l(&cb_mu_);
  cb_handler_ = std::move(fn);
}

absl::StatusOr<std::unique_ptr<Stream>> Client::Handshake(
    const std::string& address, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Stream>> s = Dial(address, timeout);
  if (!s.ok()) return s.status();
  // A peer that accepts but never answers (a backend still starting, a
  // listener nobody serves) must not hold the reconnect loop: the hello's
  // reply has the same time limit as the dial.
  const timeval tv = absl::ToTimeval(timeout);
  setsockopt((*s)->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  capnp::MallocMessageBuilder m;
  auto req = m.initRoot<proto::Request>();
  req.setSeq(0);
  auto h = req.initHello();
  auto abi = h.initAbi();
  abi.setMajor(proto::ABI_MAJOR);
  abi.setMinor(proto::ABI_MINOR);
  abi.setPatch(0);
  h.setLibrary(options_.library);
  auto f = h.initFeatures(2);
  f.set(0, "cl1.2");
  f.set(1, "resume");
  h.setVm(options_.vm);
  {
    absl::MutexLock l(&mu_);
    if (session_ != 0) {
      h.setResumeSession(session_);
      h.setResumeToken(kj::arrayPtr(
          reinterpret_cast<const capnp::byte*>(token_.data()), token_.size()));
      h.setLastSeqAnswered(last_answered_);
    }
  }
  absl::Status st = SendFrame(**s, m);
  if (!st.ok()) return st;
  uint64_t payload = 0;
  auto reply = RecvFrame<proto::Reply>(**s, &payload);
  if (!reply.ok()) return reply.status();
  st = SkipPayload(**s, payload);
  if (!st.ok()) return st;
  auto r = reply->root();
  if (r.getCode() != 0 || !r.isHello()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend at ", address, " refused the session (code ", r.getCode(),
        "): ", r.getMessage().cStr()));
  }
  const timeval none{0, 0};
  setsockopt((*s)->fd(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
  auto hr = r.getHello();
  absl::MutexLock l(&mu_);
  session_ = hr.getSession();
  token_.assign(reinterpret_cast<const char*>(hr.getToken().begin()),
                hr.getToken().size());
  if (backend_.empty()) backend_ = hr.getBackend();
  address_ = address;
  ++connections_;
  return s;
}

int32_t Client::Run(Call& call) {
  {
    absl::MutexLock w(&write_mu_);
    {
      absl::MutexLock l(&mu_);
      if (lost_) {
        call.lost = true;
        call.done = true;
        return kBackendLost;
      }
      call.request.setSeq(++next_seq_);
      pending_[next_seq_] = &call;
    }
    if (connected_) {
      absl::Status s = SendFrame(*stream_, call.message, call.payload);
      // A failed send leaves the call pending: the reader sees the broken
      // connection too and sends it again once the session is back.
      if (!s.ok()) stream_->Shutdown();
    }
  }
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(&call.done));
  if (call.lost) return kBackendLost;
  return call.reply.root().getCode();
}

void Client::FailAll() {
  absl::MutexLock l(&mu_);
  lost_ = true;
  for (auto& [seq, c] : pending_) {
    c->lost = true;
    c->done = true;
  }
  pending_.clear();
}

void Client::HandleNotification(proto::Reply::Reader r) {
  if (r.isCallback()) {
    absl::MutexLock l(&cb_mu_);
    cb_queue_.emplace_back(r.getCallback().getCookie(),
                           r.getCallback().getStatus());
  } else if (r.isMoved()) {
    auto m = r.getMoved();
    absl::MutexLock l(&mu_);
    moved_to_ = m.getAddress();
    session_ = m.getSession();
    token_.assign(reinterpret_cast<const char*>(m.getToken().begin()),
                  m.getToken().size());
  }
}

void Client::ReaderLoop() {
  while (true) {
    uint64_t payload = 0;
    auto msg = RecvFrame<proto::Reply>(*stream_, &payload);
    absl::Status broken = msg.status();
    if (msg.ok()) {
      auto r = msg->root();
      if (r.getSeq() == 0) {
        broken = SkipPayload(*stream_, payload);
        HandleNotification(r);
        bool moved;
        {
          absl::MutexLock l(&mu_);
          moved = !moved_to_.empty();
        }
        if (broken.ok() && !moved) continue;
      } else {
        Call* call = nullptr;
        {
          absl::MutexLock l(&mu_);
          auto it = pending_.find(r.getSeq());
          if (it != pending_.end()) call = it->second;
        }
        if (call == nullptr) {
          broken = SkipPayload(*stream_, payload);
        } else if (payload > 0) {
          void* dst = call->recv;
          if (dst == nullptr || payload > call->recv_size) {
            call->recv_bytes.resize(payload);
            dst = call->recv_bytes.data();
          }
          broken = stream_->ReadFull(dst, payload);
          call->received = payload;
        }
        if (broken.ok()) {
          absl::MutexLock l(&mu_);
          if (call != nullptr) {
            call->reply = std::move(*msg);
            call->done = true;
            pending_.erase(r.getSeq());
          }
          last_answered_ = std::max(last_answered_, r.getSeq());
          continue;
        }
      }
    }
    // The connection is over: stopping, moved, or broken.
    std::string to;
    {
      absl::MutexLock l(&mu_);
      if (stopping_) break;
      to = moved_to_.empty() ? address_ : moved_to_;
      moved_to_.clear();
    }
    if (!Reconnect(to)) {
      FailAll();
      break;
    }
  }
}

bool Client::Reconnect(const std::string& address) {
  {
    absl::MutexLock w(&write_mu_);
    connected_ = false;
    stream_->Shutdown();
  }
  const absl::Time deadline = absl::Now() + options_.reconnect_window;
  while (true) {
    {
      absl::MutexLock l(&mu_);
      if (stopping_) return false;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    absl::StatusOr<std::unique_ptr<Stream>> s =
        Handshake(address, std::min(left, absl::Seconds(1)));
    if (s.ok()) {
      absl::MutexLock w(&write_mu_);
      stream_ = std::move(*s);
      connected_ = true;
      absl::MutexLock l(&mu_);
      // std::map: in seq order.
      for (auto& [seq, c] : pending_) {
        if (!SendFrame(*stream_, c->message, c->payload).ok()) {
          stream_->Shutdown();
          break;
        }
      }
      return true;
    }
    // A refusal is retried too: "no such session" is what a backend says
    // while a restore of the session is still on its way there.
    absl::SleepFor(std::min(absl::Milliseconds(50), left));
  }
}

void Client::CallbackLoop() {
  while (true) {
    std::pair<uint64_t, int32_t> item;
    std::function<void(uint64_t, int32_t)> fn;
    {
      absl::MutexLock l(&cb_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(cb_mu_) {
        return cb_stop_ || !cb_queue_.empty();
      };
      cb_mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(200));
      if (cb_queue_.empty()) {
        if (cb_stop_) return;
        continue;
      }
      item = cb_queue_.front();
      cb_queue_.pop_front();
      fn = cb_handler_;
    }
    if (fn) fn(item.first, item.second);
  }
}

}  // namespace vgpu::forwarding::guest
