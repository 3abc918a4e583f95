// The 32-byte header that frames each state blob of the emulated vGPU
// (registers, ring): magic, version, kind, body length and checksum. The body
// is a Cap'n Proto message from state.capnp. Layout and the derivation of the
// magic: docs/formats/emulated-device.md. Pure functions; any thread.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_STATE_BLOB_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_STATE_BLOB_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vgpu::agents::emulated::internal {

// 89 'V' 'E' 'D' 0d 0a 1a 0a, read as a little-endian u64.
inline constexpr uint64_t kBlobMagic = 0x0a1a0a0d44455689ULL;
inline constexpr uint16_t kBlobMajor = 1;
inline constexpr uint16_t kBlobMinor = 0;
inline constexpr size_t kBlobHeaderBytes = 32;

enum class BlobKind : uint32_t {
  kRegisters = 1,
  kRing = 2,
};

const char* BlobKindName(BlobKind kind);

std::vector<uint8_t> EncodeBlob(BlobKind kind, absl::Span<const uint8_t> body);

// Checks the header and the body checksum and returns the body. Errors:
// INVALID_ARGUMENT (not a blob of this kind), UNIMPLEMENTED (a major
// version this build does not know), DATA_LOSS (cut or damaged).
absl::StatusOr<absl::Span<const uint8_t>> DecodeBlob(
    absl::Span<const uint8_t> blob, BlobKind kind);

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_STATE_BLOB_H_
