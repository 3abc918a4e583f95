// agent_bench: the emulated agent (agents/emulated) against real
// vgpu-emu-device processes.
//
// 1. Extraction: how fast a source agent's Save turns dirty pages into an
//    image, next to memcpy of the same bytes from the same VRAM mapping in
//    the same process and run. A device with VGPU_AGENT_BENCH_MIB MiB of
//    VRAM (default 256) is filled once with VRAM-like bytes
//    (codec::VramLikeBytes: one 64 MiB piece uploaded through WRITE
//    commands, repeated by COPY commands in the device); the agent is put in
//    PRE_COPY and its initial pass drained into a discarding sink (timed on
//    its own: it is the first read of VRAM through this process's mapping;
//    counters initial_pass_ms and initial_pass_faults of the extract rows).
//    Each iteration then dirties a
//    known set of pages through the guest client, with COPY commands of each
//    run of pages onto itself (so the bytes, and the compression ratio, stay
//    the same from one iteration to the next), waits for the fence, and
//    times one Save into an ImageWriter over a warm MemorySink. The
//    writer's raw byte count is checked against the set: a Save that sends
//    more or fewer pages fails the benchmark. Sets:
//
//      all    every page of VRAM (one run)
//      5pct   5% of the pages drawn at random (seed 5), mostly lone pages
//      64pages  64 consecutive pages (256 KiB): one batch of the counter
//             workload, the size of a late pre-copy round or the final one
//
//    Benchmark names are "<what>/<set>/threads:<n>":
//
//      extract  EmulatedSource Save (bitmap fetch over the control socket,
//               runs, ImageWriter with zstd 1 and 256 KiB chunks), timed
//               alone; n = WriterOptions::threads
//      encode   the same ImageWriter calls on the same runs of the VRAM
//               mapping without the agent (no bitmap): what the codec costs
//      memcpy   the same runs of the VRAM mapping into a warm buffer
//      pending  Agent::Pending() with nothing dirty: one dirty-bitmap round
//               trip to the device plus the agent's own bookkeeping
//
//    Counters: bytes_per_second (page bytes per second), pages, ratio
//    (raw / stored), cores (this process's CPU seconds per second of the
//    timed part), dev_cores (the device process's, at clock-tick
//    resolution), faults (minor faults of this process per iteration),
//    and for extract max_ms (the slowest single Save).
//
// 2. Convergence ("convergence/<fill>/threads:<n>", three repetitions of one
//    iteration each, manual time = the migration's wall time): a device with
//    VGPU_AGENT_BENCH_CONV_MIB MiB of VRAM (default 1024). With fill "vram"
//    every page first gets VRAM-like bytes (filled as above) with its first
//    8 bytes zeroed, so that the counter workload's invariant holds and each
//    page it dirties carries realistic bytes; with fill "zero" VRAM starts
//    as zeros. The counter workload (agents/emulated/workload.h) runs in a
//    thread of this process at VGPU_AGENT_BENCH_DIRTY_MIBS MiB/s (default
//    64: 16384 pages/s). After a 2 s warm-up the source agent does pre-copy
//    rounds back to back (Save into an ImageWriter over a sink that counts
//    and discards bytes, then Pending()) until the pending total falls to
//    VGPU_AGENT_BENCH_STOP_KIB KiB (default 256) or stops shrinking, or
//    after VGPU_AGENT_BENCH_MAX_ROUNDS rounds (default 30); then STOP_COPY
//    and the final Save. Before the throttled run, the workload runs 1 s
//    unthrottled to show what rate the machine can sustain at all. The
//    stopped source's VRAM is checked with CheckCounters.
//    Per-round figures go to stderr and, when VGPU_AGENT_BENCH_ROUNDS_JSON
//    names a file, to that file as JSON.
//
// 3. "stop_copy/full_ring/threads:1" (a check, one run): an 8 MiB device
//    whose engine takes 20 ms a command, 1000 guest WRITEs of 64 KiB queued
//    in its ring, then PRE_COPY, STOP_COPY: Pending() after the quiesce
//    against the bytes the final Save writes (the queued commands travel in
//    the ring blob). Counters: pending_precopy, pending_stopcopy,
//    final_raw_bytes, ring_blob_bytes, final_over_pending, quiesce_ms,
//    final_save_ms (the manual time is their sum: the downtime), and
//    save_ring_ms (one more SaveRing call alone).
//
// The device binary: --device=PATH, else $VGPU_EMU_DEVICE, else this
// binary's runfiles, else ../vgpu-emu-device next to it (bazel-bin layout).
// tools/agent_bench.sh passes it. Devices log to files in a temporary
// directory, which is removed at exit; they die with this process
// (PR_SET_PDEATHSIG).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agents/agent.h"
#include "agents/emulated/command.h"
#include "agents/emulated/device_control.h"
#include "agents/emulated/emulated_agent.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/workload.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"
#include "state-codecs/sample.h"

namespace vgpu::agents::emulated {
namespace {

constexpr uint64_t kMib = uint64_t{1} << 20;
constexpr uint32_t kChunkBytes = 256 << 10;
constexpr int kLevel = 1;

// ---------------------------------------------------------------------------
// Settings.

uint64_t EnvU64(const char* name, uint64_t def, uint64_t lo, uint64_t hi) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return def;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    std::fprintf(stderr, "%s=%s: want a whole number in %llu..%llu\n", name,
                 env, static_cast<unsigned long long>(lo),
                 static_cast<unsigned long long>(hi));
    std::exit(2);
  }
  return v;
}

uint64_t ExtractBytes() {
  static const uint64_t v =
      EnvU64("VGPU_AGENT_BENCH_MIB", 256, 4, 4095) * kMib;
  return v;
}
uint64_t ConvergenceBytes() {
  static const uint64_t v =
      EnvU64("VGPU_AGENT_BENCH_CONV_MIB", 1024, 8, 4095) * kMib;
  return v;
}
uint64_t DirtyMibPerSecond() {
  static const uint64_t v = EnvU64("VGPU_AGENT_BENCH_DIRTY_MIBS", 64, 1, 4096);
  return v;
}
uint64_t StopBytes() {
  static const uint64_t v =
      EnvU64("VGPU_AGENT_BENCH_STOP_KIB", 256, 0, 1u << 22) << 10;
  return v;
}
int MaxRounds() {
  static const int v =
      static_cast<int>(EnvU64("VGPU_AGENT_BENCH_MAX_ROUNDS", 30, 1, 1000));
  return v;
}

std::string& DevicePath() {
  static std::string* path = new std::string();
  return *path;
}

// Per-round JSON of each convergence run (one per repetition, in order), by
// benchmark name.
std::map<std::string, std::vector<std::string>>& RoundJson() {
  static auto* m = new std::map<std::string, std::vector<std::string>>();
  return *m;
}

// ---------------------------------------------------------------------------
// Clocks and usage.

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
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

// utime + stime of another process, from /proc (clock-tick resolution).
double OtherCpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  // Fields after the command: state(3) ... utime(14) stime(15).
  for (int i = 3; i <= 15 && (fields >> f); ++i) {
    if (i == 14) utime = std::strtoull(f.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(f.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Sums CPU, device CPU, faults and wall time over the timed parts only.
struct Meter {
  double wall = 0, cpu = 0, dev_cpu = 0, faults = 0;
  pid_t device = -1;
  double w0 = 0, c0 = 0, d0 = 0;
  long f0 = 0;
  void Start() {
    f0 = MinorFaults();
    d0 = device > 0 ? OtherCpuSeconds(device) : 0;
    c0 = ProcessCpuSeconds();
    w0 = Now();
  }
  double Stop() {
    const double w = Now() - w0;
    cpu += ProcessCpuSeconds() - c0;
    dev_cpu += (device > 0 ? OtherCpuSeconds(device) : 0) - d0;
    faults += static_cast<double>(MinorFaults() - f0);
    wall += w;
    return w;
  }
};

// ---------------------------------------------------------------------------
// Device processes.

const std::string& TempDir() {
  static std::string* dir = [] {
    char tmpl[] = "/tmp/vgpu-agent-bench.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("mkdtemp");
      std::exit(1);
    }
    return new std::string(tmpl);
  }();
  return *dir;
}

bool CanConnect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool ok =
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// One vgpu-emu-device process. fork + execv rather than posix_spawn, so the
// child can ask to die with this process (PR_SET_PDEATHSIG) before exec.
class Device {
 public:
  static absl::StatusOr<std::unique_ptr<Device>> Start(
      const std::string& name, uint64_t vram_bytes,
      std::vector<std::string> extra_args = {}) {
    std::unique_ptr<Device> d(new Device());
    d->socket_ = absl::StrCat(TempDir(), "/", name, ".sock");
    d->log_ = absl::StrCat(TempDir(), "/", name, ".log");
    if (d->socket_.size() >= sizeof(sockaddr_un::sun_path)) {
      return absl::InvalidArgumentError("socket path too long: " + d->socket_);
    }
    unlink(d->socket_.c_str());
    std::vector<std::string> args = {DevicePath(),
                                     "--socket",
                                     d->socket_,
                                     "--vram",
                                     absl::StrCat(vram_bytes),
                                     "--name",
                                     name};
    for (std::string& a : extra_args) args.push_back(std::move(a));
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log_fd =
        open(d->log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return absl::InternalError(
          absl::StrCat("open ", d->log_, ": ", std::strerror(errno)));
    }
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      close(log_fd);
      return absl::InternalError("fork failed");
    }
    if (pid == 0) {
      // Only async-signal-safe calls from here to exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(log_fd, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(log_fd);
    d->pid_ = pid;
    const double end = Now() + 30;
    while (!CanConnect(d->socket_)) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        d->pid_ = -1;
        return absl::InternalError(absl::StrFormat(
            "%s exited before listening (status %d); see %s", DevicePath(),
            status, d->log_));
      }
      if (Now() > end) {
        return absl::DeadlineExceededError("the device did not listen");
      }
      usleep(5000);
    }
    return d;
  }

  ~Device() { Stop(); }

  void Stop() {
    if (pid_ < 0) return;
    kill(pid_, SIGTERM);
    const double end = Now() + 5;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (Now() > end) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      usleep(5000);
    }
    pid_ = -1;
    unlink(socket_.c_str());
    unlink(log_.c_str());
  }

  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }

 private:
  Device() = default;
  pid_t pid_ = -1;
  std::string socket_, log_;
};

// ---------------------------------------------------------------------------
// Guest-side helpers.

using Runs = std::vector<std::pair<uint64_t, uint64_t>>;  // [first, count)

uint64_t PagesOf(const Runs& runs) {
  uint64_t n = 0;
  for (const auto& r : runs) n += r.second;
  return n;
}

absl::Status Drain(GuestClient& g) {
  absl::StatusOr<uint64_t> fence = g.Fence();
  if (!fence.ok()) return fence.status();
  return g.WaitFence(*fence, absl::Seconds(300));
}

// Writes `bytes` at `offset` through WRITE commands and waits for them.
absl::Status Upload(GuestClient& g, uint64_t offset,
                    absl::Span<const uint8_t> bytes) {
  std::vector<Command> batch;
  for (uint64_t done = 0; done < bytes.size();) {
    const uint64_t n = std::min<uint64_t>(kMaxWriteBytes, bytes.size() - done);
    batch.push_back(Command::Write(offset + done, bytes.subspan(done, n)));
    done += n;
    // 64 writes of 64 KiB: a 4 MiB request, under the guest frame limit.
    if (batch.size() == 64 || done == bytes.size()) {
      absl::StatusOr<std::vector<uint64_t>> s = g.SubmitBatch(batch);
      if (!s.ok()) return s.status();
      batch.clear();
    }
  }
  return Drain(g);
}

// Dirties `runs` by copying each onto itself (the bytes stay the same), then
// waits until the engine has executed every copy.
absl::Status DirtyRuns(GuestClient& g, const Runs& runs) {
  std::vector<Command> batch;
  for (size_t i = 0; i < runs.size(); ++i) {
    const uint64_t off = runs[i].first * kPageBytes;
    batch.push_back(Command::Copy(off, off, runs[i].second * kPageBytes));
    if (batch.size() == 512 || i + 1 == runs.size()) {
      absl::StatusOr<std::vector<uint64_t>> s = g.SubmitBatch(batch);
      if (!s.ok()) return s.status();
      batch.clear();
    }
  }
  return Drain(g);
}

// Fills VRAM with VRAM-like bytes: one piece of up to 64 MiB is uploaded
// through WRITE commands (every byte crosses the socket and is copied
// several times), then repeated over the rest of VRAM by COPY commands
// inside the device. With `zero_heads`, the first 8 bytes of every page are zeroed, so
// that the counter workload starts from a valid all-zero state (the
// framebuffer pages are cleared anyway when the workload sets its mode).
// With `check`, the whole of VRAM is compared with what was meant.
absl::Status FillVram(GuestClient& g, uint64_t seed, bool zero_heads,
                      bool check) {
  const uint64_t total = g.vram_bytes();
  const uint64_t piece_bytes = std::min<uint64_t>(64 * kMib, total);
  std::vector<uint8_t> piece = codec::VramLikeBytes(piece_bytes, seed);
  if (zero_heads) {
    for (uint64_t p = 0; p < piece_bytes; p += kPageBytes) {
      std::memset(piece.data() + p, 0, 8);
    }
  }
  if (absl::Status s = Upload(g, 0, piece); !s.ok()) return s;
  std::vector<Command> copies;
  for (uint64_t off = piece_bytes; off < total; off += piece_bytes) {
    copies.push_back(
        Command::Copy(0, off, std::min<uint64_t>(piece_bytes, total - off)));
  }
  if (!copies.empty()) {
    absl::StatusOr<std::vector<uint64_t>> s = g.SubmitBatch(copies);
    if (!s.ok()) return s.status();
    if (absl::Status d = Drain(g); !d.ok()) return d;
  }
  if (check) {
    for (uint64_t off = 0; off < total; off += piece_bytes) {
      const uint64_t n = std::min<uint64_t>(piece_bytes, total - off);
      if (std::memcmp(g.vram().data() + off, piece.data(), n) != 0) {
        return absl::DataLossError(
            absl::StrFormat("VRAM at %u differs from what was written", off));
      }
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Images.

// Counts and discards: a migration stream whose far end is not measured.
class CountingSink : public codec::ByteSink {
 public:
  absl::Status Write(absl::Span<const uint8_t> data) override {
    bytes_ += data.size();
    return absl::OkStatus();
  }
  absl::Status Close() override { return absl::OkStatus(); }
  const std::string& name() const override { return name_; }
  uint64_t bytes() const { return bytes_; }

 private:
  std::string name_ = "discard";
  uint64_t bytes_ = 0;
};

codec::Manifest MigrationManifest(const Agent& source) {
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  root.initDevices(1)[0].setDescriptor(source.descriptor().root());
  // A fixed id: the writer would otherwise draw one from random_device.
  auto id = root.initImageId(16);
  for (unsigned i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(i + 1);
  return m;
}

codec::WriterOptions Options(int threads) {
  codec::WriterOptions o;
  o.chunk_size = kChunkBytes;
  o.zstd_level = kLevel;
  o.threads = threads;
  return o;
}

// The section header the agent writes for `runs` (for the encode rows).
codec::SectionHeader RegionHeader(const Runs& runs, uint64_t total_pages) {
  codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setDeclaredBytes(PagesOf(runs) * kPageBytes);
  auto region = r.initMemoryRegion();
  region.setPageSize(kPageBytes);
  region.setTotalPages(total_pages);
  auto pr = region.initPresentRanges(static_cast<unsigned>(runs.size()));
  for (size_t i = 0; i < runs.size(); ++i) {
    pr[static_cast<unsigned>(i)].setFirst(runs[i].first);
    pr[static_cast<unsigned>(i)].setCount(runs[i].second);
  }
  return h;
}

// ---------------------------------------------------------------------------
// Extraction.

struct ExtractRig {
  absl::Status status;
  std::unique_ptr<Device> device;
  std::unique_ptr<GuestClient> guest;
  std::unique_ptr<Agent> agent;
  uint64_t vram_bytes = 0;
  std::map<std::string, Runs> sets;
  codec::Manifest manifest;
  codec::MemorySink sink;     // warm: reused with its capacity
  std::vector<uint8_t> warm;  // memcpy target, touched
  uint32_t round = 1;
  Meter initial;  // the initial pass (first Save after PRE_COPY)
};

absl::Status BuildRig(ExtractRig& rig) {
  rig.vram_bytes = ExtractBytes();
  auto dev = Device::Start("extract", rig.vram_bytes);
  if (!dev.ok()) return dev.status();
  rig.device = std::move(*dev);
  auto guest = GuestClient::Connect(rig.device->socket(), "bench-guest");
  if (!guest.ok()) return guest.status();
  rig.guest = std::move(*guest);
  if (absl::Status s = FillVram(*rig.guest, 7, /*zero_heads=*/false, /*check=*/true);
      !s.ok()) {
    return s;
  }
  auto dc = DeviceControl::Connect(rig.device->socket());
  if (!dc.ok()) return dc.status();
  auto agent = NewEmulatedSource(std::move(*dc));
  if (!agent.ok()) return agent.status();
  rig.agent = std::move(*agent);
  rig.manifest = MigrationManifest(*rig.agent);

  const uint64_t pages = rig.vram_bytes / kPageBytes;
  rig.sets["all"] = {{0, pages}};
  std::vector<uint64_t> order(pages);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(5);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(pages * 5 / 100);
  std::sort(order.begin(), order.end());
  Runs subset;
  for (uint64_t p : order) {
    if (!subset.empty() && subset.back().first + subset.back().second == p) {
      ++subset.back().second;
    } else {
      subset.push_back({p, 1});
    }
  }
  rig.sets["5pct"] = std::move(subset);
  // One batch of the counter workload: 64 consecutive pages (256 KiB), the
  // size of a late pre-copy round or of the final one.
  rig.sets["64pages"] = {{pages / 2, 64}};

  // PRE_COPY, and the initial pass drained into a discarding sink: the
  // first read of VRAM through this process's mapping, timed on its own.
  if (absl::Status s = rig.agent->TransitionTo(State::kPreCopy); !s.ok()) {
    return s;
  }
  {
    CountingSink discard;
    auto w = codec::ImageWriter::Create(&discard, rig.manifest, Options(1));
    if (!w.ok()) return w.status();
    rig.initial.device = rig.device->pid();
    rig.initial.Start();
    absl::Status saved = rig.agent->Save(**w, 0, 0);
    rig.initial.Stop();
    if (!saved.ok()) return saved;
    if ((*w)->stats().raw_bytes != rig.vram_bytes) {
      return absl::InternalError(absl::StrFormat(
          "the initial pass sent %u bytes; VRAM is %u",
          (*w)->stats().raw_bytes, rig.vram_bytes));
    }
    if (absl::Status s = (*w)->Finish(); !s.ok()) return s;
  }
  // Warm the sink: an image of every page written into it once, untimed.
  {
    auto w = codec::ImageWriter::Create(&rig.sink, rig.manifest, Options(1));
    if (!w.ok()) return w.status();
    const Runs& all = rig.sets["all"];
    auto id = (*w)->AddSection(RegionHeader(all, pages),
                               DeviceOf(*rig.agent).vram());
    if (!id.ok()) return id.status();
    if (absl::Status s = (*w)->Finish(); !s.ok()) return s;
  }
  rig.warm.assign(rig.vram_bytes, 1);
  return absl::OkStatus();
}

ExtractRig* g_rig = nullptr;  // once built

ExtractRig& Rig() {
  static ExtractRig* rig = [] {
    auto* r = new ExtractRig();
    g_rig = r;
    r->status = BuildRig(*r);
    if (!r->status.ok()) {
      std::fprintf(stderr, "extraction set-up failed: %s\n",
                   r->status.ToString().c_str());
    }
    return r;
  }();
  return *rig;
}

void Fail(benchmark::State& state, const absl::Status& s) {
  state.SkipWithError(s.ToString().c_str());
}

// Sends whatever the agent still has pending (nothing, normally), so that an
// earlier benchmark's leftovers do not count.
absl::Status DrainAgent(ExtractRig& rig) {
  CountingSink discard;
  auto w = codec::ImageWriter::Create(&discard, rig.manifest, Options(1));
  if (!w.ok()) return w.status();
  if (absl::Status s = rig.agent->Save(**w, 0, rig.round++); !s.ok()) return s;
  return (*w)->Finish();
}

void Report(benchmark::State& state, uint64_t page_bytes, uint64_t stored,
            const Meter& m) {
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * page_bytes));
  state.counters["pages"] = static_cast<double>(page_bytes / kPageBytes);
  if (stored > 0) {
    state.counters["ratio"] =
        static_cast<double>(page_bytes) / static_cast<double>(stored);
  }
  if (m.wall > 0) {
    state.counters["cores"] = m.cpu / m.wall;
    state.counters["dev_cores"] = m.dev_cpu / m.wall;
  }
  state.counters["faults"] =
      benchmark::Counter(m.faults, benchmark::Counter::kAvgIterations);
}

void BM_Extract(benchmark::State& state, std::string set, int threads) {
  ExtractRig& rig = Rig();
  if (!rig.status.ok()) return Fail(state, rig.status);
  const Runs& runs = rig.sets.at(set);
  const uint64_t bytes = PagesOf(runs) * kPageBytes;
  if (absl::Status s = DrainAgent(rig); !s.ok()) return Fail(state, s);
  Meter m;
  m.device = rig.device->pid();
  uint64_t stored = 0;
  double max_s = 0;
  for (auto _ : state) {
    if (absl::Status s = DirtyRuns(*rig.guest, runs); !s.ok()) {
      return Fail(state, s);
    }
    rig.sink.mutable_bytes().clear();
    auto w = codec::ImageWriter::Create(&rig.sink, rig.manifest,
                                        Options(threads));
    if (!w.ok()) return Fail(state, w.status());
    const uint64_t raw0 = (*w)->stats().raw_bytes;
    const uint64_t stored0 = rig.sink.bytes().size();
    m.Start();
    absl::Status s = rig.agent->Save(**w, 0, rig.round++);
    const double took = m.Stop();
    state.SetIterationTime(took);
    max_s = std::max(max_s, took);
    if (!s.ok()) return Fail(state, s);
    const uint64_t raw = (*w)->stats().raw_bytes - raw0;
    stored = rig.sink.bytes().size() - stored0;
    if (raw != bytes) {
      return Fail(state, absl::InternalError(absl::StrFormat(
                             "Save sent %u bytes of pages; %u were dirtied",
                             raw, bytes)));
    }
    if (absl::Status f = (*w)->Finish(); !f.ok()) return Fail(state, f);
  }
  Report(state, bytes, stored, m);
  state.counters["max_ms"] = max_s * 1e3;  // the slowest single Save
  // The rig's initial pass: the same Save of every page, but the first read
  // of VRAM through this process's mapping (one writer thread).
  state.counters["initial_pass_ms"] = rig.initial.wall * 1e3;
  state.counters["initial_pass_faults"] = rig.initial.faults;
}

void BM_Encode(benchmark::State& state, std::string set, int threads) {
  ExtractRig& rig = Rig();
  if (!rig.status.ok()) return Fail(state, rig.status);
  const Runs& runs = rig.sets.at(set);
  const uint64_t bytes = PagesOf(runs) * kPageBytes;
  const codec::SectionHeader header =
      RegionHeader(runs, rig.vram_bytes / kPageBytes);
  absl::Span<const uint8_t> vram = DeviceOf(*rig.agent).vram();
  Meter m;
  m.device = rig.device->pid();
  uint64_t stored = 0;
  for (auto _ : state) {
    rig.sink.mutable_bytes().clear();
    auto w = codec::ImageWriter::Create(&rig.sink, rig.manifest,
                                        Options(threads));
    if (!w.ok()) return Fail(state, w.status());
    const uint64_t stored0 = rig.sink.bytes().size();
    m.Start();
    absl::Status s = (*w)->BeginSection(header).status();
    for (size_t i = 0; s.ok() && i < runs.size(); ++i) {
      s = (*w)->Write(vram.subspan(runs[i].first * kPageBytes,
                                   runs[i].second * kPageBytes));
    }
    if (s.ok()) s = (*w)->EndSection();
    state.SetIterationTime(m.Stop());
    if (!s.ok()) return Fail(state, s);
    stored = rig.sink.bytes().size() - stored0;
    if (absl::Status f = (*w)->Finish(); !f.ok()) return Fail(state, f);
  }
  Report(state, bytes, stored, m);
}

void BM_Memcpy(benchmark::State& state, std::string set) {
  ExtractRig& rig = Rig();
  if (!rig.status.ok()) return Fail(state, rig.status);
  const Runs& runs = rig.sets.at(set);
  const uint64_t bytes = PagesOf(runs) * kPageBytes;
  absl::Span<const uint8_t> vram = DeviceOf(*rig.agent).vram();
  uint8_t* out = rig.warm.data();
  Meter m;
  m.device = rig.device->pid();
  for (auto _ : state) {
    m.Start();
    uint64_t pos = 0;
    for (const auto& [first, count] : runs) {
      std::memcpy(out + pos, vram.data() + first * kPageBytes,
                  count * kPageBytes);
      pos += count * kPageBytes;
    }
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
    state.SetIterationTime(m.Stop());
  }
  Report(state, bytes, 0, m);
}

void BM_Pending(benchmark::State& state) {
  ExtractRig& rig = Rig();
  if (!rig.status.ok()) return Fail(state, rig.status);
  if (absl::Status s = DrainAgent(rig); !s.ok()) return Fail(state, s);
  Meter m;
  m.device = rig.device->pid();
  for (auto _ : state) {
    m.Start();
    absl::StatusOr<PendingBytes> p = rig.agent->Pending();
    state.SetIterationTime(m.Stop());
    if (!p.ok()) return Fail(state, p.status());
    benchmark::DoNotOptimize(p->total());
  }
  if (m.wall > 0) {
    state.counters["cores"] = m.cpu / m.wall;
    state.counters["dev_cores"] = m.dev_cpu / m.wall;
  }
  state.counters["bitmap_bytes"] =
      static_cast<double>((rig.vram_bytes / kPageBytes + 63) / 64 * 8);
}

// ---------------------------------------------------------------------------
// Convergence.

struct Round {
  uint64_t raw = 0;      // bytes of the sections this Save wrote
  uint64_t stored = 0;   // bytes it put on the stream
  double save_s = 0;
  uint64_t pending = 0;  // Pending().total() right after
  double pending_s = 0;
  double faults = 0;     // minor faults of this process during the Save
  double cpu_s = 0;      // CPU seconds of this process during the Save
};

struct Convergence {
  double workload_max_pps = 0;     // 1 s unthrottled
  double alone_pps = 0;            // throttled, before pre-copy
  double precopy_pps = 0;          // throttled, during pre-copy
  std::vector<Round> rounds;
  std::string reason;
  uint64_t pending_at_stop = 0;    // last pre-copy Pending()
  uint64_t pending_quiesced = 0;   // Pending() after STOP_COPY
  uint64_t final_raw = 0, final_stored = 0, blob_bytes = 0;
  double quiesce_s = 0, final_save_s = 0;
  uint64_t total_raw = 0, total_stored = 0;
  double precopy_s = 0, wall_s = 0;
  double cores = 0, dev_cores = 0;  // over the whole migration
  bool counters_ok = false;
};

// Progress samples of the workload thread: pages written and when.
struct Samples {
  std::atomic<uint64_t> pages{0};
  std::atomic<double> when{0};
  std::pair<uint64_t, double> Get() const {
    return {pages.load(), when.load()};
  }
};

double Rate(std::pair<uint64_t, double> a, std::pair<uint64_t, double> b) {
  return b.second > a.second
             ? static_cast<double>(b.first - a.first) / (b.second - a.second)
             : 0;
}

absl::Status RunConvergence(const std::string& name, bool fill, int threads,
                            Convergence* out) {
  const uint64_t vram_bytes = ConvergenceBytes();
  auto dev = Device::Start(name, vram_bytes);
  if (!dev.ok()) return dev.status();
  Device& device = **dev;
  auto guest = GuestClient::Connect(device.socket(), "workload");
  if (!guest.ok()) return guest.status();
  auto layout = WorkloadLayout::For(vram_bytes);
  if (!layout.ok()) return layout.status();
  if (fill) {
    if (absl::Status s = FillVram(**guest, 11, /*zero_heads=*/true, /*check=*/false); !s.ok()) {
      return s;
    }
  }

  // What the machine can do unthrottled, for 1 s.
  {
    WorkloadOptions po;
    po.duration = absl::Seconds(1);
    auto w = Workload::Start(guest->get(), po);
    if (!w.ok()) return w.status();
    const double t0 = Now();
    if (absl::Status s = (*w)->Run(); !s.ok()) return s;
    out->workload_max_pps =
        static_cast<double>((*w)->stats().pages_written) / (Now() - t0);
  }

  const double target_pps =
      static_cast<double>(DirtyMibPerSecond() * kMib / kPageBytes);
  Samples samples;
  WorkloadOptions wo;
  wo.pages_per_second = target_pps;
  wo.progress_every = absl::Milliseconds(10);
  wo.progress = [&samples](const WorkloadStats& s) {
    samples.pages.store(s.pages_written);
    samples.when.store(Now());
  };
  auto workload = Workload::Start(guest->get(), wo);
  if (!workload.ok()) return workload.status();
  std::atomic<bool> stop{false};
  absl::Status run_status;
  std::thread runner([&] { run_status = (*workload)->Run(&stop); });

  std::unique_ptr<Agent> agent;
  // Stops the workload on every path: a stopped source blocks its guest, so
  // the source is resumed (abort), or the device killed if that fails.
  auto finish = [&]() {
    stop = true;
    bool kill_device = false;
    if (agent != nullptr && (agent->state() == State::kPreCopy ||
                             agent->state() == State::kStopCopy)) {
      kill_device = !agent->TransitionTo(State::kRunning).ok();
    }
    if (agent != nullptr && agent->state() == State::kError) kill_device = true;
    if (kill_device) device.Stop();
    if (runner.joinable()) runner.join();
  };
  struct Guard {
    std::function<void()> f;
    ~Guard() {
      if (f) f();
    }
  } guard{finish};

  absl::SleepFor(absl::Milliseconds(500));
  const auto a = samples.Get();
  absl::SleepFor(absl::Milliseconds(1500));
  const auto b = samples.Get();
  out->alone_pps = Rate(a, b);

  auto dc = DeviceControl::Connect(device.socket());
  if (!dc.ok()) return dc.status();
  auto made = NewEmulatedSource(std::move(*dc));
  if (!made.ok()) return made.status();
  agent = std::move(*made);
  CountingSink sink;
  auto w = codec::ImageWriter::Create(&sink, MigrationManifest(*agent),
                                      Options(threads));
  if (!w.ok()) return w.status();
  codec::ImageWriter& writer = **w;

  const auto p0 = samples.Get();
  const double cpu0 = ProcessCpuSeconds();
  const double dev0 = OtherCpuSeconds(device.pid());
  const double t0 = Now();
  if (absl::Status s = agent->TransitionTo(State::kPreCopy); !s.ok()) return s;
  uint64_t prev = UINT64_MAX;
  out->reason = "round limit";
  for (int r = 0; r < MaxRounds(); ++r) {
    Round round;
    const uint64_t raw0 = writer.stats().raw_bytes;
    const uint64_t stored0 = sink.bytes();
    const long f0 = MinorFaults();
    const double c0 = ProcessCpuSeconds();
    const double s0 = Now();
    if (absl::Status s = agent->Save(writer, 0, static_cast<uint32_t>(r));
        !s.ok()) {
      return s;
    }
    const double s1 = Now();
    round.cpu_s = ProcessCpuSeconds() - c0;
    round.faults = static_cast<double>(MinorFaults() - f0);
    absl::StatusOr<PendingBytes> p = agent->Pending();
    if (!p.ok()) return p.status();
    round.pending_s = Now() - s1;
    round.save_s = s1 - s0;
    round.raw = writer.stats().raw_bytes - raw0;
    round.stored = sink.bytes() - stored0;
    round.pending = p->total();
    out->rounds.push_back(round);
    if (round.pending <= StopBytes()) {
      out->reason = "below threshold";
      break;
    }
    if (round.pending >= prev) {
      out->reason = "stopped shrinking";
      break;
    }
    prev = round.pending;
  }
  const auto p1 = samples.Get();
  out->pending_at_stop = out->rounds.back().pending;
  out->precopy_s = Now() - t0;
  out->precopy_pps = Rate(p0, p1);

  const double q0 = Now();
  if (absl::Status s = agent->TransitionTo(State::kStopCopy); !s.ok()) return s;
  out->quiesce_s = Now() - q0;
  absl::StatusOr<PendingBytes> left = agent->Pending();
  if (!left.ok()) return left.status();
  out->pending_quiesced = left->total();
  const uint64_t raw0 = writer.stats().raw_bytes;
  const uint64_t stored0 = sink.bytes();
  const double f0 = Now();
  if (absl::Status s = agent->Save(writer, 0,
                                   static_cast<uint32_t>(out->rounds.size()));
      !s.ok()) {
    return s;
  }
  const double f1 = Now();
  out->final_save_s = f1 - f0;
  out->wall_s = f1 - t0;
  out->cores = (ProcessCpuSeconds() - cpu0) / out->wall_s;
  out->dev_cores = (OtherCpuSeconds(device.pid()) - dev0) / out->wall_s;
  out->final_raw = writer.stats().raw_bytes - raw0;
  out->final_stored = sink.bytes() - stored0;
  out->total_raw = writer.stats().raw_bytes;
  if (absl::Status s = writer.Finish(); !s.ok()) return s;
  out->total_stored = sink.bytes();

  // The stopped source: its counters must be consistent, and the register
  // and ring blobs are what the final Save added besides pages.
  DeviceControl& sdc = DeviceOf(*agent);
  out->counters_ok = CheckCounters(sdc.vram(), *layout).ok();
  auto regs = sdc.SaveRegisters();
  auto ring = sdc.SaveRing();
  if (regs.ok() && ring.ok()) out->blob_bytes = regs->size() + ring->size();

  guard.f = nullptr;
  finish();
  return run_status;
}

std::string RoundsJson(const Convergence& c) {
  std::string j = absl::StrFormat(
      "{\"reason\": \"%s\", \"rounds\": [", c.reason);
  for (size_t i = 0; i < c.rounds.size(); ++i) {
    const Round& r = c.rounds[i];
    absl::StrAppendFormat(
        &j,
        "%s\n  {\"round\": %d, \"raw_bytes\": %u, \"stored_bytes\": %u, "
        "\"save_ms\": %.3f, \"pending_after\": %u, \"pending_ms\": %.3f, "
        "\"faults\": %.0f, \"cpu_ms\": %.3f}",
        i == 0 ? "" : ",", i, r.raw, r.stored, r.save_s * 1e3, r.pending,
        r.pending_s * 1e3, r.faults, r.cpu_s * 1e3);
  }
  absl::StrAppendFormat(
      &j,
      "],\n \"stop_copy\": {\"pending_at_stop\": %u, \"pending_quiesced\": %u, "
      "\"final_raw_bytes\": %u, \"final_stored_bytes\": %u, "
      "\"blob_bytes\": %u, \"quiesce_ms\": %.3f, \"final_save_ms\": %.3f}}",
      c.pending_at_stop, c.pending_quiesced, c.final_raw, c.final_stored,
      c.blob_bytes, c.quiesce_s * 1e3, c.final_save_s * 1e3);
  return j;
}

void PrintRounds(const std::string& name, const Convergence& c) {
  std::fprintf(stderr, "%s: %zu pre-copy rounds (%s)\n", name.c_str(),
               c.rounds.size(), c.reason.c_str());
  std::fprintf(stderr, "  round      raw KiB   stored KiB    Save ms  "
                       "pending KiB after   faults   CPU ms\n");
  for (size_t i = 0; i < c.rounds.size(); ++i) {
    const Round& r = c.rounds[i];
    std::fprintf(stderr, "  %5zu %12.1f %12.1f %10.2f %12.1f %12.0f %8.1f\n",
                 i, r.raw / 1024.0, r.stored / 1024.0, r.save_s * 1e3,
                 r.pending / 1024.0, r.faults, r.cpu_s * 1e3);
  }
  std::fprintf(stderr,
               "  stop-copy: quiesce %.2f ms, final Save %.2f ms of %.1f KiB "
               "(%.1f KiB stored; %u bytes of registers and ring)\n",
               c.quiesce_s * 1e3, c.final_save_s * 1e3, c.final_raw / 1024.0,
               c.final_stored / 1024.0, static_cast<unsigned>(c.blob_bytes));
}

void BM_Convergence(benchmark::State& state, std::string fill, int threads) {
  const std::string name =
      absl::StrFormat("convergence/%s/threads:%d", fill, threads);
  for (auto _ : state) {
    Convergence c;
    absl::Status s = RunConvergence(
        absl::StrFormat("conv-%s-%d", fill, threads), fill == "vram", threads,
        &c);
    if (!s.ok()) {
      Fail(state, s);
      break;
    }
    state.SetIterationTime(c.wall_s);
    PrintRounds(name, c);
    RoundJson()[name].push_back(RoundsJson(c));
    const double page = kPageBytes;
    auto& k = state.counters;
    k["vram_MiB"] = static_cast<double>(ConvergenceBytes() / kMib);
    k["target_dirty_MiBps"] = static_cast<double>(DirtyMibPerSecond());
    k["max_dirty_MiBps"] = c.workload_max_pps * page / kMib;
    k["alone_dirty_MiBps"] = c.alone_pps * page / kMib;
    k["precopy_dirty_MiBps"] = c.precopy_pps * page / kMib;
    k["rounds"] = static_cast<double>(c.rounds.size());
    k["reason"] = c.reason == "below threshold"     ? 1
                  : c.reason == "stopped shrinking" ? 2
                                                    : 3;
    k["first_round_MiB"] = static_cast<double>(c.rounds[0].raw) / kMib;
    k["first_round_ms"] = c.rounds[0].save_s * 1e3;
    k["last_round_bytes"] = static_cast<double>(c.rounds.back().raw);
    k["pending_at_stop"] = static_cast<double>(c.pending_at_stop);
    k["pending_quiesced"] = static_cast<double>(c.pending_quiesced);
    k["final_raw_bytes"] = static_cast<double>(c.final_raw);
    k["final_stored_bytes"] = static_cast<double>(c.final_stored);
    k["blob_bytes"] = static_cast<double>(c.blob_bytes);
    k["quiesce_ms"] = c.quiesce_s * 1e3;
    k["final_save_ms"] = c.final_save_s * 1e3;
    k["downtime_ms"] = (c.quiesce_s + c.final_save_s) * 1e3;
    k["total_raw_MiB"] = static_cast<double>(c.total_raw) / kMib;
    k["total_stored_MiB"] = static_cast<double>(c.total_stored) / kMib;
    k["precopy_s"] = c.precopy_s;
    k["wall_s"] = c.wall_s;
    k["cores"] = c.cores;
    k["dev_cores"] = c.dev_cores;
    k["counters_ok"] = c.counters_ok ? 1 : 0;
  }
}

// ---------------------------------------------------------------------------
// Stop-copy with a full ring: what Pending() says is left against what the
// final Save writes, when the guest has queued large WRITEs that a slow
// engine (--command-latency-us) has not executed yet. Queued commands travel
// in the ring blob, which Pending() counts as a fixed 64 KiB estimate.

void BM_StopCopyRing(benchmark::State& state, int writes) {
  for (auto _ : state) {
    auto dev = Device::Start("ring", 8 * kMib,
                             {"--command-latency-us", "20000"});
    if (!dev.ok()) return Fail(state, dev.status());
    auto guest = GuestClient::Connect((*dev)->socket(), "bench-guest");
    if (!guest.ok()) return Fail(state, guest.status());
    auto dc = DeviceControl::Connect((*dev)->socket());
    if (!dc.ok()) return Fail(state, dc.status());
    auto agent = NewEmulatedSource(std::move(*dc));
    if (!agent.ok()) return Fail(state, agent.status());
    Agent& a = **agent;
    CountingSink sink;
    auto w = codec::ImageWriter::Create(&sink, MigrationManifest(a),
                                        Options(1));
    if (!w.ok()) return Fail(state, w.status());
    if (absl::Status s = a.TransitionTo(State::kPreCopy); !s.ok()) {
      return Fail(state, s);
    }
    if (absl::Status s = a.Save(**w, 0, 0); !s.ok()) return Fail(state, s);
    std::vector<uint8_t> payload(kMaxWriteBytes, 0x5A);
    std::vector<Command> batch;
    for (int i = 0; i < writes; ++i) {
      const uint64_t off = (uint64_t{kMaxWriteBytes} * i) % (8 * kMib);
      batch.push_back(Command::Write(off, payload));
      if (batch.size() == 64 || i + 1 == writes) {
        auto seqs = (*guest)->SubmitBatch(batch);
        if (!seqs.ok()) return Fail(state, seqs.status());
        batch.clear();
      }
    }
    absl::StatusOr<PendingBytes> before = a.Pending();
    if (!before.ok()) return Fail(state, before.status());
    const double t0 = Now();
    if (absl::Status s = a.TransitionTo(State::kStopCopy); !s.ok()) {
      return Fail(state, s);
    }
    const double t1 = Now();
    absl::StatusOr<PendingBytes> left = a.Pending();
    if (!left.ok()) return Fail(state, left.status());
    const uint64_t raw0 = (*w)->stats().raw_bytes;
    const double t2 = Now();
    if (absl::Status s = a.Save(**w, 0, 1); !s.ok()) return Fail(state, s);
    const double t3 = Now();
    state.SetIterationTime((t1 - t0) + (t3 - t2));
    state.counters["quiesce_ms"] = (t1 - t0) * 1e3;
    state.counters["final_save_ms"] = (t3 - t2) * 1e3;
    const double r0 = Now();
    auto ring_again = DeviceOf(a).SaveRing();
    state.counters["save_ring_ms"] = (Now() - r0) * 1e3;
    if (!ring_again.ok()) return Fail(state, ring_again.status());
    const uint64_t final_raw = (*w)->stats().raw_bytes - raw0;
    auto ring = DeviceOf(a).SaveRing();
    if (!ring.ok()) return Fail(state, ring.status());
    state.counters["queued_writes"] = writes;
    state.counters["pending_precopy"] = static_cast<double>(before->total());
    state.counters["pending_stopcopy"] = static_cast<double>(left->total());
    state.counters["pending_exact"] = left->exact ? 1 : 0;
    state.counters["final_raw_bytes"] = static_cast<double>(final_raw);
    state.counters["ring_blob_bytes"] = static_cast<double>(ring->size());
    state.counters["final_over_pending"] =
        static_cast<double>(final_raw) / static_cast<double>(left->total());
    // The device holds up to a thousand slow commands: stop it rather than
    // let it execute them.
    agent->reset();
    (*dev)->Stop();
  }
}

// ---------------------------------------------------------------------------

void RegisterAll() {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), fn, args...)
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime();
  };
  for (std::string set : {"all", "5pct", "64pages"}) {
    for (int t : {1, 2}) {
      reg(absl::StrFormat("extract/%s/threads:%d", set, t), BM_Extract, set,
          t);
    }
    for (int t : {1, 2}) {
      reg(absl::StrFormat("encode/%s/threads:%d", set, t), BM_Encode, set, t);
    }
    reg(absl::StrFormat("memcpy/%s/threads:1", set), BM_Memcpy, set);
  }
  reg("pending/clean/threads:1", BM_Pending)->Unit(benchmark::kMicrosecond);
  reg("stop_copy/full_ring/threads:1", BM_StopCopyRing, 1000)
      ->Iterations(1)
      ->Repetitions(1);
  for (std::string fill : {"vram", "zero"}) {
    for (int t : {1, 2}) {
      if (fill == "zero" && t == 1) continue;
      reg(absl::StrFormat("convergence/%s/threads:%d", fill, t),
          BM_Convergence, fill, t)
          ->Iterations(1)
          ->Repetitions(3);
    }
  }
}

std::string FindDevice(const char* argv0, const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("VGPU_EMU_DEVICE");
  if (env != nullptr && *env != '\0') return env;
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string exe = n > 0 ? std::string(self, static_cast<size_t>(n)) : argv0;
  const std::string candidates[] = {
      exe + ".runfiles/vgpu_migrate/agents/emulated/vgpu-emu-device",
      exe.substr(0, exe.rfind('/') + 1) + "../vgpu-emu-device",
  };
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

// Stops the extraction device (if one was started) and removes the
// temporary directory.
void CleanUp() {
  if (g_rig != nullptr) {
    g_rig->agent.reset();
    g_rig->guest.reset();
    g_rig->device.reset();
  }
  rmdir(TempDir().c_str());
}

}  // namespace
}  // namespace vgpu::agents::emulated

int main(int argc, char** argv) {
  namespace ae = vgpu::agents::emulated;
  signal(SIGPIPE, SIG_IGN);
  // Defaults that the command line may override (later flags win).
  std::vector<char*> args = {argv[0]};
  char repetitions[] = "--benchmark_repetitions=3";
  char min_time[] = "--benchmark_min_time=0.5";
  char aggregates[] = "--benchmark_display_aggregates_only=true";
  args.push_back(repetitions);
  args.push_back(min_time);
  args.push_back(aggregates);
  std::string device_flag;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--device=", 9) == 0) {
      device_flag = argv[i] + 9;
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;

  ae::DevicePath() = ae::FindDevice(argv[0], device_flag);
  if (ae::DevicePath().empty() ||
      access(ae::DevicePath().c_str(), X_OK) != 0) {
    std::fprintf(stderr,
                 "vgpu-emu-device not found (%s): pass --device=PATH or set "
                 "VGPU_EMU_DEVICE\n",
                 ae::DevicePath().c_str());
    return 2;
  }
  benchmark::AddCustomContext("device", ae::DevicePath());
  benchmark::AddCustomContext("extract_vram_bytes",
                              std::to_string(ae::ExtractBytes()));
  benchmark::AddCustomContext("convergence_vram_bytes",
                              std::to_string(ae::ConvergenceBytes()));
  benchmark::AddCustomContext("dirty_mib_per_second",
                              std::to_string(ae::DirtyMibPerSecond()));
  benchmark::AddCustomContext("stop_bytes", std::to_string(ae::StopBytes()));
  benchmark::AddCustomContext("max_rounds", std::to_string(ae::MaxRounds()));
  benchmark::AddCustomContext("chunk_bytes", std::to_string(ae::kChunkBytes));
  benchmark::AddCustomContext("zstd_level", std::to_string(ae::kLevel));
  ae::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  const char* rounds_json = std::getenv("VGPU_AGENT_BENCH_ROUNDS_JSON");
  if (rounds_json != nullptr && *rounds_json != '\0') {
    std::FILE* f = std::fopen(rounds_json, "w");
    if (f != nullptr) {
      std::fprintf(f, "{");
      bool first = true;
      for (const auto& [name, list] : ae::RoundJson()) {
        std::fprintf(f, "%s\n\"%s\": [", first ? "" : ",", name.c_str());
        for (size_t i = 0; i < list.size(); ++i) {
          std::fprintf(f, "%s\n%s", i == 0 ? "" : ",", list[i].c_str());
        }
        std::fprintf(f, "]");
        first = false;
      }
      std::fprintf(f, "\n}\n");
      std::fclose(f);
    }
  }
  ae::CleanUp();
  return 0;
}
