// vgpu-tcp-baseline: how fast one TCP connection moves bytes between two
// endpoints, with the socket options vgpud's peer links use
// (internal::TunePeerSocket: TCP_NODELAY, 8 MiB SO_SNDBUF/SO_RCVBUF,
// keepalive). tools/migrate_bench.sh compares migrations with it.
//
//   vgpu-tcp-baseline --listen ADDR:PORT [--connections N] [--json]
//   vgpu-tcp-baseline --connect ADDR:PORT --bytes N [--write-bytes B] [--json]
//
// With --tls-dir DIR --host NAME (both sides) the bytes go through kj-tls
// with the same mutual-TLS context vgpud builds (migrator/tls.h); the client
// also names the server's host with --peer-name.
//
// Protocol: the client sends an 8-byte little-endian count N, then N bytes
// in writes of --write-bytes (1 MiB); the server reads exactly N bytes and
// answers with the 8-byte count. The client's time runs from the moment it
// starts sending (after connect and any TLS handshake) to the answer, so it
// covers every byte arriving in the server's memory, as a migration's final
// Sync does. The server reads into one 1 MiB buffer and discards.
//
// Output: one line per connection (server) or per run (client), or one JSON
// object per line with --json: bytes, seconds, bytesPerSec, mibPerSec,
// cpuSeconds (this process, user + system), tls.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "kj/async-io.h"
#include "migrator/config.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/tls.h"

namespace {

using Clock = std::chrono::steady_clock;
using vgpu::migrator::PeerTls;
using vgpu::migrator::TlsFiles;

// vgpud's default peer timeout; only the keepalive options depend on it.
constexpr absl::Duration kDeadAfter = absl::Seconds(10);
constexpr size_t kReadBytes = 1 << 20;

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

void PutLe64(uint64_t v, uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t GetLe64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
  return v;
}

absl::StatusOr<addrinfo*> Resolve(const std::string& hostport, bool passive) {
  std::string addr;
  uint16_t port = 0;
  if (auto s = vgpu::migrator::SplitHostPort(hostport, 0, &addr, &port);
      !s.ok()) {
    return s;
  }
  if (port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(hostport, ": expected ADDR:PORT"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(addr.empty() ? nullptr : addr.c_str(),
                       std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot resolve ", hostport, ": ", gai_strerror(rc)));
  }
  return res;
}

struct Result {
  uint64_t bytes = 0;
  double seconds = 0;
  double cpu_seconds = 0;
};

void Print(const char* role, const Result& r, bool tls, bool json) {
  const double rate = r.seconds > 0 ? r.bytes / r.seconds : 0;
  if (json) {
    std::printf(
        "{\"role\": \"%s\", \"bytes\": %llu, \"seconds\": %.6f, "
        "\"bytesPerSec\": %.0f, \"mibPerSec\": %.1f, \"cpuSeconds\": %.3f, "
        "\"tls\": %s}\n",
        role, static_cast<unsigned long long>(r.bytes), r.seconds, rate,
        rate / (1 << 20), r.cpu_seconds, tls ? "true" : "false");
  } else {
    std::printf("%s: %llu bytes in %.3f s = %.1f MiB/s (%.0f bytes/s)%s, "
                "%.2f CPU s\n",
                role, static_cast<unsigned long long>(r.bytes), r.seconds,
                rate / (1 << 20), rate, tls ? " over TLS" : "", r.cpu_seconds);
  }
  std::fflush(stdout);
}

// One byte stream, plain (blocking socket calls) or kj-tls.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual absl::Status WriteAll(const uint8_t* p, size_t n) = 0;
  // Reads 1..max bytes; 0 at end of stream.
  virtual absl::StatusOr<size_t> ReadSome(uint8_t* p, size_t max) = 0;

  absl::Status ReadAll(uint8_t* p, size_t n) {
    while (n > 0) {
      auto got = ReadSome(p, n);
      if (!got.ok()) return got.status();
      if (*got == 0) return absl::DataLossError("connection closed early");
      p += *got;
      n -= *got;
    }
    return absl::OkStatus();
  }
};

class PlainStream : public Stream {
 public:
  explicit PlainStream(int fd) : fd_(fd) {}
  ~PlainStream() override { close(fd_); }
  absl::Status WriteAll(const uint8_t* p, size_t n) override {
    while (n > 0) {
      ssize_t w = send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> ReadSome(uint8_t* p, size_t max) override {
    while (true) {
      ssize_t r = recv(fd_, p, max, 0);
      if (r >= 0) return static_cast<size_t>(r);
      if (errno != EINTR) {
        return absl::UnavailableError(absl::StrCat("recv: ", strerror(errno)));
      }
    }
  }

 private:
  int fd_;
};

// kj-tls over the socket, driven synchronously on this thread's event loop.
class TlsStream : public Stream {
 public:
  static absl::StatusOr<std::unique_ptr<TlsStream>> Wrap(
      int fd, const TlsFiles& files, bool server, const std::string& peer) {
    auto tls = PeerTls::Load(files);
    if (!tls.ok()) return tls.status();
    std::unique_ptr<TlsStream> s(new TlsStream());
    s->tls_ = std::move(*tls);
    kj::Own<kj::AsyncIoStream> raw = s->io_.lowLevelProvider->wrapSocketFd(
        fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
      s->stream_ = server ? s->tls_->context().wrapServer(kj::mv(raw)).wait(
                                s->io_.waitScope)
                          : s->tls_->context()
                                .wrapClient(kj::mv(raw), peer)
                                .wait(s->io_.waitScope);
    })) {
      return absl::UnauthenticatedError(
          absl::StrCat("TLS handshake: ", e->getDescription().cStr()));
    }
    return s;
  }
  ~TlsStream() noexcept override { stream_ = nullptr; }

  absl::Status WriteAll(const uint8_t* p, size_t n) override {
    KJ_IF_MAYBE(e, kj::runCatchingExceptions(
                       [&] { stream_->write(p, n).wait(io_.waitScope); })) {
      return absl::UnavailableError(
          absl::StrCat("TLS write: ", e->getDescription().cStr()));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> ReadSome(uint8_t* p, size_t max) override {
    size_t got = 0;
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
      got = stream_->tryRead(p, 1, max).wait(io_.waitScope);
    })) {
      return absl::UnavailableError(
          absl::StrCat("TLS read: ", e->getDescription().cStr()));
    }
    return got;
  }

 private:
  TlsStream() : io_(kj::setupAsyncIo()) {}
  kj::AsyncIoContext io_;
  std::unique_ptr<PeerTls> tls_;
  kj::Own<kj::AsyncIoStream> stream_;
};

// As vgpud does, on both ends: the options are set on the connected (or
// accepted) socket.
absl::StatusOr<std::unique_ptr<Stream>> MakeStream(int fd, const TlsFiles* tls,
                                                   bool server,
                                                   const std::string& peer) {
  vgpu::migrator::internal::TunePeerSocket(fd, kDeadAfter);
  if (tls == nullptr) return std::unique_ptr<Stream>(new PlainStream(fd));
  auto s = TlsStream::Wrap(fd, *tls, server, peer);
  if (!s.ok()) return s.status();
  return std::unique_ptr<Stream>(std::move(*s));
}

absl::StatusOr<Result> ServeOne(Stream& s) {
  std::vector<uint8_t> buf(kReadBytes);
  uint8_t header[8];
  if (auto st = s.ReadAll(header, sizeof(header)); !st.ok()) return st;
  const double cpu0 = CpuSeconds();
  const Clock::time_point start = Clock::now();
  const uint64_t want = GetLe64(header);
  uint64_t got = 0;
  while (got < want) {
    auto n = s.ReadSome(buf.data(), std::min<uint64_t>(buf.size(), want - got));
    if (!n.ok()) return n.status();
    if (*n == 0) {
      return absl::DataLossError(absl::StrFormat(
          "connection closed after %u of %u bytes", got, want));
    }
    got += *n;
  }
  Result r;
  r.bytes = got;
  r.seconds = Seconds(Clock::now() - start);
  r.cpu_seconds = CpuSeconds() - cpu0;
  PutLe64(got, header);
  if (auto st = s.WriteAll(header, sizeof(header)); !st.ok()) return st;
  return r;
}

int Listen(const std::string& where, uint32_t connections, const TlsFiles* tls,
           bool json) {
  auto res = Resolve(where, /*passive=*/true);
  if (!res.ok()) {
    std::fprintf(stderr, "vgpu-tcp-baseline: %s\n",
                 std::string(res.status().message()).c_str());
    return 2;
  }
  int lfd = -1;
  std::string err = "no address";
  for (addrinfo* ai = *res; ai != nullptr && lfd < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 8) == 0) {
      lfd = fd;
    } else {
      err = strerror(errno);
      close(fd);
    }
  }
  freeaddrinfo(*res);
  if (lfd < 0) {
    std::fprintf(stderr, "vgpu-tcp-baseline: listen on %s: %s\n",
                 where.c_str(), err.c_str());
    return 1;
  }
  if (!json) std::printf("listening on %s\n", where.c_str());
  std::fflush(stdout);
  for (uint32_t i = 0; connections == 0 || i < connections; ++i) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) {
        --i;
        continue;
      }
      std::fprintf(stderr, "vgpu-tcp-baseline: accept: %s\n", strerror(errno));
      return 1;
    }
    auto s = MakeStream(fd, tls, /*server=*/true, "");
    absl::StatusOr<Result> r =
        s.ok() ? ServeOne(**s) : absl::StatusOr<Result>(s.status());
    if (!r.ok()) {
      std::fprintf(stderr, "vgpu-tcp-baseline: connection %u: %s\n", i,
                   std::string(r.status().message()).c_str());
      return 1;
    }
    Print("server", *r, tls != nullptr, json);
  }
  close(lfd);
  return 0;
}

// Connects, retrying a refused connection until `wait` has passed (the
// server may still be starting).
absl::StatusOr<int> ConnectTo(const std::string& where, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    auto res = Resolve(where, /*passive=*/false);
    if (!res.ok()) return res.status();
    std::string err = "no address";
    for (addrinfo* ai = *res; ai != nullptr; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                      ai->ai_protocol);
      if (fd < 0) continue;
      if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        freeaddrinfo(*res);
        return fd;
      }
      err = strerror(errno);
      close(fd);
    }
    freeaddrinfo(*res);
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("connect to ", where, ": ", err));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int Connect(const std::string& where, uint64_t bytes, uint64_t write_bytes,
            const TlsFiles* tls, const std::string& peer_name, bool json) {
  auto fd = ConnectTo(where, absl::Seconds(10));
  if (!fd.ok()) {
    std::fprintf(stderr, "vgpu-tcp-baseline: %s\n",
                 std::string(fd.status().message()).c_str());
    return 1;
  }
  auto s = MakeStream(*fd, tls, /*server=*/false, peer_name);
  if (!s.ok()) {
    std::fprintf(stderr, "vgpu-tcp-baseline: %s\n",
                 std::string(s.status().message()).c_str());
    return 1;
  }
  // Non-zero, varied bytes (their values do not matter to TCP or TLS).
  std::vector<uint8_t> buf(write_bytes);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < buf.size(); ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    buf[i] = static_cast<uint8_t>(x);
  }
  uint8_t header[8];
  PutLe64(bytes, header);
  const double cpu0 = CpuSeconds();
  const Clock::time_point start = Clock::now();
  absl::Status st = (*s)->WriteAll(header, sizeof(header));
  for (uint64_t sent = 0; st.ok() && sent < bytes;) {
    const size_t n = std::min<uint64_t>(write_bytes, bytes - sent);
    st = (*s)->WriteAll(buf.data(), n);
    sent += n;
  }
  if (st.ok()) st = (*s)->ReadAll(header, sizeof(header));
  if (st.ok() && GetLe64(header) != bytes) {
    st = absl::DataLossError(absl::StrFormat(
        "the server counted %u bytes of %u", GetLe64(header), bytes));
  }
  if (!st.ok()) {
    std::fprintf(stderr, "vgpu-tcp-baseline: %s\n",
                 std::string(st.message()).c_str());
    return 1;
  }
  Result r;
  r.bytes = bytes;
  r.seconds = Seconds(Clock::now() - start);
  r.cpu_seconds = CpuSeconds() - cpu0;
  Print("client", r, tls != nullptr, json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-tcp-baseline: one TCP connection's throughput with vgpud's "
      "peer socket options (the baseline for tools/migrate_bench.sh)"};
  std::string listen_at, connect_to, tls_dir, host, peer_name;
  std::string bytes_text = "1G", write_text = "1M";
  uint32_t connections = 0;
  bool json = false;
  auto* l = app.add_option("--listen", listen_at,
                           "server: ADDR:PORT to accept connections on");
  auto* c = app.add_option("--connect", connect_to, "client: ADDR:PORT");
  l->excludes(c);
  app.add_option("--bytes", bytes_text,
                 "client: bytes to send (K/M/G suffixes)")
      ->capture_default_str();
  app.add_option("--write-bytes", write_text,
                 "client: bytes per write (K/M/G suffixes)")
      ->capture_default_str();
  app.add_option("--connections", connections,
                 "server: exit after this many connections (0: never)")
      ->capture_default_str();
  app.add_flag("--json", json, "one JSON object per line");
  app.add_option("--tls-dir", tls_dir,
                 "mutual TLS with DIR/ca.pem, DIR/HOST.pem, DIR/HOST.key");
  app.add_option("--host", host, "with --tls-dir: this side's host name");
  app.add_option("--peer-name", peer_name,
                 "client with --tls-dir: the host name the server's "
                 "certificate must carry");
  CLI11_PARSE(app, argc, argv);
  signal(SIGPIPE, SIG_IGN);

  if (listen_at.empty() == connect_to.empty()) {
    std::fprintf(stderr, "vgpu-tcp-baseline: give --listen or --connect\n");
    return 2;
  }
  TlsFiles files;
  const TlsFiles* tls = nullptr;
  if (!tls_dir.empty()) {
    if (host.empty() || (!connect_to.empty() && peer_name.empty())) {
      std::fprintf(stderr,
                   "vgpu-tcp-baseline: --tls-dir needs --host (and, on the "
                   "client, --peer-name)\n");
      return 2;
    }
    files.ca_file = tls_dir + "/ca.pem";
    files.cert_file = absl::StrCat(tls_dir, "/", host, ".pem");
    files.key_file = absl::StrCat(tls_dir, "/", host, ".key");
    tls = &files;
  }
  if (!listen_at.empty()) return Listen(listen_at, connections, tls, json);

  auto bytes = vgpu::migrator::ParseByteSize(bytes_text);
  auto write_bytes = vgpu::migrator::ParseByteSize(write_text);
  if (!bytes.ok() || !write_bytes.ok() || *write_bytes == 0) {
    std::fprintf(stderr, "vgpu-tcp-baseline: bad --bytes or --write-bytes\n");
    return 2;
  }
  return Connect(connect_to, *bytes, *write_bytes, tls, peer_name, json);
}
