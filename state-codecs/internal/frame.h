// The fixed-size binary parts of an image: the 16-byte stream header and the
// 40-byte frame header (layout in docs/formats/image.md). Pure functions;
// any thread.
#ifndef VGPU_STATE_CODECS_INTERNAL_FRAME_H_
#define VGPU_STATE_CODECS_INTERNAL_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vgpu::codec::internal {

// "\x89VGI\r\n\x1a\n" as a little-endian u64 (see image.h).
inline constexpr uint64_t kMagic = 0x0a1a0a0d49475689ull;
inline constexpr size_t kStreamHeaderBytes = 16;
inline constexpr size_t kFrameHeaderBytes = 40;
inline constexpr size_t kSectionEndPayloadBytes = 24;
inline constexpr size_t kEndPayloadBytes = 32;

// Values are written to disk: never renumber or reuse.
enum class FrameKind : uint8_t {
  kManifest = 1,
  kSectionBegin = 2,
  kChunk = 3,
  kSectionEnd = 4,
  kIndex = 5,
  kEnd = 6,
};
// Kinds in [kFirstExtension, kLastExtension] are optional: a reader that does
// not know one skips it (after checking its payload checksum). Any other
// unknown kind is an error.
inline constexpr uint8_t kFirstExtension = 0x40;
inline constexpr uint8_t kLastExtension = 0x7f;

const char* FrameKindName(uint8_t kind);

struct FrameHeader {
  uint8_t kind = 0;
  uint8_t codec = 0;        // chunks only
  uint32_t section_id = 0;  // 0 outside sections
  uint32_t payload_len = 0;
  uint64_t raw_len = 0;     // chunks: uncompressed length; else payload_len
  uint64_t offset = 0;      // chunks: offset within the section
  uint64_t checksum = 0;    // chunks: XXH3 of raw bytes; else of the payload
};

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]);
// Checks the header's own check value and reserved bits.
absl::Status DecodeFrameHeader(const uint8_t in[kFrameHeaderBytes],
                               FrameHeader* h);

void EncodeStreamHeader(uint16_t major, uint16_t minor,
                        uint8_t out[kStreamHeaderBytes]);
struct StreamHeader {
  uint64_t magic;
  uint16_t major;
  uint16_t minor;
};
absl::Status DecodeStreamHeader(const uint8_t in[kStreamHeaderBytes],
                                StreamHeader* h);

// Little-endian helpers.
void PutU64(uint8_t* p, uint64_t v);
uint64_t GetU64(const uint8_t* p);

uint64_t PayloadChecksum(absl::Span<const uint8_t> payload);

}  // namespace vgpu::codec::internal

#endif  // VGPU_STATE_CODECS_INTERNAL_FRAME_H_
