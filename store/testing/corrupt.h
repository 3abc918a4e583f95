// Test-only damage to a closed store: flips a byte inside a stored chunk's
// payload through RocksDB, so that RocksDB's own block checksums still hold
// and only the store's checks can notice.
#ifndef VGPU_STORE_TESTING_CORRUPT_H_
#define VGPU_STORE_TESTING_CORRUPT_H_

#include <string>

#include "absl/status/statusor.h"

namespace vgpu::store::testing {

// Damages the first chunk of the snapshot's "vram" section; returns the
// chunk's address as hex.
absl::StatusOr<std::string> CorruptOneChunk(const std::string& store_path,
                                            const std::string& snapshot_id);

}  // namespace vgpu::store::testing

#endif  // VGPU_STORE_TESTING_CORRUPT_H_
