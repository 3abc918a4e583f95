// libFuzzer target: arbitrary bytes as a whole image, read with
// ImageReader over a MemorySource (single-threaded, small limits). Every
// section is consumed one of several ways so that all read paths see damaged
// input; the reader must fail cleanly and never read past the input.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"
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

}  // namespace

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
      fuzz::Check(reader.offset() == size ||
                      reader.offset() < size,  // trailing bytes are ignored
                  "offset past the input");
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
