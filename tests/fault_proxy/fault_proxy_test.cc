// Tests of FaultProxy against an in-test upstream (echo or sink) on
// loopback: each fault does what it models and nothing more, the control
// language parses and rejects as documented, and the vgpu-fault-proxy
// binary serves its control socket and exits 0 on SIGTERM. Every blocking
// call has a timeout, so a broken proxy fails a test instead of hanging it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <bitset>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fault_proxy/control.h"
#include "tests/fault_proxy/fault_proxy.h"

namespace vgpu::fault_proxy {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::Duration kIoTimeout = absl::Seconds(5);
// How long a silent link must stay silent to count as "timed out".
constexpr absl::Duration kSilence = absl::Milliseconds(300);

class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) {
    reset(other.release());
    return *this;
  }
  ~ScopedFd() { reset(); }
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

int PollMs(absl::Time deadline) {
  return static_cast<int>(
      std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
}

// A non-blocking TCP connection to 127.0.0.1:port, or -1.
ScopedFd Connect(uint16_t port) {
  ScopedFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
          0 &&
      errno != EINPROGRESS) {
    return ScopedFd();
  }
  pollfd p = {fd.get(), POLLOUT, 0};
  int err = ETIMEDOUT;
  socklen_t len = sizeof(err);
  if (poll(&p, 1, 2000) != 1 ||
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    return ScopedFd();
  }
  return fd;
}

// Sends all of `data` unless the peer fails or `timeout` passes.
bool SendAll(int fd, absl::string_view data,
             absl::Duration timeout = kIoTimeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    pollfd p = {fd, POLLOUT, 0};
    if (absl::Now() >= deadline || poll(&p, 1, PollMs(deadline)) < 0) {
      return false;
    }
  }
  return true;
}

struct ReadResult {
  std::string data;
  bool eof = false;
  int error = 0;  // errno of a failed read, e.g. ECONNRESET
  bool closed() const { return eof || error != 0; }
};

// Reads until `want` bytes came, the stream ended, or `timeout` passed.
ReadResult Read(int fd, size_t want, absl::Duration timeout = kIoTimeout) {
  ReadResult r;
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<char> buf(64 << 10);
  while (r.data.size() < want) {
    const ssize_t n =
        recv(fd, buf.data(), std::min(buf.size(), want - r.data.size()), 0);
    if (n > 0) {
      r.data.append(buf.data(), n);
      continue;
    }
    if (n == 0) {
      r.eof = true;
      break;
    }
    if (errno != EAGAIN && errno != EINTR) {
      r.error = errno;
      break;
    }
    pollfd p = {fd, POLLIN, 0};
    if (absl::Now() >= deadline || poll(&p, 1, PollMs(deadline)) < 0) break;
  }
  return r;
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// The upstream end: records what each connection sent and, in echo mode,
// sends it back. One poll() thread; closes a connection after its EOF (once
// the echo is flushed).
class Upstream {
 public:
  enum class Mode { kEcho, kSink };
  struct Peer {
    std::string received;
    bool eof = false;
    int error = 0;
    bool closed() const { return eof || error != 0; }
  };

  explicit Upstream(Mode mode) : mode_(mode) {
    listen_fd_.reset(
        socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(listen_fd_.get(), 16) != 0 ||
        getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr),
                    &len) != 0) {
      ADD_FAILURE() << "upstream listen: " << std::strerror(errno);
    }
    port_ = ntohs(addr.sin_port);
    wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    thread_ = std::thread([this] { Run(); });
  }
  ~Upstream() {
    stop_.store(true);
    uint64_t one = 1;
    EXPECT_EQ(write(wake_fd_.get(), &one, sizeof(one)), 8);
    thread_.join();
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // Waits until `done(peers)` holds, up to `timeout`; returns whether it did.
  bool WaitUntil(const std::function<bool(const std::vector<Peer>&)>& done,
                 absl::Duration timeout = kIoTimeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (done(peers_)) return true;
      }
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
  }
  // Waits until connection `i` received `bytes` or closed; returns it.
  Peer WaitForPeer(size_t i, size_t bytes,
                   absl::Duration timeout = kIoTimeout) {
    WaitUntil(
        [&](const std::vector<Peer>& p) {
          return p.size() > i &&
                 (p[i].received.size() >= bytes || p[i].closed());
        },
        timeout);
    return peer(i);
  }
  Peer WaitForClose(size_t i, absl::Duration timeout = kIoTimeout) {
    WaitUntil(
        [&](const std::vector<Peer>& p) {
          return p.size() > i && p[i].closed();
        },
        timeout);
    return peer(i);
  }
  Peer peer(size_t i) {
    absl::MutexLock lock(&mu_);
    return i < peers_.size() ? peers_[i] : Peer{};
  }
  size_t connections() {
    absl::MutexLock lock(&mu_);
    return peers_.size();
  }

 private:
  struct Conn {
    Conn(int fd, size_t index) : fd(fd), index(index) {}
    ScopedFd fd;
    size_t index;
    std::string out;  // echo not yet sent
    bool eof = false;
  };

  void Run() {
    std::vector<Conn> conns;
    std::vector<char> buf(64 << 10);
    while (!stop_.load()) {
      std::vector<pollfd> fds = {{listen_fd_.get(), POLLIN, 0},
                                 {wake_fd_.get(), POLLIN, 0}};
      for (const Conn& c : conns) {
        short events = c.eof ? 0 : POLLIN;
        if (!c.out.empty()) events |= POLLOUT;
        fds.push_back({c.fd.get(), events, 0});
      }
      if (poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR) return;
      for (size_t i = 0; i < conns.size(); ++i) {
        Conn& c = conns[i];
        const short revents = fds[2 + i].revents;
        if (revents & (POLLIN | POLLHUP | POLLERR)) {
          while (!c.eof) {
            const ssize_t n = recv(c.fd.get(), buf.data(), buf.size(), 0);
            absl::MutexLock lock(&mu_);
            if (n > 0) {
              peers_[c.index].received.append(buf.data(), n);
              if (mode_ == Mode::kEcho) c.out.append(buf.data(), n);
            } else if (n == 0) {
              c.eof = peers_[c.index].eof = true;
            } else {
              if (errno != EAGAIN && errno != EINTR) {
                peers_[c.index].error = errno;
                c.eof = true;
                c.out.clear();
              }
              break;
            }
          }
        }
        if (!c.out.empty()) {
          const ssize_t n =
              send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
          if (n > 0) c.out.erase(0, n);
          if (n < 0 && errno != EAGAIN && errno != EINTR) c.out.clear();
        }
      }
      // After EOF and a flushed echo, close: the proxy passes the FIN on.
      for (size_t i = conns.size(); i-- > 0;) {
        if (conns[i].eof && conns[i].out.empty()) {
          conns.erase(conns.begin() + i);
        }
      }
      for (;;) {
        const int fd = accept4(listen_fd_.get(), nullptr, nullptr,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        absl::MutexLock lock(&mu_);
        conns.emplace_back(fd, peers_.size());
        peers_.emplace_back();
      }
    }
  }

  const Mode mode_;
  ScopedFd listen_fd_;
  ScopedFd wake_fd_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::vector<Peer> peers_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

std::unique_ptr<FaultProxy> StartProxy(const Upstream& upstream,
                                       FaultProxyOptions options = {}) {
  options.listen = "127.0.0.1:0";
  options.upstream = upstream.address();
  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
      FaultProxy::Start(std::move(options));
  if (!proxy.ok()) {
    ADD_FAILURE() << proxy.status();
    return nullptr;
  }
  return std::move(*proxy);
}

// Echoes `message` through `fd` and checks it comes back unchanged.
void ExpectEcho(int fd, absl::string_view message) {
  ASSERT_TRUE(SendAll(fd, message));
  EXPECT_EQ(Read(fd, message.size()).data, message);
}

TEST(FaultProxyTest, ForwardsBothWaysByteExactAndPassesFin) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  EXPECT_NE(proxy->port(), 0);
  EXPECT_EQ(proxy->address(), absl::StrCat("127.0.0.1:", proxy->port()));

  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  const std::string data = RandomBytes(4 << 20, 1);
  // Send and read at once: the echo cannot all fit in socket buffers.
  std::atomic<bool> sent{false};
  std::thread writer([&] { sent = SendAll(client.get(), data); });
  const ReadResult echo = Read(client.get(), data.size());
  writer.join();
  ASSERT_TRUE(sent);
  ASSERT_EQ(echo.data.size(), data.size());
  EXPECT_TRUE(echo.data == data) << "echo differs";
  EXPECT_TRUE(upstream.WaitForPeer(0, data.size()).received == data);

  // A half-close travels through: the upstream sees EOF, closes, and the
  // client then sees EOF.
  ASSERT_EQ(shutdown(client.get(), SHUT_WR), 0);
  EXPECT_TRUE(upstream.WaitForClose(0).eof);
  EXPECT_TRUE(Read(client.get(), 1).eof);

  const FaultProxyStats stats = proxy->stats();
  EXPECT_EQ(stats.connections_accepted, 1u);
  EXPECT_EQ(stats.client_to_upstream.bytes_forwarded, data.size());
  EXPECT_EQ(stats.upstream_to_client.bytes_forwarded, data.size());
  EXPECT_EQ(stats.client_to_upstream.flips, 0u);
  EXPECT_EQ(stats.resets, 0u);
}

TEST(FaultProxyTest, DelayAddsToEachDirectionAndKeepsOrder) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  ExpectEcho(client.get(), "warm");

  const absl::Duration delay = absl::Milliseconds(80);
  proxy->SetDelay(delay);
  EXPECT_EQ(proxy->faults(Direction::kUpstreamToClient).delay, delay);
  absl::Time start = absl::Now();
  ExpectEcho(client.get(), "ping");
  // Delayed both ways: a round trip takes at least twice the delay.
  EXPECT_GE(absl::Now() - start, 2 * delay);

  // Chunks sent apart are each delayed, and arrive in order.
  start = absl::Now();
  for (const char* part : {"a", "bb", "ccc"}) {
    ASSERT_TRUE(SendAll(client.get(), part));
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(Read(client.get(), 6).data, "abbccc");
  EXPECT_GE(absl::Now() - start, 2 * delay);

  // One direction only.
  proxy->SetDelay(absl::ZeroDuration(), Direction::kUpstreamToClient);
  start = absl::Now();
  ExpectEcho(client.get(), "pong");
  EXPECT_GE(absl::Now() - start, delay);
}

TEST(FaultProxyTest, DropSilencesTheLinkWithoutClosingIt) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  ExpectEcho(client.get(), "hello");

  proxy->SetDrop(true);
  ASSERT_TRUE(SendAll(client.get(), "lost"));
  // Only a timeout notices: no data, no EOF, no error.
  pollfd p = {client.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, absl::ToInt64Milliseconds(kSilence)), 0);
  EXPECT_EQ(upstream.peer(0).received, "hello");
  EXPECT_FALSE(upstream.peer(0).closed());

  proxy->SetDrop(false);
  ExpectEcho(client.get(), "back");
  EXPECT_EQ(upstream.peer(0).received, "helloback");
  EXPECT_EQ(proxy->stats().client_to_upstream.bytes_dropped, 4u);
  EXPECT_EQ(proxy->stats().connections_live, 1u);
}

TEST(FaultProxyTest, DropSwallowsFinUntilTurnedOff) {
  Upstream upstream(Upstream::Mode::kSink);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  proxy->SetDrop(true, Direction::kClientToUpstream);
  EXPECT_FALSE(proxy->faults(Direction::kUpstreamToClient).drop);
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  ASSERT_TRUE(SendAll(client.get(), "gone"));
  ASSERT_EQ(shutdown(client.get(), SHUT_WR), 0);
  ASSERT_TRUE(upstream.WaitUntil(
      [](const std::vector<Upstream::Peer>& p) { return !p.empty(); }));
  absl::SleepFor(kSilence);
  EXPECT_FALSE(upstream.peer(0).closed());

  proxy->SetDrop(false, Direction::kClientToUpstream);
  const Upstream::Peer peer = upstream.WaitForClose(0);
  EXPECT_TRUE(peer.eof);
  EXPECT_EQ(peer.received, "");
}

TEST(FaultProxyTest, ResetAfterBytesDeliversAtMostThatManyThenResets) {
  Upstream upstream(Upstream::Mode::kSink);
  constexpr size_t kLimit = 1 << 20;
  FaultProxyOptions options;
  options.client_to_upstream.reset_after_bytes = kLimit;
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream, options);
  ASSERT_NE(proxy, nullptr);
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);

  const std::string data = RandomBytes(4 * kLimit, 2);
  // Whether the writer fails depends on how much the socket buffers
  // swallowed before the reset; the reader must see the connection end.
  std::thread writer([&] { SendAll(client.get(), data); });
  const ReadResult r = Read(client.get(), 1);
  writer.join();
  EXPECT_TRUE(r.closed());
  EXPECT_EQ(r.data, "");

  const Upstream::Peer peer = upstream.WaitForClose(0);
  EXPECT_TRUE(peer.closed());
  EXPECT_LE(peer.received.size(), kLimit);
  // The proxy lets written bytes drain before the RST, so on loopback all
  // of them arrive.
  EXPECT_EQ(peer.received.size(), kLimit);
  EXPECT_TRUE(peer.received == data.substr(0, peer.received.size()));
  const FaultProxyStats stats = proxy->stats();
  EXPECT_EQ(stats.client_to_upstream.bytes_forwarded, kLimit);
  EXPECT_EQ(stats.resets, 1u);
}

// The positions and bit masks where `got` differs from `want`.
std::vector<std::pair<size_t, int>> Diff(absl::string_view want,
                                         absl::string_view got) {
  std::vector<std::pair<size_t, int>> out;
  for (size_t i = 0; i < std::min(want.size(), got.size()); ++i) {
    if (want[i] != got[i]) {
      out.emplace_back(i, static_cast<unsigned char>(want[i] ^ got[i]));
    }
  }
  return out;
}

TEST(FaultProxyTest, FlipAtOffsetFlipsOneBitOfEachNewConnection) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  constexpr size_t kOffset = 12345;
  proxy->SetFlipAtOffset(kOffset);  // client->upstream by default
  EXPECT_FALSE(proxy->faults(Direction::kUpstreamToClient).flip_at_offset);

  const std::string data = RandomBytes(64 << 10, 3);
  for (size_t conn = 0; conn < 2; ++conn) {
    SCOPED_TRACE(absl::StrCat("connection ", conn));
    ScopedFd client = Connect(proxy->port());
    ASSERT_GE(client.get(), 0);
    ASSERT_TRUE(SendAll(client.get(), data));
    const Upstream::Peer peer = upstream.WaitForPeer(conn, data.size());
    ASSERT_EQ(peer.received.size(), data.size());
    const auto diff = Diff(data, peer.received);
    ASSERT_EQ(diff.size(), 1u);
    EXPECT_EQ(diff[0].first, kOffset);
    EXPECT_EQ(std::bitset<8>(diff[0].second).count(), 1u);
    // The echo comes back unflipped: it carries exactly the upstream's copy.
    EXPECT_TRUE(Read(client.get(), data.size()).data == peer.received);
  }
  EXPECT_EQ(proxy->stats().client_to_upstream.flips, 2u);
  EXPECT_EQ(proxy->stats().upstream_to_client.flips, 0u);
}

TEST(FaultProxyTest, FlipEveryNthByteIsCountedAndRepeatableBySeed) {
  Upstream upstream(Upstream::Mode::kSink);
  FaultProxyOptions options;
  options.seed = 7;
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream, options);
  ASSERT_NE(proxy, nullptr);
  constexpr size_t kEvery = 1000;
  proxy->SetFlipEveryBytes(kEvery, Direction::kClientToUpstream);

  const std::string data = RandomBytes(100 * kEvery + 17, 4);
  std::string first;
  for (size_t conn = 0; conn < 2; ++conn) {
    SCOPED_TRACE(absl::StrCat("connection ", conn));
    ScopedFd client = Connect(proxy->port());
    ASSERT_GE(client.get(), 0);
    ASSERT_TRUE(SendAll(client.get(), data));
    const Upstream::Peer peer = upstream.WaitForPeer(conn, data.size());
    ASSERT_EQ(peer.received.size(), data.size());
    const auto diff = Diff(data, peer.received);
    EXPECT_EQ(diff.size(), data.size() / kEvery);
    for (const auto& [offset, mask] : diff) {
      EXPECT_EQ(offset % kEvery, kEvery - 1) << offset;
      EXPECT_EQ(std::bitset<8>(mask).count(), 1u) << offset;
    }
    // Same seed, same stream: the same bits flip.
    if (conn == 0) first = peer.received;
    EXPECT_TRUE(peer.received == first);
  }
  EXPECT_EQ(proxy->stats().client_to_upstream.flips,
            2 * (data.size() / kEvery));
}

TEST(FaultProxyTest, RefuseClosesNewConnectionsAtOnce) {
  Upstream upstream(Upstream::Mode::kEcho);
  FaultProxyOptions options;
  options.refuse = true;
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream, options);
  ASSERT_NE(proxy, nullptr);
  ScopedFd client = Connect(proxy->port());
  // The kernel may complete the handshake before the proxy resets it, or
  // the reset may beat connect(); either way nothing gets through.
  if (client.get() >= 0) {
    const absl::Time start = absl::Now();
    const ReadResult r = Read(client.get(), 1, absl::Seconds(2));
    EXPECT_TRUE(r.closed());
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
  EXPECT_EQ(proxy->stats().connections_refused, 1u);
  EXPECT_EQ(upstream.connections(), 0u);

  proxy->SetRefuse(false);
  client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  ExpectEcho(client.get(), "welcome");
}

TEST(FaultProxyTest, BandwidthCapSlowsTheTransfer) {
  Upstream upstream(Upstream::Mode::kSink);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  proxy->SetBandwidth(4 << 20);
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);

  const std::string data = RandomBytes(2 << 20, 5);
  const absl::Time start = absl::Now();
  std::thread writer([&] { EXPECT_TRUE(SendAll(client.get(), data)); });
  const Upstream::Peer peer = upstream.WaitForPeer(0, data.size());
  const absl::Duration took = absl::Now() - start;
  writer.join();
  EXPECT_TRUE(peer.received == data);
  // 2 MiB at 4 MiB/s: 0.5 s, less the first pacing slice.
  EXPECT_GE(took, absl::Milliseconds(400));
}

TEST(FaultProxyTest, ResetAllConnectionsResetsLiveOnes) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  ScopedFd a = Connect(proxy->port());
  ScopedFd b = Connect(proxy->port());
  ASSERT_GE(a.get(), 0);
  ASSERT_GE(b.get(), 0);
  ExpectEcho(a.get(), "a");
  ExpectEcho(b.get(), "b");

  EXPECT_EQ(proxy->ResetAllConnections(), 2);
  for (int fd : {a.get(), b.get()}) {
    const ReadResult r = Read(fd, 1);
    EXPECT_EQ(r.error, ECONNRESET);
  }
  EXPECT_EQ(upstream.WaitForClose(0).error, ECONNRESET);
  EXPECT_EQ(upstream.WaitForClose(1).error, ECONNRESET);
  EXPECT_EQ(proxy->stats().resets, 2u);
}

TEST(FaultProxyTest, UnreachableUpstreamResetsTheClient) {
  // A port that was just free: nothing listens on it.
  ScopedFd probe(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(getsockname(probe.get(), reinterpret_cast<sockaddr*>(&addr), &len),
            0);
  FaultProxyOptions options;
  options.upstream = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
      FaultProxy::Start(options);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ScopedFd client = Connect((*proxy)->port());
  // The reset can beat connect()'s own check; otherwise a read sees it.
  if (client.get() >= 0) {
    EXPECT_TRUE(Read(client.get(), 1).closed());
  }
  EXPECT_EQ((*proxy)->stats().upstream_connect_failures, 1u);
  EXPECT_EQ((*proxy)->stats().resets, 1u);
}

TEST(FaultProxyTest, StopClosesLiveConnectionsPromptly) {
  Upstream upstream(Upstream::Mode::kEcho);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  proxy->SetDelay(absl::Seconds(30));  // a chunk waiting must not hold Stop
  ScopedFd client = Connect(proxy->port());
  ASSERT_GE(client.get(), 0);
  ASSERT_TRUE(SendAll(client.get(), "stuck"));
  ASSERT_TRUE(upstream.WaitUntil(
      [](const std::vector<Upstream::Peer>& p) { return !p.empty(); }));

  const absl::Time start = absl::Now();
  proxy->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_TRUE(Read(client.get(), 1).closed());
  EXPECT_TRUE(upstream.WaitForClose(0).closed());
  EXPECT_EQ(proxy->stats().connections_live, 0u);
  proxy->Stop();  // idempotent
}

TEST(FaultProxyTest, StartRejectsBadAddresses) {
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000",
                          ":80", "no.such.host.invalid:80"}) {
    FaultProxyOptions options;
    options.upstream = bad;
    absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
        FaultProxy::Start(options);
    EXPECT_TRUE(absl::IsInvalidArgument(proxy.status()))
        << bad << ": " << proxy.status();
  }
}

TEST(ControlTest, ApplyCommandSetsFaults) {
  Upstream upstream(Upstream::Mode::kSink);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  std::string reply;
  auto apply = [&](absl::string_view line) {
    reply.clear();
    const absl::Status s = ApplyCommand(*proxy, line, &reply);
    EXPECT_TRUE(s.ok()) << line << ": " << s;
    return reply;
  };
  const Direction up = Direction::kClientToUpstream;
  const Direction down = Direction::kUpstreamToClient;

  EXPECT_EQ(apply("delay 50"), "ok");
  EXPECT_EQ(proxy->faults(up).delay, absl::Milliseconds(50));
  EXPECT_EQ(proxy->faults(down).delay, absl::Milliseconds(50));
  apply("delay 20 down");
  EXPECT_EQ(proxy->faults(up).delay, absl::Milliseconds(50));
  EXPECT_EQ(proxy->faults(down).delay, absl::Milliseconds(20));
  apply("  bandwidth 1048576  \r");
  EXPECT_EQ(proxy->faults(down).bandwidth_bytes_per_s, 1048576u);
  apply("drop on");
  EXPECT_TRUE(proxy->faults(up).drop);
  apply("drop off up");
  EXPECT_FALSE(proxy->faults(up).drop);
  EXPECT_TRUE(proxy->faults(down).drop);
  apply("reset-after 1000000");
  EXPECT_EQ(proxy->faults(up).reset_after_bytes, 1000000u);
  apply("flip-every 64 upstream->client");
  EXPECT_EQ(proxy->faults(down).flip_every_bytes, 64u);
  EXPECT_EQ(proxy->faults(up).flip_every_bytes, 0u);
  apply("flip-every 0");
  EXPECT_EQ(proxy->faults(down).flip_every_bytes, 0u);
  apply("flip-at 1234");
  EXPECT_EQ(proxy->faults(up).flip_at_offset, 1234u);
  EXPECT_FALSE(proxy->faults(down).flip_at_offset.has_value());
  apply("flip-at off");
  EXPECT_FALSE(proxy->faults(up).flip_at_offset.has_value());
  apply("refuse on");
  EXPECT_TRUE(proxy->refuse());
  apply("refuse off");
  EXPECT_FALSE(proxy->refuse());
  apply("seed 99");
  EXPECT_EQ(apply("reset-now"), "ok 0");
  EXPECT_THAT(apply("stats"), StartsWith("{\"connections_accepted\":0,"));
  EXPECT_THAT(reply, HasSubstr("\"client_to_upstream\":{\"bytes_read\":0,"));
  EXPECT_THAT(apply("help"), HasSubstr("reset-after BYTES"));
}

TEST(ControlTest, ApplyCommandRejectsMalformedLinesAndChangesNothing) {
  Upstream upstream(Upstream::Mode::kSink);
  std::unique_ptr<FaultProxy> proxy = StartProxy(upstream);
  ASSERT_NE(proxy, nullptr);
  for (const char* bad :
       {"", "   ", "delay", "delay x", "delay -5", "delay 5 sideways",
        "delay 5 up extra", "drop maybe", "refuse on up", "flip-at",
        "stats now", "reset-now 3", "frobnicate 1",
        "bandwidth 99999999999999999999999"}) {
    std::string reply = "untouched";
    const absl::Status s = ApplyCommand(*proxy, bad, &reply);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("control command"));
    EXPECT_EQ(reply, "untouched");
  }
  const LinkFaults f = proxy->faults(Direction::kClientToUpstream);
  EXPECT_EQ(f.delay, absl::ZeroDuration());
  EXPECT_FALSE(f.drop);
  EXPECT_EQ(f.bandwidth_bytes_per_s, 0u);
  EXPECT_FALSE(proxy->refuse());
}

// The vgpu-fault-proxy binary in this test's runfiles.
std::string BinaryPath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  const std::string rel = "tests/fault_proxy/vgpu-fault-proxy";
  if (srcdir != nullptr && workspace != nullptr) {
    return absl::StrCat(srcdir, "/", workspace, "/", rel);
  }
  return rel;
}

// Reads one line (without '\n') from `fd`, or "" after `timeout`.
std::string ReadLine(int fd, absl::Duration timeout = kIoTimeout) {
  std::string line;
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, PollMs(deadline)) <= 0) return line;
    char c;
    const ssize_t n = read(fd, &c, 1);
    if (n <= 0) return line;
    if (c == '\n') return line;
    line += c;
  }
}

TEST(BinaryTest, ControlSocketDrivesFaultsAndSigtermExitsZero) {
  Upstream upstream(Upstream::Mode::kEcho);
  // sun_path is short; TEST_TMPDIR may not be.
  char dir[] = "/tmp/vfp-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string control = absl::StrCat(dir, "/control");

  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  const std::string binary = BinaryPath();
  std::vector<std::string> args = {binary,  "--listen",         "127.0.0.1:0",
                                   "--to",  upstream.address(), "--control",
                                   control, "--delay-ms",       "1"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The proxy must not outlive a crashed test.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(out[1], STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  ScopedFd stdout_fd(out[0]);
  auto kill_on_failure = absl::MakeCleanup([&] { kill(pid, SIGKILL); });

  const std::string banner = ReadLine(stdout_fd.get(), absl::Seconds(10));
  ASSERT_THAT(banner, StartsWith("listening on 127.0.0.1:")) << binary;
  uint32_t port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(banner.substr(banner.rfind(':') + 1), &port));

  ScopedFd client = Connect(port);
  ASSERT_GE(client.get(), 0);
  ExpectEcho(client.get(), "through");

  ScopedFd ctl(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, control.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(
      connect(ctl.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  auto command = [&](absl::string_view line) {
    EXPECT_TRUE(SendAll(ctl.get(), absl::StrCat(line, "\n")));
    return ReadLine(ctl.get());
  };

  EXPECT_EQ(command("drop on"), "ok");
  ASSERT_TRUE(SendAll(client.get(), "lost"));
  pollfd p = {client.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, absl::ToInt64Milliseconds(kSilence)), 0);
  EXPECT_EQ(command("drop off"), "ok");
  ExpectEcho(client.get(), "found");

  const std::string stats = command("stats");
  EXPECT_THAT(stats, StartsWith("{\"connections_accepted\":1,"));
  EXPECT_THAT(stats, HasSubstr("\"bytes_dropped\":4,"));
  EXPECT_THAT(command("frobnicate"), StartsWith("error: "));
  EXPECT_EQ(command("reset-now"), "ok 1");
  EXPECT_EQ(Read(client.get(), 1).error, ECONNRESET);

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  const absl::Time deadline = absl::Now() + kIoTimeout;
  pid_t waited = 0;
  while ((waited = waitpid(pid, &status, WNOHANG)) == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(waited, pid) << "no exit within " << kIoTimeout << " of SIGTERM";
  std::move(kill_on_failure).Cancel();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_NE(access(control.c_str(), F_OK), 0) << "control socket left behind";
  rmdir(dir);
}

}  // namespace
}  // namespace vgpu::fault_proxy
