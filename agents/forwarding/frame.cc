#include "agents/forwarding/frame.h"

#include <capnp/serialize.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::forwarding {
namespace {

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]) {
  PutU32(out, kFrameMagic);
  PutU32(out + 4, h.message_bytes);
  PutU64(out + 8, h.payload_bytes);
}

absl::StatusOr<FrameHeader> DecodeFrameHeader(
    const uint8_t in[kFrameHeaderBytes]) {
  const uint32_t magic = GetU32(in);
  if (magic != kFrameMagic) {
    return absl::DataLossError(absl::StrFormat(
        "frame header: magic 0x%08x is not VCL1 (0x%08x): not a forwarding "
        "protocol peer, or the stream lost its place",
        magic, kFrameMagic));
  }
  FrameHeader h;
  h.message_bytes = GetU32(in + 4);
  h.payload_bytes = GetU64(in + 8);
  if (h.message_bytes == 0 || h.message_bytes % 8 != 0 ||
      h.message_bytes > kMaxMessageBytes) {
    return absl::DataLossError(absl::StrCat(
        "frame header: message of ", h.message_bytes,
        " bytes (must be a non-zero multiple of 8, at most ", kMaxMessageBytes,
        ")"));
  }
  if (h.payload_bytes > kMaxPayloadBytes) {
    return absl::DataLossError(absl::StrCat("frame header: payload of ",
                                            h.payload_bytes,
                                            " bytes is over the limit of ",
                                            kMaxPayloadBytes));
  }
  return h;
}

codec::MessageLimits FrameLimits() {
  codec::MessageLimits l;
  l.max_bytes = kMaxMessageBytes;
  l.max_segments = 64;
  l.nesting_limit = 16;
  l.traversal_factor = 4;
  return l;
}

absl::Status SendFrame(Stream& stream, capnp::MessageBuilder& message,
                       absl::Span<const iovec> payload) {
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments =
      message.getSegmentsForOutput();
  // Segment table: u32 count-1, u32 size per segment, padded to 8 bytes.
  const size_t table_words = (segments.size() + 2) / 2;
  uint32_t table[2 * 64 + 2] = {};
  if (segments.size() > 64) {
    return absl::InternalError("outgoing message has over 64 segments");
  }
  table[0] = static_cast<uint32_t>(segments.size() - 1);
  size_t words = table_words;
  for (size_t i = 0; i < segments.size(); ++i) {
    table[i + 1] = static_cast<uint32_t>(segments[i].size());
    words += segments[i].size();
  }
  if (words * 8 > kMaxMessageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("outgoing message of ", words * 8,
                     " bytes is over the frame limit of ", kMaxMessageBytes));
  }
  FrameHeader h;
  h.message_bytes = static_cast<uint32_t>(words * 8);
  for (const iovec& v : payload) h.payload_bytes += v.iov_len;
  uint8_t header[kFrameHeaderBytes];
  EncodeFrameHeader(h, header);

  std::vector<iovec> iov;
  iov.reserve(2 + segments.size() + payload.size());
  iov.push_back({header, kFrameHeaderBytes});
  iov.push_back({table, table_words * 8});
  for (const auto& seg : segments) {
    iov.push_back({const_cast<capnp::word*>(seg.begin()), seg.size() * 8});
  }
  for (const iovec& v : payload) iov.push_back(v);
  return stream.WriteV(iov.data(), static_cast<int>(iov.size()));
}

absl::Status SkipPayload(Stream& stream, uint64_t bytes) {
  char sink[64 * 1024];
  while (bytes > 0) {
    const size_t n = bytes < sizeof(sink) ? bytes : sizeof(sink);
    absl::Status s = stream.ReadFull(sink, n);
    if (!s.ok()) return s;
    bytes -= n;
  }
  return absl::OkStatus();
}

namespace internal {

absl::StatusOr<FrameHeader> RecvHeaderAndBytes(Stream& stream,
                                               std::vector<uint8_t>* bytes) {
  uint8_t header[kFrameHeaderBytes];
  absl::Status s = stream.ReadFull(header, sizeof(header));
  if (!s.ok()) return s;
  absl::StatusOr<FrameHeader> h = DecodeFrameHeader(header);
  if (!h.ok()) return h.status();
  bytes->resize(h->message_bytes);
  s = stream.ReadFull(bytes->data(), bytes->size());
  if (!s.ok()) {
    if (absl::IsCancelled(s)) {
      return absl::DataLossError(
          absl::StrCat("connection closed after a frame header: ", s.message()));
    }
    return s;
  }
  return *h;
}

}  // namespace internal
}  // namespace vgpu::forwarding
