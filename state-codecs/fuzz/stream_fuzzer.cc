// libFuzzer target: arbitrary bytes as a whole image, read with
// ImageReader over a MemorySource (single-threaded, small limits). Every
// section is consumed one of several ways so that all read paths see damaged
// input; the reader must fail cleanly and never read past the input.
//
// Nearly every byte of an image is covered by a check value, so blind
// mutation stops at the first header check. The custom mutator below
// therefore repairs, after most mutations, what a writer would have
// computed (docs/formats/image.md): header checks, payload checksums,
// stored-chunk checksums, section-end totals and digest, and the
// end-of-stream frame. It leaves zstd chunk checksums and the index alone,
// and skips the repair now and then so the check paths stay covered too.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/chunk_codec.h"
#include "state-codecs/image.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::fuzz {
// walk.cc
void Check(bool ok, const char* what);
uint64_t WalkManifest(schema::Manifest::Reader m);
uint64_t WalkSectionHeader(schema::SectionHeader::Reader h);
uint64_t WalkSectionIndex(schema::SectionIndex::Reader index);
}  // namespace vgpu::fuzz

namespace {

using namespace vgpu;

constexpr uint32_t kMaxChunkBytes = 1 << 20;
constexpr uint64_t kMaxSectionBytes = 64ull << 20;
constexpr uint64_t kReadLimit = 16 << 20;

// How a section's data is consumed.
enum Mode { kReadSection, kReadChunks, kSkipVerify, kSkipFast, kLeave, kModes };

void ConsumeSection(codec::ImageReader& reader,
                    const codec::SectionHeader& header, Mode mode) {
  const uint64_t declared = header.root().getDeclaredBytes();
  switch (mode) {
    case kReadSection: {
      absl::StatusOr<std::vector<uint8_t>> data =
          reader.ReadSection(kReadLimit);
      if (data.ok()) {
        fuzz::Check(data->size() <= kReadLimit, "ReadSection over its limit");
        fuzz::Check(declared == 0 || data->size() == declared,
                    "ReadSection size differs from declaredBytes");
      }
      break;
    }
    case kReadChunks: {
      uint64_t next = 0;
      absl::Status s = reader.ReadChunks(
          [&](uint64_t offset, uint64_t length,
              absl::Span<const uint8_t> data) -> absl::Status {
            fuzz::Check(offset == next, "chunks out of order or with gaps");
            fuzz::Check(length > 0, "empty chunk visited");
            fuzz::Check(data.empty() || data.size() == length,
                        "chunk data length differs from its length");
            fuzz::Check(data.size() <= kMaxChunkBytes,
                        "chunk over max_chunk_bytes");
            uint8_t acc = 0;
            for (uint8_t b : data) acc ^= b;  // touch every byte
            (void)acc;
            next = offset + length;
            fuzz::Check(next <= kMaxSectionBytes,
                        "section over max_section_bytes");
            return absl::OkStatus();
          });
      if (s.ok()) {
        fuzz::Check(declared == 0 || next == declared,
                    "ReadChunks total differs from declaredBytes");
      }
      break;
    }
    case kSkipVerify:
      (void)reader.SkipSection(/*verify=*/true);
      break;
    case kSkipFast:
      (void)reader.SkipSection(/*verify=*/false);
      break;
    case kLeave:  // NextSection() skips it
    case kModes:
      break;
  }
}

// Frame layout from docs/formats/image.md.
constexpr size_t kStreamHeaderBytes = 16;
constexpr size_t kFrameHeaderBytes = 40;
enum : uint8_t {
  kManifest = 1,
  kSectionBegin = 2,
  kChunk = 3,
  kSectionEnd = 4,
  kIndex = 5,
  kEnd = 6,
};
constexpr uint8_t kCodecStored = 0;

uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{p[i]} << (8 * i);
  return v;
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
// XXH3-64, the hash behind every check value of the format.
uint64_t Hash(const uint8_t* p, size_t n) {
  return codec::ChunkChecksum(absl::MakeConstSpan(p, n));
}
void Append(std::vector<uint8_t>& v, const uint8_t* p, size_t n) {
  v.insert(v.end(), p, p + n);
}

// Rewrites every check value a writer would have produced for the frames in
// data[0, size), in place. Lengths are left as they are.
void RepairChecks(uint8_t* data, size_t size) {
  if (size < kStreamHeaderBytes) return;
  Put32(data + 12, static_cast<uint32_t>(Hash(data, 12)));
  std::vector<uint8_t> stream;   // what the stream digest covers
  std::vector<uint8_t> section;  // what the section digest covers
  uint64_t raw = 0, chunks = 0, sections = 0, frames = 0, index_at = 0;
  size_t pos = kStreamHeaderBytes;
  while (pos + kFrameHeaderBytes <= size) {
    uint8_t* h = data + pos;
    const uint8_t kind = h[0];
    const uint32_t payload_len = Get32(h + 8);
    const bool whole = payload_len <= size - pos - kFrameHeaderBytes;
    uint8_t* payload = h + kFrameHeaderBytes;
    if (whole) {
      switch (kind) {
        case kChunk:
          if (h[1] == kCodecStored) Put64(h + 32, Hash(payload, payload_len));
          break;
        case kSectionBegin:
          section.clear();
          raw = chunks = 0;
          break;
        case kSectionEnd:
          if (payload_len == 24) {
            Put64(payload, raw);
            Put64(payload + 8, chunks);
            Put64(payload + 16, Hash(section.data(), section.size()));
          }
          ++sections;
          break;
        case kIndex:
          index_at = pos;
          break;
        case kEnd:
          if (payload_len == 32) {
            Put64(payload, sections);
            Put64(payload + 8, frames);
            Put64(payload + 16, index_at);
            Put64(payload + 24, Hash(stream.data(), stream.size()));
          }
          break;
        default:  // manifest, extensions, unknown kinds
          break;
      }
      if (kind != kChunk) {
        Put64(h + 16, payload_len);  // raw length = payload length
        Put64(h + 32, Hash(payload, payload_len));
      }
    }
    uint8_t check[kFrameHeaderBytes - 4];
    std::memcpy(check, h, 12);
    std::memcpy(check + 12, h + 16, kFrameHeaderBytes - 16);
    Put32(h + 12, static_cast<uint32_t>(Hash(check, sizeof(check))));
    if (!whole) return;
    Append(stream, h, kFrameHeaderBytes);
    ++frames;
    if (kind == kChunk) {
      Append(section, h, kFrameHeaderBytes);
      raw += Get64(h + 16);
      ++chunks;
      Append(stream, payload, payload_len);  // empty for a zero run
    }
    pos += kFrameHeaderBytes + payload_len;
  }
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size,
                                          size_t max_size, unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 8 != 0) RepairChecks(data, size);
  return size;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  codec::MemorySource source(absl::MakeConstSpan(data, size), "fuzz");
  codec::Limits limits;
  limits.max_chunk_bytes = kMaxChunkBytes;
  limits.max_section_bytes = kMaxSectionBytes;
  limits.max_sections = 4096;
  limits.message.max_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<codec::ImageReader>> opened =
      codec::ImageReader::Open(&source, limits, /*threads=*/1);
  if (!opened.ok()) return 0;
  codec::ImageReader& reader = **opened;
  fuzz::WalkManifest(reader.manifest().root());

  // Vary which section gets which mode with the image, so that a valid seed
  // exercises a different mode per section than its neighbour seed does.
  auto id = reader.manifest().root().getImageId();
  unsigned phase = id.size() > 0 ? id[0] : 0;
  for (unsigned i = 0;; ++i) {
    absl::StatusOr<std::optional<codec::SectionHeader>> next =
        reader.NextSection();
    fuzz::Check(reader.offset() <= size, "reader offset past the input");
    if (!next.ok()) {
      // Sticky: every later call reports the error too.
      fuzz::Check(!reader.NextSection().ok(), "error is not sticky");
      fuzz::Check(!reader.SkipSection(true).ok(), "error is not sticky");
      break;
    }
    if (!next->has_value()) {
      fuzz::WalkSectionIndex(reader.index().root());
      absl::StatusOr<std::optional<codec::SectionHeader>> again =
          reader.NextSection();
      fuzz::Check(again.ok() && !again->has_value(),
                  "NextSection after the end does not stay at the end");
      break;
    }
    fuzz::WalkSectionHeader((*next)->root());
    ConsumeSection(reader, **next, static_cast<Mode>((i + phase) % kModes));
    fuzz::Check(reader.offset() <= size, "reader offset past the input");
  }
  const codec::StreamStats& stats = reader.stats();
  fuzz::Check(stats.zero_bytes <= stats.raw_bytes, "more zero than raw bytes");
  return 0;
}
