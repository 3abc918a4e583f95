// The vGPU state image: one format for checkpoint files, store entries and
// live-migration streams (spec: docs/formats/image.md).
//
// ImageWriter turns a manifest plus sections of bytes into a framed stream on
// a ByteSink; ImageReader walks such a stream from a ByteSource, verifying
// every bound and checksum before a byte is handed out. Each object is used
// from one thread; the writer and reader start worker threads of their own
// for (de)compression and join them before returning from each call that
// used them, so borrowed spans only need to live for the call.
#ifndef VGPU_STATE_CODECS_IMAGE_H_
#define VGPU_STATE_CODECS_IMAGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/chunk_codec.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::codec {

// "\x89VGI\r\n\x1a\n" read as a little-endian u64; docs/formats/image.md
// explains each byte.
inline constexpr uint64_t kImageMagic = 0x0a1a0a0d49475689ull;
inline constexpr uint16_t kFormatMajor = 1;
inline constexpr uint16_t kFormatMinor = 0;

using Manifest = Message<schema::Manifest>;
using SectionHeader = Message<schema::SectionHeader>;
using SectionIndex = Message<schema::SectionIndex>;
using SectionKind = schema::SectionHeader::Which;

const char* SectionKindName(SectionKind kind);

struct Limits {
  uint32_t max_chunk_bytes = 16 << 20;     // raw bytes of one chunk
  uint64_t max_section_bytes = 1ull << 40;  // raw bytes of one section
  uint32_t max_sections = 1 << 20;
  MessageLimits message;                   // manifest, section header, index
};

struct WriterOptions {
  uint32_t chunk_size = 256 << 10;  // bytes; 4 KiB .. Limits::max_chunk_bytes
  int zstd_level = 1;  // 0: no compression (stored chunks)
  // Compression threads; 0 = one per core. 1 compresses on the caller's
  // thread with no hand-off.
  int threads = 0;
};

// Running totals, for progress reporting and benchmarks.
struct StreamStats {
  uint64_t raw_bytes = 0;     // section bytes, zero runs included
  uint64_t stored_bytes = 0;  // bytes on the wire so far
  uint64_t zero_bytes = 0;    // raw bytes elided as zero
  uint64_t chunks = 0;
  uint32_t sections = 0;
};

class ImageWriter {
 public:
  // Writes the stream header and the manifest frame. Fields the writer owns
  // (magic, version, chunkSize, zstdLevel, and imageId when empty) are filled
  // in on a copy of `manifest`, which manifest() returns. `sink` must outlive
  // the writer.
  static absl::StatusOr<std::unique_ptr<ImageWriter>> Create(
      ByteSink* sink, const Manifest& manifest, const WriterOptions& options);
  ~ImageWriter();

  const Manifest& manifest() const;

  // Starts a section. The writer assigns the id (1, 2, ...) and returns it.
  // For memory regions declaredBytes must equal the present pages' bytes.
  absl::StatusOr<uint32_t> BeginSection(const SectionHeader& header);
  // Appends bytes to the open section; any size, any number of calls.
  absl::Status Write(absl::Span<const uint8_t> data);
  // Appends `n` zero bytes without touching memory.
  absl::Status WriteZeros(uint64_t n);
  absl::Status EndSection();
  // One call for a whole section held in memory.
  absl::StatusOr<uint32_t> AddSection(const SectionHeader& header,
                                      absl::Span<const uint8_t> data);
  // Writes the index and the end-of-stream frame and closes the sink.
  // Without it a reader sees a cut stream.
  absl::Status Finish();

  const StreamStats& stats() const;

 private:
  struct Impl;
  explicit ImageWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Called with each verified chunk of a section, in offset order. `data` is
// empty for a zero run of `length` bytes. Returning an error stops reading.
using ChunkVisitor = std::function<absl::Status(
    uint64_t offset, uint64_t length, absl::Span<const uint8_t> data)>;

// A verified chunk together with its stored form, for consumers that keep
// chunks as they arrived (the checkpoint store). Spans live until the
// visitor returns.
struct ChunkView {
  uint64_t offset = 0;
  uint64_t length = 0;
  ChunkCodec codec = ChunkCodec::kZero;
  uint64_t checksum = 0;
  absl::Span<const uint8_t> payload;  // stored bytes; empty for zero runs
  absl::Span<const uint8_t> raw;      // verified bytes; empty for zero runs
};
using ChunkViewVisitor = std::function<absl::Status(const ChunkView&)>;

class ImageReader {
 public:
  // Reads and checks the stream header and the manifest. `source` must
  // outlive the reader. threads: 0 = one per core, for ReadSection.
  static absl::StatusOr<std::unique_ptr<ImageReader>> Open(
      ByteSource* source, const Limits& limits = {}, int threads = 0);
  ~ImageReader();

  const Manifest& manifest() const;

  // Advances to the next section and returns its header, or nullopt once the
  // index and end-of-stream frame have been read and checked. Any data of
  // the previous section not yet read is skipped (its chunk checksums are
  // still verified). Sections of a kind this reader does not know are
  // skipped if not critical and rejected (UNIMPLEMENTED) if critical.
  absl::StatusOr<std::optional<SectionHeader>> NextSection();

  // Reads the current section's data, each chunk verified before `visit`
  // sees it. Chunks are decoded on the calling thread.
  absl::Status ReadChunks(const ChunkVisitor& visit);
  // As ReadChunks, with each chunk's stored form as well.
  absl::Status ReadChunkViews(const ChunkViewVisitor& visit);
  // Reads the whole current section into a new vector, decoding chunks on
  // all worker threads. Fails without returning partial data; refuses
  // sections larger than `max_bytes`.
  absl::StatusOr<std::vector<uint8_t>> ReadSection(uint64_t max_bytes);
  // Reads the current section into caller memory (already mapped, so no
  // page faults on the reading thread), decoding on all worker threads.
  // Returns the section's size; fails (RESOURCE_EXHAUSTED) if it does not
  // fit. On failure `out` holds partial data the caller must not use.
  absl::StatusOr<uint64_t> ReadSectionInto(absl::Span<uint8_t> out);
  // Skips the current section's data; decompresses and verifies every chunk
  // if `verify`, otherwise checks frame headers only.
  absl::Status SkipSection(bool verify);

  // Called on the reading thread after each chunk frame, for progress bars.
  void set_progress(std::function<void(const StreamStats&)> progress);

  // Available after NextSection() returned nullopt.
  const SectionIndex& index() const;
  const StreamStats& stats() const;
  // Byte offset of the next unread byte, for error messages and progress.
  uint64_t offset() const;

 private:
  struct Impl;
  explicit ImageReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Fills a manifest's creation info (tool, host name, now) and a random id.
void StampManifest(Manifest& manifest, const std::string& tool);

}  // namespace vgpu::codec

#endif  // VGPU_STATE_CODECS_IMAGE_H_
