#include "state-codecs/chunk_codec.h"

#include <zstd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace vgpu::codec {

const char* ChunkCodecName(ChunkCodec codec) {
  switch (codec) {
    case ChunkCodec::kStored:
      return "stored";
    case ChunkCodec::kZstd:
      return "zstd";
    case ChunkCodec::kZero:
      return "zero";
  }
  return "unknown";
}

uint64_t ChunkChecksum(absl::Span<const uint8_t> raw) {
  return XXH3_64bits(raw.data(), raw.size());
}

bool IsAllZero(absl::Span<const uint8_t> raw) {
  // Word-at-a-time OR over the bulk; the compiler vectorises this loop.
  const uint8_t* p = raw.data();
  size_t n = raw.size();
  uint64_t acc = 0;
  while (n >= 64) {
    uint64_t w[8];
    std::memcpy(w, p, 64);
    acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
    if (acc != 0) return false;
    p += 64;
    n -= 64;
  }
  while (n > 0) {
    acc |= *p++;
    --n;
  }
  return acc == 0;
}

uint64_t MaxEncodedBytes(uint64_t raw_len) {
  return ZSTD_compressBound(static_cast<size_t>(raw_len));
}

struct ChunkEncoder::Impl {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ~Impl() { ZSTD_freeCCtx(cctx); }
};

ChunkEncoder::ChunkEncoder(int level)
    : impl_(std::make_unique<Impl>()), level_(level) {
  // The content size goes in every frame so the reader can check it against
  // the frame header's raw length before inflating anything.
  ZSTD_CCtx_setParameter(impl_->cctx, ZSTD_c_compressionLevel, level_);
  ZSTD_CCtx_setParameter(impl_->cctx, ZSTD_c_contentSizeFlag, 1);
  ZSTD_CCtx_setParameter(impl_->cctx, ZSTD_c_checksumFlag, 0);
}

ChunkEncoder::~ChunkEncoder() = default;

absl::Status ChunkEncoder::Encode(absl::Span<const uint8_t> raw,
                                  EncodedChunk* out) {
  out->raw_len = raw.size();
  if (IsAllZero(raw)) {
    out->codec = ChunkCodec::kZero;
    out->checksum = 0;
    out->payload.clear();
    return absl::OkStatus();
  }
  out->checksum = ChunkChecksum(raw);
  if (level_ == 0) {
    out->codec = ChunkCodec::kStored;
    out->payload.assign(raw);
    return absl::OkStatus();
  }
  out->payload.resize(ZSTD_compressBound(raw.size()));
  size_t n = ZSTD_compress2(impl_->cctx, out->payload.data(),
                            out->payload.size(), raw.data(), raw.size());
  if (ZSTD_isError(n)) {
    return absl::InternalError(
        absl::StrCat("zstd compress: ", ZSTD_getErrorName(n)));
  }
  if (n >= raw.size()) {
    // Incompressible: storing raw is smaller and decodes at memcpy speed.
    out->codec = ChunkCodec::kStored;
    out->payload.assign(raw);
  } else {
    out->codec = ChunkCodec::kZstd;
    out->payload.resize(n);
  }
  return absl::OkStatus();
}

struct ChunkDecoder::Impl {
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  ~Impl() { ZSTD_freeDCtx(dctx); }
};

ChunkDecoder::ChunkDecoder() : impl_(std::make_unique<Impl>()) {}
ChunkDecoder::~ChunkDecoder() = default;

absl::Status ChunkDecoder::Decode(ChunkCodec codec,
                                  absl::Span<const uint8_t> payload,
                                  uint64_t checksum, absl::Span<uint8_t> out) {
  switch (codec) {
    case ChunkCodec::kZero:
      if (!payload.empty() || checksum != 0) {
        return absl::DataLossError("zero chunk carries a payload or checksum");
      }
      std::memset(out.data(), 0, out.size());
      return absl::OkStatus();
    case ChunkCodec::kStored:
      if (payload.size() != out.size()) {
        return absl::DataLossError(absl::StrFormat(
            "stored chunk has %u payload bytes for %u raw bytes",
            payload.size(), out.size()));
      }
      std::memcpy(out.data(), payload.data(), out.size());
      break;
    case ChunkCodec::kZstd: {
      unsigned long long content =
          ZSTD_getFrameContentSize(payload.data(), payload.size());
      if (content == ZSTD_CONTENTSIZE_ERROR) {
        return absl::DataLossError("not a zstd frame");
      }
      if (content != out.size()) {
        // Also catches ZSTD_CONTENTSIZE_UNKNOWN: the writer always sets it.
        return absl::DataLossError(absl::StrFormat(
            "zstd frame declares %s content bytes, chunk header says %u",
            content == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("unknown")
                                                : absl::StrCat(content),
            out.size()));
      }
      size_t n = ZSTD_decompressDCtx(impl_->dctx, out.data(), out.size(),
                                     payload.data(), payload.size());
      if (ZSTD_isError(n)) {
        return absl::DataLossError(
            absl::StrCat("zstd decompress: ", ZSTD_getErrorName(n)));
      }
      if (n != out.size()) {
        return absl::DataLossError(absl::StrFormat(
            "zstd frame inflated to %u bytes, expected %u", n, out.size()));
      }
      break;
    }
    default:
      return absl::DataLossError(
          absl::StrCat("unknown chunk codec ", static_cast<int>(codec)));
  }
  uint64_t actual = ChunkChecksum(out);
  if (actual != checksum) {
    return absl::DataLossError(absl::StrFormat(
        "chunk checksum mismatch: stored %016x, computed %016x", checksum,
        actual));
  }
  return absl::OkStatus();
}

}  // namespace vgpu::codec
