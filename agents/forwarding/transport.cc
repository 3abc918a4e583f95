#include "agents/forwarding/transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace vgpu::forwarding {
namespace {

absl::Status Errno(absl::string_view what, int e) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(e));
  if (e == EPIPE || e == ECONNRESET || e == ECONNREFUSED || e == ENOENT ||
      e == ENOTCONN) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

struct Parsed {
  bool unix_socket = false;
  std::string path;  // unix
  std::string host;  // tcp
  uint16_t port = 0;
};

absl::StatusOr<Parsed> Parse(absl::string_view address) {
  Parsed p;
  if (absl::StartsWith(address, "unix:")) {
    p.unix_socket = true;
    p.path = std::string(address.substr(5));
    if (p.path.empty()) {
      return absl::InvalidArgumentError("address unix: needs a path");
    }
    if (p.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unix socket path too long (", p.path.size(),
                       " bytes, at most 107): ", p.path));
    }
    return p;
  }
  if (absl::StartsWith(address, "tcp:")) {
    absl::string_view rest = address.substr(4);
    const size_t colon = rest.rfind(':');
    uint32_t port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(rest.substr(colon + 1), &port) || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "address '", address, "': expected tcp:HOST:PORT"));
    }
    p.host = std::string(rest.substr(0, colon));
    p.port = static_cast<uint16_t>(port);
    return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "address '", address, "': expected unix:PATH or tcp:HOST:PORT"));
}

absl::StatusOr<sockaddr_in> Resolve(const std::string& host, uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) == 1) return sa;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  sa.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return sa;
}

// Connects a non-blocking socket within `timeout`, then makes it blocking.
absl::Status ConnectWithin(int fd, const sockaddr* sa, socklen_t len,
                           absl::Duration timeout, absl::string_view address) {
  const int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  int rc = connect(fd, sa, len);
  if (rc != 0 && errno != EINPROGRESS) {
    return Errno(absl::StrCat("connect ", address), errno);
  }
  if (rc != 0) {
    pollfd p{fd, POLLOUT, 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
    do {
      rc = poll(&p, 1, ms);
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          "connect ", address, ": no answer within ",
          absl::FormatDuration(timeout)));
    }
    int err = 0;
    socklen_t el = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err != 0) return Errno(absl::StrCat("connect ", address), err);
  }
  fcntl(fd, F_SETFL, fl);
  return absl::OkStatus();
}

void TuneTcp(int fd) {
  // Calls are small request/reply exchanges: never wait to coalesce.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Stream::Stream(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}

Stream::~Stream() {
  if (fd_ >= 0) close(fd_);
}

int Stream::Release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

absl::Status Stream::WriteV(const iovec* iov_in, int count) {
  constexpr int kMaxIov = 64;
  iovec iov[kMaxIov];
  if (count > kMaxIov) {
    for (int i = 0; i < count; i += kMaxIov) {
      absl::Status s = WriteV(iov_in + i, std::min(kMaxIov, count - i));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::memcpy(iov, iov_in, sizeof(iovec) * count);
  iovec* cur = iov;
  int left = count;
  while (left > 0) {
    if (cur->iov_len == 0) {
      ++cur;
      --left;
      continue;
    }
    msghdr msg{};
    msg.msg_iov = cur;
    msg.msg_iovlen = left;
    const ssize_t n = sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno(absl::StrCat("send to ", peer_), errno);
    }
    size_t done = static_cast<size_t>(n);
    while (left > 0 && done >= cur->iov_len) {
      done -= cur->iov_len;
      ++cur;
      --left;
    }
    if (left > 0) {
      cur->iov_base = static_cast<char*>(cur->iov_base) + done;
      cur->iov_len -= done;
    }
  }
  return absl::OkStatus();
}

absl::Status Stream::Write(const void* data, size_t n) {
  iovec v{const_cast<void*>(data), n};
  return WriteV(&v, 1);
}

absl::Status Stream::ReadFull(void* data, size_t n) {
  // Reads this large go straight into the caller's memory.
  constexpr size_t kDirect = 64 * 1024;
  char* p = static_cast<char*>(data);
  size_t done = std::min(n, rlen_ - rpos_);
  if (done > 0) {
    std::memcpy(p, rbuf_.data() + rpos_, done);
    rpos_ += done;
  }
  while (done < n) {
    const size_t want = n - done;
    ssize_t got;
    if (want >= kDirect) {
      got = recv(fd_, p + done, want, MSG_WAITALL);
    } else {
      if (rbuf_.size() < kDirect) rbuf_.resize(kDirect);
      got = recv(fd_, rbuf_.data(), rbuf_.size(), 0);
    }
    if (got < 0) {
      if (errno == EINTR) continue;
      return Errno(absl::StrCat("receive from ", peer_), errno);
    }
    if (got == 0) {
      if (done == 0) {
        return absl::CancelledError(absl::StrCat("closed by peer ", peer_));
      }
      return absl::DataLossError(absl::StrCat("connection to ", peer_,
                                              " closed ", done, " bytes into a ",
                                              n, "-byte read"));
    }
    if (want >= kDirect) {
      done += static_cast<size_t>(got);
      continue;
    }
    rpos_ = 0;
    rlen_ = static_cast<size_t>(got);
    const size_t take = std::min(want, rlen_);
    std::memcpy(p + done, rbuf_.data(), take);
    rpos_ = take;
    done += take;
  }
  return absl::OkStatus();
}

void Stream::Shutdown() {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

bool IsClosedByPeer(const absl::Status& status) {
  return absl::IsCancelled(status) &&
         absl::StrContains(status.message(), "closed by peer");
}

absl::StatusOr<std::unique_ptr<Stream>> Dial(absl::string_view address,
                                             absl::Duration timeout) {
  absl::StatusOr<Parsed> p = Parse(address);
  if (!p.ok()) return p.status();
  if (p->unix_socket) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket", errno);
    auto stream = std::make_unique<Stream>(fd, std::string(address));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, p->path.data(), p->path.size());
    absl::Status s = ConnectWithin(fd, reinterpret_cast<sockaddr*>(&sa),
                                   sizeof(sa), timeout, address);
    if (!s.ok()) return s;
    return stream;
  }
  absl::StatusOr<sockaddr_in> sa = Resolve(p->host, p->port);
  if (!sa.ok()) return sa.status();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket", errno);
  auto stream = std::make_unique<Stream>(fd, std::string(address));
  absl::Status s = ConnectWithin(fd, reinterpret_cast<sockaddr*>(&*sa),
                                 sizeof(*sa), timeout, address);
  if (!s.ok()) return s;
  TuneTcp(fd);
  return stream;
}

absl::StatusOr<std::unique_ptr<Listener>> Listener::Listen(
    absl::string_view address) {
  absl::StatusOr<Parsed> p = Parse(address);
  if (!p.ok()) return p.status();
  if (p->unix_socket) {
    struct stat st;
    if (lstat(p->path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return absl::AlreadyExistsError(absl::StrCat(
            p->path, " exists and is not a socket; not replacing it"));
      }
      unlink(p->path.c_str());
    }
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket", errno);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, p->path.data(), p->path.size());
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
        listen(fd, 64) != 0) {
      const int e = errno;
      close(fd);
      return Errno(absl::StrCat("listen on ", address), e);
    }
    return std::unique_ptr<Listener>(
        new Listener(fd, std::string(address), p->path));
  }
  absl::StatusOr<sockaddr_in> sa = Resolve(p->host, p->port);
  if (!sa.ok()) return sa.status();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket", errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&*sa), sizeof(*sa)) != 0 ||
      listen(fd, 64) != 0) {
    const int e = errno;
    close(fd);
    return Errno(absl::StrCat("listen on ", address), e);
  }
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  return std::unique_ptr<Listener>(new Listener(
      fd, absl::StrCat("tcp:", p->host, ":", ntohs(bound.sin_port)), ""));
}

Listener::~Listener() {
  Close();
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::unique_ptr<Stream>> Listener::Accept() {
  while (true) {
    const int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      if (unlink_path_.empty()) TuneTcp(fd);
      return std::make_unique<Stream>(fd, absl::StrCat("client of ", address_));
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EINVAL || errno == EBADF) {
      return absl::CancelledError(absl::StrCat("listener ", address_, " closed"));
    }
    return Errno(absl::StrCat("accept on ", address_), errno);
  }
}

void Listener::Close() {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  if (!unlink_path_.empty()) {
    unlink(unlink_path_.c_str());
    unlink_path_.clear();
  }
}

}  // namespace vgpu::forwarding
