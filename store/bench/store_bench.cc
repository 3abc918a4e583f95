// store_bench: ingest and read-back throughput of the checkpoint store
// (RocksDB on disk, in a private directory under /tmp) next to writing the
// same bytes to a plain file in the same run, and the bytes an incremental
// snapshot costs.
//
// Data: a VM from store/testing/images.h (MakeVm: VRAM-like bytes plus a
// 64-byte register bank), 256 MiB of VRAM by default (VGPU_STORE_BENCH_MIB),
// encoded once, untimed, as a full image (FullImage: 64 KiB chunks, zstd 1).
// MiB/s are of raw state (VRAM + registers) unless a row says otherwise.
//
//   put_full/sync:<0|1>       Store::Put of the full image, read from memory,
//                             into a fresh store each iteration (opened
//                             before and closed and removed after the timer
//                             stops). At 256 MiB the chunks still fit the
//                             64 MiB memtable, so the timed Put writes them
//                             once (write-ahead log); their second write,
//                             the memtable flush, happens at the next open
//                             and is counted in written_settled.
//   read_full/threads:<n>     Store::Read of that snapshot into a MemorySink
//                             whose capacity was reserved and touched
//                             (page cache warm). n = WriterOptions::threads;
//                             0 = one per core, the default.
//   read_full_cold/threads:0  the same after the store was closed, its files
//                             dropped from the page cache
//                             (posix_fadvise DONTNEED) and reopened (untimed).
//   baseline_file_write/sync:<0|1>        the raw VRAM written to a new file
//                             in the same directory with write() in 8 MiB
//                             pieces, then fsync() when sync:1.
//   baseline_file_write_image/sync:<0|1>  the encoded image bytes, the same
//                             way: what a store that dumped images would do.
//                             Both are rated in raw-state MiB/s like put.
//   baseline_file_read_image  read the image file back into warm memory
//                             (page cache warm).
//   incremental               a base snapshot of 1 GiB of VRAM
//                             (VGPU_STORE_BENCH_INCR_MIB), then 5% of its
//                             pages changed (testing::Mutate) and the
//                             IncrementalImage put on top, sync:1. Timed:
//                             the incremental Put (deleted again, untimed,
//                             between iterations). MiB/s of changed raw
//                             bytes. Counters below.
//
// Diagnostics that take put and read apart (one thread unless the name
// says otherwise; same data):
//
//   diag/image_verify     ImageReader::ReadChunkViews over the image with a
//                         visitor that does nothing: the decode and XXH3
//                         check Put does before the store sees a chunk.
//   diag/sha256           EVP SHA-256 of every 64 KiB chunk that is not all
//                         zero (the chunk address; Put and Read each
//                         compute it once per chunk).
//   diag/rocks_put        bare RocksDB, store's options: Get + WriteBatch
//                         Put of every chunk value, 8 MiB batches, a synced
//                         final write; fresh DB each iteration.
//   diag/rocks_sst_ingest the same chunks written once into a sorted SST
//                         file (SstFileWriter) that the DB then ingests:
//                         the bulk-load path RocksDB offers, for comparison.
//   diag/rocks_get        bare RocksDB Get of every chunk value, from SST
//                         files after a reopen (page cache warm).
//   diag/chunk_decode     ChunkDecoder::Decode of every stored chunk (zstd
//                         decompress + XXH3): Read's decode.
//   diag/image_encode/threads:<n>  ImageWriter over the raw VRAM with
//                         default WriterOptions: Read's re-encode.
//   diag/fresh_memory     64 MiB of fresh anonymous memory written once:
//                         the cost of a page fault (us_per_fault), which
//                         the memtable arena pays for every 4 KiB.
//
// Counters (per iteration where it makes sense): image_bytes, stored_bytes
// (SnapshotInfo.stored_bytes), written_put (bytes this process sent to the
// block layer during the timed Put, /proc/self/io write_bytes),
// written_total (the same including close), disk_bytes (apparent size of
// the store's files after close), written_settled (written_total plus the
// memtable flush a reopen makes), cores (CPU seconds per wall second),
// faults (minor page faults of the process per iteration).
// incremental: changed_bytes (raw bytes of the changed pages),
// changed_zstd_bytes (those pages alone through ChunkEncoder level 1 in
// 64 KiB chunks, plus the store's 17-byte chunk header), stored_bytes,
// stored_per_changed, stored_per_changed_zstd, growth_reopen (apparent size
// of the store's files after put, close and reopen, minus the same before
// the incremental), growth_compacted (live SST bytes after a flush and full
// compaction of every column family, after minus before), growth_chunks /
// growth_refs / growth_snapshots (that growth per column family),
// growth_per_changed, growth_per_changed_zstd, record_bytes /
// record_zstd_bytes / record_extents / record_chunks (the snapshot record:
// size, size through zstd 1, extents and distinct chunks it lists),
// written_put, first_put_seconds, and the same for the base (base_*).
//
// Defaults (overridable on the command line): 3 repetitions of at least
// 0.5 s each, aggregates only on the console. tools/store_bench.sh builds
// this with -c opt, runs it and tabulates the JSON.
#include <fcntl.h>
#include <openssl/evp.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/write_batch.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/chunk_codec.h"
#include "state-codecs/image.h"
#include "state-codecs/message.h"
#include "state-codecs/sample.h"
#include "store/schema/store.capnp.h"
#include "store/store.h"
#include "store/testing/images.h"

namespace vgpu::store {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kImageChunkBytes = 64 << 10;  // what FullImage writes
constexpr int kLevel = 1;
constexpr size_t kWritePiece = 8 << 20;
constexpr size_t kStoreChunkHeader = 17;  // store.cc's kChunkValueHeader
constexpr double kChangedFraction = 0.05;

uint64_t EnvMiB(const char* name, uint64_t def) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return def << 20;
  char* end = nullptr;
  unsigned long long v = std::strtoull(env, &end, 10);
  if (*end != '\0' || v == 0 || v > (1u << 16)) {
    std::fprintf(stderr, "%s=%s: want a whole number of MiB in 1..65536\n",
                 name, env);
    std::exit(2);
  }
  return static_cast<uint64_t>(v) << 20;
}

uint64_t FullBytes() {
  static const uint64_t b = EnvMiB("VGPU_STORE_BENCH_MIB", 256);
  return b;
}
uint64_t IncrBytes() {
  static const uint64_t b = EnvMiB("VGPU_STORE_BENCH_INCR_MIB", 1024);
  return b;
}

[[noreturn]] void Die(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "store_bench: %s: %s\n", what.c_str(),
               s.ToString().c_str());
  std::exit(1);
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

long MinorFaults() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Bytes this process (all threads) caused to be sent to the block layer.
uint64_t WrittenBytes() {
  std::ifstream in("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "write_bytes:") return value;
  }
  return 0;
}

class CpuMeter {
 public:
  CpuMeter()
      : wall0_(std::chrono::steady_clock::now()), cpu0_(ProcessCpuSeconds()) {}
  double Cores() const {
    double wall = Seconds(std::chrono::steady_clock::now() - wall0_);
    return wall > 0 ? (ProcessCpuSeconds() - cpu0_) / wall : 0;
  }

 private:
  std::chrono::steady_clock::time_point wall0_;
  double cpu0_;
};

void Fail(benchmark::State& state, const absl::Status& s) {
  state.SkipWithError(s.ToString().c_str());
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  return s.ok() ? absl::OkStatus()
                : absl::InternalError(absl::StrCat(what, ": ", s.ToString()));
}

// ---------------------------------------------------------------------------
// Files.

// A private directory under /tmp; removed at exit.
class TempDir {
 public:
  static TempDir& Get() {
    static TempDir* dir = new TempDir();
    return *dir;
  }
  const std::string& path() const { return path_; }
  // A path inside it, emptied first.
  std::string Fresh(const std::string& name) {
    std::string p = absl::StrCat(path_, "/", name);
    std::error_code ec;
    fs::remove_all(p, ec);
    return p;
  }
  void RemoveAll() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }

 private:
  TempDir() {
    char tmpl[] = "/tmp/vgpu-store-bench.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      Die("mkdtemp", absl::ErrnoToStatus(errno, "/tmp"));
    }
    path_ = tmpl;
  }
  std::string path_;
};

void Remove(const std::string& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// Apparent size of the regular files under `dir`.
uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (it->is_regular_file(e2)) total += it->file_size(e2);
  }
  return total;
}

// Syncs each file under `dir` and drops it from the page cache.
void EvictDir(const std::string& dir) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (!it->is_regular_file(e2)) continue;
    int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

absl::Status WriteFile(const std::string& path, absl::Span<const uint8_t> data,
                       bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create ", path));
  size_t done = 0;
  while (done < data.size()) {
    size_t n = std::min(kWritePiece, data.size() - done);
    ssize_t w = ::write(fd, data.data() + done, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      return absl::ErrnoToStatus(e, absl::StrCat("write ", path));
    }
    done += static_cast<size_t>(w);
  }
  if (sync && ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    return absl::ErrnoToStatus(e, absl::StrCat("fsync ", path));
  }
  if (::close(fd) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("close ", path));
  }
  return absl::OkStatus();
}

absl::Status ReadFileInto(const std::string& path, absl::Span<uint8_t> out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  size_t done = 0;
  while (done < out.size()) {
    size_t n = std::min(kWritePiece, out.size() - done);
    ssize_t r = ::read(fd, out.data() + done, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int e = r < 0 ? errno : EIO;
      ::close(fd);
      return absl::ErrnoToStatus(e, absl::StrCat("read ", path));
    }
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Data.

struct FullData {
  testing::VmState vm;
  std::vector<uint8_t> image;
  uint64_t raw = 0;  // VRAM + registers
};

constexpr uint64_t kFullImageId = 1;

const FullData& Full() {
  static const FullData* data = [] {
    auto* d = new FullData();
    d->vm = testing::MakeVm(FullBytes(), 1);
    auto image = testing::FullImage(d->vm, kFullImageId);
    if (!image.ok()) Die("FullImage", image.status());
    d->image = std::move(*image);
    d->raw = d->vm.vram.size() + d->vm.registers.size();
    return d;
  }();
  return *data;
}

std::string Sha256(absl::Span<const uint8_t> raw) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(raw.data(), raw.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

// The chunks of the full image as the store keeps them: SHA-256 key and
// value = codec u8, raw_len u64, xxh3 u64 (little-endian), payload.
struct StoredChunk {
  std::string key;
  std::string value;
  uint64_t raw_len;
};

void PutLe64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t GetLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

const std::vector<StoredChunk>& FullChunks() {
  static const std::vector<StoredChunk>* chunks = [] {
    auto* out = new std::vector<StoredChunk>();
    const FullData& d = Full();
    codec::MemorySource src(d.image);
    auto reader = codec::ImageReader::Open(&src, codec::Limits{}, 1);
    if (!reader.ok()) Die("open image", reader.status());
    for (;;) {
      auto next = (*reader)->NextSection();
      if (!next.ok()) Die("read image", next.status());
      if (!next->has_value()) break;
      absl::Status s =
          (*reader)->ReadChunkViews([&](const codec::ChunkView& v) {
            if (v.codec == codec::ChunkCodec::kZero) return absl::OkStatus();
            StoredChunk c;
            c.key = Sha256(v.raw);
            c.raw_len = v.length;
            c.value.resize(kStoreChunkHeader + v.payload.size());
            c.value[0] = static_cast<char>(v.codec);
            PutLe64(&c.value[1], v.length);
            PutLe64(&c.value[9], v.checksum);
            std::memcpy(&c.value[kStoreChunkHeader], v.payload.data(),
                        v.payload.size());
            out->push_back(std::move(c));
            return absl::OkStatus();
          });
      if (!s.ok()) Die("read image", s);
    }
    return out;
  }();
  return *chunks;
}

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const std::string& path,
                                                 bool sync) {
  // The directory exists first, as /var/lib/vgpu does. (Store::Open on a
  // missing directory works, but RocksDB then logs a spurious
  // "Error when reading <dir> dir NotFound" to stderr.)
  std::error_code ec;
  fs::create_directories(path, ec);
  StoreOptions o;
  o.path = path;
  o.sync = sync;
  return Store::Open(o);
}

// ---------------------------------------------------------------------------
// Bare RocksDB, opened with the store's options, for diagnostics and for
// measuring what each column family holds.

struct RawDb {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  std::vector<std::string> names;
  ~RawDb() {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  }
};

absl::StatusOr<std::unique_ptr<RawDb>> OpenRaw(
    const std::string& path, std::vector<std::string> names) {
  rocksdb::DBOptions dbo;
  dbo.create_if_missing = true;
  dbo.create_missing_column_families = true;
  dbo.paranoid_checks = true;
  rocksdb::ColumnFamilyOptions cf;
  cf.compression = rocksdb::kNoCompression;
  if (names.empty()) {
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(dbo, path, &names);
    if (!s.ok()) return FromRocks(s, "listing column families");
  }
  // Compact with the store's own settings: records zstd, the rest raw.
  rocksdb::ColumnFamilyOptions records = cf;
  records.compression = rocksdb::kZSTD;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& n : names) {
    families.push_back({n, n == "snapshots" ? records : cf});
  }
  auto raw = std::make_unique<RawDb>();
  rocksdb::DB* db = nullptr;
  rocksdb::Status s =
      rocksdb::DB::Open(dbo, path, families, &raw->handles, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening ", path));
  raw->db.reset(db);
  raw->names = std::move(names);
  return raw;
}

struct CfSizes {
  uint64_t total = 0;
  std::vector<std::pair<std::string, uint64_t>> by_cf;
  uint64_t Of(const std::string& name) const {
    for (const auto& [n, v] : by_cf) {
      if (n == name) return v;
    }
    return 0;
  }
};

// Flushes and fully compacts every column family of the (closed) store at
// `path`, then reports the live SST bytes of each: the steady-state size.
absl::StatusOr<CfSizes> CompactedSizes(const std::string& path) {
  auto raw = OpenRaw(path, {});
  if (!raw.ok()) return raw.status();
  CfSizes out;
  for (size_t i = 0; i < (*raw)->handles.size(); ++i) {
    rocksdb::ColumnFamilyHandle* h = (*raw)->handles[i];
    rocksdb::Status s = (*raw)->db->Flush(rocksdb::FlushOptions(), h);
    if (!s.ok()) return FromRocks(s, "flush");
    rocksdb::CompactRangeOptions cro;
    cro.bottommost_level_compaction =
        rocksdb::BottommostLevelCompaction::kForce;
    s = (*raw)->db->CompactRange(cro, h, nullptr, nullptr);
    if (!s.ok()) return FromRocks(s, "compact");
    uint64_t v = 0;
    (*raw)->db->GetIntProperty(h, "rocksdb.live-sst-files-size", &v);
    out.by_cf.push_back({(*raw)->names[i], v});
    out.total += v;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Put.
//
// WarmUp: rows that write into memory the guest may not have used yet (the
// page cache, RocksDB's memtable arena) do one untimed pass first. On the
// VM these figures come from, a 256 MiB file write took 910 ms on its first
// pass and 82 ms on later ones; without the pass the first timed
// iteration, often the only one, would mostly measure that.

// Apparent size after the store at `dir` is opened (replaying and flushing
// its write-ahead log) and closed again.
absl::StatusOr<uint64_t> ReopenedBytes(const std::string& dir) {
  auto store = OpenStore(dir, true);
  if (!store.ok()) return store.status();
  store->reset();
  return DirBytes(dir);
}

void BM_PutFull(benchmark::State& state, bool sync) {
  const FullData& d = Full();
  TempDir& tmp = TempDir::Get();
  {
    // One untimed put first (see WarmUp).
    std::string dir = tmp.Fresh("put");
    auto store = OpenStore(dir, sync);
    if (!store.ok()) return Fail(state, store.status());
    codec::MemorySource src(d.image);
    auto info = (*store)->Put(&src, PutOptions{});
    if (!info.ok()) return Fail(state, info.status());
    store->reset();
    Remove(dir);
  }
  uint64_t stored = 0, written_put = 0, written_total = 0, disk = 0;
  uint64_t written_settled = 0, iters = 0;
  long faults = 0;
  double busy_cpu = 0, busy_wall = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::string dir = tmp.Fresh("put");
    auto store = OpenStore(dir, sync);
    if (!store.ok()) return Fail(state, store.status());
    codec::MemorySource src(d.image);
    uint64_t w0 = WrittenBytes();
    long f0 = MinorFaults();
    double c0 = ProcessCpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    state.ResumeTiming();

    absl::StatusOr<SnapshotInfo> info = (*store)->Put(&src, PutOptions{});

    state.PauseTiming();
    busy_wall += Seconds(std::chrono::steady_clock::now() - t0);
    busy_cpu += ProcessCpuSeconds() - c0;
    faults += MinorFaults() - f0;
    if (!info.ok()) return Fail(state, info.status());
    uint64_t w1 = WrittenBytes();
    store->reset();  // close: waits for running background jobs
    uint64_t w2 = WrittenBytes();
    disk += DirBytes(dir);
    // Reopening replays the write-ahead log and flushes what the memtable
    // still held into an SST: the chunks' second write, which a long-lived
    // store pays sooner or later.
    auto settled = ReopenedBytes(dir);
    if (!settled.ok()) return Fail(state, settled.status());
    uint64_t w3 = WrittenBytes();
    stored += info->stored_bytes;
    written_put += w1 - w0;
    written_total += w2 - w0;
    written_settled += w3 - w0;
    ++iters;
    Remove(dir);
    state.ResumeTiming();
  }
  if (iters == 0) return;
  double n = static_cast<double>(iters);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["image_bytes"] = static_cast<double>(d.image.size());
  state.counters["stored_bytes"] = static_cast<double>(stored) / n;
  state.counters["written_put"] = static_cast<double>(written_put) / n;
  state.counters["written_total"] = static_cast<double>(written_total) / n;
  state.counters["written_settled"] = static_cast<double>(written_settled) / n;
  state.counters["disk_bytes"] = static_cast<double>(disk) / n;
  state.counters["cores"] = busy_wall > 0 ? busy_cpu / busy_wall : 0;
  state.counters["faults"] = static_cast<double>(faults) / n;
}

// ---------------------------------------------------------------------------
// Read.

// One store holding the full snapshot, shared by the read rows.
struct ReadFixture {
  std::string dir;
  std::unique_ptr<Store> store;
  std::string id;
  codec::MemorySink sink;
  uint64_t out_bytes = 0;
};

ReadFixture& Reader() {
  static ReadFixture* f = [] {
    auto* r = new ReadFixture();
    const FullData& d = Full();
    r->dir = TempDir::Get().Fresh("read");
    auto store = OpenStore(r->dir, true);
    if (!store.ok()) Die("open store", store.status());
    r->store = std::move(*store);
    codec::MemorySource src(d.image);
    auto info = r->store->Put(&src, PutOptions{});
    if (!info.ok()) Die("put", info.status());
    r->id = info->id;
    // Reopen, so that the chunks are read from SST files (through the page
    // cache) as in a store that was written some time ago, not from the
    // memtable the put left them in.
    r->store.reset();
    store = OpenStore(r->dir, true);
    if (!store.ok()) Die("reopen store", store.status());
    r->store = std::move(*store);
    r->sink.mutable_bytes().reserve(d.image.size() + d.image.size() / 4 +
                                    (4 << 20));
    // One untimed read: touches the sink's pages and checks the bytes.
    absl::Status s = r->store->Read(r->id, &r->sink, codec::WriterOptions{});
    if (!s.ok()) Die("read", s);
    auto back = testing::Decode(r->sink.bytes());
    if (!back.ok()) Die("decode read-back", back.status());
    if (back->vram != d.vm.vram || back->registers != d.vm.registers) {
      Die("read-back", absl::InternalError("bytes differ from what was put"));
    }
    r->out_bytes = r->sink.bytes().size();
    return r;
  }();
  return *f;
}

void BM_ReadFull(benchmark::State& state, int threads, bool cold) {
  const FullData& d = Full();
  ReadFixture& f = Reader();
  codec::WriterOptions wo;
  wo.threads = threads;
  double busy_cpu = 0, busy_wall = 0;
  long faults = 0;
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      f.store.reset();
      EvictDir(f.dir);
      auto store = OpenStore(f.dir, true);
      if (!store.ok()) return Fail(state, store.status());
      f.store = std::move(*store);
      state.ResumeTiming();
    }
    long f0 = MinorFaults();
    double c0 = ProcessCpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    f.sink.mutable_bytes().clear();
    absl::Status s = f.store->Read(f.id, &f.sink, wo);
    busy_wall += Seconds(std::chrono::steady_clock::now() - t0);
    busy_cpu += ProcessCpuSeconds() - c0;
    faults += MinorFaults() - f0;
    if (!s.ok()) return Fail(state, s);
    benchmark::DoNotOptimize(f.sink.bytes().data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["image_bytes"] = static_cast<double>(f.out_bytes);
  state.counters["cores"] = busy_wall > 0 ? busy_cpu / busy_wall : 0;
  state.counters["faults"] = benchmark::Counter(
      static_cast<double>(faults), benchmark::Counter::kAvgIterations);
}

// ---------------------------------------------------------------------------
// Plain-file baselines.

void BM_FileWrite(benchmark::State& state, bool image, bool sync) {
  const FullData& d = Full();
  absl::Span<const uint8_t> bytes =
      image ? absl::MakeConstSpan(d.image) : absl::MakeConstSpan(d.vm.vram);
  std::string path = TempDir::Get().Fresh(image ? "image.vgi" : "vram.raw");
  // One untimed write first (see WarmUp).
  if (absl::Status s = WriteFile(path, bytes, sync); !s.ok()) {
    return Fail(state, s);
  }
  ::unlink(path.c_str());
  uint64_t written = 0;
  for (auto _ : state) {
    uint64_t w0 = WrittenBytes();
    absl::Status s = WriteFile(path, bytes, sync);
    written += WrittenBytes() - w0;
    if (!s.ok()) return Fail(state, s);
    state.PauseTiming();
    ::unlink(path.c_str());
    state.ResumeTiming();
  }
  // Rated in raw-state bytes, like put, so the rates compare directly.
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["file_bytes"] = static_cast<double>(bytes.size());
  state.counters["written"] = benchmark::Counter(
      static_cast<double>(written), benchmark::Counter::kAvgIterations);
}

void BM_FileReadImage(benchmark::State& state) {
  const FullData& d = Full();
  std::string path = TempDir::Get().Fresh("image-read.vgi");
  if (absl::Status s = WriteFile(path, d.image, true); !s.ok()) {
    return Fail(state, s);
  }
  std::vector<uint8_t> out(d.image.size(), 1);  // mapped before timing
  for (auto _ : state) {
    absl::Status s = ReadFileInto(path, absl::MakeSpan(out));
    if (!s.ok()) return Fail(state, s);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["file_bytes"] = static_cast<double>(d.image.size());
  ::unlink(path.c_str());
}

// ---------------------------------------------------------------------------
// Incremental snapshot.

struct RecordSize {
  uint64_t bytes = 0, zstd_bytes = 0, extents = 0, chunks = 0;
};

struct IncrFixture {
  std::string dir;
  std::unique_ptr<Store> store;
  std::vector<uint8_t> image;  // incremental
  std::string id;
  uint64_t changed_pages = 0, changed_bytes = 0, changed_zstd_bytes = 0;
  uint64_t stored_bytes = 0, base_image_bytes = 0, base_stored_bytes = 0;
  uint64_t base_written_put = 0;
  uint64_t reopen0 = 0, reopen1 = 0;
  CfSizes compact0, compact1;
  RecordSize base_record, record;
  double base_put_seconds = 0, first_put_seconds = 0;
  absl::Status error;
};

// The snapshot record the store keeps for `id` (read with bare RocksDB from
// the closed store): its size, its size through zstd level 1, and how many
// extents and distinct chunks it lists.
absl::StatusOr<RecordSize> MeasureRecord(const std::string& dir,
                                         const std::string& id) {
  auto raw = OpenRaw(dir, {});
  if (!raw.ok()) return raw.status();
  rocksdb::ColumnFamilyHandle* cf = nullptr;
  for (size_t i = 0; i < (*raw)->names.size(); ++i) {
    if ((*raw)->names[i] == "snapshots") cf = (*raw)->handles[i];
  }
  if (cf == nullptr) return absl::NotFoundError("no snapshots column family");
  std::string value;
  rocksdb::Status g = (*raw)->db->Get(rocksdb::ReadOptions(), cf, id, &value);
  if (!g.ok()) return FromRocks(g, absl::StrCat("record ", id));
  RecordSize out;
  out.bytes = value.size();
  auto bytes = absl::MakeConstSpan(
      reinterpret_cast<const uint8_t*>(value.data()), value.size());
  codec::ChunkEncoder enc(kLevel);
  codec::EncodedChunk chunk;
  if (absl::Status s = enc.Encode(bytes, &chunk); !s.ok()) return s;
  out.zstd_bytes = chunk.payload.size();
  codec::MessageLimits limits;
  limits.max_bytes = 512u << 20;
  limits.traversal_factor = 64;
  auto rec = codec::DecodeMessage<schema::SnapshotRecord>(bytes, limits);
  if (!rec.ok()) return rec.status();
  std::set<std::string> chunks;
  for (auto sec : rec->root().getSections()) {
    for (auto e : sec.getExtents()) {
      ++out.extents;
      if (e.getChunk().size() != 0) {
        chunks.insert(std::string(
            reinterpret_cast<const char*>(e.getChunk().begin()),
            e.getChunk().size()));
      }
    }
  }
  out.chunks = chunks.size();
  return out;
}

absl::Status BuildIncr(IncrFixture& f) {
  constexpr uint64_t kBaseId = 100, kIncrId = 101;
  testing::VmState vm = testing::MakeVm(IncrBytes(), 7);
  std::vector<uint8_t> base;
  {
    auto b = testing::FullImage(vm, kBaseId);
    if (!b.ok()) return b.status();
    base = std::move(*b);
  }
  f.base_image_bytes = base.size();
  const uint64_t pages = vm.vram.size() / testing::kPage;
  const uint64_t count =
      std::max<uint64_t>(1, static_cast<uint64_t>(pages * kChangedFraction));
  std::vector<uint64_t> changed = testing::Mutate(vm, count, 1234);
  f.changed_pages = changed.size();
  f.changed_bytes = changed.size() * testing::kPage;
  {
    auto inc = testing::IncrementalImage(vm, changed, kIncrId, kBaseId);
    if (!inc.ok()) return inc.status();
    f.image = std::move(*inc);
  }
  // The changed pages alone, concatenated as the incremental image carries
  // them, through the store's chunk codec at the image's chunk size.
  {
    std::vector<uint8_t> pages_only;
    pages_only.reserve(f.changed_bytes);
    for (uint64_t p : changed) {
      const uint8_t* at = vm.vram.data() + p * testing::kPage;
      pages_only.insert(pages_only.end(), at, at + testing::kPage);
    }
    codec::ChunkEncoder enc(kLevel);
    codec::EncodedChunk out;
    for (uint64_t off = 0; off < pages_only.size(); off += kImageChunkBytes) {
      uint64_t n = std::min<uint64_t>(kImageChunkBytes, pages_only.size() - off);
      absl::Status s =
          enc.Encode(absl::MakeConstSpan(pages_only.data() + off, n), &out);
      if (!s.ok()) return s;
      if (out.codec != codec::ChunkCodec::kZero) {
        f.changed_zstd_bytes += out.payload.size() + kStoreChunkHeader;
      }
    }
  }
  vm = testing::VmState();  // not needed any more

  f.dir = TempDir::Get().Fresh("incr");
  {
    auto store = OpenStore(f.dir, true);
    if (!store.ok()) return store.status();
    codec::MemorySource src(base);
    uint64_t w0 = WrittenBytes();
    auto t0 = std::chrono::steady_clock::now();
    auto info = (*store)->Put(&src, PutOptions{});
    f.base_put_seconds = Seconds(std::chrono::steady_clock::now() - t0);
    if (!info.ok()) return info.status();
    f.base_written_put = WrittenBytes() - w0;
    f.base_stored_bytes = info->stored_bytes;
  }
  base = std::vector<uint8_t>();
  auto r0 = ReopenedBytes(f.dir);
  if (!r0.ok()) return r0.status();
  f.reopen0 = *r0;
  auto c0 = CompactedSizes(f.dir);
  if (!c0.ok()) return c0.status();
  f.compact0 = *c0;

  {
    auto store = OpenStore(f.dir, true);
    if (!store.ok()) return store.status();
    codec::MemorySource src(f.image);
    auto t0 = std::chrono::steady_clock::now();
    auto info = (*store)->Put(&src, PutOptions{});
    f.first_put_seconds = Seconds(std::chrono::steady_clock::now() - t0);
    if (!info.ok()) return info.status();
    f.stored_bytes = info->stored_bytes;
    f.id = info->id;
  }
  auto r1 = ReopenedBytes(f.dir);
  if (!r1.ok()) return r1.status();
  f.reopen1 = *r1;
  auto c1 = CompactedSizes(f.dir);
  if (!c1.ok()) return c1.status();
  f.compact1 = *c1;
  auto rec0 = MeasureRecord(f.dir, testing::IdHex(kBaseId));
  if (!rec0.ok()) return rec0.status();
  f.base_record = *rec0;
  auto rec1 = MeasureRecord(f.dir, f.id);
  if (!rec1.ok()) return rec1.status();
  f.record = *rec1;

  auto store = OpenStore(f.dir, true);
  if (!store.ok()) return store.status();
  f.store = std::move(*store);
  return absl::OkStatus();
}

IncrFixture& Incr() {
  static IncrFixture* f = [] {
    auto* x = new IncrFixture();
    x->error = BuildIncr(*x);
    return x;
  }();
  return *f;
}

double Ratio(uint64_t a, uint64_t b) {
  return b == 0 ? 0 : static_cast<double>(a) / static_cast<double>(b);
}
double Growth(uint64_t after, uint64_t before) {
  return static_cast<double>(after) - static_cast<double>(before);
}

void BM_Incremental(benchmark::State& state) {
  IncrFixture& f = Incr();
  if (!f.error.ok()) return Fail(state, f.error);
  uint64_t stored = 0, written = 0;
  for (auto _ : state) {
    state.PauseTiming();
    if (absl::Status s = f.store->Delete(f.id); !s.ok()) {
      return Fail(state, s);
    }
    codec::MemorySource src(f.image);
    uint64_t w0 = WrittenBytes();
    state.ResumeTiming();
    auto info = f.store->Put(&src, PutOptions{});
    state.PauseTiming();
    written += WrittenBytes() - w0;
    state.ResumeTiming();
    if (!info.ok()) return Fail(state, info.status());
    stored = info->stored_bytes;
  }
  if (stored != f.stored_bytes) {
    return Fail(state, absl::InternalError(absl::StrFormat(
                           "stored_bytes moved between puts: %u then %u",
                           f.stored_bytes, stored)));
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * f.changed_bytes));
  auto& c = state.counters;
  c["region_bytes"] = static_cast<double>(IncrBytes());
  c["changed_pages"] = static_cast<double>(f.changed_pages);
  c["changed_bytes"] = static_cast<double>(f.changed_bytes);
  c["changed_zstd_bytes"] = static_cast<double>(f.changed_zstd_bytes);
  c["image_bytes"] = static_cast<double>(f.image.size());
  c["stored_bytes"] = static_cast<double>(f.stored_bytes);
  c["written_put"] = benchmark::Counter(static_cast<double>(written),
                                        benchmark::Counter::kAvgIterations);
  c["stored_per_changed"] = Ratio(f.stored_bytes, f.changed_bytes);
  c["stored_per_changed_zstd"] = Ratio(f.stored_bytes, f.changed_zstd_bytes);
  double reopen = Growth(f.reopen1, f.reopen0);
  double compacted = Growth(f.compact1.total, f.compact0.total);
  c["growth_reopen"] = reopen;
  c["growth_compacted"] = compacted;
  c["growth_chunks"] =
      Growth(f.compact1.Of("chunks"), f.compact0.Of("chunks"));
  c["growth_refs"] = Growth(f.compact1.Of("refs"), f.compact0.Of("refs"));
  c["growth_snapshots"] =
      Growth(f.compact1.Of("snapshots"), f.compact0.Of("snapshots"));
  c["growth_default"] =
      Growth(f.compact1.Of("default"), f.compact0.Of("default"));
  c["growth_per_changed"] = compacted / static_cast<double>(f.changed_bytes);
  c["growth_per_changed_zstd"] =
      f.changed_zstd_bytes == 0
          ? 0
          : compacted / static_cast<double>(f.changed_zstd_bytes);
  c["growth_reopen_per_changed_zstd"] =
      f.changed_zstd_bytes == 0
          ? 0
          : reopen / static_cast<double>(f.changed_zstd_bytes);
  c["record_bytes"] = static_cast<double>(f.record.bytes);
  c["record_zstd_bytes"] = static_cast<double>(f.record.zstd_bytes);
  c["record_extents"] = static_cast<double>(f.record.extents);
  c["record_chunks"] = static_cast<double>(f.record.chunks);
  c["base_record_bytes"] = static_cast<double>(f.base_record.bytes);
  c["base_record_extents"] = static_cast<double>(f.base_record.extents);
  c["base_image_bytes"] = static_cast<double>(f.base_image_bytes);
  c["base_stored_bytes"] = static_cast<double>(f.base_stored_bytes);
  c["base_written_put"] = static_cast<double>(f.base_written_put);
  c["base_compacted_bytes"] = static_cast<double>(f.compact0.total);
  c["base_put_seconds"] = f.base_put_seconds;
  c["first_put_seconds"] = f.first_put_seconds;
}

// ---------------------------------------------------------------------------
// Diagnostics.

void BM_ImageVerify(benchmark::State& state) {
  const FullData& d = Full();
  for (auto _ : state) {
    codec::MemorySource src(d.image);
    auto reader = codec::ImageReader::Open(&src, codec::Limits{}, 1);
    if (!reader.ok()) return Fail(state, reader.status());
    for (;;) {
      auto next = (*reader)->NextSection();
      if (!next.ok()) return Fail(state, next.status());
      if (!next->has_value()) break;
      absl::Status s = (*reader)->ReadChunkViews(
          [](const codec::ChunkView& v) { return absl::OkStatus(); });
      if (!s.ok()) return Fail(state, s);
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
}

// SHA-256 of the chunks Put hashes: every 64 KiB chunk of the VRAM that is
// not all zero (repeats included). Rated in raw-state bytes, like put.
void BM_Sha256(benchmark::State& state) {
  const FullData& d = Full();
  const std::vector<uint8_t>& data = d.vm.vram;
  std::vector<uint64_t> offsets;
  for (uint64_t off = 0; off < data.size(); off += kImageChunkBytes) {
    uint64_t n = std::min<uint64_t>(kImageChunkBytes, data.size() - off);
    if (!codec::IsAllZero(absl::MakeConstSpan(data.data() + off, n))) {
      offsets.push_back(off);
    }
  }
  for (auto _ : state) {
    for (uint64_t off : offsets) {
      uint64_t n = std::min<uint64_t>(kImageChunkBytes, data.size() - off);
      std::string h = Sha256(absl::MakeConstSpan(data.data() + off, n));
      benchmark::DoNotOptimize(h.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["hashed_bytes"] =
      static_cast<double>(offsets.size() * kImageChunkBytes);
}

// What a page fault costs here: 64 MiB of fresh anonymous memory, mapped,
// written once and unmapped each iteration. RocksDB's memtable arena is
// fresh memory of this kind.
void BM_FreshMemory(benchmark::State& state) {
  constexpr size_t kBytes = 64 << 20;
  long faults = 0;
  double seconds = 0;
  for (auto _ : state) {
    void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return Fail(state, absl::ErrnoToStatus(errno, "mmap"));
    }
    long f0 = MinorFaults();
    auto t0 = std::chrono::steady_clock::now();
    std::memset(p, 1, kBytes);
    benchmark::DoNotOptimize(p);
    seconds += Seconds(std::chrono::steady_clock::now() - t0);
    faults += MinorFaults() - f0;
    state.PauseTiming();
    ::munmap(p, kBytes);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBytes));
  state.counters["faults"] = benchmark::Counter(
      static_cast<double>(faults), benchmark::Counter::kAvgIterations);
  state.counters["us_per_fault"] =
      faults > 0 ? seconds * 1e6 / static_cast<double>(faults) : 0;
}

const std::vector<std::string>& StoreCfs() {
  static const std::vector<std::string>* names = new std::vector<std::string>{
      rocksdb::kDefaultColumnFamilyName, "chunks", "refs", "snapshots"};
  return *names;
}

absl::Status RawIngest(RawDb& db, const std::vector<StoredChunk>& chunks) {
  rocksdb::ColumnFamilyHandle* cf = db.handles[1];
  rocksdb::WriteBatch batch;
  std::set<std::string> staged;  // as Put: each distinct chunk once
  for (const StoredChunk& c : chunks) {
    if (staged.count(c.key)) continue;
    std::string existing;
    rocksdb::Status g = db.db->Get(rocksdb::ReadOptions(), cf, c.key,
                                   &existing);
    if (g.ok()) continue;
    if (!g.IsNotFound()) return FromRocks(g, "get");
    staged.insert(c.key);
    batch.Put(cf, c.key, c.value);
    if (batch.GetDataSize() > (8u << 20)) {
      rocksdb::Status s = db.db->Write(rocksdb::WriteOptions(), &batch);
      if (!s.ok()) return FromRocks(s, "write");
      batch.Clear();
    }
  }
  batch.Put(db.handles[0], "commit", "x");
  rocksdb::WriteOptions sync;
  sync.sync = true;
  return FromRocks(db.db->Write(sync, &batch), "commit");
}

void BM_RocksPut(benchmark::State& state) {
  const FullData& d = Full();
  const std::vector<StoredChunk>& chunks = FullChunks();
  {
    // One untimed ingest first (see WarmUp).
    std::string dir = TempDir::Get().Fresh("rocks-put");
    auto db = OpenRaw(dir, StoreCfs());
    if (!db.ok()) return Fail(state, db.status());
    absl::Status s = RawIngest(**db, chunks);
    db->reset();
    Remove(dir);
    if (!s.ok()) return Fail(state, s);
  }
  long faults = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::string dir = TempDir::Get().Fresh("rocks-put");
    auto db = OpenRaw(dir, StoreCfs());
    if (!db.ok()) return Fail(state, db.status());
    long f0 = MinorFaults();
    state.ResumeTiming();
    absl::Status s = RawIngest(**db, chunks);
    state.PauseTiming();
    faults += MinorFaults() - f0;
    db->reset();
    Remove(dir);
    if (!s.ok()) return Fail(state, s);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["faults"] = benchmark::Counter(
      static_cast<double>(faults), benchmark::Counter::kAvgIterations);
}

// The alternative to RawIngest for bulk chunk bytes: the new chunks sorted
// by key into one SST file (SstFileWriter, synced), which the DB then takes
// over (IngestExternalFile, moving the file). No write-ahead log, no
// memtable, no later flush: the chunk bytes are written once.
absl::Status SstIngest(RawDb& db, const std::vector<StoredChunk>& chunks,
                       const std::string& sst_path) {
  rocksdb::ColumnFamilyHandle* cf = db.handles[1];
  std::vector<const StoredChunk*> order;
  order.reserve(chunks.size());
  for (const StoredChunk& c : chunks) order.push_back(&c);
  std::sort(order.begin(), order.end(),
            [](const StoredChunk* a, const StoredChunk* b) {
              return a->key < b->key;
            });
  rocksdb::Options o;
  o.compression = rocksdb::kNoCompression;
  rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), o, cf);
  rocksdb::Status s = writer.Open(sst_path);
  if (!s.ok()) return FromRocks(s, "sst open");
  const std::string* last = nullptr;
  for (const StoredChunk* c : order) {
    if (last != nullptr && *last == c->key) continue;  // a repeated chunk
    std::string existing;
    rocksdb::Status g =
        db.db->Get(rocksdb::ReadOptions(), cf, c->key, &existing);
    if (g.ok()) continue;
    if (!g.IsNotFound()) return FromRocks(g, "get");
    s = writer.Put(c->key, c->value);
    if (!s.ok()) return FromRocks(s, "sst put");
    last = &c->key;
  }
  s = writer.Finish();
  if (!s.ok()) return FromRocks(s, "sst finish");
  rocksdb::IngestExternalFileOptions io;
  io.move_files = true;
  s = db.db->IngestExternalFile(cf, {sst_path}, io);
  if (!s.ok()) return FromRocks(s, "ingest");
  rocksdb::WriteBatch commit;
  commit.Put(db.handles[0], "commit", "x");
  rocksdb::WriteOptions sync;
  sync.sync = true;
  return FromRocks(db.db->Write(sync, &commit), "commit");
}

void BM_RocksSstIngest(benchmark::State& state) {
  const FullData& d = Full();
  const std::vector<StoredChunk>& chunks = FullChunks();
  // One pass into a fresh DB; `timed` brackets the ingest.
  auto pass = [&](const std::function<void()>& start,
                  const std::function<void()>& stop) -> absl::Status {
    std::string dir = TempDir::Get().Fresh("rocks-sst");
    std::string sst = TempDir::Get().Fresh("chunks.sst");
    auto db = OpenRaw(dir, StoreCfs());
    if (!db.ok()) return db.status();
    start();
    absl::Status s = SstIngest(**db, chunks, sst);
    stop();
    db->reset();
    Remove(dir);
    Remove(sst);
    return s;
  };
  // One untimed pass first (see WarmUp).
  if (absl::Status s = pass([] {}, [] {}); !s.ok()) return Fail(state, s);
  long faults = 0, f0 = 0;
  uint64_t written = 0, w0 = 0;
  for (auto _ : state) {
    state.PauseTiming();
    absl::Status s = pass(
        [&] {
          f0 = MinorFaults();
          w0 = WrittenBytes();
          state.ResumeTiming();
        },
        [&] {
          state.PauseTiming();
          faults += MinorFaults() - f0;
          written += WrittenBytes() - w0;
        });
    if (!s.ok()) return Fail(state, s);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
  state.counters["faults"] = benchmark::Counter(
      static_cast<double>(faults), benchmark::Counter::kAvgIterations);
  state.counters["written"] = benchmark::Counter(
      static_cast<double>(written), benchmark::Counter::kAvgIterations);
}

void BM_RocksGet(benchmark::State& state) {
  const FullData& d = Full();
  const std::vector<StoredChunk>& chunks = FullChunks();
  std::string dir = TempDir::Get().Fresh("rocks-get");
  auto db = OpenRaw(dir, StoreCfs());
  if (!db.ok()) return Fail(state, db.status());
  if (absl::Status s = RawIngest(**db, chunks); !s.ok()) return Fail(state, s);
  // Reopen, so that Gets read SST files as Store::Read does in read_full.
  db->reset();
  db = OpenRaw(dir, StoreCfs());
  if (!db.ok()) return Fail(state, db.status());
  rocksdb::ColumnFamilyHandle* cf = (*db)->handles[1];
  std::string value;
  for (auto _ : state) {
    for (const StoredChunk& c : chunks) {
      rocksdb::Status s = (*db)->db->Get(rocksdb::ReadOptions(), cf, c.key,
                                         &value);
      if (!s.ok()) return Fail(state, FromRocks(s, "get"));
      benchmark::DoNotOptimize(value.data());
    }
  }
  db->reset();
  Remove(dir);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
}

void BM_ChunkDecode(benchmark::State& state) {
  const FullData& d = Full();
  const std::vector<StoredChunk>& chunks = FullChunks();
  codec::ChunkDecoder decoder;
  std::vector<uint8_t> raw(kImageChunkBytes, 1);
  for (auto _ : state) {
    for (const StoredChunk& c : chunks) {
      raw.resize(c.raw_len);
      absl::Status s = decoder.Decode(
          static_cast<codec::ChunkCodec>(c.value[0]),
          absl::MakeConstSpan(
              reinterpret_cast<const uint8_t*>(c.value.data()) +
                  kStoreChunkHeader,
              c.value.size() - kStoreChunkHeader),
          GetLe64(&c.value[9]), absl::MakeSpan(raw));
      if (!s.ok()) return Fail(state, s);
      benchmark::DoNotOptimize(raw.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * d.raw));
}

void BM_ImageEncode(benchmark::State& state, int threads) {
  const FullData& d = Full();
  const std::vector<uint8_t>& vram = d.vm.vram;
  codec::Manifest manifest = codec::SampleManifest(vram.size());
  auto id = manifest.mutable_root().initImageId(16);
  for (unsigned i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(i + 1);
  codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setDeclaredBytes(vram.size());
  auto region = r.initMemoryRegion();
  region.setPageSize(testing::kPage);
  region.setTotalPages(vram.size() / testing::kPage);
  auto pr = region.initPresentRanges(1)[0];
  pr.setFirst(0);
  pr.setCount(vram.size() / testing::kPage);
  codec::WriterOptions wo;
  wo.threads = threads;
  codec::MemorySink sink;
  sink.mutable_bytes().reserve(d.image.size() + d.image.size() / 4 +
                               (4 << 20));
  auto encode = [&]() -> absl::Status {
    sink.mutable_bytes().clear();
    auto w = codec::ImageWriter::Create(&sink, manifest, wo);
    if (!w.ok()) return w.status();
    // Fed in 64 KiB pieces, as Store::Read feeds it one extent at a time.
    if (auto b = (*w)->BeginSection(h); !b.ok()) return b.status();
    for (uint64_t off = 0; off < vram.size(); off += kImageChunkBytes) {
      uint64_t n = std::min<uint64_t>(kImageChunkBytes, vram.size() - off);
      if (absl::Status s = (*w)->Write(absl::MakeConstSpan(vram.data() + off, n));
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = (*w)->EndSection(); !s.ok()) return s;
    return (*w)->Finish();
  };
  if (absl::Status s = encode(); !s.ok()) return Fail(state, s);  // warm-up
  CpuMeter cpu;
  for (auto _ : state) {
    if (absl::Status s = encode(); !s.ok()) return Fail(state, s);
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * vram.size()));
  state.counters["cores"] = cpu.Cores();
}

// ---------------------------------------------------------------------------

template <typename Fn, typename... Args>
benchmark::internal::Benchmark* Register(const std::string& name, Fn fn,
                                         Args... args) {
  return benchmark::RegisterBenchmark(name.c_str(), fn, args...)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

void RegisterAll() {
  for (bool sync : {true, false}) {
    int s = sync ? 1 : 0;
    Register(absl::StrCat("put_full/sync:", s), BM_PutFull, sync);
    Register(absl::StrCat("baseline_file_write/sync:", s), BM_FileWrite,
             false, sync);
    Register(absl::StrCat("baseline_file_write_image/sync:", s), BM_FileWrite,
             true, sync);
  }
  Register("read_full/threads:0", BM_ReadFull, 0, false);
  Register("read_full/threads:1", BM_ReadFull, 1, false);
  Register("read_full_cold/threads:0", BM_ReadFull, 0, true);
  Register("baseline_file_read_image", BM_FileReadImage);
  Register("incremental", BM_Incremental);
  Register("diag/image_verify", BM_ImageVerify);
  Register("diag/sha256", BM_Sha256);
  Register("diag/rocks_put", BM_RocksPut);
  Register("diag/rocks_sst_ingest", BM_RocksSstIngest);
  Register("diag/rocks_get", BM_RocksGet);
  Register("diag/chunk_decode", BM_ChunkDecode);
  Register("diag/fresh_memory", BM_FreshMemory);
  Register("diag/image_encode/threads:1", BM_ImageEncode, 1);
  Register("diag/image_encode/threads:0", BM_ImageEncode, 0);
}

}  // namespace
}  // namespace vgpu::store

int main(int argc, char** argv) {
  // Defaults that the command line may override (later flags win): three
  // repetitions of at least 0.5 s each, medians on the console.
  std::vector<char*> args = {argv[0]};
  char repetitions[] = "--benchmark_repetitions=3";
  char min_time[] = "--benchmark_min_time=0.5";
  char aggregates[] = "--benchmark_display_aggregates_only=true";
  args.push_back(repetitions);
  args.push_back(min_time);
  args.push_back(aggregates);
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);

  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  using vgpu::store::TempDir;
  benchmark::AddCustomContext("full_vram_bytes",
                              std::to_string(vgpu::store::FullBytes()));
  benchmark::AddCustomContext("incr_vram_bytes",
                              std::to_string(vgpu::store::IncrBytes()));
  benchmark::AddCustomContext(
      "changed_fraction", std::to_string(vgpu::store::kChangedFraction));
  benchmark::AddCustomContext(
      "image_chunk_bytes", std::to_string(vgpu::store::kImageChunkBytes));
  benchmark::AddCustomContext("temp_dir", TempDir::Get().path());
  vgpu::store::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  TempDir::Get().RemoveAll();
  return 0;
}
