// stopcopy_bench: the mediated agent's downtime share. How long a vGPU
// spends in STOP_COPY (the arc into it plus the final Save), with pre-copy
// against without, for the reference mediated vGPU (agents/mediated/
// reference_device.h) driven by the mediated agent as the coordinator
// drives it. All in one process; run it through tools/mediated_bench.sh,
// which builds it with -c opt and prints the machine.
//
// Each repetition builds a fresh source: a RefVgpu with --contexts contexts
// and a --vram-mib MiB VRAM share, every page stamped once (RefCommand::
// kStamp on the page's own context, so the initial pass carries every page
// and the stamp invariant holds), then a RefWorkload dirtying --dirty-mibs
// MiB/s of VRAM that runs until the measurement ends. After --warmup-ms:
//
//   pre-copy   TransitionTo(PRE_COPY), then rounds of Save + Pending() until
//              the pending total is under --stop-mib MiB or after
//              --max-rounds rounds; then the measured part.
//   stop-copy  no pre-copy: the measured part straight from RUNNING.
//
// The measured part: t0; TransitionGroup({agent}, STOP_COPY) (through
// PRE_COPY_P2P or RUNNING_P2P); the final Save; t1. The workload is stopped
// after t1 (the stopped device refuses its submissions meanwhile). The
// writer is an ImageWriter (--zstd-level, --threads, --chunk-kib) over a
// sink that counts and discards bytes; the STOP_COPY bytes are the writer's
// raw-byte and the sink's byte deltas across the measured part.
//
// Baseline, same process: memcpy of each mode's median STOP_COPY raw bytes
// between two buffers already mapped (median of --reps copies).
//
// Check: one extra run per mode (not in the statistics) keeps the image in
// memory and loads it into a fresh RefVgpu through NewMediatedDestination
// (RESUMING, every section, RUNNING), timed as "dst load". If the
// destination then has nothing to run, its Fingerprint must equal the
// stopped source's; if commands were queued in the rings at the stop, the
// source is resumed (STOP_COPY -> RUNNING) and both run them, and the two
// Fingerprints must be equal once both are idle. Every run checks that
// Pending() is zero after the final Save and that the image finishes.
//
// Output: tables on stdout (progress on stderr); --json prints one JSON
// object instead; --json-out FILE writes it to FILE as well as the tables.
// Exit status: 0 all runs and checks passed, 1 otherwise.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "agents/agent.h"
#include "agents/mediated/mediated_agent.h"
#include "agents/mediated/reference_device.h"
#include "nlohmann/json.hpp"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace vgpu::agents::mediated {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMib = uint64_t{1} << 20;
constexpr uint64_t kPageBytes = 4096;

struct Settings {
  uint64_t vram_mib = 512;
  uint32_t contexts = 4;
  uint64_t dirty_mibs = 64;
  int reps = 5;
  double stop_mib = 8;
  int max_rounds = 10;
  int zstd_level = 1;
  int threads = 0;
  uint32_t chunk_kib = 256;
  int warmup_ms = 500;
  uint64_t seed = 1;
  std::string modes = "both";
  bool verify = true;
  bool json = false;
  std::string json_out;
};

enum class Mode { kPreCopy, kStopCopyOnly };

const char* ModeName(Mode m) {
  return m == Mode::kPreCopy ? "pre-copy" : "stop-copy only";
}
const char* ModeKey(Mode m) {
  return m == Mode::kPreCopy ? "precopy" : "stopcopy";
}

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// Counts what the writer hands it; keeps it only when asked to.
class CountingSink : public codec::ByteSink {
 public:
  explicit CountingSink(std::vector<uint8_t>* keep) : keep_(keep) {}
  absl::Status Write(absl::Span<const uint8_t> data) override {
    bytes_ += data.size();
    if (keep_ != nullptr) keep_->insert(keep_->end(), data.begin(), data.end());
    return absl::OkStatus();
  }
  absl::Status Close() override { return absl::OkStatus(); }
  const std::string& name() const override { return name_; }
  uint64_t bytes() const { return bytes_; }

 private:
  std::vector<uint8_t>* keep_;
  uint64_t bytes_ = 0;
  std::string name_ = "counting sink";
};

struct Round {
  uint64_t raw = 0, stored = 0, pending_after = 0;
  double ms = 0;
};

struct Run {
  Mode mode = Mode::kPreCopy;
  int rep = 0;
  bool verified = false;
  double fill_s = 0;
  double workload_mibs = 0;  // achieved from workload start to t0
  std::vector<Round> rounds;
  std::string stop_reason;
  uint64_t pending_at_stop = 0;  // Pending().total() just before t0
  double quiesce_ms = 0, save_ms = 0, total_ms = 0, cores = 0;
  uint64_t raw = 0, stored = 0;  // STOP_COPY only
  uint32_t sections = 0;
  uint64_t image_bytes = 0;  // the finished image, all rounds
  // The check (verified runs only).
  double load_ms = 0;
  uint64_t dst_executed = 0;
  bool check_ok = false;
  std::string check;
};

absl::Status Fail(const absl::Status& s, absl::string_view what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// Submits, waiting for the rings to drain while one is full.
absl::Status SubmitRetry(RefVgpu& d, uint32_t context, const RefCommand& c) {
  for (;;) {
    absl::Status s = d.Submit(context, c);
    if (s.ok() || s.code() != absl::StatusCode::kUnavailable) return s;
    d.WaitIdle();
  }
}

absl::StatusOr<Run> RunOnce(const Settings& set, Mode mode, int rep,
                            bool verify) {
  Run run;
  run.mode = mode;
  run.rep = rep;
  run.verified = verify;

  RefVgpuConfig cfg;
  cfg.name = absl::StrCat(ModeKey(mode), "-", verify ? "check" : "run", rep);
  cfg.contexts = set.contexts;
  cfg.vram_bytes = set.vram_mib * kMib;
  auto dev = RefVgpu::Create(cfg);
  if (!dev.ok()) return Fail(dev.status(), "creating the source");
  RefVgpu& d = **dev;

  // Every page stamped once, by the context whose pages the workload
  // stamps too.
  const double f0 = Now();
  const uint64_t pages = cfg.vram_bytes / kPageBytes;
  for (uint64_t p = 0; p < pages; ++p) {
    RefCommand stamp;
    stamp.op = RefCommand::kStamp;
    stamp.arg1 = p;
    if (auto s = SubmitRetry(d, static_cast<uint32_t>(p % cfg.contexts), stamp);
        !s.ok()) {
      return Fail(s, "filling VRAM");
    }
  }
  d.WaitIdle();
  run.fill_s = Now() - f0;

  auto agent = NewMediatedSource(&d, RefInfo(cfg));
  if (!agent.ok()) return Fail(agent.status(), "NewMediatedSource");
  Agent& a = **agent;

  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  root.initVm().setName("stopcopy-bench");
  auto entry = root.initDevices(1)[0];
  entry.setIndex(0);
  entry.setDescriptor(a.descriptor().root());
  std::vector<uint8_t> image;
  CountingSink sink(verify ? &image : nullptr);
  codec::WriterOptions opts;
  opts.zstd_level = set.zstd_level;
  opts.threads = set.threads;
  opts.chunk_size = set.chunk_kib << 10;
  auto writer = codec::ImageWriter::Create(&sink, m, opts);
  if (!writer.ok()) return Fail(writer.status(), "ImageWriter");
  codec::ImageWriter& w = **writer;

  auto work = std::make_unique<RefWorkload>(&d, set.dirty_mibs * kMib,
                                            set.seed * 1000 + rep);
  const double w0 = Now();
  std::this_thread::sleep_for(std::chrono::milliseconds(set.warmup_ms));

  uint32_t round = 0;
  if (mode == Mode::kPreCopy) {
    if (auto s = a.TransitionTo(State::kPreCopy); !s.ok()) return s;
    const uint64_t stop_bytes = static_cast<uint64_t>(set.stop_mib * kMib);
    while (round < static_cast<uint32_t>(set.max_rounds)) {
      Round r;
      const uint64_t raw0 = w.stats().raw_bytes, stored0 = sink.bytes();
      const double t = Now();
      if (auto s = a.Save(w, 0, round); !s.ok()) {
        return Fail(s, absl::StrCat("pre-copy round ", round));
      }
      r.ms = (Now() - t) * 1e3;
      r.raw = w.stats().raw_bytes - raw0;
      r.stored = sink.bytes() - stored0;
      ++round;
      auto p = a.Pending();
      if (!p.ok()) return Fail(p.status(), "Pending");
      r.pending_after = p->total();
      run.rounds.push_back(r);
      if (p->total() < stop_bytes) {
        run.stop_reason = absl::StrFormat("pending < %g MiB", set.stop_mib);
        break;
      }
    }
    if (run.stop_reason.empty()) {
      run.stop_reason = absl::StrCat("after ", set.max_rounds, " rounds");
    }
  } else {
    run.stop_reason = "no pre-copy";
  }
  auto pending = a.Pending();
  if (!pending.ok()) return Fail(pending.status(), "Pending");
  run.pending_at_stop = pending->total();
  const uint64_t submitted = work->submitted();

  // --- the measured part ---
  const uint64_t raw0 = w.stats().raw_bytes, stored0 = sink.bytes();
  const uint32_t sections0 = w.stats().sections;
  const double c0 = CpuSeconds();
  const double t0 = Now();
  if (auto s = TransitionGroup({&a}, State::kStopCopy); !s.ok()) {
    return Fail(s, "STOP_COPY");
  }
  const double tq = Now();
  if (auto s = a.Save(w, 0, round); !s.ok()) return Fail(s, "final Save");
  const double t1 = Now();
  const double c1 = CpuSeconds();
  // --- end ---

  work->Stop();
  run.workload_mibs =
      static_cast<double>(submitted * kPageBytes) / kMib / (t0 - w0);
  run.quiesce_ms = (tq - t0) * 1e3;
  run.save_ms = (t1 - tq) * 1e3;
  run.total_ms = (t1 - t0) * 1e3;
  run.cores = (c1 - c0) / (t1 - t0);
  run.raw = w.stats().raw_bytes - raw0;
  run.stored = sink.bytes() - stored0;
  run.sections = w.stats().sections - sections0;

  auto left = a.Pending();
  if (!left.ok()) return Fail(left.status(), "Pending after the final Save");
  if (left->total() != 0) {
    return absl::InternalError(absl::StrCat(
        left->total(), " bytes still pending after the final Save"));
  }
  if (auto s = w.Finish(); !s.ok()) return Fail(s, "Finish");
  run.image_bytes = sink.bytes();

  if (verify) {
    const std::string stopped = d.Fingerprint();
    const uint64_t src_executed = d.executed();
    RefVgpuConfig dcfg = cfg;
    dcfg.name += "-dst";
    auto ddev = RefVgpu::Create(dcfg);
    if (!ddev.ok()) return Fail(ddev.status(), "creating the destination");
    auto dst =
        NewMediatedDestination(ddev->get(), RefInfo(dcfg), a.descriptor());
    if (!dst.ok()) return Fail(dst.status(), "NewMediatedDestination");
    const double l0 = Now();
    if (auto s = ReceiveImage(**dst, image); !s.ok()) return Fail(s, "loading");
    run.load_ms = (Now() - l0) * 1e3;
    (*ddev)->WaitIdle();
    run.dst_executed = (*ddev)->executed();
    if (run.dst_executed == 0) {
      run.check_ok = (*ddev)->Fingerprint() == stopped;
      run.check = run.check_ok ? "equal to the stopped source"
                               : "DIFFERS from the stopped source";
    } else {
      // Commands were queued at the stop: the destination ran them, so
      // the source runs them too before comparing.
      if (auto s = a.TransitionTo(State::kRunning); !s.ok()) {
        return Fail(s, "resuming the source");
      }
      d.WaitIdle();
      const uint64_t ran = d.executed() - src_executed;
      run.check_ok =
          (*ddev)->Fingerprint() == d.Fingerprint() && ran == run.dst_executed;
      run.check = absl::StrFormat(
          "%s after both ran the %d queued commands (source ran %d)",
          run.check_ok ? "equal" : "DIFFERENT", run.dst_executed, ran);
    }
    if (absl::Status s = (*ddev)->CheckStamps(); !s.ok()) {
      run.check_ok = false;
      absl::StrAppend(&run.check, "; stamps: ", s.message());
    }
  }
  if (a.state() == State::kStopCopy) {
    if (auto s = a.TransitionTo(State::kReleased); !s.ok()) {
      return Fail(s, "release");
    }
  }
  return run;
}

// --- statistics and printing ---

struct Stat {
  double median = 0, min = 0, max = 0;
};

Stat Of(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.min = v.front();
  s.max = v.back();
  return s;
}

template <typename F>
Stat Over(const std::vector<Run>& runs, F f) {
  std::vector<double> v;
  for (const Run& r : runs) v.push_back(static_cast<double>(f(r)));
  return Of(v);
}

json ToJson(const Stat& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}};
}

std::string Fmt(const Stat& s, const char* spec) {
  char a[64], b[64], c[64];
  std::snprintf(a, sizeof(a), spec, s.median);
  std::snprintf(b, sizeof(b), spec, s.min);
  std::snprintf(c, sizeof(c), spec, s.max);
  return absl::StrCat(a, " (", b, "-", c, ")");
}

std::string F(const char* spec, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), spec, v);
  return buf;
}

// A Markdown table: the first column text, the others right-aligned.
void Table(const std::vector<std::string>& header,
           const std::vector<std::vector<std::string>>& rows, int left = 1) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) {
      w[i] = std::max(w[i], r[i].size());
    }
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string out = "|";
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string& c = i < r.size() ? r[i] : "";
      const std::string pad(w[i] - c.size(), ' ');
      out += " " + (static_cast<int>(i) < left ? c + pad : pad + c) + " |";
    }
    std::printf("%s\n", out.c_str());
  };
  line(header);
  std::string sep = "|";
  for (size_t i = 0; i < w.size(); ++i) {
    sep += static_cast<int>(i) < left ? std::string(w[i] + 2, '-')
                                      : std::string(w[i] + 1, '-') + ":";
    sep += "|";
  }
  std::printf("%s\n", sep.c_str());
  for (const auto& r : rows) line(r);
  std::printf("\n");
}

// memcpy of `bytes` between two buffers already mapped; ms per copy.
std::vector<double> MemcpyMs(uint64_t bytes, int reps) {
  std::vector<uint8_t> src(bytes, 0x5a), dst(bytes, 0);
  std::memcpy(dst.data(), src.data(), bytes);  // warm
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    src[static_cast<size_t>(i) % bytes] = static_cast<uint8_t>(i);
    const double t = Now();
    std::memcpy(dst.data(), src.data(), bytes);
    ms.push_back((Now() - t) * 1e3);
    if (dst[static_cast<size_t>(i) % bytes] != static_cast<uint8_t>(i)) {
      std::abort();  // keeps the copy from being optimised away
    }
  }
  return ms;
}

json RunJson(const Run& r) {
  json rounds = json::array();
  for (const Round& x : r.rounds) {
    rounds.push_back({{"rawBytes", x.raw},
                      {"storedBytes", x.stored},
                      {"ms", x.ms},
                      {"pendingAfter", x.pending_after}});
  }
  json j = {{"rep", r.rep},
            {"verifiedRun", r.verified},
            {"fillSeconds", r.fill_s},
            {"workloadMiBps", r.workload_mibs},
            {"precopyRounds", rounds},
            {"stopReason", r.stop_reason},
            {"pendingAtStop", r.pending_at_stop},
            {"quiesceMs", r.quiesce_ms},
            {"finalSaveMs", r.save_ms},
            {"stopCopyMs", r.total_ms},
            {"cores", r.cores},
            {"stopCopyRawBytes", r.raw},
            {"stopCopyStoredBytes", r.stored},
            {"stopCopySections", r.sections},
            {"imageBytes", r.image_bytes}};
  if (r.verified) {
    j["dstLoadMs"] = r.load_ms;
    j["dstExecuted"] = r.dst_executed;
    j["checkOk"] = r.check_ok;
    j["check"] = r.check;
  }
  return j;
}

int Main(const Settings& set) {
  std::vector<Mode> modes;
  if (set.modes == "both" || set.modes == "precopy") {
    modes.push_back(Mode::kPreCopy);
  }
  if (set.modes == "both" || set.modes == "stopcopy") {
    modes.push_back(Mode::kStopCopyOnly);
  }
  const int threads =
      set.threads > 0 ? set.threads
                      : static_cast<int>(std::thread::hardware_concurrency());
  bool ok = true;
  json out = {
      {"benchmark", "stopcopy_bench"},
      {"settings",
       {{"vramBytes", set.vram_mib * kMib},
        {"contexts", set.contexts},
        {"dirtyBytesPerSecond", set.dirty_mibs * kMib},
        {"repetitions", set.reps},
        {"stopPendingBytes", static_cast<uint64_t>(set.stop_mib * kMib)},
        {"maxRounds", set.max_rounds},
        {"zstdLevel", set.zstd_level},
        {"writerThreads", set.threads},
        {"writerThreadsUsed", threads},
        {"chunkBytes", set.chunk_kib << 10},
        {"warmupMs", set.warmup_ms},
        {"seed", set.seed}}},
      {"cores", std::thread::hardware_concurrency()},
      {"modes", json::object()}};

  std::vector<std::vector<Run>> timed(modes.size());
  std::vector<Run> checks;
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    const Mode mode = modes[mi];
    for (int rep = 0; rep < set.reps + (set.verify ? 1 : 0); ++rep) {
      const bool verify = rep == set.reps;
      auto r = RunOnce(set, mode, rep, verify);
      if (!r.ok()) {
        std::fprintf(stderr, "%s #%d: FAILED: %s\n", ModeName(mode), rep + 1,
                     std::string(r.status().message()).c_str());
        ok = false;
        continue;
      }
      std::vector<std::string> pend;
      for (const Round& x : r->rounds) {
        pend.push_back(F("%.1f", x.pending_after / double(kMib)));
      }
      std::fprintf(stderr,
                   "%s %s%d: fill %.2f s, workload %.1f MiB/s, rounds %zu "
                   "[pending MiB %s], STOP_COPY %.1f ms (quiesce %.2f + save "
                   "%.1f), %llu raw / %llu stored bytes%s%s\n",
                   ModeName(mode), verify ? "check run " : "#",
                   verify ? 1 : rep + 1, r->fill_s, r->workload_mibs,
                   r->rounds.size(), absl::StrJoin(pend, " ").c_str(),
                   r->total_ms, r->quiesce_ms, r->save_ms,
                   static_cast<unsigned long long>(r->raw),
                   static_cast<unsigned long long>(r->stored),
                   verify ? "; check: " : "", verify ? r->check.c_str() : "");
      if (verify) {
        if (!r->check_ok) ok = false;
        checks.push_back(*r);
      } else {
        timed[mi].push_back(*r);
      }
    }
  }

  // memcpy of each mode's median STOP_COPY raw bytes.
  std::vector<Stat> memcpy_ms(modes.size());
  std::vector<uint64_t> memcpy_bytes(modes.size(), 0);
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    if (timed[mi].empty()) continue;
    memcpy_bytes[mi] = static_cast<uint64_t>(
        Over(timed[mi], [](const Run& r) { return r.raw; }).median);
    if (memcpy_bytes[mi] == 0) continue;
    memcpy_ms[mi] = Of(MemcpyMs(memcpy_bytes[mi], std::max(set.reps, 3)));
  }

  for (size_t mi = 0; mi < modes.size(); ++mi) {
    const auto& runs = timed[mi];
    json jr = json::array();
    for (const Run& r : runs) jr.push_back(RunJson(r));
    json j = {{"runs", jr}};
    if (!runs.empty()) {
      j["stopCopyMs"] =
          ToJson(Over(runs, [](const Run& r) { return r.total_ms; }));
      j["quiesceMs"] =
          ToJson(Over(runs, [](const Run& r) { return r.quiesce_ms; }));
      j["finalSaveMs"] =
          ToJson(Over(runs, [](const Run& r) { return r.save_ms; }));
      j["stopCopyRawBytes"] =
          ToJson(Over(runs, [](const Run& r) { return r.raw; }));
      j["stopCopyStoredBytes"] =
          ToJson(Over(runs, [](const Run& r) { return r.stored; }));
      j["precopyRounds"] =
          ToJson(Over(runs, [](const Run& r) { return r.rounds.size(); }));
      j["pendingAtStop"] =
          ToJson(Over(runs, [](const Run& r) { return r.pending_at_stop; }));
      j["cores"] = ToJson(Over(runs, [](const Run& r) { return r.cores; }));
      j["workloadMiBps"] =
          ToJson(Over(runs, [](const Run& r) { return r.workload_mibs; }));
      j["memcpy"] = {{"bytes", memcpy_bytes[mi]},
                     {"ms", ToJson(memcpy_ms[mi])}};
      if (memcpy_ms[mi].median > 0) {
        j["stopCopyOverMemcpy"] =
            Over(runs, [](const Run& r) { return r.total_ms; }).median /
            memcpy_ms[mi].median;
      }
    }
    for (const Run& c : checks) {
      if (c.mode == modes[mi]) j["check"] = RunJson(c);
    }
    out["modes"][ModeKey(modes[mi])] = j;
  }
  out["ok"] = ok;

  if (!set.json_out.empty()) {
    std::ofstream f(set.json_out);
    f << out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", set.json_out.c_str());
      ok = false;
    }
  }
  if (set.json) {
    std::cout << out.dump(2) << std::endl;
    return ok ? 0 : 1;
  }

  std::printf(
      "\nSTOP_COPY of a reference mediated vGPU: %u contexts, %llu MiB VRAM "
      "share (every page stamped), RefWorkload at %llu MiB/s;\nwriter zstd "
      "%d, %u KiB chunks, %d thread(s); pre-copy stops under %g MiB pending "
      "or after %d rounds; %d runs per mode,\nmedian (min-max). STOP_COPY = "
      "TransitionGroup(STOP_COPY) + final Save, into a counting sink.\n\n",
      set.contexts, static_cast<unsigned long long>(set.vram_mib),
      static_cast<unsigned long long>(set.dirty_mibs), set.zstd_level,
      set.chunk_kib, threads, set.stop_mib, set.max_rounds, set.reps);
  std::vector<std::vector<std::string>> rows;
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    const auto& runs = timed[mi];
    if (runs.empty()) continue;
    const Stat total = Over(runs, [](const Run& r) { return r.total_ms; });
    rows.push_back(
        {ModeName(modes[mi]),
         Fmt(Over(runs, [](const Run& r) { return r.rounds.size(); }), "%.0f"),
         Fmt(Over(
                 runs,
                 [](const Run& r) { return r.pending_at_stop / double(kMib); }),
             "%.2f"),
         Fmt(total, "%.1f"),
         Fmt(Over(runs, [](const Run& r) { return r.quiesce_ms; }), "%.2f"),
         Fmt(Over(runs, [](const Run& r) { return r.save_ms; }), "%.1f"),
         Fmt(Over(runs, [](const Run& r) { return r.raw / double(kMib); }),
             "%.2f"),
         Fmt(Over(runs, [](const Run& r) { return r.stored / 1024.0; }),
             "%.1f"),
         Fmt(memcpy_ms[mi], "%.2f"),
         memcpy_ms[mi].median > 0
             ? F("%.1fx", total.median / memcpy_ms[mi].median)
             : "n/a",
         Fmt(Over(runs, [](const Run& r) { return r.cores; }), "%.2f"),
         Fmt(Over(runs, [](const Run& r) { return r.workload_mibs; }),
             "%.1f")});
  }
  Table({"mode", "pre-copy rounds", "pending at stop MiB", "STOP_COPY ms",
         "of which quiesce ms", "of which final Save ms", "raw MiB",
         "stored KiB", "memcpy ms (same raw bytes)", "STOP_COPY / memcpy",
         "cores", "workload MiB/s"},
        rows);
  if (timed.size() == 2 && !timed[0].empty() && !timed[1].empty()) {
    const double pre =
        Over(timed[0], [](const Run& r) { return r.total_ms; }).median;
    const double plain =
        Over(timed[1], [](const Run& r) { return r.total_ms; }).median;
    std::printf(
        "pre-copy cuts the median STOP_COPY time %.1fx (%.1f ms -> %.1f "
        "ms)\n\n",
        plain / pre, plain, pre);
  }

  std::printf(
      "Each run (pending after each pre-copy round in MiB; bytes are "
      "STOP_COPY's):\n\n");
  rows.clear();
  auto each = [&](const Run& r, const std::string& name) {
    std::vector<std::string> pend;
    for (const Round& x : r.rounds) {
      pend.push_back(F("%.1f", x.pending_after / double(kMib)));
    }
    rows.push_back(
        {name, F("%.2f", r.fill_s), F("%.1f", r.workload_mibs),
         pend.empty() ? "-" : absl::StrJoin(pend, " "),
         r.rounds.empty() ? "-" : F("%.0f", r.rounds[0].ms),
         F("%.2f", r.pending_at_stop / double(kMib)), F("%.2f", r.quiesce_ms),
         F("%.1f", r.save_ms), F("%.1f", r.total_ms), absl::StrCat(r.raw),
         absl::StrCat(r.stored), absl::StrCat(r.sections), F("%.2f", r.cores)});
  };
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    for (const Run& r : timed[mi]) {
      each(r, absl::StrCat(ModeName(modes[mi]), " #", r.rep + 1));
    }
  }
  for (const Run& c : checks) each(c, absl::StrCat(ModeName(c.mode), " check"));
  Table({"run", "fill s", "workload MiB/s", "pending after rounds MiB",
         "round 0 ms", "pending at stop MiB", "quiesce ms", "final Save ms",
         "STOP_COPY ms", "raw B", "stored B", "sections", "cores"},
        rows);

  if (!checks.empty()) {
    std::printf(
        "Check runs (image kept in memory, loaded into a fresh "
        "destination through the agent):\n\n");
    rows.clear();
    for (const Run& c : checks) {
      rows.push_back({ModeName(c.mode), absl::StrCat(c.image_bytes),
                      F("%.1f", c.load_ms), absl::StrCat(c.dst_executed),
                      c.check});
    }
    Table({"mode", "image B (all rounds)", "dst load ms",
           "queued commands at stop", "Fingerprint"},
          rows, 1);
  }
  std::printf("%s\n", ok ? "all runs and checks passed"
                         : "SOME RUNS OR CHECKS FAILED (see stderr)");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace vgpu::agents::mediated

int main(int argc, char** argv) {
  vgpu::agents::mediated::Settings s;
  CLI::App app{
      "stopcopy_bench: time in STOP_COPY (the downtime share of the device) "
      "of a reference mediated vGPU driven by the mediated agent, with "
      "pre-copy against without, next to memcpy of the same bytes; checks "
      "one image per mode by loading it into a fresh destination."};
  app.add_option("--vram-mib", s.vram_mib, "VRAM share, MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--contexts", s.contexts, "GPU contexts")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--dirty-mibs", s.dirty_mibs, "RefWorkload dirty rate, MiB/s")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 16));
  app.add_option("--reps", s.reps, "timed runs per mode")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--stop-mib", s.stop_mib,
                 "pre-copy stops once pending is under this many MiB")
      ->capture_default_str();
  app.add_option("--max-rounds", s.max_rounds, "... or after this many rounds")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--zstd-level", s.zstd_level, "0 = stored chunks")
      ->capture_default_str()
      ->check(CLI::Range(0, 19));
  app.add_option("--threads", s.threads,
                 "writer compression threads, 0 = one per core")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  app.add_option("--chunk-kib", s.chunk_kib, "writer chunk size, KiB")
      ->capture_default_str()
      ->check(CLI::Range(4, 16384));
  app.add_option("--warmup-ms", s.warmup_ms,
                 "workload runs this long before pre-copy or the stop")
      ->capture_default_str()
      ->check(CLI::Range(0, 600000));
  app.add_option("--seed", s.seed, "workload seed")->capture_default_str();
  app.add_option("--modes", s.modes, "both, precopy or stopcopy")
      ->capture_default_str()
      ->check(CLI::IsMember({"both", "precopy", "stopcopy"}));
  bool no_verify = false;
  app.add_flag("--no-verify", no_verify, "skip the extra check run per mode");
  app.add_flag("--json", s.json, "print one JSON object instead of tables");
  app.add_option("--json-out", s.json_out,
                 "also write the JSON object to this file");
  CLI11_PARSE(app, argc, argv);
  s.verify = !no_verify;
  return vgpu::agents::mediated::Main(s);
}
