#include "store/testing/corrupt.h"

#include <rocksdb/db.h>

#include <memory>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "state-codecs/image.h"
#include "state-codecs/message.h"
#include "store/schema/store.capnp.h"

namespace vgpu::store::testing {

absl::StatusOr<std::string> CorruptOneChunk(const std::string& store_path,
                                            const std::string& snapshot_id) {
  rocksdb::ColumnFamilyOptions cf;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf},
      {"chunks", cf},
      {"refs", cf},
      {"snapshots", cf}};
  std::vector<rocksdb::ColumnFamilyHandle*> h;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(), store_path,
                                        families, &h, &db);
  if (!s.ok()) return absl::InternalError(s.ToString());
  std::unique_ptr<rocksdb::DB> owned(db);
  auto cleanup = [&] {
    for (auto* x : h) db->DestroyColumnFamilyHandle(x);
  };
  std::string value;
  s = db->Get(rocksdb::ReadOptions(), h[3], snapshot_id, &value);
  if (!s.ok()) {
    cleanup();
    return absl::NotFoundError(s.ToString());
  }
  codec::MessageLimits limits;
  limits.max_bytes = 512u << 20;
  auto rec = codec::DecodeMessage<schema::SnapshotRecord>(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()),
                          value.size()),
      limits);
  if (!rec.ok()) {
    cleanup();
    return rec.status();
  }
  for (auto sec : rec->root().getSections()) {
    auto hdr = codec::DecodeMessage<vgpu::schema::SectionHeader>(
        absl::MakeConstSpan(sec.getHeader().begin(), sec.getHeader().size()),
        codec::MessageLimits{});
    if (!hdr.ok() || hdr->root().getName() != "vram") continue;
    for (auto e : sec.getExtents()) {
      if (e.getChunk().size() == 0) continue;
      std::string key(reinterpret_cast<const char*>(e.getChunk().begin()),
                      e.getChunk().size());
      std::string chunk;
      s = db->Get(rocksdb::ReadOptions(), h[1], key, &chunk);
      if (!s.ok() || chunk.size() < 40) continue;
      chunk[chunk.size() - 7] ^= 0x20;  // inside the payload
      s = db->Put(rocksdb::WriteOptions(), h[1], key, chunk);
      cleanup();
      if (!s.ok()) return absl::InternalError(s.ToString());
      return absl::BytesToHexString(key);
    }
  }
  cleanup();
  return absl::NotFoundError("no vram chunk to damage");
}

}  // namespace vgpu::store::testing
