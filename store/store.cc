#include "store/store.h"

#include <openssl/evp.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/options_util.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <filesystem>
#include <cstdarg>
#include <cstdio>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "state-codecs/chunk_codec.h"
#include "state-codecs/internal/frame.h"
#include "store/internal/extent_map.h"
#include "store/schema/store.capnp.h"

namespace vgpu::store {
namespace {

using codec::ChunkCodec;
using internal::Extent;
using internal::ExtentMap;

constexpr char kChunksCf[] = "chunks";        // sha256 -> chunk value
constexpr char kRefsCf[] = "refs";            // sha256 -> u64 snapshot count
constexpr char kSnapshotsCf[] = "snapshots";  // id -> SnapshotRecord
constexpr char kChunkBytesKey[] = "chunk_bytes";  // default CF: u64
constexpr size_t kChunkValueHeader = 17;  // codec u8, raw_len u64, xxh3 u64
constexpr size_t kStagedBatchBytes = 8 << 20;

// RocksDB's own LOG file would live in the store directory, on the disk a
// full store has just filled; Debian's librocksdb (built with assertions)
// aborts when writing it fails twice. Warnings go to stderr instead.
class StderrLogger : public rocksdb::Logger {
 public:
  StderrLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    std::fputs("rocksdb: ", stderr);
    std::vfprintf(stderr, format, ap);
    std::fputc('\n', stderr);
  }
};

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace() || absl::StrContains(msg, "No space left")) {
    return absl::ResourceExhaustedError(msg);
  }
  if (s.IsIOError() && absl::StrContains(msg, "lock")) {
    return absl::FailedPreconditionError(msg);
  }
  if (s.IsIOError()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

std::string Sha256(absl::Span<const uint8_t> raw) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(raw.data(), raw.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string Hex(absl::string_view bytes) {
  return absl::BytesToHexString(bytes);
}
std::string Hex(capnp::Data::Reader d) {
  return Hex(absl::string_view(reinterpret_cast<const char*>(d.begin()),
                               d.size()));
}

std::string EncodeU64(uint64_t v) {
  std::string out(8, '\0');
  codec::internal::PutU64(reinterpret_cast<uint8_t*>(&out[0]), v);
  return out;
}
uint64_t DecodeU64(absl::string_view s) {
  return s.size() == 8
             ? codec::internal::GetU64(reinterpret_cast<const uint8_t*>(s.data()))
             : 0;
}

std::string EncodeChunkValue(const codec::ChunkView& v) {
  std::string out(kChunkValueHeader + v.payload.size(), '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(&out[0]);
  p[0] = static_cast<uint8_t>(v.codec);
  codec::internal::PutU64(p + 1, v.length);
  codec::internal::PutU64(p + 9, v.checksum);
  if (!v.payload.empty()) {
    std::memcpy(p + kChunkValueHeader, v.payload.data(), v.payload.size());
  }
  return out;
}

// Decodes and checks a stored chunk: XXH3 over the raw bytes, then, if
// `check_address`, the SHA-256 it is filed under. Reads skip the SHA-256
// (28% of a read-back; XXH3 and RocksDB's block checksums catch damage);
// Verify recomputes it.
absl::Status DecodeChunkValue(absl::string_view key, absl::string_view value,
                              codec::ChunkDecoder& decoder,
                              std::vector<uint8_t>* raw,
                              bool check_address) {
  if (value.size() < kChunkValueHeader) {
    return absl::DataLossError("chunk record is truncated");
  }
  const uint8_t* p = reinterpret_cast<const uint8_t*>(value.data());
  uint64_t raw_len = codec::internal::GetU64(p + 1);
  uint64_t checksum = codec::internal::GetU64(p + 9);
  if (raw_len == 0 || raw_len > (64u << 20)) {
    return absl::DataLossError(
        absl::StrFormat("chunk record claims %u raw bytes", raw_len));
  }
  raw->resize(raw_len);
  absl::Status s = decoder.Decode(
      static_cast<ChunkCodec>(p[0]),
      absl::MakeConstSpan(p + kChunkValueHeader,
                          value.size() - kChunkValueHeader),
      checksum, absl::MakeSpan(*raw));
  if (!s.ok()) return s;
  if (check_address && Sha256(*raw) != key) {
    return absl::DataLossError("chunk content does not match its address");
  }
  return absl::OkStatus();
}

// One section as it will be recorded: the latest header and the extents.
struct SectionState {
  uint32_t device = 0;
  std::string name;
  std::string header;  // SectionHeader message bytes
  bool memory = false;
  uint32_t page_size = 0;
  uint64_t total_pages = 0;
  uint64_t logical = 0;
  ExtentMap map;
};

// Maps a memory region's data offsets (present pages, concatenated) to
// logical offsets in the region.
struct Segment {
  uint64_t data_start, logical_start, length;
};

void ForEachLogical(const std::vector<Segment>& segs, uint64_t data_off,
                    uint64_t len,
                    const std::function<void(uint64_t logical, uint64_t n,
                                             uint64_t skip)>& fn) {
  // Binary search for the segment holding data_off.
  auto it = std::upper_bound(
      segs.begin(), segs.end(), data_off,
      [](uint64_t v, const Segment& s) { return v < s.data_start; });
  if (it != segs.begin()) --it;
  uint64_t done = 0;
  for (; it != segs.end() && done < len; ++it) {
    uint64_t pos = data_off + done;
    if (pos < it->data_start || pos >= it->data_start + it->length) continue;
    uint64_t within = pos - it->data_start;
    uint64_t n = std::min(len - done, it->length - within);
    fn(it->logical_start + within, n, done);
    done += n;
  }
}

std::string DeviceLabel(vgpu::schema::DeviceEntry::Reader d) {
  const char* s = "unknown";
  switch (d.getDescriptor().getStrategy()) {
    case vgpu::schema::Strategy::EMULATION:
      s = "emulation";
      break;
    case vgpu::schema::Strategy::API_FORWARDING:
      s = "api-forwarding";
      break;
    case vgpu::schema::Strategy::MEDIATED:
      s = "mediated";
      break;
    case vgpu::schema::Strategy::DIRECT_PASSTHROUGH:
      s = "direct-passthrough";
      break;
    default:
      break;
  }
  return absl::StrCat(s, ":", d.getDescriptor().getInstanceId().cStr());
}

using Record = codec::Message<schema::SnapshotRecord>;

SnapshotInfo InfoFromRecord(schema::SnapshotRecord::Reader r) {
  SnapshotInfo info;
  info.id = r.getId();
  info.vm_name = r.getVmName();
  info.vm_uuid = r.getVmUuid();
  info.tag = r.getTag();
  info.parent = r.getParent();
  info.created_unix_nanos = r.getCreatedUnixNanos();
  info.logical_bytes = r.getLogicalBytes();
  info.stored_bytes = r.getStoredBytes();
  info.chunk_refs = r.getChunkRefs();
  info.sections = r.getSections().size();
  auto m = codec::DecodeMessage<vgpu::schema::Manifest>(
      absl::MakeConstSpan(r.getManifest().begin(), r.getManifest().size()),
      codec::MessageLimits{});
  if (m.ok()) {
    for (auto d : m->root().getDevices()) info.devices.push_back(DeviceLabel(d));
  }
  return info;
}

// The distinct chunks a record references, in first-use order.
std::vector<std::string> ChunksOf(schema::SnapshotRecord::Reader r) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (auto sec : r.getSections()) {
    for (auto e : sec.getExtents()) {
      if (e.getChunk().size() == 0) continue;
      std::string k(reinterpret_cast<const char*>(e.getChunk().begin()),
                    e.getChunk().size());
      if (seen.insert(k).second) out.push_back(std::move(k));
    }
  }
  return out;
}

class StoreImpl : public Store {
 public:
  StoreImpl(StoreOptions options, rocksdb::DB* db,
            std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : options_(std::move(options)), db_(db), handles_(std::move(handles)) {}

  ~StoreImpl() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    delete db_;
  }

  absl::StatusOr<SnapshotInfo> Put(codec::ByteSource* image,
                                   const PutOptions& options) override;
  absl::StatusOr<std::vector<SnapshotInfo>> List(const std::string& vm) override;
  absl::StatusOr<SnapshotInfo> Get(const std::string& id) override;
  absl::Status Read(const std::string& id, codec::ByteSink* sink,
                    const codec::WriterOptions& options) override;
  absl::Status Delete(const std::string& id) override {
    std::lock_guard<std::mutex> lock(write_mu_);
    return DeleteLocked(id);
  }
  absl::StatusOr<VerifyReport> Verify(const std::string& id) override;
  absl::StatusOr<GcReport> CollectGarbage() override;
  absl::StatusOr<StoreStats> Stats() override;

 private:
  rocksdb::ColumnFamilyHandle* meta() { return handles_[0]; }
  rocksdb::ColumnFamilyHandle* chunks() { return handles_[1]; }
  rocksdb::ColumnFamilyHandle* refs() { return handles_[2]; }
  rocksdb::ColumnFamilyHandle* snapshots() { return handles_[3]; }

  rocksdb::WriteOptions CommitOptions() const {
    rocksdb::WriteOptions w;
    w.sync = options_.sync;
    return w;
  }

  absl::StatusOr<Record> LoadRecord(const std::string& id,
                                    const rocksdb::Snapshot* snap = nullptr) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snap;
    std::string value;
    rocksdb::Status s = db_->Get(ro, snapshots(), id, &value);
    if (s.IsNotFound()) {
      return absl::NotFoundError(
          absl::StrCat("no snapshot '", id, "' in the store at ",
                       options_.path));
    }
    if (!s.ok()) return FromRocks(s, absl::StrCat("reading snapshot ", id));
    codec::MessageLimits limits;
    limits.max_bytes = 512u << 20;
    auto r = codec::DecodeMessage<schema::SnapshotRecord>(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()),
                            value.size()),
        limits);
    if (!r.ok()) {
      return absl::DataLossError(absl::StrCat("snapshot record ", id, ": ",
                                              r.status().message()));
    }
    return std::move(*r);
  }

  absl::StatusOr<uint64_t> RefCount(const std::string& hash) {
    std::string v;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), refs(), hash, &v);
    if (s.IsNotFound()) return 0;
    if (!s.ok()) return FromRocks(s, "reading a reference count");
    return DecodeU64(v);
  }

  uint64_t ChunkBytes() {
    std::string v;
    if (!db_->Get(rocksdb::ReadOptions(), meta(), kChunkBytesKey, &v).ok()) {
      return 0;
    }
    return DecodeU64(v);
  }

  absl::Status DeleteLocked(const std::string& id);
  absl::Status ApplyRetention(const std::string& vm);

  StoreOptions options_;
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::mutex write_mu_;  // Put, Delete, CollectGarbage
};

absl::StatusOr<SnapshotInfo> StoreImpl::Put(codec::ByteSource* image,
                                            const PutOptions& options) {
  std::lock_guard<std::mutex> lock(write_mu_);
  auto reader = codec::ImageReader::Open(image, codec::Limits{}, 1);
  if (!reader.ok()) return reader.status();
  if (options.progress) (*reader)->set_progress(options.progress);
  auto m = (*reader)->manifest().root();
  const std::string id = Hex(m.getImageId());
  {
    std::string ignored;
    rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), snapshots(), id, &ignored);
    if (s.ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("snapshot ", id, " is already in the store"));
    }
    if (!s.IsNotFound()) return FromRocks(s, "checking for the snapshot");
  }
  std::string parent = options.parent;
  if (parent.empty() && m.getParent().getImageId().size() == 16) {
    parent = Hex(m.getParent().getImageId());
  }

  // Seed the sections from the parent: the image overlays them.
  std::vector<SectionState> sections;
  std::map<std::pair<uint32_t, std::string>, size_t> by_key;
  if (!parent.empty()) {
    auto pr = LoadRecord(parent);
    if (!pr.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("image ", image->name(), " is incremental on ", parent,
                       ", which is not in the store: ",
                       pr.status().message()));
    }
    for (auto sec : pr->root().getSections()) {
      auto h = codec::DecodeMessage<vgpu::schema::SectionHeader>(
          absl::MakeConstSpan(sec.getHeader().begin(), sec.getHeader().size()),
          codec::MessageLimits{});
      if (!h.ok()) return h.status();
      SectionState st;
      st.device = h->root().getDevice();
      st.name = h->root().getName();
      st.header.assign(reinterpret_cast<const char*>(sec.getHeader().begin()),
                       sec.getHeader().size());
      st.memory = h->root().isMemoryRegion();
      if (st.memory) {
        st.page_size = h->root().getMemoryRegion().getPageSize();
        st.total_pages = h->root().getMemoryRegion().getTotalPages();
      }
      st.logical = sec.getLogicalBytes();
      for (auto e : sec.getExtents()) {
        Extent x;
        x.offset = e.getOffset();
        x.length = e.getLength();
        x.chunk.assign(reinterpret_cast<const char*>(e.getChunk().begin()),
                       e.getChunk().size());
        x.chunk_offset = e.getChunkOffset();
        st.map.Overlay(x);
      }
      by_key[{st.device, st.name}] = sections.size();
      sections.push_back(std::move(st));
    }
  }

  // Chunks written but not yet committed; deleted again if Put fails.
  std::set<std::string> staged;
  std::set<std::string> adopted;  // orphans this snapshot will reference
  rocksdb::WriteBatch batch;
  uint64_t new_bytes = 0;
  const uint64_t existing_bytes = ChunkBytes();
  auto flush = [&]() -> absl::Status {
    if (batch.Count() == 0) return absl::OkStatus();
    absl::Status s =
        FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "storing chunks");
    batch.Clear();
    return s;
  };
  auto abandon = [&](absl::Status why) {
    batch.Clear();
    for (const std::string& k : staged) batch.Delete(chunks(), k);
    (void)db_->Write(rocksdb::WriteOptions(), &batch);  // best effort; GC too
    return why;
  };

  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) return abandon(next.status());
    if (!next->has_value()) break;
    auto h = (**next).root();
    std::pair<uint32_t, std::string> key{h.getDevice(), h.getName()};
    auto found = by_key.find(key);
    if (found == by_key.end()) {
      by_key[key] = sections.size();
      sections.emplace_back();
      found = by_key.find(key);
    }
    SectionState& st = sections[found->second];
    std::vector<uint8_t> header_bytes = codec::EncodeMessageBytes((**next).builder());
    st.header.assign(header_bytes.begin(), header_bytes.end());
    st.device = key.first;
    st.name = key.second;
    std::vector<Segment> segs;
    if (h.isMemoryRegion()) {
      auto r = h.getMemoryRegion();
      if (!st.memory || st.page_size != r.getPageSize() ||
          st.total_pages != r.getTotalPages()) {
        st.map.Clear();  // a new shape replaces what was there
      }
      st.memory = true;
      st.page_size = r.getPageSize();
      st.total_pages = r.getTotalPages();
      st.logical = st.total_pages * st.page_size;
      uint64_t data = 0;
      for (auto pr : r.getPresentRanges()) {
        segs.push_back({data, pr.getFirst() * st.page_size,
                        pr.getCount() * st.page_size});
        data += pr.getCount() * st.page_size;
      }
      for (auto zr : r.getZeroRanges()) {
        st.map.Overlay(Extent{zr.getFirst() * st.page_size,
                              zr.getCount() * st.page_size, "", 0});
      }
    } else {
      st.memory = false;
      st.map.Clear();
      st.logical = 0;
    }
    absl::Status s = (*reader)->ReadChunkViews([&](const codec::ChunkView& v) {
      std::string hash;
      if (v.codec != ChunkCodec::kZero) {
        hash = Sha256(v.raw);
        if (!staged.count(hash)) {
          std::string existing;
          rocksdb::Status g =
              db_->Get(rocksdb::ReadOptions(), chunks(), hash, &existing);
          if (g.ok() && !adopted.count(hash)) {
            // A chunk nothing references (left by an ingest cut short) is
            // not counted in chunk_bytes yet: this snapshot adds it.
            auto refs_now = RefCount(hash);
            if (!refs_now.ok()) return refs_now.status();
            if (*refs_now == 0) {
              adopted.insert(hash);
              new_bytes += existing.size();
            }
          }
          if (g.IsNotFound()) {
            std::string value = EncodeChunkValue(v);
            new_bytes += value.size();
            if (options_.byte_budget != 0 &&
                existing_bytes + new_bytes > options_.byte_budget) {
              return absl::ResourceExhaustedError(absl::StrFormat(
                  "snapshot would take the store past its byte budget of %u "
                  "(%u stored, this snapshot adds at least %u)",
                  options_.byte_budget, existing_bytes, new_bytes));
            }
            batch.Put(chunks(), hash, value);
            staged.insert(hash);
            if (batch.GetDataSize() > kStagedBatchBytes) {
              if (absl::Status f = flush(); !f.ok()) return f;
            }
          } else if (!g.ok()) {
            return FromRocks(g, "looking up a chunk");
          }
        }
      }
      if (!st.memory) {
        st.map.Overlay(Extent{v.offset, v.length, hash, 0});
        st.logical = v.offset + v.length;
        return absl::OkStatus();
      }
      ForEachLogical(segs, v.offset, v.length,
                     [&](uint64_t logical, uint64_t n, uint64_t skip) {
                       st.map.Overlay(Extent{
                           logical, n, hash,
                           hash.empty() ? 0u : static_cast<uint32_t>(skip)});
                     });
      return absl::OkStatus();
    });
    if (!s.ok()) return abandon(s);
  }
  if (absl::Status s = flush(); !s.ok()) return abandon(s);
  if (options_.byte_budget != 0 &&
      existing_bytes + new_bytes > options_.byte_budget) {
    return abandon(absl::ResourceExhaustedError(absl::StrFormat(
        "snapshot would take the store past its byte budget of %u (%u "
        "stored, this snapshot adds %u)",
        options_.byte_budget, existing_bytes, new_bytes)));
  }

  // The commit: record, reference counts and totals in one synced batch.
  Record record;
  auto r = record.mutable_root();
  r.setId(id);
  r.setVmName(m.getVm().getName());
  r.setVmUuid(m.getVm().getUuid());
  r.setTag(options.tag);
  r.setParent(parent);
  r.setCreatedUnixNanos(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  std::vector<uint8_t> manifest_bytes =
      codec::EncodeMessageBytes(
          const_cast<codec::Manifest&>((*reader)->manifest()).builder());
  r.setManifest(kj::arrayPtr(manifest_bytes.data(), manifest_bytes.size()));
  auto out_sections = r.initSections(static_cast<unsigned>(sections.size()));
  uint64_t logical_total = 0;
  for (size_t i = 0; i < sections.size(); ++i) {
    SectionState& st = sections[i];
    auto os = out_sections[static_cast<unsigned>(i)];
    os.setHeader(kj::arrayPtr(reinterpret_cast<const uint8_t*>(st.header.data()),
                              st.header.size()));
    os.setLogicalBytes(st.logical);
    std::vector<Extent> ext = st.map.extents();
    auto oe = os.initExtents(static_cast<unsigned>(ext.size()));
    for (size_t j = 0; j < ext.size(); ++j) {
      auto e = oe[static_cast<unsigned>(j)];
      e.setOffset(ext[j].offset);
      e.setLength(ext[j].length);
      e.setChunk(kj::arrayPtr(reinterpret_cast<const uint8_t*>(ext[j].chunk.data()),
                              ext[j].chunk.size()));
      e.setChunkOffset(ext[j].chunk_offset);
      logical_total += ext[j].length;
    }
  }
  std::vector<std::string> used = ChunksOf(r.asReader());
  r.setLogicalBytes(logical_total);
  r.setStoredBytes(new_bytes);
  r.setChunkRefs(used.size());

  rocksdb::WriteBatch commit;
  for (const std::string& hash : used) {
    auto count = RefCount(hash);
    if (!count.ok()) return abandon(count.status());
    commit.Put(refs(), hash, EncodeU64(*count + 1));
  }
  commit.Put(meta(), kChunkBytesKey, EncodeU64(existing_bytes + new_bytes));
  std::vector<uint8_t> rec = codec::EncodeMessageBytes(record.builder());
  commit.Put(snapshots(), id,
             rocksdb::Slice(reinterpret_cast<const char*>(rec.data()),
                            rec.size()));
  if (absl::Status s = FromRocks(db_->Write(CommitOptions(), &commit),
                                 absl::StrCat("committing snapshot ", id));
      !s.ok()) {
    return abandon(s);
  }
  SnapshotInfo info = InfoFromRecord(record.root());
  if (absl::Status s = ApplyRetention(info.vm_name); !s.ok()) return s;
  return info;
}

absl::Status StoreImpl::DeleteLocked(const std::string& id) {
  auto rec = LoadRecord(id);
  if (!rec.ok()) return rec.status();
  rocksdb::WriteBatch batch;
  uint64_t freed = 0;
  for (const std::string& hash : ChunksOf(rec->root())) {
    auto count = RefCount(hash);
    if (!count.ok()) return count.status();
    if (*count <= 1) {
      batch.Delete(refs(), hash);
      std::string value;
      if (db_->Get(rocksdb::ReadOptions(), chunks(), hash, &value).ok()) {
        freed += value.size();
      }
      batch.Delete(chunks(), hash);
    } else {
      batch.Put(refs(), hash, EncodeU64(*count - 1));
    }
  }
  uint64_t bytes = ChunkBytes();
  batch.Put(meta(), kChunkBytesKey, EncodeU64(bytes > freed ? bytes - freed : 0));
  batch.Delete(snapshots(), id);
  return FromRocks(db_->Write(CommitOptions(), &batch),
                   absl::StrCat("deleting snapshot ", id));
}

absl::Status StoreImpl::ApplyRetention(const std::string& vm) {
  if (options_.keep_last == 0 && options_.max_age_seconds == 0) {
    return absl::OkStatus();
  }
  auto all = List(vm);
  if (!all.ok()) return all.status();
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  for (size_t i = 0; i < all->size(); ++i) {
    const SnapshotInfo& s = (*all)[i];
    bool too_many = options_.keep_last != 0 && i >= options_.keep_last;
    bool too_old = options_.max_age_seconds != 0 &&
                   now - s.created_unix_nanos >
                       options_.max_age_seconds * 1000000000LL;
    if (too_many || too_old) {
      if (absl::Status d = DeleteLocked(s.id); !d.ok()) return d;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SnapshotInfo>> StoreImpl::List(
    const std::string& vm) {
  std::vector<SnapshotInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), snapshots()));
  codec::MessageLimits limits;
  limits.max_bytes = 512u << 20;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto r = codec::DecodeMessage<schema::SnapshotRecord>(
        absl::MakeConstSpan(
            reinterpret_cast<const uint8_t*>(it->value().data()),
            it->value().size()),
        limits);
    if (!r.ok()) {
      return absl::DataLossError(absl::StrCat(
          "snapshot record ", it->key().ToString(), ": ", r.status().message()));
    }
    SnapshotInfo info = InfoFromRecord(r->root());
    if (vm.empty() || info.vm_name == vm) out.push_back(std::move(info));
  }
  if (absl::Status s = FromRocks(it->status(), "listing snapshots"); !s.ok()) {
    return s;
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) {
    return a.created_unix_nanos > b.created_unix_nanos;
  });
  return out;
}

absl::StatusOr<SnapshotInfo> StoreImpl::Get(const std::string& id) {
  auto rec = LoadRecord(id);
  if (!rec.ok()) return rec.status();
  return InfoFromRecord(rec->root());
}

// Page ranges [first, count) from sorted byte extents, rounding outwards
// (`full` = false) or inwards (`full` = true).
std::vector<std::pair<uint64_t, uint64_t>> PageRanges(
    const std::vector<Extent>& ext, bool zero, uint64_t page, bool full) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const Extent& e : ext) {
    if (e.zero() != zero) continue;
    uint64_t first = full ? (e.offset + page - 1) / page : e.offset / page;
    uint64_t end = full ? (e.offset + e.length) / page
                        : (e.offset + e.length + page - 1) / page;
    if (end <= first) continue;
    if (!out.empty() && out.back().first + out.back().second >= first) {
      uint64_t last = std::max(out.back().first + out.back().second, end);
      out.back().second = last - out.back().first;
    } else {
      out.push_back({first, end - first});
    }
  }
  return out;
}

// `a` minus `b`, both sorted and merged.
std::vector<std::pair<uint64_t, uint64_t>> Subtract(
    const std::vector<std::pair<uint64_t, uint64_t>>& a,
    const std::vector<std::pair<uint64_t, uint64_t>>& b) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  size_t j = 0;
  for (auto [first, count] : a) {
    uint64_t pos = first, end = first + count;
    while (j < b.size() && b[j].first + b[j].second <= pos) ++j;
    for (size_t k = j; k < b.size() && b[k].first < end; ++k) {
      if (b[k].first > pos) out.push_back({pos, b[k].first - pos});
      pos = std::max(pos, b[k].first + b[k].second);
    }
    if (pos < end) out.push_back({pos, end - pos});
  }
  return out;
}

absl::Status StoreImpl::Read(const std::string& id, codec::ByteSink* sink,
                             const codec::WriterOptions& options) {
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  struct Release {
    rocksdb::DB* db;
    const rocksdb::Snapshot* s;
    ~Release() { db->ReleaseSnapshot(s); }
  } release{db_, snap};
  auto rec = LoadRecord(id, snap);
  if (!rec.ok()) return rec.status();
  auto r = rec->root();
  auto manifest = codec::DecodeMessage<vgpu::schema::Manifest>(
      absl::MakeConstSpan(r.getManifest().begin(), r.getManifest().size()),
      codec::MessageLimits{});
  if (!manifest.ok()) return manifest.status();
  // What is read back is complete: it names no parent.
  manifest->mutable_root().initParent();
  manifest->mutable_root().setKind(vgpu::schema::ImageKind::CHECKPOINT);
  auto writer = codec::ImageWriter::Create(sink, *manifest, options);
  if (!writer.ok()) return writer.status();

  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  codec::ChunkDecoder decoder;
  std::string cached_key;
  std::vector<uint8_t> cached;
  auto chunk = [&](const std::string& key, const std::string& section)
      -> absl::StatusOr<const std::vector<uint8_t>*> {
    if (key == cached_key) return &cached;
    std::string value;
    rocksdb::Status s = db_->Get(ro, chunks(), key, &value);
    absl::Status st = s.IsNotFound()
                          ? absl::DataLossError("chunk is missing")
                          : FromRocks(s, "reading chunk");
    if (st.ok()) {
      st = DecodeChunkValue(key, value, decoder, &cached,
                            /*check_address=*/false);
    }
    if (!st.ok()) {
      cached_key.clear();
      return absl::Status(
          st.code(), absl::StrCat("snapshot ", id, ", section '", section,
                                  "', chunk ", Hex(key), ": ", st.message()));
    }
    cached_key = key;
    return &cached;
  };

  for (auto sec : r.getSections()) {
    auto h = codec::DecodeMessage<vgpu::schema::SectionHeader>(
        absl::MakeConstSpan(sec.getHeader().begin(), sec.getHeader().size()),
        codec::MessageLimits{});
    if (!h.ok()) return h.status();
    std::vector<Extent> ext;
    for (auto e : sec.getExtents()) {
      ext.push_back(Extent{
          e.getOffset(), e.getLength(),
          std::string(reinterpret_cast<const char*>(e.getChunk().begin()),
                      e.getChunk().size()),
          e.getChunkOffset()});
    }
    const std::string name = h->root().getName();
    auto hb = h->mutable_root();
    hb.setRound(0);
    // Byte ranges to write, in logical order.
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    if (hb.isMemoryRegion()) {
      uint64_t page = hb.getMemoryRegion().getPageSize();
      auto present = PageRanges(ext, false, page, false);
      auto zero = Subtract(PageRanges(ext, true, page, true), present);
      auto region = hb.getMemoryRegion();
      auto pr = region.initPresentRanges(static_cast<unsigned>(present.size()));
      uint64_t pages = 0;
      for (size_t i = 0; i < present.size(); ++i) {
        pr[static_cast<unsigned>(i)].setFirst(present[i].first);
        pr[static_cast<unsigned>(i)].setCount(present[i].second);
        pages += present[i].second;
        ranges.push_back({present[i].first * page, present[i].second * page});
      }
      auto zr = region.initZeroRanges(static_cast<unsigned>(zero.size()));
      for (size_t i = 0; i < zero.size(); ++i) {
        zr[static_cast<unsigned>(i)].setFirst(zero[i].first);
        zr[static_cast<unsigned>(i)].setCount(zero[i].second);
      }
      hb.setDeclaredBytes(pages * page);
    } else {
      hb.setDeclaredBytes(sec.getLogicalBytes());
      if (sec.getLogicalBytes() > 0) ranges.push_back({0, sec.getLogicalBytes()});
    }
    if (auto b = (*writer)->BeginSection(*h); !b.ok()) return b.status();
    size_t k = 0;
    for (auto [start, len] : ranges) {
      uint64_t pos = start, end = start + len;
      while (k < ext.size() && ext[k].offset + ext[k].length <= pos) ++k;
      while (pos < end) {
        absl::Status s;
        if (k >= ext.size() || ext[k].offset >= end) {
          s = (*writer)->WriteZeros(end - pos);  // a gap reads as zeros
          pos = end;
        } else if (ext[k].offset > pos) {
          s = (*writer)->WriteZeros(ext[k].offset - pos);
          pos = ext[k].offset;
        } else {
          const Extent& e = ext[k];
          uint64_t n = std::min(end, e.offset + e.length) - pos;
          if (e.zero()) {
            s = (*writer)->WriteZeros(n);
          } else {
            auto raw = chunk(e.chunk, name);
            if (!raw.ok()) return raw.status();
            uint64_t at = e.chunk_offset + (pos - e.offset);
            if (at + n > (*raw)->size()) {
              return absl::DataLossError(absl::StrCat(
                  "snapshot ", id, ", section '", name, "', chunk ",
                  Hex(e.chunk), ": extent runs past the chunk"));
            }
            s = (*writer)->Write(absl::MakeConstSpan((*raw)->data() + at, n));
          }
          pos += n;
          if (pos >= e.offset + e.length) ++k;
        }
        if (!s.ok()) return s;
      }
    }
    if (absl::Status s = (*writer)->EndSection(); !s.ok()) return s;
  }
  return (*writer)->Finish();
}

absl::StatusOr<VerifyReport> StoreImpl::Verify(const std::string& id) {
  VerifyReport report;
  std::vector<std::string> ids;
  if (id.empty()) {
    auto all = List("");
    if (!all.ok()) return all.status();
    for (const SnapshotInfo& s : *all) ids.push_back(s.id);
  } else {
    ids.push_back(id);
  }
  codec::ChunkDecoder decoder;
  std::vector<uint8_t> raw;
  std::unordered_map<std::string, std::string> verdicts;  // hash -> "" or why
  for (const std::string& sid : ids) {
    auto rec = LoadRecord(sid);
    if (!rec.ok()) {
      if (rec.status().code() == absl::StatusCode::kNotFound) return rec.status();
      report.damage.push_back({sid, "", "", std::string(rec.status().message())});
      continue;
    }
    ++report.snapshots;
    for (auto sec : rec->root().getSections()) {
      auto h = codec::DecodeMessage<vgpu::schema::SectionHeader>(
          absl::MakeConstSpan(sec.getHeader().begin(), sec.getHeader().size()),
          codec::MessageLimits{});
      std::string name = h.ok() ? std::string(h->root().getName().cStr())
                                : std::string("?");
      std::set<std::string> done;
      for (auto e : sec.getExtents()) {
        if (e.getChunk().size() == 0) continue;
        std::string key(reinterpret_cast<const char*>(e.getChunk().begin()),
                        e.getChunk().size());
        if (!done.insert(key).second) continue;
        auto v = verdicts.find(key);
        if (v == verdicts.end()) {
          std::string value;
          rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), chunks(), key, &value);
          absl::Status st = s.IsNotFound() ? absl::DataLossError("chunk is missing")
                                           : FromRocks(s, "reading chunk");
          if (st.ok()) {
            st = DecodeChunkValue(key, value, decoder, &raw,
                                  /*check_address=*/true);
          }
          if (st.ok()) {
            ++report.chunks_checked;
            report.bytes_checked += raw.size();
          }
          v = verdicts.emplace(key, st.ok() ? "" : std::string(st.message())).first;
        }
        if (!v->second.empty()) {
          report.damage.push_back({sid, name, Hex(key), v->second});
        }
      }
    }
  }
  return report;
}

absl::StatusOr<GcReport> StoreImpl::CollectGarbage() {
  std::lock_guard<std::mutex> lock(write_mu_);
  GcReport report;
  rocksdb::WriteBatch batch;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), chunks()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    std::string key = it->key().ToString();
    auto count = RefCount(key);
    if (!count.ok()) return count.status();
    if (*count == 0) {
      ++report.chunks_freed;
      batch.Delete(chunks(), key);
      batch.Delete(refs(), key);
      // Only committed chunks are counted in chunk_bytes; orphans were not.
    } else {
      ++report.chunks_kept;
    }
    if (*count == 0) report.bytes_freed += it->value().size();
  }
  if (absl::Status s = FromRocks(it->status(), "scanning chunks"); !s.ok()) {
    return s;
  }
  if (absl::Status s = FromRocks(db_->Write(CommitOptions(), &batch),
                                 "collecting garbage");
      !s.ok()) {
    return s;
  }
  return report;
}

absl::StatusOr<StoreStats> StoreImpl::Stats() {
  StoreStats stats;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), snapshots()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++stats.snapshots;
  it.reset(db_->NewIterator(rocksdb::ReadOptions(), chunks()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++stats.chunks;
  stats.chunk_bytes = ChunkBytes();
  return stats;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.info_log = std::make_shared<StderrLogger>();
  rocksdb::ColumnFamilyOptions raw;
  raw.compression = rocksdb::kNoCompression;  // chunks are compressed already
  // Snapshot records (extent lists, mostly hashes and offsets) compress
  // about 5x; without it an incremental snapshot's record costs a third of
  // its changed pages.
  rocksdb::ColumnFamilyOptions records;
  records.compression = rocksdb::kZSTD;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, raw},
      {kChunksCf, raw},
      {kRefsCf, raw},
      {kSnapshotsCf, records},
  };
  // Create the directory first: RocksDB would log a warning about it.
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s =
      rocksdb::DB::Open(db_options, options.path, families, &handles, &db);
  if (!s.ok()) {
    absl::Status st = FromRocks(s, absl::StrCat("opening the store at ",
                                                options.path));
    if (st.code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the store at ", options.path,
          " is in use by another process (only one vgpud may open it): ",
          s.ToString()));
    }
    return st;
  }
  return std::unique_ptr<Store>(new StoreImpl(options, db, std::move(handles)));
}

absl::Status ExportSnapshot(Store& store, const std::string& id,
                            const std::string& path) {
  auto sink = codec::OpenFileSink(path);
  if (!sink.ok()) return sink.status();
  return store.Read(id, sink->get(), codec::WriterOptions{});
}

absl::StatusOr<SnapshotInfo> ImportSnapshot(Store& store,
                                            const std::string& path,
                                            const PutOptions& options) {
  auto src = codec::OpenFileSource(path);
  if (!src.ok()) return src.status();
  return store.Put(src->get(), options);
}

}  // namespace vgpu::store
