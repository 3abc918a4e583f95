// The checkpoint store: vGPU state snapshots in an embedded RocksDB.
//
// A snapshot is ingested from an image stream (state-codecs) and read back
// as one, so restore, export and migration share one path. Chunks are
// content-addressed (SHA-256 of their raw bytes) and stored once however
// many snapshots hold them; each snapshot records which chunk holds each of
// its byte ranges, so an incremental image (one naming a parent and carrying
// only changed pages) costs only its changed chunks, and deleting any
// snapshot of a chain leaves the others whole. A snapshot becomes visible
// in one synced write batch, or not at all.
//
// One process opens a store at a time (a lock file; a second Open fails
// with FAILED_PRECONDITION). A Store is thread-safe; Put, Delete and
// CollectGarbage are serialised inside.
#ifndef VGPU_STORE_STORE_H_
#define VGPU_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace vgpu::store {

inline constexpr char kDefaultPath[] = "/var/lib/vgpu";

struct StoreOptions {
  std::string path = kDefaultPath;
  // fsync the write-ahead log when a snapshot commits. Only tests that
  // measure something else turn this off.
  bool sync = true;
  // Refuse a snapshot that would take the store's chunk bytes past this
  // (0 = no budget).
  uint64_t byte_budget = 0;
  // Retention, applied after each Put to the snapshot's VM: keep the newest
  // N (0 = all), and drop those older than max_age_seconds (0 = no limit).
  // A snapshot that others name as parent is still deleted: children are
  // self-contained.
  uint32_t keep_last = 0;
  int64_t max_age_seconds = 0;
};

struct SnapshotInfo {
  std::string id;  // hex of the image id
  std::string vm_name;
  std::string vm_uuid;
  std::string tag;
  std::string parent;  // empty for a full snapshot
  int64_t created_unix_nanos = 0;
  uint64_t logical_bytes = 0;  // bytes of state it restores, zeros included
  uint64_t stored_bytes = 0;   // chunk bytes this snapshot added
  uint64_t chunk_refs = 0;
  uint32_t sections = 0;
  std::vector<std::string> devices;  // "emulation:bochs-dispi-0", ...
};

struct PutOptions {
  std::string tag;
  // Parent snapshot id for an incremental image; when empty, the image
  // manifest's parent reference is used.
  std::string parent;
  // Called as bytes arrive, for progress bars.
  std::function<void(const codec::StreamStats&)> progress;
};

struct Damage {
  std::string snapshot;  // id
  std::string section;   // name
  std::string chunk;     // hex SHA-256
  std::string what;      // what is wrong
};

struct VerifyReport {
  uint64_t snapshots = 0;
  uint64_t chunks_checked = 0;
  uint64_t bytes_checked = 0;
  std::vector<Damage> damage;  // empty when everything holds
};

struct GcReport {
  uint64_t chunks_freed = 0;
  uint64_t bytes_freed = 0;
  uint64_t chunks_kept = 0;
};

struct StoreStats {
  uint64_t snapshots = 0;
  uint64_t chunks = 0;
  uint64_t chunk_bytes = 0;  // stored (compressed) bytes of all chunks
};

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(
      const StoreOptions& options);
  virtual ~Store() = default;

  // Ingests one image as a snapshot. Every chunk is verified before it is
  // stored; a damaged or cut image leaves nothing visible (DATA_LOSS). An
  // image whose id is already stored is refused (ALREADY_EXISTS).
  virtual absl::StatusOr<SnapshotInfo> Put(codec::ByteSource* image,
                                           const PutOptions& options) = 0;
  // Newest first; all VMs when `vm` is empty.
  virtual absl::StatusOr<std::vector<SnapshotInfo>> List(
      const std::string& vm) = 0;
  virtual absl::StatusOr<SnapshotInfo> Get(const std::string& id) = 0;
  // Writes the snapshot as a complete image (parent references resolved).
  // Every chunk is checked before its bytes are written.
  virtual absl::Status Read(const std::string& id, codec::ByteSink* sink,
                            const codec::WriterOptions& options) = 0;
  virtual absl::Status Delete(const std::string& id) = 0;
  // Re-reads every chunk of one snapshot (or all, when `id` is empty) and
  // checks it; reports damage, never repairs.
  virtual absl::StatusOr<VerifyReport> Verify(const std::string& id) = 0;
  // Frees chunks no snapshot references (left by deletes or by ingests cut
  // short by a crash).
  virtual absl::StatusOr<GcReport> CollectGarbage() = 0;
  virtual absl::StatusOr<StoreStats> Stats() = 0;
};

// Export and import of one portable image file.
absl::Status ExportSnapshot(Store& store, const std::string& id,
                            const std::string& path);
absl::StatusOr<SnapshotInfo> ImportSnapshot(Store& store,
                                            const std::string& path,
                                            const PutOptions& options);

}  // namespace vgpu::store

#endif  // VGPU_STORE_STORE_H_
