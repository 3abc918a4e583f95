// codec_bench: throughput of the state image codec (ImageWriter/ImageReader
// over memory) next to the zstd command-line tool at the same level, run by
// this process on the same bytes, and memcpy for scale.
//
// Three data sets of equal size (64 MiB, or VGPU_BENCH_MIB): random bytes,
// VRAM-like bytes and all zeros, each generated once. Benchmark names are
// "<what>/<data set>/threads:<n>":
//
//   encode           ImageWriter, one memory-region section, Finish()
//   decode           ImageReader::ReadSectionInto memory that stays mapped
//   decode_vector    ImageReader::ReadSection into a fresh vector
//   cli_encode       zstd -1 -T<n> -q -c FILE > /dev/null
//   cli_encode_st    zstd -1 --single-thread (no I/O threads), for reference
//   cli_decode       zstd -d -q -c FILE.zst > /dev/null
//   memcpy           the same bytes into a warm buffer
//
// and diagnostics that take the codec apart (all on the calling thread):
//
//   decode_visit     ImageReader::ReadChunks copying into a warm buffer
//   chunk_encode     ChunkEncoder::Encode per 256 KiB chunk, output reused
//   lib_encode       bare ZSTD_compress2 per 256 KiB chunk, same parameters
//   lib_encode_whole bare ZSTD_compress2 of the whole set as one frame with
//                    a checksum, as the CLI writes it
//   lib_decode       bare ZSTD_decompressDCtx per 256 KiB chunk
//   checksum         ChunkChecksum (XXH3-64) per chunk
//   is_all_zero      IsAllZero per chunk
//
// Counters: bytes_per_second (raw bytes per wall second), ratio (raw /
// stored bytes), cores (CPU seconds of this process, or of the zstd child,
// per wall second) and faults (minor page faults per iteration). The CLI
// runs are timed with a steady clock around spawn and wait.
//
// ReadSection returns a freshly allocated vector each time, so
// "decode_vector" includes first-touch page faults on the whole section
// (costly on this VM); "decode" and decode_visit decode into memory that
// stays mapped, as a destination agent does. The faults counter shows which.
//
// Defaults (overridable on the command line): 3 repetitions of at least
// 0.5 s each, aggregates only on the console. tools/bench.sh builds this with
// -c opt, runs it and tabulates the JSON.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
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
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/chunk_codec.h"
#include "state-codecs/image.h"
#include "state-codecs/sample.h"

extern char** environ;

namespace vgpu::codec {
namespace {

constexpr uint32_t kChunkBytes = 256 << 10;
constexpr int kLevel = 1;
constexpr uint32_t kPageBytes = 4096;

enum class DataSet { kRandom, kVram, kZero };
constexpr DataSet kDataSets[] = {DataSet::kRandom, DataSet::kVram,
                                 DataSet::kZero};

const char* DataSetName(DataSet set) {
  switch (set) {
    case DataSet::kRandom:
      return "random";
    case DataSet::kVram:
      return "vram";
    case DataSet::kZero:
      return "zero";
  }
  return "?";
}

uint64_t SetBytes() {
  static const uint64_t bytes = [] {
    uint64_t mib = 64;
    const char* env = std::getenv("VGPU_BENCH_MIB");
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      unsigned long long v = std::strtoull(env, &end, 10);
      if (*end != '\0' || v == 0 || v > (1u << 16)) {
        std::fprintf(stderr, "VGPU_BENCH_MIB=%s: want a whole number of MiB "
                             "in 1..65536\n", env);
        std::exit(2);
      }
      mib = v;
    }
    return mib << 20;
  }();
  return bytes;
}

// Each data set is generated once, on first use (not timed).
const std::vector<uint8_t>& Data(DataSet set) {
  static std::map<DataSet, std::vector<uint8_t>>* cache =
      new std::map<DataSet, std::vector<uint8_t>>();
  auto it = cache->find(set);
  if (it != cache->end()) return it->second;
  std::vector<uint8_t> bytes;
  switch (set) {
    case DataSet::kRandom:
      bytes = RandomBytes(SetBytes(), 42);
      break;
    case DataSet::kVram:
      bytes = VramLikeBytes(SetBytes(), 1);
      break;
    case DataSet::kZero:
      bytes.assign(SetBytes(), 0);
      break;
  }
  return cache->emplace(set, std::move(bytes)).first->second;
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

// Process CPU time per wall second, and minor page faults, over the timed
// loop. On VMs where touching fresh memory is slow the faults explain much.
class UsageMeter {
 public:
  UsageMeter()
      : wall0_(std::chrono::steady_clock::now()),
        cpu0_(ProcessCpuSeconds()),
        faults0_(MinorFaults()) {}
  double Cores() const {
    double wall = Seconds(std::chrono::steady_clock::now() - wall0_);
    return wall > 0 ? (ProcessCpuSeconds() - cpu0_) / wall : 0;
  }
  double Faults() const { return static_cast<double>(MinorFaults() - faults0_); }

 private:
  std::chrono::steady_clock::time_point wall0_;
  double cpu0_;
  long faults0_;
};

// bytes_per_second (raw bytes), ratio (raw / stored), cores (CPU seconds per
// wall second) and faults (minor page faults per iteration).
void Report(benchmark::State& state, uint64_t raw, uint64_t stored,
            double cores, double faults) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * raw));
  if (stored > 0) {
    state.counters["ratio"] =
        static_cast<double>(raw) / static_cast<double>(stored);
  }
  state.counters["cores"] = cores;
  state.counters["faults"] =
      benchmark::Counter(faults, benchmark::Counter::kAvgIterations);
}

void Report(benchmark::State& state, uint64_t raw, uint64_t stored,
            const UsageMeter& usage) {
  Report(state, raw, stored, usage.Cores(), usage.Faults());
}

void Fail(benchmark::State& state, const absl::Status& s) {
  state.SkipWithError(s.ToString().c_str());
}

// ---------------------------------------------------------------------------
// Our codec.

Manifest BenchManifest(uint64_t bytes) {
  Manifest m = SampleManifest(bytes);
  // A fixed id: the writer would otherwise draw one from random_device.
  auto id = m.mutable_root().initImageId(16);
  for (unsigned i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(i + 1);
  return m;
}

// One memory region holding every page of the data set.
SectionHeader RegionHeader(uint64_t bytes) {
  SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setDeclaredBytes(bytes);
  auto region = r.initMemoryRegion();
  region.setPageSize(kPageBytes);
  region.setTotalPages(bytes / kPageBytes);
  auto present = region.initPresentRanges(1)[0];
  present.setFirst(0);
  present.setCount(bytes / kPageBytes);
  return h;
}

WriterOptions BenchWriterOptions(int threads) {
  WriterOptions o;
  o.chunk_size = kChunkBytes;
  o.zstd_level = kLevel;
  o.threads = threads;
  return o;
}

// Writes a whole image into `sink` (cleared first; its capacity is kept) and
// returns the stored size.
absl::StatusOr<uint64_t> EncodeImage(const Manifest& manifest,
                                     const SectionHeader& header,
                                     absl::Span<const uint8_t> data,
                                     int threads, MemorySink* sink) {
  sink->mutable_bytes().clear();
  absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
      ImageWriter::Create(sink, manifest, BenchWriterOptions(threads));
  if (!writer.ok()) return writer.status();
  absl::StatusOr<uint32_t> id = (*writer)->AddSection(header, data);
  if (!id.ok()) return id.status();
  if (absl::Status s = (*writer)->Finish(); !s.ok()) return s;
  return sink->bytes().size();
}

// The encoded image of each data set, made once and checked by decoding.
const std::vector<uint8_t>& EncodedImage(DataSet set) {
  static std::map<DataSet, std::vector<uint8_t>>* cache =
      new std::map<DataSet, std::vector<uint8_t>>();
  auto it = cache->find(set);
  if (it != cache->end()) return it->second;
  const std::vector<uint8_t>& data = Data(set);
  MemorySink sink;
  absl::StatusOr<uint64_t> n =
      EncodeImage(BenchManifest(data.size()), RegionHeader(data.size()), data,
                  /*threads=*/2, &sink);
  if (!n.ok()) {
    std::fprintf(stderr, "encoding the %s set: %s\n", DataSetName(set),
                 n.status().ToString().c_str());
    std::exit(1);
  }
  MemorySource src(sink.bytes());
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      ImageReader::Open(&src, {}, 2);
  bool same = false;
  if (reader.ok() && (*reader)->NextSection().ok()) {
    absl::StatusOr<std::vector<uint8_t>> back =
        (*reader)->ReadSection(data.size());
    same = back.ok() && *back == data;
  }
  if (!same) {
    std::fprintf(stderr, "the %s set does not survive a round trip\n",
                 DataSetName(set));
    std::exit(1);
  }
  return cache->emplace(set, std::move(sink.mutable_bytes())).first->second;
}

void BM_Encode(benchmark::State& state, DataSet set, int threads) {
  const std::vector<uint8_t>& data = Data(set);
  const Manifest manifest = BenchManifest(data.size());
  const SectionHeader header = RegionHeader(data.size());
  MemorySink sink;
  sink.mutable_bytes().reserve(data.size() + data.size() / 64 + (1 << 20));
  // An untimed pass faults in the sink's pages, so that only encoding and
  // framing are measured.
  absl::StatusOr<uint64_t> stored =
      EncodeImage(manifest, header, data, threads, &sink);
  if (!stored.ok()) return Fail(state, stored.status());
  UsageMeter usage;
  for (auto _ : state) {
    stored = EncodeImage(manifest, header, data, threads, &sink);
    if (!stored.ok()) return Fail(state, stored.status());
  }
  Report(state, data.size(), *stored, usage);
}

// Decodes into `into` when given (memory that stays mapped, as a
// destination's VRAM would be), else into a fresh vector via ReadSection.
absl::Status DecodeImage(absl::Span<const uint8_t> image, uint64_t max_bytes,
                         int threads, std::vector<uint8_t>* into) {
  MemorySource src(image);
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      ImageReader::Open(&src, {}, threads);
  if (!reader.ok()) return reader.status();
  absl::StatusOr<std::optional<SectionHeader>> header =
      (*reader)->NextSection();
  if (!header.ok()) return header.status();
  uint64_t size = 0;
  if (into != nullptr) {
    absl::StatusOr<uint64_t> n = (*reader)->ReadSectionInto(
        absl::MakeSpan(*into));
    if (!n.ok()) return n.status();
    size = *n;
    benchmark::DoNotOptimize(into->data());
  } else {
    absl::StatusOr<std::vector<uint8_t>> bytes =
        (*reader)->ReadSection(max_bytes);
    if (!bytes.ok()) return bytes.status();
    size = bytes->size();
    benchmark::DoNotOptimize(bytes->data());
  }
  if (size != max_bytes) {
    return absl::InternalError("decoded section has the wrong size");
  }
  // The index and end-of-stream frame, so the whole image is checked.
  header = (*reader)->NextSection();
  if (!header.ok()) return header.status();
  if (header->has_value()) return absl::InternalError("a second section");
  return absl::OkStatus();
}

// decode: into mapped memory (ReadSectionInto), as a destination does.
// decode_vector: ReadSection's fresh vector, page faults included.
void BM_DecodeInto(benchmark::State& state, DataSet set, int threads,
                   bool fresh_vector) {
  const uint64_t raw = Data(set).size();
  const std::vector<uint8_t>& image = EncodedImage(set);
  std::vector<uint8_t> into(raw, 1);  // faulted in before timing
  UsageMeter usage;
  for (auto _ : state) {
    if (absl::Status s = DecodeImage(image, raw, threads,
                                     fresh_vector ? nullptr : &into);
        !s.ok()) {
      return Fail(state, s);
    }
  }
  Report(state, raw, image.size(), usage);
}

void BM_Decode(benchmark::State& state, DataSet set, int threads) {
  BM_DecodeInto(state, set, threads, false);
}

void BM_DecodeVector(benchmark::State& state, DataSet set, int threads) {
  BM_DecodeInto(state, set, threads, true);
}

// ReadChunks on the calling thread, copying into a buffer that stays mapped:
// decode without the result vector's allocation and page faults.
void BM_DecodeVisit(benchmark::State& state, DataSet set) {
  const uint64_t raw = Data(set).size();
  const std::vector<uint8_t>& image = EncodedImage(set);
  std::vector<uint8_t> out(raw, 1);
  ChunkVisitor visit = [&out](uint64_t offset, uint64_t length,
                              absl::Span<const uint8_t> data) {
    if (data.empty()) {
      std::memset(out.data() + offset, 0, length);
    } else {
      std::memcpy(out.data() + offset, data.data(), length);
    }
    return absl::OkStatus();
  };
  UsageMeter usage;
  for (auto _ : state) {
    MemorySource src(image);
    absl::StatusOr<std::unique_ptr<ImageReader>> reader =
        ImageReader::Open(&src, {}, 1);
    if (!reader.ok()) return Fail(state, reader.status());
    absl::StatusOr<std::optional<SectionHeader>> header =
        (*reader)->NextSection();
    if (!header.ok()) return Fail(state, header.status());
    if (absl::Status s = (*reader)->ReadChunks(visit); !s.ok()) {
      return Fail(state, s);
    }
    benchmark::DoNotOptimize(out.data());
  }
  Report(state, raw, image.size(), usage);
}

void BM_ChunkEncode(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  ChunkEncoder encoder(kLevel);
  EncodedChunk chunk;
  uint64_t stored = 0;
  UsageMeter usage;
  for (auto _ : state) {
    stored = 0;
    for (uint64_t off = 0; off < data.size(); off += kChunkBytes) {
      uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
      absl::Status s =
          encoder.Encode(absl::MakeConstSpan(data.data() + off, len), &chunk);
      if (!s.ok()) return Fail(state, s);
      stored += chunk.payload.size();
    }
  }
  Report(state, data.size(), stored, usage);
}

void BM_Checksum(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  UsageMeter usage;
  for (auto _ : state) {
    uint64_t acc = 0;
    for (uint64_t off = 0; off < data.size(); off += kChunkBytes) {
      uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
      acc ^= ChunkChecksum(absl::MakeConstSpan(data.data() + off, len));
    }
    benchmark::DoNotOptimize(acc);
  }
  Report(state, data.size(), 0, usage);
}

void BM_IsAllZero(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  UsageMeter usage;
  for (auto _ : state) {
    uint64_t zero = 0;
    for (uint64_t off = 0; off < data.size(); off += kChunkBytes) {
      uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
      zero += IsAllZero(absl::MakeConstSpan(data.data() + off, len));
    }
    benchmark::DoNotOptimize(zero);
  }
  Report(state, data.size(), 0, usage);
}

// ---------------------------------------------------------------------------
// The bare zstd library, with the parameters ChunkEncoder uses.

struct ZstdCtx {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  ~ZstdCtx() {
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
  }
};

absl::Status SetParams(ZSTD_CCtx* cctx, bool checksum) {
  for (auto [param, value] :
       {std::pair<ZSTD_cParameter, int>{ZSTD_c_compressionLevel, kLevel},
        {ZSTD_c_contentSizeFlag, 1},
        {ZSTD_c_checksumFlag, checksum ? 1 : 0}}) {
    size_t r = ZSTD_CCtx_setParameter(cctx, param, value);
    if (ZSTD_isError(r)) {
      return absl::InternalError(ZSTD_getErrorName(r));
    }
  }
  return absl::OkStatus();
}

void BM_LibEncode(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  ZstdCtx z;
  if (absl::Status s = SetParams(z.cctx, false); !s.ok()) {
    return Fail(state, s);
  }
  std::vector<uint8_t> dst(ZSTD_compressBound(kChunkBytes), 1);
  uint64_t stored = 0;
  UsageMeter usage;
  for (auto _ : state) {
    stored = 0;
    for (uint64_t off = 0; off < data.size(); off += kChunkBytes) {
      uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
      size_t n = ZSTD_compress2(z.cctx, dst.data(), dst.size(),
                                data.data() + off, len);
      if (ZSTD_isError(n)) {
        return Fail(state, absl::InternalError(ZSTD_getErrorName(n)));
      }
      stored += n;
    }
  }
  Report(state, data.size(), stored, usage);
}

void BM_LibEncodeWhole(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  ZstdCtx z;
  if (absl::Status s = SetParams(z.cctx, true); !s.ok()) {
    return Fail(state, s);
  }
  std::vector<uint8_t> dst(ZSTD_compressBound(data.size()), 1);
  uint64_t stored = 0;
  UsageMeter usage;
  for (auto _ : state) {
    size_t n = ZSTD_compress2(z.cctx, dst.data(), dst.size(), data.data(),
                              data.size());
    if (ZSTD_isError(n)) {
      return Fail(state, absl::InternalError(ZSTD_getErrorName(n)));
    }
    stored = n;
  }
  Report(state, data.size(), stored, usage);
}

void BM_LibDecode(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  ZstdCtx z;
  if (absl::Status s = SetParams(z.cctx, false); !s.ok()) {
    return Fail(state, s);
  }
  std::vector<std::vector<uint8_t>> frames;
  uint64_t stored = 0;
  for (uint64_t off = 0; off < data.size(); off += kChunkBytes) {
    uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
    std::vector<uint8_t> f(ZSTD_compressBound(len));
    size_t n = ZSTD_compress2(z.cctx, f.data(), f.size(), data.data() + off,
                              len);
    if (ZSTD_isError(n)) {
      return Fail(state, absl::InternalError(ZSTD_getErrorName(n)));
    }
    f.resize(n);
    stored += n;
    frames.push_back(std::move(f));
  }
  std::vector<uint8_t> out(data.size(), 1);
  UsageMeter usage;
  for (auto _ : state) {
    uint64_t off = 0;
    for (const std::vector<uint8_t>& f : frames) {
      uint64_t len = std::min<uint64_t>(kChunkBytes, data.size() - off);
      size_t n = ZSTD_decompressDCtx(z.dctx, out.data() + off, len, f.data(),
                                     f.size());
      if (ZSTD_isError(n) || n != len) {
        return Fail(state, absl::InternalError("zstd decompress failed"));
      }
      off += len;
    }
    benchmark::DoNotOptimize(out.data());
  }
  Report(state, data.size(), stored, usage);
}

void BM_Memcpy(benchmark::State& state, DataSet set) {
  const std::vector<uint8_t>& data = Data(set);
  std::vector<uint8_t> out(data.size(), 1);  // mapped before timing
  UsageMeter usage;
  for (auto _ : state) {
    std::memcpy(out.data(), data.data(), data.size());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  Report(state, data.size(), 0, usage);
}

// ---------------------------------------------------------------------------
// The zstd command-line tool.

bool ZstdOnPath() {
  static const bool found = [] {
    const char* path = std::getenv("PATH");
    if (path == nullptr) return false;
    std::string p = path;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find(':', start);
      if (end == std::string::npos) end = p.size();
      std::string dir = p.substr(start, end - start);
      if (dir.empty()) dir = ".";
      if (::access((dir + "/zstd").c_str(), X_OK) == 0) return true;
      start = end + 1;
    }
    return false;
  }();
  return found;
}

struct ChildRun {
  double wall_seconds = 0;
  double cpu_seconds = 0;  // user + system of the child
  long minor_faults = 0;
};

// Runs argv (looked up on PATH) with stdout sent to /dev/null and waits.
absl::StatusOr<ChildRun> RunChild(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null",
                                   O_WRONLY, 0);
  ChildRun run;
  pid_t pid = 0;
  auto t0 = std::chrono::steady_clock::now();
  int err = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(),
                         environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    return absl::UnavailableError(
        absl::StrCat("spawn ", args[0], ": ", std::strerror(err)));
  }
  int status = 0;
  rusage usage;
  pid_t r;
  do {
    r = ::wait4(pid, &status, 0, &usage);
  } while (r < 0 && errno == EINTR);
  run.wall_seconds = Seconds(std::chrono::steady_clock::now() - t0);
  if (r < 0) {
    return absl::UnavailableError(
        absl::StrCat("wait for ", args[0], ": ", std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(
        absl::StrJoin(args, " "), " failed (wait status ", status, ")"));
  }
  auto tv = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  run.cpu_seconds = tv(usage.ru_utime) + tv(usage.ru_stime);
  run.minor_faults = usage.ru_minflt;
  return run;
}

// A private directory under /tmp holding each data set once as a file and
// once compressed by the CLI; removed at exit.
class TempFiles {
 public:
  static TempFiles& Get() {
    static TempFiles* files = new TempFiles();
    return *files;
  }

  absl::StatusOr<std::string> Raw(DataSet set) {
    std::string path = absl::StrCat(Dir(), "/", DataSetName(set), ".raw");
    if (made_.count(path)) return path;
    if (dir_.empty()) return absl::UnavailableError("cannot create a temp dir");
    const std::vector<uint8_t>& data = Data(set);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                    0600);
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("create ", path, ": ", std::strerror(errno)));
    }
    made_.insert(path);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = errno;
        ::close(fd);
        return absl::UnavailableError(
            absl::StrCat("write ", path, ": ", std::strerror(e)));
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    return path;
  }

  // The set compressed by `zstd -1 -T<threads>`, made once.
  absl::StatusOr<std::string> Compressed(DataSet set, int threads) {
    absl::StatusOr<std::string> raw = Raw(set);
    if (!raw.ok()) return raw;
    std::string path = absl::StrCat(*raw, ".T", threads, ".zst");
    if (made_.count(path)) return path;
    made_.insert(path);
    absl::StatusOr<ChildRun> run =
        RunChild({"zstd", absl::StrCat("-", kLevel),
                  absl::StrCat("-T", threads), "-q", "-f", "-o", path, *raw});
    if (!run.ok()) return run.status();
    return path;
  }

  void RemoveAll() {
    for (const std::string& p : made_) ::unlink(p.c_str());
    made_.clear();
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }

 private:
  const std::string& Dir() {
    if (dir_.empty() && !tried_) {
      tried_ = true;
      char tmpl[] = "/tmp/vgpu-codec-bench.XXXXXX";
      if (::mkdtemp(tmpl) != nullptr) dir_ = tmpl;
    }
    return dir_;
  }

  std::string dir_;
  bool tried_ = false;
  std::set<std::string> made_;
};

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size)
                                        : 0;
}

void RunCli(benchmark::State& state, const std::vector<std::string>& args,
            uint64_t raw, uint64_t stored) {
  double cpu = 0, wall = 0, faults = 0;
  for (auto _ : state) {
    absl::StatusOr<ChildRun> run = RunChild(args);
    if (!run.ok()) return Fail(state, run.status());
    state.SetIterationTime(run->wall_seconds);
    cpu += run->cpu_seconds;
    wall += run->wall_seconds;
    faults += static_cast<double>(run->minor_faults);
  }
  Report(state, raw, stored, wall > 0 ? cpu / wall : 0, faults);
}

constexpr char kNoZstd[] =
    "zstd not found on PATH: install the zstd package for the CLI baseline";

// threads == 0: --single-thread (compression and I/O on one thread).
void BM_CliEncode(benchmark::State& state, DataSet set, int threads) {
  if (!ZstdOnPath()) return state.SkipWithError(kNoZstd);
  TempFiles& files = TempFiles::Get();
  absl::StatusOr<std::string> raw = files.Raw(set);
  if (!raw.ok()) return Fail(state, raw.status());
  absl::StatusOr<std::string> zst = files.Compressed(set, threads);
  if (!zst.ok()) return Fail(state, zst.status());
  std::string mode = threads == 0 ? std::string("--single-thread")
                                  : absl::StrCat("-T", threads);
  RunCli(state, {"zstd", absl::StrCat("-", kLevel), mode, "-q", "-c", *raw},
         Data(set).size(), FileSize(*zst));
}

void BM_CliDecode(benchmark::State& state, DataSet set) {
  if (!ZstdOnPath()) return state.SkipWithError(kNoZstd);
  absl::StatusOr<std::string> zst = TempFiles::Get().Compressed(set, 1);
  if (!zst.ok()) return Fail(state, zst.status());
  RunCli(state, {"zstd", "-d", "-q", "-c", *zst}, Data(set).size(),
         FileSize(*zst));
}

// ---------------------------------------------------------------------------

// Names are "<what>/<data set>/threads:<n>". Rates are per wall-clock
// second: real time for in-process runs (benchmark's default, the main
// thread's CPU time, would leave out the workers), the child's wall time for
// CLI runs.
template <typename Fn, typename... Args>
benchmark::internal::Benchmark* Register(bool child, const std::string& what,
                                         DataSet set, int threads, Fn fn,
                                         Args... args) {
  std::string name =
      absl::StrFormat("%s/%s/threads:%d", what, DataSetName(set), threads);
  benchmark::internal::Benchmark* b =
      benchmark::RegisterBenchmark(name.c_str(), fn, set, args...)
          ->Unit(benchmark::kMillisecond);
  return child ? b->UseManualTime() : b->UseRealTime();
}

void RegisterAll() {
  constexpr bool kInProcess = false, kChild = true;
  for (DataSet set : kDataSets) {
    for (int t : {1, 2}) Register(kInProcess, "encode", set, t, BM_Encode, t);
    for (int t : {1, 2}) Register(kInProcess, "decode", set, t, BM_Decode, t);
    Register(kInProcess, "decode_vector", set, 1, BM_DecodeVector, 1);
    for (int t : {1, 2}) {
      Register(kChild, "cli_encode", set, t, BM_CliEncode, t);
    }
    Register(kChild, "cli_encode_st", set, 1, BM_CliEncode, 0);
    Register(kChild, "cli_decode", set, 1, BM_CliDecode);
    Register(kInProcess, "memcpy", set, 1, BM_Memcpy);
  }
  for (DataSet set : kDataSets) {
    Register(kInProcess, "decode_visit", set, 1, BM_DecodeVisit);
    Register(kInProcess, "chunk_encode", set, 1, BM_ChunkEncode);
    Register(kInProcess, "lib_encode", set, 1, BM_LibEncode);
    Register(kInProcess, "lib_encode_whole", set, 1, BM_LibEncodeWhole);
    Register(kInProcess, "lib_decode", set, 1, BM_LibDecode);
    Register(kInProcess, "checksum", set, 1, BM_Checksum);
    Register(kInProcess, "is_all_zero", set, 1, BM_IsAllZero);
  }
}

}  // namespace
}  // namespace vgpu::codec

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
  benchmark::AddCustomContext(
      "set_bytes", std::to_string(vgpu::codec::SetBytes()));
  benchmark::AddCustomContext("chunk_bytes",
                              std::to_string(vgpu::codec::kChunkBytes));
  benchmark::AddCustomContext("zstd_level",
                              std::to_string(vgpu::codec::kLevel));
  benchmark::AddCustomContext("zstd_library", ZSTD_versionString());
  vgpu::codec::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  vgpu::codec::TempFiles::Get().RemoveAll();
  return 0;
}
