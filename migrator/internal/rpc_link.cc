#include "migrator/internal/rpc_link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vgpu::migrator::internal {

void TunePeerSocket(int fd, absl::Duration dead_after) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int buf = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int secs = std::max<int>(1, absl::ToInt64Seconds(dead_after) / 3);
  int idle = secs, intvl = 1, cnt = std::max(1, secs * 2);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
  unsigned int user_timeout_ms =
      static_cast<unsigned int>(absl::ToInt64Milliseconds(dead_after));
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
             sizeof(user_timeout_ms));
}

RpcClient::RpcClient() : io_(kj::setupAsyncIo()) {}

RpcClient::~RpcClient() {
  // The RPC client first, then the stream under it.
  client_ = nullptr;
  stream_ = nullptr;
}

namespace {

// A non-blocking connect bounded by `timeout`; returns the connected fd.
absl::StatusOr<int> ConnectFd(const std::string& addr, uint16_t port,
                              absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints,
                       &res);
  if (rc != 0) {
    return absl::NotFoundError(absl::StrCat("cannot resolve '", addr,
                                            "': ", gai_strerror(rc)));
  }
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = absl::UnavailableError(absl::StrCat(
          "connect to ", addr, ":", port, ": ", strerror(errno)));
      close(fd);
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    int err = 0;
    socklen_t len = sizeof(err);
    if (n == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (n == 1 && err == 0) {
      freeaddrinfo(res);
      return fd;
    }
    last = absl::UnavailableError(absl::StrCat(
        "connect to ", addr, ":", port, ": ",
        n == 0 ? "timed out after " + absl::FormatDuration(timeout)
               : std::string(strerror(err))));
    close(fd);
  }
  freeaddrinfo(res);
  return last;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RpcClient>> RpcClient::ConnectTcp(
    const std::string& addr, uint16_t port, const TlsFiles* tls,
    const std::string& expected_host, absl::Duration timeout,
    absl::Duration dead_after) {
  auto fd = ConnectFd(addr, port, timeout);
  if (!fd.ok()) return fd.status();
  TunePeerSocket(*fd, dead_after);
  std::unique_ptr<RpcClient> c(new RpcClient());
  c->stream_ = c->io_.lowLevelProvider->wrapSocketFd(
      *fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
               kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK |
               kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC);
  if (tls != nullptr) {
    auto loaded = PeerTls::Load(*tls);
    if (!loaded.ok()) return loaded.status();
    c->tls_ = std::move(*loaded);
    auto wrapped = c->Wait(
        c->tls_->context().wrapClient(kj::mv(c->stream_), expected_host),
        timeout,
        absl::StrCat("TLS handshake with ", expected_host, " (", addr, ":",
                     port, ")"));
    if (!wrapped.ok()) {
      return absl::UnauthenticatedError(wrapped.status().message());
    }
    c->stream_ = kj::mv(*wrapped);
  }
  c->client_ = kj::heap<capnp::TwoPartyClient>(*c->stream_);
  return c;
}

absl::StatusOr<std::unique_ptr<RpcClient>> RpcClient::ConnectUnix(
    const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa.sun_path)) {
    close(fd);
    return absl::InvalidArgumentError("socket path too long: " + path);
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int err = errno;
    close(fd);
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          "vgpud control socket ", path,
          ": permission denied (it is root-only; run as root)"));
    }
    return absl::UnavailableError(absl::StrCat(
        "cannot reach vgpud at ", path, ": ", strerror(err),
        " (is vgpud running? start it with `vgpud` or pass --socket)"));
  }
  std::unique_ptr<RpcClient> c(new RpcClient());
  c->stream_ = c->io_.lowLevelProvider->wrapSocketFd(
      fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
              kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC);
  c->client_ = kj::heap<capnp::TwoPartyClient>(*c->stream_);
  return c;
}

void ServeConnection(
    int fd, const TlsFiles* tls, absl::Duration handshake_timeout,
    const std::function<capnp::Capability::Client(PeerNameCheck)>&
        make_bootstrap,
    const std::function<void(const std::string&)>& log) {
  kj::AsyncIoContext io = kj::setupAsyncIo();
  std::unique_ptr<PeerTls> peer_tls;
  kj::Own<kj::PeerIdentity> identity;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
    kj::Own<kj::AsyncIoStream> stream = io.lowLevelProvider->wrapSocketFd(
        fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    if (tls != nullptr) {
      auto loaded = PeerTls::Load(*tls);
      if (!loaded.ok()) {
        log(absl::StrCat("TLS material: ", loaded.status().message()));
        return;
      }
      peer_tls = std::move(*loaded);
      auto handshake = io.provider->getTimer().timeoutAfter(
          absl::ToInt64Milliseconds(handshake_timeout) * kj::MILLISECONDS,
          peer_tls->context().wrapServer(kj::AuthenticatedStream{
              kj::mv(stream), kj::UnknownPeerIdentity::newInstance()}));
      KJ_IF_MAYBE(he, kj::runCatchingExceptions([&] {
                    kj::AuthenticatedStream authed =
                        handshake.wait(io.waitScope);
                    stream = kj::mv(authed.stream);
                    identity = kj::mv(authed.peerIdentity);
                  })) {
        log(absl::StrCat("refused a peer: TLS handshake failed: ",
                         he->getDescription().cStr()));
        return;
      }
    }
    kj::PeerIdentity* who = identity.get();
    PeerNameCheck check = [who](const std::string& host) {
      if (who == nullptr) return true;  // plaintext: loopback demos only
      // The client certificate's common name must be the host name (this
      // KJ has no SAN matching for peers; MakeDemoCerts sets both).
      auto* tls_id = dynamic_cast<kj::TlsPeerIdentity*>(who);
      if (tls_id == nullptr || !tls_id->hasCertificate()) return false;
      bool match = false;
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
                    match = tls_id->getCommonName() == host.c_str();
                  })) {
        (void)e;
        return false;
      }
      return match;
    };
    capnp::TwoPartyServer server(make_bootstrap(check));
    server.accept(*stream).wait(io.waitScope);
  })) {
    log(absl::StrCat("connection ended: ", e->getDescription().cStr()));
  }
}

}  // namespace vgpu::migrator::internal
