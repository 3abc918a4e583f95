// The chunk codec: one chunk of raw bytes <-> its stored form (zstd, stored
// raw, or elided as zero), with an XXH3-64 checksum over the raw bytes.
// Used by the image writer/reader here and by the checkpoint store.
// ChunkEncoder/ChunkDecoder hold a zstd context each: one per thread.
#ifndef VGPU_STATE_CODECS_CHUNK_CODEC_H_
#define VGPU_STATE_CODECS_CHUNK_CODEC_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vgpu::codec {

// Values are written to disk: never renumber.
enum class ChunkCodec : uint8_t {
  kStored = 0,  // raw bytes follow as they are (compression did not pay)
  kZstd = 1,    // one zstd frame with its content size set
  kZero = 2,    // all-zero run; no payload, checksum field 0
};

const char* ChunkCodecName(ChunkCodec codec);

// The chunk checksum: XXH3-64 of the uncompressed bytes.
uint64_t ChunkChecksum(absl::Span<const uint8_t> raw);
bool IsAllZero(absl::Span<const uint8_t> raw);

// A growable byte buffer that leaves new bytes uninitialised: payload
// buffers are overwritten at once, and zero-filling them showed up in
// profiles. Converts to a span of its current contents.
class ByteBuffer {
 public:
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void clear() { size_ = 0; }
  // Keeps the first min(size(), n) bytes; bytes past them are undefined.
  void resize(size_t n) {
    if (n > capacity_) {
      std::unique_ptr<uint8_t[]> bigger(new uint8_t[n]);
      if (size_ > 0) std::memcpy(bigger.get(), data_.get(), size_);
      data_ = std::move(bigger);
      capacity_ = n;
    }
    size_ = n;
  }
  void reserve(size_t n) {
    size_t keep = size_;
    resize(std::max(n, size_));
    size_ = keep;
  }
  void assign(absl::Span<const uint8_t> bytes) {
    resize(bytes.size());
    if (!bytes.empty()) std::memcpy(data_.get(), bytes.data(), bytes.size());
  }
  absl::Span<uint8_t> span() { return absl::MakeSpan(data_.get(), size_); }
  operator absl::Span<const uint8_t>() const {
    return absl::MakeConstSpan(data_.get(), size_);
  }

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

struct EncodedChunk {
  ChunkCodec codec = ChunkCodec::kZero;
  uint64_t raw_len = 0;
  uint64_t checksum = 0;  // 0 for kZero
  ByteBuffer payload;     // empty for kZero
};

class ChunkEncoder {
 public:
  // `level` is a zstd level; 1 is the fast default. 0 turns compression off:
  // every non-zero chunk is stored as it is (zero chunks are still elided),
  // for links where compressing costs more time than it saves.
  explicit ChunkEncoder(int level);
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // Encodes `raw` (non-empty) into `out`, reusing out->payload's memory.
  absl::Status Encode(absl::Span<const uint8_t> raw, EncodedChunk* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int level_;
};

class ChunkDecoder {
 public:
  ChunkDecoder();
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Decodes into `out`, whose size must equal the declared raw length, and
  // verifies the checksum. A zstd frame whose content size differs from
  // out.size(), or that would inflate past it, is rejected (DATA_LOSS)
  // without writing beyond `out`. The message says what failed; callers add
  // where.
  absl::Status Decode(ChunkCodec codec, absl::Span<const uint8_t> payload,
                      uint64_t checksum, absl::Span<uint8_t> out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Upper bound of an encoded payload for `raw_len` input bytes.
uint64_t MaxEncodedBytes(uint64_t raw_len);

}  // namespace vgpu::codec

#endif  // VGPU_STATE_CODECS_CHUNK_CODEC_H_
