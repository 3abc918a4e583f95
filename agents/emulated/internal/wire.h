// Framing of the vgpu-emu-device control protocol on a Unix stream socket: a
// frame is a little-endian u32 length and that many bytes of a flat Cap'n
// Proto message; a frame may carry one file descriptor (SCM_RIGHTS) with its
// first byte. Connection is the client end (request, response), shared by
// DeviceControl and GuestClient. One thread per Connection.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_WIRE_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_WIRE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "agents/emulated/protocol.capnp.h"
#include "state-codecs/message.h"

namespace vgpu::agents::emulated::internal {

inline constexpr uint16_t kProtocolMajor = 1;
// Frame size limits. The largest frames are ring blobs (up to 1024 WRITEs of
// 64 KiB) and VRAM reads (16 MiB).
inline constexpr uint32_t kMaxHelloFrame = 64 * 1024;
inline constexpr uint32_t kMaxGuestRequestFrame = 8 << 20;
inline constexpr uint32_t kMaxAgentRequestFrame = 80 << 20;
inline constexpr uint32_t kMaxResponseFrame = 80 << 20;
inline constexpr uint64_t kMaxVramRead = 16 << 20;

// An owned file descriptor (closed on destruction).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  ~UniqueFd();
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct Frame {
  std::vector<uint8_t> bytes;
  UniqueFd fd;  // passed with the frame, if any
};

// Sends one frame (and `pass_fd` with it when >= 0). Retries EINTR and short
// writes; never raises SIGPIPE.
absl::Status SendFrame(int fd, absl::Span<const uint8_t> bytes,
                       int pass_fd = -1);
// Receives one frame of at most `max_bytes`. A peer that closes cleanly
// between frames gives CANCELLED ("connection closed"); a frame cut short
// or too long gives DATA_LOSS / RESOURCE_EXHAUSTED.
absl::StatusOr<Frame> RecvFrame(int fd, uint32_t max_bytes);

bool IsConnectionClosed(const absl::Status& status);

// The limits every received message is decoded under.
codec::MessageLimits WireLimits(uint32_t max_bytes);

absl::Status StatusFromResponse(proto::Response::Reader response);

std::vector<uint64_t> ToVector(capnp::List<uint64_t>::Reader list);

class Connection {
 public:
  // Connects and says hello; `*info` gets the device's answer and
  // `*vram_fd` the memfd it passed (agents), if non-null.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(
      const std::string& socket_path, proto::Hello::Role role,
      absl::string_view client_name, codec::Message<proto::Info>* info,
      UniqueFd* vram_fd);

  // Sends `request` and waits for the response; a response with a non-OK
  // code becomes that status. `*fd` gets a descriptor the device passed.
  absl::StatusOr<codec::Message<proto::Response>> Call(
      codec::Message<proto::Request>& request, UniqueFd* fd = nullptr);

  const std::string& socket_path() const { return socket_path_; }

 private:
  Connection(std::string socket_path, UniqueFd fd)
      : socket_path_(std::move(socket_path)), fd_(std::move(fd)) {}
  std::string socket_path_;
  UniqueFd fd_;
};

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_WIRE_H_
