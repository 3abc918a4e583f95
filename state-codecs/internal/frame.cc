#include "state-codecs/internal/frame.h"

#include <cstring>

#include "absl/strings/str_format.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace vgpu::codec::internal {
namespace {

void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t GetU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{p[i]} << (8 * i);
  return v;
}

// Low 32 bits of XXH3-64 over the header without its check field.
uint32_t FrameHeaderCheck(const uint8_t in[kFrameHeaderBytes]) {
  uint8_t tmp[kFrameHeaderBytes - 4];
  std::memcpy(tmp, in, 12);
  std::memcpy(tmp + 12, in + 16, kFrameHeaderBytes - 16);
  return static_cast<uint32_t>(XXH3_64bits(tmp, sizeof(tmp)));
}

}  // namespace

void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

uint64_t PayloadChecksum(absl::Span<const uint8_t> payload) {
  return XXH3_64bits(payload.data(), payload.size());
}

const char* FrameKindName(uint8_t kind) {
  switch (static_cast<FrameKind>(kind)) {
    case FrameKind::kManifest:
      return "manifest";
    case FrameKind::kSectionBegin:
      return "section-begin";
    case FrameKind::kChunk:
      return "chunk";
    case FrameKind::kSectionEnd:
      return "section-end";
    case FrameKind::kIndex:
      return "index";
    case FrameKind::kEnd:
      return "end-of-stream";
  }
  if (kind >= kFirstExtension && kind <= kLastExtension) return "extension";
  return "unknown";
}

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]) {
  out[0] = h.kind;
  out[1] = h.codec;
  PutU16(out + 2, 0);
  PutU32(out + 4, h.section_id);
  PutU32(out + 8, h.payload_len);
  PutU64(out + 16, h.raw_len);
  PutU64(out + 24, h.offset);
  PutU64(out + 32, h.checksum);
  PutU32(out + 12, FrameHeaderCheck(out));
}

absl::Status DecodeFrameHeader(const uint8_t in[kFrameHeaderBytes],
                               FrameHeader* h) {
  uint32_t stored = GetU32(in + 12);
  uint32_t actual = FrameHeaderCheck(in);
  if (stored != actual) {
    return absl::DataLossError(absl::StrFormat(
        "frame header check mismatch (stored %08x, computed %08x)", stored,
        actual));
  }
  if (GetU16(in + 2) != 0) {
    return absl::DataLossError("frame header reserved bits are set");
  }
  h->kind = in[0];
  h->codec = in[1];
  h->section_id = GetU32(in + 4);
  h->payload_len = GetU32(in + 8);
  h->raw_len = GetU64(in + 16);
  h->offset = GetU64(in + 24);
  h->checksum = GetU64(in + 32);
  return absl::OkStatus();
}

void EncodeStreamHeader(uint16_t major, uint16_t minor,
                        uint8_t out[kStreamHeaderBytes]) {
  PutU64(out, kMagic);
  PutU16(out + 8, major);
  PutU16(out + 10, minor);
  PutU32(out + 12, static_cast<uint32_t>(XXH3_64bits(out, 12)));
}

absl::Status DecodeStreamHeader(const uint8_t in[kStreamHeaderBytes],
                                StreamHeader* h) {
  h->magic = GetU64(in);
  h->major = GetU16(in + 8);
  h->minor = GetU16(in + 10);
  if (h->magic != kMagic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "not a vGPU state image (magic %016x, expected 89 56 47 49 0d 0a 1a "
        "0a)",
        h->magic));
  }
  if (GetU32(in + 12) != static_cast<uint32_t>(XXH3_64bits(in, 12))) {
    return absl::DataLossError("stream header check mismatch");
  }
  return absl::OkStatus();
}

}  // namespace vgpu::codec::internal
