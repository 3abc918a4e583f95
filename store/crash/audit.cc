#include "store/crash/audit.h"

#include <rocksdb/db.h>

#include <map>
#include <memory>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "state-codecs/image.h"
#include "state-codecs/internal/frame.h"
#include "state-codecs/message.h"
#include "store/schema/store.capnp.h"

namespace vgpu::store::crash {
namespace {

uint64_t U64(const std::string& v) {
  return v.size() == 8 ? codec::internal::GetU64(
                             reinterpret_cast<const uint8_t*>(v.data()))
                       : ~0ull;
}

std::string Hex(const std::string& key) {
  return absl::BytesToHexString(key).substr(0, 16);
}

}  // namespace

absl::StatusOr<AuditReport> AuditStore(const std::string& path) {
  rocksdb::ColumnFamilyOptions cf;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf},
      {"chunks", cf},
      {"refs", cf},
      {"snapshots", cf}};
  std::vector<rocksdb::ColumnFamilyHandle*> h;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), path,
                                                   families, &h, &raw_db);
  if (!s.ok()) return absl::InternalError("audit open: " + s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw_db);
  struct Handles {
    rocksdb::DB* db;
    std::vector<rocksdb::ColumnFamilyHandle*>& h;
    ~Handles() {
      for (auto* x : h) db->DestroyColumnFamilyHandle(x);
    }
  } handles{db.get(), h};

  AuditReport report;
  // Chunk -> number of snapshots naming it.
  std::map<std::string, uint64_t> named;
  codec::MessageLimits limits;
  limits.max_bytes = 512u << 20;
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions(), h[3]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ++report.snapshots;
    auto rec = codec::DecodeMessage<schema::SnapshotRecord>(
        absl::MakeConstSpan(
            reinterpret_cast<const uint8_t*>(it->value().data()),
            it->value().size()),
        limits);
    if (!rec.ok()) {
      report.problems.push_back(absl::StrCat("snapshot ", it->key().ToString(),
                                             ": ", rec.status().message()));
      continue;
    }
    std::set<std::string> mine;
    for (auto sec : rec->root().getSections()) {
      for (auto e : sec.getExtents()) {
        if (e.getChunk().size() == 0) continue;
        mine.insert(std::string(
            reinterpret_cast<const char*>(e.getChunk().begin()),
            e.getChunk().size()));
      }
    }
    for (const std::string& k : mine) ++named[k];
  }
  if (!it->status().ok()) return absl::InternalError(it->status().ToString());

  std::map<std::string, uint64_t> sizes;
  it.reset(db->NewIterator(rocksdb::ReadOptions(), h[1]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ++report.chunks;
    sizes[it->key().ToString()] = it->value().size();
  }
  if (!it->status().ok()) return absl::InternalError(it->status().ToString());

  std::map<std::string, uint64_t> counts;
  it.reset(db->NewIterator(rocksdb::ReadOptions(), h[2]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ++report.refs;
    counts[it->key().ToString()] = U64(it->value().ToString());
  }
  if (!it->status().ok()) return absl::InternalError(it->status().ToString());

  std::string total;
  if (db->Get(rocksdb::ReadOptions(), h[0], "chunk_bytes", &total).ok()) {
    report.chunk_bytes_total = U64(total);
  }

  report.referenced_chunks = named.size();
  for (const auto& [key, n] : named) {
    auto size = sizes.find(key);
    if (size == sizes.end()) {
      report.problems.push_back(
          absl::StrCat("chunk ", Hex(key), " named by ", n,
                       " snapshot(s) is missing"));
    } else {
      report.referenced_bytes += size->second;
      report.referenced[key] = size->second;
    }
    auto c = counts.find(key);
    uint64_t have = c == counts.end() ? 0 : c->second;
    if (have != n) {
      report.problems.push_back(absl::StrCat("chunk ", Hex(key), " is named by ",
                                             n, " snapshot(s) but counted ",
                                             have));
    }
  }
  for (const auto& [key, n] : counts) {
    if (named.count(key) == 0) {
      report.problems.push_back(absl::StrCat(
          "reference count ", n, " for chunk ", Hex(key),
          " that no snapshot names", sizes.count(key) ? "" : " (and not stored)"));
    }
  }
  for (const auto& [key, size] : sizes) {
    if (named.count(key) == 0) {
      ++report.orphan_chunks;
      report.orphan_bytes += size;
      report.orphans.insert(key);
    }
  }
  return report;
}

}  // namespace vgpu::store::crash
