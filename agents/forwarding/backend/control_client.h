// ControlClient: the client end of vgpu-cl-backend's control protocol
// (control.capnp), used by vgpud's API-forwarding agent and by tools. One
// connection, one call at a time; bulk bytes go straight between the socket
// and the caller's memory.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_CONTROL_CLIENT_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_CONTROL_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agents/forwarding/backend/control.capnp.h"
#include "agents/forwarding/transport.h"
#include "state-codecs/message.h"

namespace vgpu::forwarding::backend {

using SessionInfo = codec::Message<control::SessionInfo>;

struct MemEntry {
  uint64_t id = 0;
  uint32_t type = 0;
  uint64_t bytes = 0;
  bool dirty = false;
};

class ControlClient {
 public:
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(
      const std::string& address, absl::Duration timeout = absl::Seconds(5));

  absl::StatusOr<SessionInfo> Describe();
  absl::Status Freeze();
  absl::Status Thaw();
  absl::StatusOr<std::vector<uint8_t>> SaveLog();
  absl::StatusOr<std::vector<MemEntry>> Mems(bool clear_dirty);
  absl::Status ReadMem(uint64_t id, uint64_t offset, absl::Span<uint8_t> dst);
  absl::Status Replay(absl::Span<const uint8_t> log);
  absl::Status WriteMem(uint64_t id, uint64_t offset,
                        absl::Span<const uint8_t> data);
  absl::Status Activate(control::GuestInfo::Reader guest, uint64_t session,
                        const std::string& token);
  absl::Status HandOff(const std::string& address);
  absl::Status Quit();
  absl::StatusOr<std::vector<SessionInfo>> ListSessions();
  absl::StatusOr<SessionInfo> CreateTarget();

  const std::string& address() const { return address_; }

 private:
  ControlClient(std::string address, std::unique_ptr<Stream> stream)
      : address_(std::move(address)), stream_(std::move(stream)) {}
  // Sends `request` with `payload`; the reply's payload goes to `dst` (or a
  // vector when dst is null and `grow` is given).
  absl::StatusOr<codec::Message<control::ControlReply>> Call(
      capnp::MallocMessageBuilder& request,
      absl::Span<const uint8_t> payload = {}, absl::Span<uint8_t> dst = {},
      std::vector<uint8_t>* grow = nullptr);

  std::string address_;
  std::unique_ptr<Stream> stream_;
};

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_CONTROL_CLIENT_H_
