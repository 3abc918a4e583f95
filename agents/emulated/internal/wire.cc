#include "agents/emulated/internal/wire.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::agents::emulated::internal {
namespace {

absl::Status Errno(absl::string_view what) {
  const int e = errno;
  std::string msg = absl::StrCat(what, ": ", std::strerror(e));
  if (e == EPIPE || e == ECONNRESET) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

constexpr size_t kMaxPassedFds = 4;

// Reads exactly `n` bytes. The first read goes through recvmsg so that a
// descriptor sent with the frame's first byte is collected.
absl::Status ReadFull(int fd, uint8_t* buf, size_t n, UniqueFd* passed,
                      bool* clean_eof) {
  size_t done = 0;
  while (done < n) {
    ssize_t got;
    if (passed != nullptr && done == 0) {
      iovec iov{buf, n};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      got = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
      if (got > 0) {
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
             c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
          }
          const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int received;
            std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            // Keep the first; a peer sending more gets them closed.
            if (!passed->valid()) {
              *passed = UniqueFd(received);
            } else {
              close(received);
            }
          }
        }
      }
    } else {
      got = recv(fd, buf + done, n - done, 0);
    }
    if (got < 0) {
      if (errno == EINTR) continue;
      return Errno("recv");
    }
    if (got == 0) {
      if (done == 0 && clean_eof != nullptr) *clean_eof = true;
      return absl::DataLossError(absl::StrFormat(
          "connection closed %u bytes into a %u-byte read", done, n));
    }
    done += static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) close(fd_);
}

absl::Status SendFrame(int fd, absl::Span<const uint8_t> bytes, int pass_fd) {
  if (bytes.size() > UINT32_MAX) {
    return absl::InvalidArgumentError("frame too large");
  }
  const uint32_t length = static_cast<uint32_t>(bytes.size());
  uint8_t header[4];
  std::memcpy(header, &length, 4);  // little-endian hosts only (x86, arm64)
  iovec iov[2] = {{header, 4},
                  {const_cast<uint8_t*>(bytes.data()), bytes.size()}};
  size_t total = 4 + bytes.size();
  size_t sent = 0;
  bool fd_sent = pass_fd < 0;
  while (sent < total) {
    msghdr msg{};
    iovec parts[2];
    int count = 0;
    if (sent < 4) {
      parts[count++] = {header + sent, 4 - sent};
      parts[count++] = iov[1];
    } else {
      parts[count++] = {const_cast<uint8_t*>(bytes.data()) + (sent - 4),
                        total - sent};
    }
    msg.msg_iov = parts;
    msg.msg_iovlen = count;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (!fd_sent) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("sendmsg");
    }
    fd_sent = true;
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<Frame> RecvFrame(int fd, uint32_t max_bytes) {
  Frame frame;
  uint8_t header[4];
  bool clean_eof = false;
  absl::Status s = ReadFull(fd, header, 4, &frame.fd, &clean_eof);
  if (!s.ok()) {
    if (clean_eof) return absl::CancelledError("connection closed");
    return s;
  }
  uint32_t length;
  std::memcpy(&length, header, 4);
  if (length > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "frame of %u bytes exceeds the %u-byte limit", length, max_bytes));
  }
  frame.bytes.resize(length);
  s = ReadFull(fd, frame.bytes.data(), length, nullptr, nullptr);
  if (!s.ok()) return s;
  return frame;
}

bool IsConnectionClosed(const absl::Status& status) {
  return absl::IsCancelled(status) && status.message() == "connection closed";
}

codec::MessageLimits WireLimits(uint32_t max_bytes) {
  codec::MessageLimits limits;
  limits.max_bytes = max_bytes;
  limits.max_segments = 1024;
  return limits;
}

absl::Status StatusFromResponse(proto::Response::Reader response) {
  const uint32_t code = response.getCode();
  if (code == 0) return absl::OkStatus();
  if (code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(absl::StrCat(
        "device error (code ", code, "): ", response.getMessage().cStr()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      response.getMessage().cStr());
}

std::vector<uint64_t> ToVector(capnp::List<uint64_t>::Reader list) {
  std::vector<uint64_t> out;
  out.reserve(list.size());
  for (uint64_t v : list) out.push_back(v);
  return out;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const std::string& socket_path, proto::Hello::Role role,
    absl::string_view client_name, codec::Message<proto::Info>* info,
    UniqueFd* vram_fd) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path too long: ", socket_path));
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    const int e = errno;
    std::string msg =
        absl::StrCat("connect to ", socket_path, ": ", std::strerror(e));
    if (e == ENOENT || e == ECONNREFUSED) return absl::UnavailableError(msg);
    return absl::InternalError(msg);
  }
  std::unique_ptr<Connection> conn(new Connection(socket_path, std::move(fd)));
  codec::Message<proto::Request> hello;
  auto h = hello.mutable_root().initHello();
  h.setRole(role);
  h.setClient(std::string(client_name));
  h.setProtocolMajor(kProtocolMajor);
  UniqueFd passed;
  absl::StatusOr<codec::Message<proto::Response>> r =
      conn->Call(hello, &passed);
  if (!r.ok()) return r.status();
  if (r->root().which() != proto::Response::INFO) {
    return absl::DataLossError("device answered hello without its info");
  }
  if (info != nullptr) info->builder().setRoot(r->root().getInfo());
  if (vram_fd != nullptr) *vram_fd = std::move(passed);
  return conn;
}

absl::StatusOr<codec::Message<proto::Response>> Connection::Call(
    codec::Message<proto::Request>& request, UniqueFd* fd) {
  std::vector<uint8_t> bytes = codec::EncodeMessageBytes(request.builder());
  absl::Status s = SendFrame(fd_.get(), bytes);
  if (!s.ok()) return s;
  absl::StatusOr<Frame> frame = RecvFrame(fd_.get(), kMaxResponseFrame);
  if (!frame.ok()) {
    if (IsConnectionClosed(frame.status())) {
      return absl::UnavailableError(
          absl::StrCat("device at ", socket_path_, " closed the connection"));
    }
    return frame.status();
  }
  absl::StatusOr<codec::Message<proto::Response>> response =
      codec::DecodeMessage<proto::Response>(frame->bytes,
                                            WireLimits(kMaxResponseFrame));
  if (!response.ok()) {
    return absl::DataLossError(absl::StrCat("response from ", socket_path_,
                                            ": ", response.status().message()));
  }
  s = StatusFromResponse(response->root());
  if (!s.ok()) return s;
  if (fd != nullptr) *fd = std::move(frame->fd);
  return response;
}

}  // namespace vgpu::agents::emulated::internal
