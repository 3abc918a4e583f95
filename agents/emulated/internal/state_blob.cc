#include "agents/emulated/internal/state_blob.h"

#include <xxhash.h>

#include <cstring>

#include "absl/strings/str_format.h"

namespace vgpu::agents::emulated::internal {
namespace {

template <typename T>
void Put(std::vector<uint8_t>& out, size_t at, T v) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
                "blobs are little-endian");
  std::memcpy(out.data() + at, &v, sizeof(v));
}

template <typename T>
T Get(absl::Span<const uint8_t> in, size_t at) {
  T v;
  std::memcpy(&v, in.data() + at, sizeof(v));
  return v;
}

}  // namespace

const char* BlobKindName(BlobKind kind) {
  switch (kind) {
    case BlobKind::kRegisters:
      return "registers";
    case BlobKind::kRing:
      return "ring";
  }
  return "unknown";
}

std::vector<uint8_t> EncodeBlob(BlobKind kind, absl::Span<const uint8_t> body) {
  std::vector<uint8_t> out(kBlobHeaderBytes + body.size());
  Put<uint64_t>(out, 0, kBlobMagic);
  Put<uint16_t>(out, 8, kBlobMajor);
  Put<uint16_t>(out, 10, kBlobMinor);
  Put<uint32_t>(out, 12, static_cast<uint32_t>(kind));
  Put<uint64_t>(out, 16, body.size());
  Put<uint64_t>(out, 24, XXH3_64bits(body.data(), body.size()));
  if (!body.empty()) {
    std::memcpy(out.data() + kBlobHeaderBytes, body.data(), body.size());
  }
  return out;
}

absl::StatusOr<absl::Span<const uint8_t>> DecodeBlob(
    absl::Span<const uint8_t> blob, BlobKind kind) {
  const char* name = BlobKindName(kind);
  if (blob.size() < kBlobHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s blob of %u bytes is shorter than its %u-byte header", name,
        blob.size(), kBlobHeaderBytes));
  }
  if (Get<uint64_t>(blob, 0) != kBlobMagic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s blob: bad magic 0x%016x (not an emulated-device state blob)", name,
        Get<uint64_t>(blob, 0)));
  }
  const uint16_t major = Get<uint16_t>(blob, 8);
  const uint16_t minor = Get<uint16_t>(blob, 10);
  if (major != kBlobMajor) {
    return absl::UnimplementedError(absl::StrFormat(
        "%s blob has version %u.%u; this device reads major version %u", name,
        major, minor, kBlobMajor));
  }
  const uint32_t got_kind = Get<uint32_t>(blob, 12);
  if (got_kind != static_cast<uint32_t>(kind)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expected a %s blob, got kind %u (%s)", name, got_kind,
                        BlobKindName(static_cast<BlobKind>(got_kind))));
  }
  const uint64_t length = Get<uint64_t>(blob, 16);
  if (length != blob.size() - kBlobHeaderBytes) {
    return absl::DataLossError(absl::StrFormat(
        "%s blob header declares a %u-byte body, %u bytes follow it", name,
        length, blob.size() - kBlobHeaderBytes));
  }
  absl::Span<const uint8_t> body = blob.subspan(kBlobHeaderBytes);
  const uint64_t want = Get<uint64_t>(blob, 24);
  const uint64_t got = XXH3_64bits(body.data(), body.size());
  if (want != got) {
    return absl::DataLossError(absl::StrFormat(
        "%s blob body checksum mismatch (header 0x%016x, body 0x%016x)", name,
        want, got));
  }
  return body;
}

}  // namespace vgpu::agents::emulated::internal
