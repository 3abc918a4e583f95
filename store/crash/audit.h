// Test-only audit of a closed store's RocksDB records: the invariants the
// store's public API cannot show (reference counts, the chunk byte total,
// chunks nobody references).
#ifndef VGPU_STORE_CRASH_AUDIT_H_
#define VGPU_STORE_CRASH_AUDIT_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vgpu::store::crash {

struct AuditReport {
  uint64_t snapshots = 0;
  uint64_t chunks = 0;              // records in the chunks family
  uint64_t refs = 0;                // records in the refs family
  uint64_t referenced_chunks = 0;   // distinct chunks some snapshot names
  uint64_t orphan_chunks = 0;       // stored, named by no snapshot
  uint64_t orphan_bytes = 0;
  uint64_t referenced_bytes = 0;    // value bytes of referenced chunks
  uint64_t chunk_bytes_total = 0;   // the store's own "chunk_bytes" total
  std::set<std::string> orphans;    // their keys (raw SHA-256)
  std::map<std::string, uint64_t> referenced;  // key -> value bytes
  // Breaches of invariants that hold at every commit point, crash or not:
  // a named chunk missing, a reference count that differs from the number
  // of snapshots naming the chunk, a count for a chunk nobody names.
  std::vector<std::string> problems;
};

// Opens the store read-only (it must not be open in this process).
absl::StatusOr<AuditReport> AuditStore(const std::string& path);

}  // namespace vgpu::store::crash

#endif  // VGPU_STORE_CRASH_AUDIT_H_
