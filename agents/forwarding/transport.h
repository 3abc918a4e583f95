// Transports between the guest library and the host backend. A transport is
// a reliable byte stream named by an address string:
//
//   unix:/run/vgpu/cl.sock     a Unix stream socket
//   tcp:127.0.0.1:7400         TCP (port 0 when listening: any free port)
//
// Both are file descriptors underneath, and so would be a virtio-serial port
// or a vsock socket (vsock:CID:PORT), which is why Stream is an interface
// over an fd and not a socket class: a new channel only needs Dial/Listen
// cases. One reader and one writer thread may use a Stream at once.
#ifndef VGPU_AGENTS_FORWARDING_TRANSPORT_H_
#define VGPU_AGENTS_FORWARDING_TRANSPORT_H_

#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace vgpu::forwarding {

class Stream {
 public:
  explicit Stream(int fd, std::string peer);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Writes every byte of the vector or fails (UNAVAILABLE when the peer is
  // gone). Never raises SIGPIPE.
  absl::Status WriteV(const iovec* iov, int count);
  absl::Status Write(const void* data, size_t n);
  // Reads exactly n bytes. A clean end of stream before the first byte is
  // CANCELLED ("closed by peer"); one in the middle is DATA_LOSS. Small
  // reads go through a buffer, so a frame's header and message usually
  // arrive in one system call; large ones (bulk payloads) go straight into
  // `data`.
  absl::Status ReadFull(void* data, size_t n);
  // Ends both directions; a thread blocked in ReadFull returns.
  void Shutdown();

  int fd() const { return fd_; }
  const std::string& peer() const { return peer_; }
  // Hands the descriptor over (to another process); the Stream is closed.
  // Bytes already buffered would be lost: callers hand over only between
  // exchanges (after a hello, before its reply).
  int Release();
  // Bytes received but not yet read.
  size_t buffered() const { return rlen_ - rpos_; }

 private:
  int fd_;
  std::string peer_;
  std::vector<char> rbuf_;
  size_t rpos_ = 0;
  size_t rlen_ = 0;
};

bool IsClosedByPeer(const absl::Status& status);

// Connects to `address`; DEADLINE_EXCEEDED after `timeout`.
absl::StatusOr<std::unique_ptr<Stream>> Dial(absl::string_view address,
                                             absl::Duration timeout);

class Listener {
 public:
  // Binds and listens. A unix: path that exists as a stale socket is
  // replaced; any other existing file is an error.
  static absl::StatusOr<std::unique_ptr<Listener>> Listen(
      absl::string_view address);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Blocks for the next connection. CANCELLED after Close().
  absl::StatusOr<std::unique_ptr<Stream>> Accept();
  // The address as dialable, with the real port for tcp:...:0.
  const std::string& address() const { return address_; }
  // Wakes Accept and stops listening (removes a unix socket file).
  void Close();

 private:
  Listener(int fd, std::string address, std::string unlink_path)
      : fd_(fd),
        address_(std::move(address)),
        unlink_path_(std::move(unlink_path)) {}
  int fd_;
  std::string address_;
  std::string unlink_path_;
};

}  // namespace vgpu::forwarding

#endif  // VGPU_AGENTS_FORWARDING_TRANSPORT_H_
