// FaultProxy: see fault_proxy.h. Each connection is served by one thread
// running a poll() loop over its two non-blocking sockets, so the thread
// that reads a socket is the only one that ever writes or closes it: no
// other thread can race a close (and an fd reuse) against a blocked call.
// Other threads reach a connection only through its eventfd and two flags.
#include "tests/fault_proxy/fault_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace vgpu::fault_proxy {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes a direction may hold (delayed or paced) before the proxy stops
// reading its sender, so a slow link pushes back on the sender through TCP
// as a real one does instead of buffering without bound.
constexpr size_t kMaxQueuedBytes = size_t{4} << 20;
constexpr size_t kReadChunk = size_t{64} << 10;
// Before a reset_after RST, how long the proxy waits for the bytes it
// already wrote to reach the peer: a RST discards unsent socket data, and
// the fault promises "N bytes, then reset", not "up to N".
constexpr auto kResetDrainLimit = std::chrono::milliseconds(250);

absl::Status ErrnoError(absl::string_view what, int err) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Closing with SO_LINGER {on, 0} makes the kernel send RST and discard
// unsent data, which is what a middlebox reset looks like to both peers.
void CloseWithReset(int fd) {
  if (fd < 0) return;
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

void SetNoDelay(int fd) {
  // Small writes (a control message, a round-trip probe) must not wait for
  // Nagle: the proxy's own delay should be the only one added.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void Wake(int event_fd) {
  uint64_t one = 1;
  // A full eventfd counter already means "wake up"; EAGAIN is fine.
  [[maybe_unused]] ssize_t n = write(event_fd, &one, sizeof(one));
}

void Drain(int event_fd) {
  uint64_t value;
  [[maybe_unused]] ssize_t n = read(event_fd, &value, sizeof(value));
}

std::string SockaddrToString(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    return absl::StrCat(host, ":", port);
  }
  if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
    return absl::StrCat("[", host, "]:", port);
  }
  return "?";
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return "?";
  }
  return SockaddrToString(addr);
}

// SplitMix64: a cheap, well-mixed hash, so the flipped bit depends on both
// seed and offset but a run is repeatable.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Flips the bits `faults` asks for in data[0, n), which sits at `offset` in
// its stream; returns how many bits were flipped. A byte picked by both
// flip_at and flip_every is flipped once, so it never flips back.
uint64_t ApplyFlips(char* data, size_t n, uint64_t offset,
                    const LinkFaults& faults, uint64_t seed) {
  std::vector<uint64_t> at;  // stream offsets
  const uint64_t end = offset + n;
  if (faults.flip_at_offset.has_value() && *faults.flip_at_offset >= offset &&
      *faults.flip_at_offset < end) {
    at.push_back(*faults.flip_at_offset);
  }
  if (const uint64_t every = faults.flip_every_bytes; every > 0) {
    // The first offset >= `offset` of the form k*every - 1.
    for (uint64_t k = offset / every * every + every - 1; k < end; k += every) {
      if (!faults.flip_at_offset.has_value() || k != *faults.flip_at_offset) {
        at.push_back(k);
      }
    }
  }
  for (uint64_t k : at) {
    data[k - offset] ^= static_cast<char>(1u << (Mix(seed ^ Mix(k)) & 7));
  }
  return at.size();
}

// Parses "ADDR:PORT" ("[v6]:PORT", or a host name) into a socket address.
absl::Status ResolveAddress(absl::string_view address, sockaddr_storage* out,
                            socklen_t* out_len) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\": want ADDR:PORT"));
  }
  absl::string_view host = address.substr(0, colon);
  absl::string_view port_text = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  uint32_t port;
  if (!absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address \"", address, "\": bad port \"", port_text, "\""));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  const std::string host_str(host);
  const std::string port_str = absl::StrCat(port);
  const int rc =
      getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &result);
  if (rc != 0 || result == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address \"", address, "\": cannot resolve: ", gai_strerror(rc)));
  }
  std::memcpy(out, result->ai_addr, result->ai_addrlen);
  *out_len = result->ai_addrlen;
  freeaddrinfo(result);
  return absl::OkStatus();
}

}  // namespace

absl::string_view DirectionName(Direction direction) {
  switch (direction) {
    case Direction::kClientToUpstream:
      return "client->upstream";
    case Direction::kUpstreamToClient:
      return "upstream->client";
    case Direction::kBoth:
      return "both";
  }
  return "?";
}

struct FaultProxy::Counters {
  struct PerDirection {
    std::atomic<uint64_t> read{0};
    std::atomic<uint64_t> forwarded{0};
    std::atomic<uint64_t> dropped{0};
    std::atomic<uint64_t> flips{0};
  };
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> live{0};
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> resets{0};
  PerDirection direction[2];
};

struct FaultProxy::Snapshot {
  std::array<LinkFaults, 2> faults;
  uint64_t seed;
};

// Owned by connections_; its fds are touched only by its Serve() thread,
// except wake_fd, which others write to while holding mu_.
struct FaultProxy::Connection {
  ~Connection() {
    if (wake_fd >= 0) close(wake_fd);
  }
  uint64_t id = 0;
  int client_fd = -1;
  int wake_fd = -1;
  std::atomic<bool> reset_requested{false};
  std::atomic<bool> done{false};
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(
    FaultProxyOptions options) {
  sockaddr_storage listen_addr{};
  socklen_t listen_len = 0;
  absl::Status s = ResolveAddress(options.listen, &listen_addr, &listen_len);
  if (!s.ok()) return s;
  sockaddr_storage upstream_addr{};
  socklen_t upstream_len = 0;
  s = ResolveAddress(options.upstream, &upstream_addr, &upstream_len);
  if (!s.ok()) return s;

  const int fd =
      socket(listen_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) return ErrnoError("fault proxy: socket", errno);
  int one = 1;
  // A test or a restarted proxy must be able to rebind a fixed port at once.
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&listen_addr), listen_len) !=
          0 ||
      listen(fd, 128) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError(absl::StrCat("fault proxy: listen on ", options.listen),
                      err);
  }
  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) {
    const int err = errno;
    close(fd);
    return ErrnoError("fault proxy: eventfd", err);
  }
  std::unique_ptr<FaultProxy> proxy(new FaultProxy(
      std::move(options), fd, wake_fd, upstream_addr, upstream_len));
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  proxy->address_ = SockaddrToString(bound);
  proxy->port_ = bound.ss_family == AF_INET6
                     ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                     : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  proxy->accept_thread_ = std::thread(&FaultProxy::AcceptLoop, proxy.get());
  return proxy;
}

FaultProxy::FaultProxy(FaultProxyOptions options, int listen_fd, int wake_fd,
                       const sockaddr_storage& upstream, socklen_t upstream_len)
    : options_(std::move(options)),
      listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      upstream_addr_(upstream),
      upstream_len_(upstream_len),
      faults_{options_.client_to_upstream, options_.upstream_to_client},
      seed_(options_.seed),
      refuse_(options_.refuse),
      counters_(std::make_unique<Counters>()) {}

FaultProxy::~FaultProxy() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void FaultProxy::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  if (stopping_.exchange(true)) return;
  Wake(wake_fd_);
  if (accept_thread_.joinable()) accept_thread_.join();
  // The accept loop is gone, so no connection can be added any more.
  WakeAll();
  Reap(/*all=*/true);
}

void FaultProxy::Log(absl::string_view line) const {
  if (options_.log) options_.log(line);
}

template <typename F>
void FaultProxy::Update(Direction direction, F change) {
  {
    absl::MutexLock lock(&mu_);
    if (direction != Direction::kUpstreamToClient) change(faults_[0]);
    if (direction != Direction::kClientToUpstream) change(faults_[1]);
  }
  // Connections may be sleeping on a timer computed from the old faults.
  WakeAll();
}

void FaultProxy::SetDelay(absl::Duration delay, Direction direction) {
  Update(direction, [&](LinkFaults& f) { f.delay = delay; });
}
void FaultProxy::SetBandwidth(uint64_t bytes_per_s, Direction direction) {
  Update(direction,
         [&](LinkFaults& f) { f.bandwidth_bytes_per_s = bytes_per_s; });
}
void FaultProxy::SetDrop(bool drop, Direction direction) {
  Update(direction, [&](LinkFaults& f) { f.drop = drop; });
}
void FaultProxy::SetResetAfterBytes(uint64_t bytes, Direction direction) {
  Update(direction, [&](LinkFaults& f) { f.reset_after_bytes = bytes; });
}
void FaultProxy::SetFlipEveryBytes(uint64_t every, Direction direction) {
  Update(direction, [&](LinkFaults& f) { f.flip_every_bytes = every; });
}
void FaultProxy::SetFlipAtOffset(std::optional<uint64_t> offset,
                                 Direction direction) {
  Update(direction, [&](LinkFaults& f) { f.flip_at_offset = offset; });
}
void FaultProxy::SetSeed(uint64_t seed) {
  absl::MutexLock lock(&mu_);
  seed_ = seed;
}
void FaultProxy::SetRefuse(bool refuse) {
  absl::MutexLock lock(&mu_);
  refuse_ = refuse;
}

LinkFaults FaultProxy::faults(Direction direction) const {
  absl::MutexLock lock(&mu_);
  return faults_[direction == Direction::kUpstreamToClient ? 1 : 0];
}

bool FaultProxy::refuse() const {
  absl::MutexLock lock(&mu_);
  return refuse_;
}

FaultProxy::Snapshot FaultProxy::Snap() const {
  absl::MutexLock lock(&mu_);
  return Snapshot{faults_, seed_};
}

FaultProxyStats FaultProxy::stats() const {
  FaultProxyStats s;
  const Counters& c = *counters_;
  s.connections_accepted = c.accepted.load();
  s.connections_refused = c.refused.load();
  s.connections_live = c.live.load();
  s.upstream_connect_failures = c.connect_failures.load();
  s.resets = c.resets.load();
  DirectionStats* out[2] = {&s.client_to_upstream, &s.upstream_to_client};
  for (int i = 0; i < 2; ++i) {
    out[i]->bytes_read = c.direction[i].read.load();
    out[i]->bytes_forwarded = c.direction[i].forwarded.load();
    out[i]->bytes_dropped = c.direction[i].dropped.load();
    out[i]->flips = c.direction[i].flips.load();
  }
  return s;
}

int FaultProxy::ResetAllConnections() {
  int n = 0;
  absl::MutexLock lock(&mu_);
  for (auto& c : connections_) {
    if (c->done.load()) continue;
    c->reset_requested.store(true);
    Wake(c->wake_fd);
    ++n;
  }
  return n;
}

void FaultProxy::WakeAll() {
  absl::MutexLock lock(&mu_);
  for (auto& c : connections_) Wake(c->wake_fd);
}

void FaultProxy::Reap(bool all) {
  std::list<std::unique_ptr<Connection>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (all || (*it)->done.load()) {
        finished.push_back(std::move(*it));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Joined outside mu_: a finishing Serve() may still need it for a log.
  for (auto& c : finished) c->thread.join();
}

void FaultProxy::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, 1000) < 0 && errno != EINTR) break;
    if (stopping_.load()) break;
    if (fds[1].revents & POLLIN) Drain(wake_fd_);
    Reap(/*all=*/false);
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd =
        accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of fds: back off rather than spin on a listener that stays
      // readable. Other errors (a client that gave up) are transient.
      if (errno == EMFILE || errno == ENFILE) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      continue;
    }
    const uint64_t id = ++counters_->accepted;
    if (refuse()) {
      ++counters_->refused;
      Log(absl::StrCat("conn ", id, ": from ", PeerName(fd), " refused"));
      CloseWithReset(fd);
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->id = id;
    c->client_fd = fd;
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0) {
      Log(absl::StrCat("conn ", id, ": eventfd: ", std::strerror(errno)));
      CloseWithReset(fd);
      continue;
    }
    ++counters_->live;
    Connection* raw = c.get();
    raw->thread = std::thread(&FaultProxy::Serve, this, raw);
    absl::MutexLock lock(&mu_);
    connections_.push_back(std::move(c));
  }
}

void FaultProxy::Serve(Connection* c) {
  const std::string tag = absl::StrCat("conn ", c->id);
  const int client = c->client_fd;
  SetNoDelay(client);
  Log(absl::StrCat(tag, ": from ", PeerName(client)));

  auto finish = [&](int upstream_fd, bool reset, absl::string_view why) {
    // Counted before the peers can see the close, so a test that saw it
    // also sees it counted.
    if (reset) ++counters_->resets;
    --counters_->live;
    if (reset) {
      CloseWithReset(client);
      CloseWithReset(upstream_fd);
    } else {
      close(client);
      if (upstream_fd >= 0) close(upstream_fd);
    }
    Log(absl::StrCat(tag, ": closed", reset ? " with RST" : "", ": ", why));
    c->done.store(true);
  };

  // Connect to the upstream without blocking, so Stop() and reset requests
  // still reach a connection whose upstream is slow or silent.
  const int upstream = socket(upstream_addr_.ss_family,
                              SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (upstream < 0) {
    ++counters_->connect_failures;
    return finish(-1, true, absl::StrCat("socket: ", std::strerror(errno)));
  }
  int err = 0;
  if (connect(upstream, reinterpret_cast<const sockaddr*>(&upstream_addr_),
              upstream_len_) != 0) {
    err = errno;
  }
  if (err == EINPROGRESS) {
    const auto deadline =
        Clock::now() + absl::ToChronoMilliseconds(options_.connect_timeout);
    err = ETIMEDOUT;
    while (Clock::now() < deadline && !stopping_.load() &&
           !c->reset_requested.load()) {
      pollfd fds[2] = {{upstream, POLLOUT, 0}, {c->wake_fd, POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      if (poll(fds, 2, static_cast<int>(left.count()) + 1) < 0 &&
          errno != EINTR) {
        err = errno;
        break;
      }
      if (fds[1].revents & POLLIN) Drain(c->wake_fd);
      if (fds[0].revents != 0) {
        socklen_t len = sizeof(err);
        getsockopt(upstream, SOL_SOCKET, SO_ERROR, &err, &len);
        break;
      }
    }
  }
  if (stopping_.load()) return finish(upstream, false, "proxy stopping");
  if (c->reset_requested.load()) return finish(upstream, true, "requested");
  if (err != 0) {
    // An unreachable destination: the client sees its connection reset.
    ++counters_->connect_failures;
    return finish(upstream, true,
                  absl::StrCat("connect to ", options_.upstream, ": ",
                               std::strerror(err)));
  }
  SetNoDelay(upstream);
  Log(absl::StrCat(tag, ": connected to ", options_.upstream));

  struct Chunk {
    Clock::time_point release;
    std::string data;
    size_t sent = 0;
  };
  // One direction: bytes read from `src`, queued, written to `dst`.
  struct Pipe {
    Pipe(int index, int src, int dst) : index(index), src(src), dst(dst) {}
    int index;  // into faults_ and counters: 0 client->upstream
    int src;
    int dst;
    std::deque<Chunk> queue;
    size_t queued = 0;
    uint64_t read_offset = 0;  // stream offset of the next byte read
    uint64_t forwarded = 0;
    bool src_eof = false;
    bool dst_shut = false;          // FIN passed on
    bool want_write = false;        // dst was full; wait for POLLOUT
    Clock::time_point next_send{};  // bandwidth pacing
    bool WantsRead() const { return !src_eof && queued < kMaxQueuedBytes; }
  };
  Pipe pipes[2] = {{0, client, upstream}, {1, upstream, client}};
  std::vector<char> buf(kReadChunk);
  bool resetting = false;
  Clock::time_point reset_deadline{};
  std::string reset_why;

  for (;;) {
    if (stopping_.load()) return finish(upstream, false, "proxy stopping");
    if (c->reset_requested.load()) return finish(upstream, true, "requested");
    Snapshot snap = Snap();
    Clock::time_point now = Clock::now();
    std::optional<Clock::time_point> wake_at;
    auto wake_by = [&](Clock::time_point t) {
      if (!wake_at.has_value() || t < *wake_at) wake_at = t;
    };

    // Writes: everything due, within the bandwidth and reset budgets.
    for (Pipe& p : pipes) {
      const LinkFaults& f = snap.faults[p.index];
      auto& counters = counters_->direction[p.index];
      while (!p.queue.empty() && !p.want_write) {
        if (f.reset_after_bytes > 0 && p.forwarded >= f.reset_after_bytes) {
          break;
        }
        Chunk& head = p.queue.front();
        if (head.release > now) {
          wake_by(head.release);
          break;
        }
        const uint64_t bw = f.bandwidth_bytes_per_s;
        if (bw > 0 && p.next_send > now) {
          wake_by(p.next_send);
          break;
        }
        size_t n = head.data.size() - head.sent;
        // Paced in slices of about 10 ms of the budget, so the rate holds
        // over short windows too, not only on average.
        if (bw > 0) {
          n = std::min<uint64_t>(n,
                                 std::clamp<uint64_t>(bw / 100, 1, kReadChunk));
        }
        if (f.reset_after_bytes > 0) {
          n = std::min<uint64_t>(n, f.reset_after_bytes - p.forwarded);
        }
        const ssize_t w = send(p.dst, head.data.data() + head.sent, n,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) {
            p.want_write = true;
            break;
          }
          // The receiver is gone; pass the failure on to the sender.
          return finish(
              upstream, true,
              absl::StrCat("write ", DirectionName(Direction(p.index)), ": ",
                           std::strerror(errno)));
        }
        head.sent += w;
        p.queued -= w;
        p.forwarded += w;
        counters.forwarded += w;
        if (bw > 0) {
          p.next_send = std::max(p.next_send, now) +
                        std::chrono::nanoseconds(w * uint64_t{1000000000} / bw);
        }
        if (head.sent == head.data.size()) p.queue.pop_front();
      }
      if (f.reset_after_bytes > 0 && p.forwarded >= f.reset_after_bytes) {
        // Decided once: the drain deadline must not move on each turn.
        if (!resetting) {
          resetting = true;
          reset_deadline = now + kResetDrainLimit;
          reset_why = absl::StrCat("reset after ", p.forwarded, " bytes ",
                                   DirectionName(Direction(p.index)));
        }
        break;
      }
      // A FIN is data too: it is held while its direction drops, and passed
      // on only once everything before it was.
      if (p.src_eof && p.queue.empty() && !p.dst_shut && !f.drop) {
        shutdown(p.dst, SHUT_WR);
        p.dst_shut = true;
      }
    }

    if (resetting) {
      // Let the bytes already written reach their peers (both ways), then
      // reset. TIOCOUTQ counts bytes not yet acknowledged.
      int unsent = 0;
      for (const Pipe& p : pipes) {
        int q = 0;
        if (ioctl(p.dst, TIOCOUTQ, &q) == 0) unsent += q;
      }
      if (unsent == 0 || now >= reset_deadline) {
        return finish(upstream, true, reset_why);
      }
      pollfd wake = {c->wake_fd, POLLIN, 0};
      poll(&wake, 1, 2);
      if (wake.revents & POLLIN) Drain(c->wake_fd);
      continue;
    }
    if (pipes[0].dst_shut && pipes[1].dst_shut) {
      return finish(upstream, false, "both directions ended");
    }

    // An fd with no events of interest is left out (fd -1): poll reports
    // POLLHUP/POLLERR even unasked, and a half-closed socket would spin.
    pollfd fds[3] = {{c->wake_fd, POLLIN, 0}, {client, 0, 0}, {upstream, 0, 0}};
    for (const Pipe& p : pipes) {
      pollfd& src = fds[p.index == 0 ? 1 : 2];
      pollfd& dst = fds[p.index == 0 ? 2 : 1];
      if (p.WantsRead()) src.events |= POLLIN;
      if (p.want_write) dst.events |= POLLOUT;
    }
    for (int i = 1; i < 3; ++i) {
      if (fds[i].events == 0) fds[i].fd = -1;
    }
    int timeout_ms = -1;
    if (wake_at.has_value()) {
      const auto left = *wake_at - Clock::now();
      // Rounded up: a timer due in 0.3 ms must not become a 0 ms busy spin.
      timeout_ms = std::max<int>(
          0, static_cast<int>(
                 std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    if (poll(fds, 3, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      return finish(upstream, true,
                    absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (fds[0].revents & POLLIN) Drain(c->wake_fd);
    // Faults may have changed while this thread slept (that is what the
    // wake was for): bytes read now must see the new ones, e.g. "drop off"
    // followed at once by new data.
    snap = Snap();
    now = Clock::now();
    for (Pipe& p : pipes) {
      const pollfd& src = fds[p.index == 0 ? 1 : 2];
      const pollfd& dst = fds[p.index == 0 ? 2 : 1];
      // On an error the next send() reports it.
      if (dst.revents & (POLLOUT | POLLERR | POLLHUP)) p.want_write = false;
      if (!(src.revents & (POLLIN | POLLERR | POLLHUP)) || !p.WantsRead()) {
        continue;
      }
      const ssize_t r = recv(p.src, buf.data(), buf.size(), MSG_DONTWAIT);
      if (r == 0) {
        p.src_eof = true;
        continue;
      }
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
        // The sender reset or failed; pass it on to the receiver.
        return finish(upstream, true,
                      absl::StrCat("read ", DirectionName(Direction(p.index)),
                                   ": ", std::strerror(errno)));
      }
      const LinkFaults& f = snap.faults[p.index];
      auto& counters = counters_->direction[p.index];
      counters.read += r;
      counters.flips += ApplyFlips(buf.data(), r, p.read_offset, f, snap.seed);
      p.read_offset += r;
      if (f.drop) {
        counters.dropped += r;
        continue;
      }
      p.queue.push_back(Chunk{now + absl::ToChronoNanoseconds(f.delay),
                              std::string(buf.data(), r)});
      p.queued += r;
    }
  }
}

}  // namespace vgpu::fault_proxy
