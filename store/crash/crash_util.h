// Helpers shared by the crash writer and the tests that check what it left:
// a digest of a VM's content, and reading a snapshot back into one.
#ifndef VGPU_STORE_CRASH_CRASH_UTIL_H_
#define VGPU_STORE_CRASH_CRASH_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "store/store.h"
#include "store/testing/images.h"

namespace vgpu::store::crash {

// XXH3-64 over the VRAM bytes followed by the register bytes (and their
// sizes, so that a short VRAM cannot collide with a longer one).
uint64_t ContentDigest(const testing::VmState& vm);
std::string DigestHex(uint64_t digest);  // 16 lowercase hex digits

// The VM crash_writer --die-in-put stores: incompressible VRAM, so that
// every chunk is distinct and the store stages chunk batches mid-stream.
testing::VmState DieInPutVm(uint64_t vram_bytes, uint64_t seed);

// Reads snapshot `id` back as a complete image and decodes it.
absl::StatusOr<testing::VmState> ReadBack(Store& store, const std::string& id);

}  // namespace vgpu::store::crash

#endif  // VGPU_STORE_CRASH_CRASH_UTIL_H_
