#include "store/crash/crash_util.h"

#include <xxhash.h>

#include "absl/strings/str_format.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/sample.h"

namespace vgpu::store::crash {

uint64_t ContentDigest(const testing::VmState& vm) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  uint64_t sizes[2] = {vm.vram.size(), vm.registers.size()};
  XXH3_64bits_update(state, sizes, sizeof(sizes));
  XXH3_64bits_update(state, vm.vram.data(), vm.vram.size());
  XXH3_64bits_update(state, vm.registers.data(), vm.registers.size());
  uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

std::string DigestHex(uint64_t digest) {
  return absl::StrFormat("%016x", digest);
}

testing::VmState DieInPutVm(uint64_t vram_bytes, uint64_t seed) {
  testing::VmState vm;
  vm.vram = codec::RandomBytes(vram_bytes, seed);
  vm.registers = codec::RandomBytes(64, seed + 1);
  return vm;
}

absl::StatusOr<testing::VmState> ReadBack(Store& store, const std::string& id) {
  codec::MemorySink sink;
  codec::WriterOptions options;
  options.threads = 1;
  if (absl::Status s = store.Read(id, &sink, options); !s.ok()) {
    return s;
  }
  return testing::Decode(sink.bytes());
}

}  // namespace vgpu::store::crash
