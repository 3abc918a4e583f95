// Frames of the forwarding protocol (protocol.capnp) on a Stream:
//
//   u32 magic "VCL1" | u32 message bytes | u64 payload bytes   (little-endian)
//   the message: flat, unpacked Cap'n Proto (segment table + segments)
//   the payload: raw bulk bytes
//
// The payload is sent from and received into the caller's memory directly,
// so a buffer write travels application memory -> socket -> device memory
// with no copy in between. Messages are bounded (kMaxMessageBytes) and
// decoded through codec::DecodeMessage, so a malformed one is refused at the
// frame and never reaches a handler.
#ifndef VGPU_AGENTS_FORWARDING_FRAME_H_
#define VGPU_AGENTS_FORWARDING_FRAME_H_

#include <capnp/message.h>
#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "agents/forwarding/protocol.capnp.h"
#include "agents/forwarding/transport.h"
#include "state-codecs/message.h"

namespace vgpu::forwarding {

inline constexpr uint32_t kFrameMagic = 0x314c4356;  // "VCL1"
inline constexpr size_t kFrameHeaderBytes = 16;
inline constexpr uint32_t kMaxMessageBytes = 64u << 20;
// Far above any one object; the receiver checks the payload against what
// the message says it carries.
inline constexpr uint64_t kMaxPayloadBytes = 1ull << 40;

struct FrameHeader {
  uint32_t message_bytes = 0;
  uint64_t payload_bytes = 0;
};

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]);
// DATA_LOSS with what is wrong: bad magic, a message over the limit.
absl::StatusOr<FrameHeader> DecodeFrameHeader(
    const uint8_t in[kFrameHeaderBytes]);

// Sends one frame: `message`, then the payload pieces in order, in one
// gathered write.
absl::Status SendFrame(Stream& stream, capnp::MessageBuilder& message,
                       absl::Span<const iovec> payload = {});

// Receives one frame's header and message; the caller then takes exactly
// `*payload_bytes` bytes from the stream (ReadFull into where they belong,
// or SkipPayload).
template <typename T>
absl::StatusOr<codec::Message<T>> RecvFrame(Stream& stream,
                                            uint64_t* payload_bytes);

absl::Status SkipPayload(Stream& stream, uint64_t bytes);

// The limits every frame's message is decoded under.
codec::MessageLimits FrameLimits();

namespace internal {
absl::StatusOr<FrameHeader> RecvHeaderAndBytes(Stream& stream,
                                               std::vector<uint8_t>* bytes);
}  // namespace internal

template <typename T>
absl::StatusOr<codec::Message<T>> RecvFrame(Stream& stream,
                                            uint64_t* payload_bytes) {
  std::vector<uint8_t> bytes;
  absl::StatusOr<FrameHeader> h = internal::RecvHeaderAndBytes(stream, &bytes);
  if (!h.ok()) return h.status();
  *payload_bytes = h->payload_bytes;
  return codec::DecodeMessage<T>(bytes, FrameLimits());
}

}  // namespace vgpu::forwarding

#endif  // VGPU_AGENTS_FORWARDING_FRAME_H_
