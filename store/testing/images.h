// Test images for the store: a VM whose VRAM changes between snapshots,
// written as full or incremental images. Used by the store's tests, its
// crash-test writer and its benchmark.
#ifndef VGPU_STORE_TESTING_IMAGES_H_
#define VGPU_STORE_TESTING_IMAGES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "state-codecs/image.h"

namespace vgpu::store::testing {

inline constexpr uint32_t kPage = 4096;

struct VmState {
  std::vector<uint8_t> vram;       // page-multiple
  std::vector<uint8_t> registers;  // 64 bytes
};

VmState MakeVm(uint64_t vram_bytes, uint64_t seed);
// Rewrites `count` pages chosen by `seed` (some become all-zero); returns
// their indices, sorted.
std::vector<uint64_t> Mutate(VmState& vm, uint64_t count, uint64_t seed);

// A full image of `vm`, with a 16-byte id derived from `id_seed`.
absl::StatusOr<std::vector<uint8_t>> FullImage(const VmState& vm,
                                               uint64_t id_seed,
                                               const std::string& vm_name =
                                                   "vm1");
// An incremental image: only `changed` pages, naming the parent image id.
absl::StatusOr<std::vector<uint8_t>> IncrementalImage(
    const VmState& vm, const std::vector<uint64_t>& changed,
    uint64_t id_seed, uint64_t parent_id_seed,
    const std::string& vm_name = "vm1");

std::string IdHex(uint64_t id_seed);

// Reads an image back into VRAM and register contents (pages the image
// marks zero are zero; pages it lacks are left as 0xEE).
absl::StatusOr<VmState> Decode(const std::vector<uint8_t>& image);

}  // namespace vgpu::store::testing

#endif  // VGPU_STORE_TESTING_IMAGES_H_
