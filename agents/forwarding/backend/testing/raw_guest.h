// RawGuest: a guest end of the forwarding protocol for tests, one call at a
// time, with no OpenCL API in front: tests build requests field by field
// (including malformed ones) and see replies as they are.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_TESTING_RAW_GUEST_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_TESTING_RAW_GUEST_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "agents/forwarding/protocol.capnp.h"
#include "agents/forwarding/transport.h"
#include "state-codecs/message.h"

namespace vgpu::forwarding::testing {

struct CallResult {
  codec::Message<proto::Reply> reply;
  std::vector<uint8_t> payload;
  int32_t code() const { return reply.root().getCode(); }
};

class RawGuest {
 public:
  // Says hello on `stream` (a resume when `resume_session` is set) and
  // returns the guest with the backend's answer; a refused hello is
  // FAILED_PRECONDITION with the backend's message.
  static absl::StatusOr<std::unique_ptr<RawGuest>> Hello(
      std::unique_ptr<Stream> stream, const std::string& vm,
      uint64_t resume_session = 0, const std::string& token = "",
      uint32_t abi_major = proto::ABI_MAJOR);

  // Sends a request `fill` builds (seq set here) with `payload`; returns
  // the reply to it. Notifications that arrive first are kept.
  absl::StatusOr<CallResult> Call(
      const std::function<void(proto::Request::Builder)>& fill,
      absl::Span<const uint8_t> payload = {});
  // Sends raw frame bytes (for malformed-message tests).
  absl::Status SendRaw(absl::Span<const uint8_t> bytes);
  // Receives the next frame, whatever it is.
  absl::StatusOr<CallResult> Receive();

  uint64_t NewId() { return next_id_++; }
  uint64_t session() const { return session_; }
  const std::string& token() const { return token_; }
  std::vector<codec::Message<proto::Reply>>& notifications() {
    return notifications_;
  }
  Stream& stream() { return *stream_; }

 private:
  explicit RawGuest(std::unique_ptr<Stream> s) : stream_(std::move(s)) {}
  std::unique_ptr<Stream> stream_;
  uint64_t seq_ = 0;
  uint64_t next_id_ = 0x10000;
  uint64_t session_ = 0;
  std::string token_;
  std::vector<codec::Message<proto::Reply>> notifications_;
};

// A session doing c = a + b * k over n floats, built through a RawGuest:
// context, queue, three buffers, a program, a kernel with its arguments.
struct VectorAdd {
  uint64_t context = 0, queue = 0, a = 0, b = 0, c = 0, program = 0,
           kernel = 0;
  uint32_t n = 0;

  static absl::StatusOr<VectorAdd> Build(RawGuest& g, uint32_t n);
  // Writes a and b with values derived from `seed`.
  absl::Status Fill(RawGuest& g, uint32_t seed);
  // Sets k and launches; c = a + b * k.
  absl::Status Run(RawGuest& g, float k);
  absl::StatusOr<std::vector<float>> Read(RawGuest& g, uint64_t mem);
};

}  // namespace vgpu::forwarding::testing

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_TESTING_RAW_GUEST_H_
