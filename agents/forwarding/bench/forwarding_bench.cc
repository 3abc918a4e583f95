// forwarding_bench: OpenCL API forwarding against native OpenCL, in one
// process. Run it through tools/forwarding_bench.sh, which builds it with
// -c opt and prints the machine.
//
// How the comparison is made: the bench makes a vendors folder in a fresh
// mkdtemp folder under /tmp holding a copy of /etc/OpenCL/vendors/pocl.icd
// and a vgpu.icd naming libvgpu-opencl.so, points OCL_ICD_VENDORS at it
// before its first OpenCL call, and starts its own vgpu-cl-backend (a child
// process, on Unix sockets in that folder; it sees only PoCL). The ICD
// loader then shows two platforms: PoCL itself ("native") and
// "vgpu-opencl on Portable Computing Language" ("forwarded", through the
// backend's worker process). Every measurement runs the same code on both.
//
//   1 latency     clGetDeviceInfo(CL_DEVICE_MAX_COMPUTE_UNITS), --iters
//                 times after --warmup, each call timed: p50/p99/mean in us.
//                 Baseline: a 64-byte ping-pong between two threads over a
//                 Unix stream socketpair (write 64, the other side reads 64
//                 and writes 64 back, read 64), same count.
//   2 bulk        blocking clEnqueueWriteBuffer / clEnqueueReadBuffer of
//                 --bulk-mib MiB (one untimed pass each, then --bulk-reps),
//                 GB/s (1e9 bytes/s), best and median. Baseline: one thread
//                 writing the same bytes into a Unix stream socketpair in
//                 4 MiB writes, another reading them (4 MiB reads) into
//                 memory already mapped, --bulk-reps times.
//   3 kernel      the mandelbrot kernel of agents/forwarding/samples
//                 (--mandel-size squared, 256 iterations), one NDRange
//                 over the whole image, enqueue to clFinish; one untimed
//                 launch, then --mandel-reps; median. The images of both
//                 platforms must be equal.
//   4 checkpoint  --ckpt-buffers buffers of --ckpt-buffer-mib MiB created
//                 through the forwarded platform and filled with
//                 pseudo-random bytes (xorshift, incompressible); the
//                 bench's session is found by its VM name (VGPU_VM) in the
//                 backend's ListSessions; CheckpointToFile (zstd 1, the
//                 image file fsynced) into the temp folder, then
//                 RestoreFromFile into the same backend (a new worker,
//                 which is checked to hold every byte count and then told
//                 to quit). Baselines: memcpy of the same bytes between
//                 two mapped buffers (median of 3), and writing them to a
//                 file in the same folder in 4 MiB writes plus fsync.
//
// Output: the tables on stdout, and one machine-readable line per figure:
//   RESULT {"figure": ..., ...}
// --json-out FILE also writes every figure as one JSON object.
// Exit status: 0 if every step ran and every check passed.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CL/cl.h>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "agents/forwarding/backend/checkpoint.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/samples/mandelbrot_kernel.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMib = uint64_t{1} << 20;

struct Settings {
  std::string backend;
  std::string library;
  std::string icd = "/etc/OpenCL/vendors/pocl.icd";
  int warmup = 2000;
  int iters = 20000;
  uint64_t bulk_mib = 256;
  int bulk_reps = 5;
  int mandel_size = 2048;
  int mandel_reps = 5;
  int ckpt_buffers = 4;
  uint64_t ckpt_buffer_mib = 256;
  bool keep = false;
  std::string json_out;
  std::string only;  // comma list of steps; empty: all
};

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void StopBackend();

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "forwarding_bench: %s\n", what.c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  StopBackend();
  std::_Exit(1);
}

#define CL_OK(expr)                                                     \
  do {                                                                  \
    const cl_int err_ = (expr);                                         \
    if (err_ != CL_SUCCESS) Die(absl::StrCat(#expr, " -> ", err_));     \
  } while (0)

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Percentile(const std::vector<double>& sorted, double p) {
  const size_t i = std::min(sorted.size() - 1,
                            static_cast<size_t>(p / 100.0 * sorted.size()));
  return sorted[i];
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / v.size();
}

json g_results = json::array();

void Result(json j) {
  std::printf("RESULT %s\n", j.dump().c_str());
  g_results.push_back(std::move(j));
}

// Pseudo-random bytes (xorshift64*), incompressible, different per seed.
void FillRandom(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    const uint64_t v = x * 0x2545F4914F6CDD1Dull;
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(i);
}

// A buffer whose pages are already mapped (touched).
std::unique_ptr<uint8_t[]> Mapped(size_t n) {
  std::unique_ptr<uint8_t[]> p(new uint8_t[n]);
  std::memset(p.get(), 1, n);
  return p;
}

// CPU seconds and voluntary context switches (the thread went to sleep)
// of this process, or of another one from /proc.
struct Usage {
  double cpu_s = 0;
  uint64_t vcsw = 0;
};

Usage Self() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  Usage u;
  u.cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
            ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
  u.vcsw = ru.ru_nvcsw;
  return u;
}

Usage Of(int pid) {
  Usage u;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  if (paren != std::string::npos) {
    std::istringstream in(line.substr(paren + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    // Fields 3.. after the name; utime and stime are fields 14 and 15.
    for (int i = 3; i <= 15 && in >> f; ++i) {
      if (i == 14) utime = std::stoull(f);
      if (i == 15) stime = std::stoull(f);
    }
    u.cpu_s = double(utime + stime) / sysconf(_SC_CLK_TCK);
  }
  // Summed over the process's threads.
  std::error_code ec;
  for (const auto& t : std::filesystem::directory_iterator(
           absl::StrCat("/proc/", pid, "/task"), ec)) {
    std::ifstream st(t.path() / "status");
    while (std::getline(st, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) {
        u.vcsw += std::stoull(line.substr(line.find(':') + 1));
      }
    }
  }
  return u;
}

// ---------------------------------------------------------------- backend

struct Backend {
  std::string dir;
  std::string guest;    // unix:PATH
  std::string control;  // unix:PATH
  pid_t pid = -1;
};

Backend g_backend;

void StopBackend() {
  if (g_backend.pid > 0) {
    kill(g_backend.pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100; ++i) {
      if (waitpid(g_backend.pid, &status, WNOHANG) == g_backend.pid) {
        g_backend.pid = -1;
        break;
      }
      usleep(20000);
    }
    if (g_backend.pid > 0) {
      kill(g_backend.pid, SIGKILL);
      waitpid(g_backend.pid, &status, 0);
      g_backend.pid = -1;
    }
  }
}

void StartBackend(const Settings& s) {
  char tmpl[] = "/tmp/fwbench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die(absl::StrCat("mkdtemp: ", strerror(errno)));
  g_backend.dir = tmpl;
  const std::string vendors = g_backend.dir + "/vendors";
  mkdir(vendors.c_str(), 0700);
  std::filesystem::copy_file(s.icd, vendors + "/pocl.icd");
  char lib[PATH_MAX];
  if (realpath(s.library.c_str(), lib) == nullptr) {
    Die(absl::StrCat("no guest library at ", s.library));
  }
  std::ofstream(vendors + "/vgpu.icd") << lib << "\n";
  g_backend.guest = absl::StrCat("unix:", g_backend.dir, "/cl.sock");
  g_backend.control = absl::StrCat("unix:", g_backend.dir, "/cl-control.sock");

  // The backend's own environment: no OCL_ICD_VENDORS (it must see PoCL
  // only, never the forwarding library), no VGPU_* of ours.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v = *e;
    if (v.rfind("OCL_ICD_VENDORS=", 0) == 0 || v.rfind("VGPU_", 0) == 0) {
      continue;
    }
    env.push_back(v);
  }
  std::vector<std::string> args = {s.backend,
                                   "--listen",
                                   g_backend.guest,
                                   "--control",
                                   g_backend.control,
                                   "--run-dir",
                                   g_backend.dir + "/run",
                                   "--quiet"};
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string log = g_backend.dir + "/backend.log";
  const pid_t pid = fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  g_backend.pid = pid;
  const auto t0 = Clock::now();
  while (true) {
    auto c = vgpu::forwarding::backend::ControlClient::Connect(
        g_backend.control, absl::Milliseconds(200));
    if (c.ok() && (*c)->ListSessions().ok()) break;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      g_backend.pid = -1;
      Die(absl::StrCat("the backend exited; see ", log));
    }
    if (Since(t0) > 20) Die("the backend did not come up in 20 s");
    usleep(20000);
  }
  setenv("OCL_ICD_VENDORS", vendors.c_str(), 1);
  setenv("VGPU_CL_BACKEND", g_backend.guest.c_str(), 1);
  setenv("VGPU_VM", absl::StrCat("fwbench-", getpid()).c_str(), 1);
}

// ---------------------------------------------------------------- OpenCL

struct Platform {
  std::string label;  // "native" / "forwarded"
  std::string name;
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  cl_context ctx = nullptr;
  cl_command_queue queue = nullptr;
};

std::string PlatformName(cl_platform_id p) {
  size_t n = 0;
  CL_OK(clGetPlatformInfo(p, CL_PLATFORM_NAME, 0, nullptr, &n));
  std::string s(n, '\0');
  CL_OK(clGetPlatformInfo(p, CL_PLATFORM_NAME, n, s.data(), nullptr));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

std::vector<Platform> FindPlatforms() {
  cl_uint n = 0;
  CL_OK(clGetPlatformIDs(0, nullptr, &n));
  std::vector<cl_platform_id> ids(n);
  CL_OK(clGetPlatformIDs(n, ids.data(), nullptr));
  Platform native, fwd;
  for (cl_platform_id id : ids) {
    const std::string name = PlatformName(id);
    Platform& p = name.rfind("vgpu-opencl", 0) == 0 ? fwd : native;
    if (p.platform != nullptr) continue;
    p.platform = id;
    p.name = name;
  }
  if (native.platform == nullptr || fwd.platform == nullptr) {
    Die(absl::StrCat("expected a native and a vgpu-opencl platform, found ", n,
                     " (is the backend up? see ", g_backend.dir,
                     "/backend.log)"));
  }
  native.label = "native";
  fwd.label = "forwarded";
  std::vector<Platform> out = {native, fwd};
  for (Platform& p : out) {
    CL_OK(clGetDeviceIDs(p.platform, CL_DEVICE_TYPE_ALL, 1, &p.device,
                         nullptr));
    cl_int err = 0;
    const cl_context_properties props[] = {
        CL_CONTEXT_PLATFORM, reinterpret_cast<cl_context_properties>(p.platform),
        0};
    p.ctx = clCreateContext(props, 1, &p.device, nullptr, nullptr, &err);
    CL_OK(err);
    p.queue = clCreateCommandQueue(p.ctx, p.device, 0, &err);
    CL_OK(err);
  }
  return out;
}

// The bench's own forwarded session, found by its VM name.
struct OurSession {
  std::string control;
  uint64_t session = 0;
  uint64_t memory_bytes = 0;
  int pid = 0;
};

OurSession FindSession() {
  const std::string vm = getenv("VGPU_VM");
  auto sup = vgpu::forwarding::backend::ControlClient::Connect(
      g_backend.control);
  if (!sup.ok()) Die(std::string(sup.status().message()));
  auto list = (*sup)->ListSessions();
  if (!list.ok()) Die(std::string(list.status().message()));
  for (const auto& info : *list) {
    auto r = info.root();
    if (std::string(r.getGuest().getVm().cStr()) == vm) {
      return {r.getControl(), r.getSession(), r.getMemoryBytes(),
              static_cast<int>(r.getPid())};
    }
  }
  Die(absl::StrCat("no session of vm ", vm, " on the backend"));
}

// ---------------------------------------------------------------- 1 latency

struct Lat {
  double p50, p99, mean, min;
};

Lat Summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {Percentile(us, 50), Percentile(us, 99), Mean(us), us.front()};
}

Lat DeviceInfoLatency(const Platform& p, const Settings& s) {
  cl_uint cu = 0;
  for (int i = 0; i < s.warmup; ++i) {
    CL_OK(clGetDeviceInfo(p.device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(cu),
                          &cu, nullptr));
  }
  std::vector<double> us(s.iters);
  for (int i = 0; i < s.iters; ++i) {
    const auto t0 = Clock::now();
    CL_OK(clGetDeviceInfo(p.device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(cu),
                          &cu, nullptr));
    us[i] = std::chrono::duration<double, std::micro>(Clock::now() - t0)
                .count();
  }
  return Summarize(std::move(us));
}

bool ReadFull(int fd, void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    const ssize_t r = read(fd, b, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    b += r;
    n -= r;
  }
  return true;
}

bool WriteFull(int fd, const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t r = write(fd, b, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    b += r;
    n -= r;
  }
  return true;
}

Lat SocketPingPong(const Settings& s) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    Die("socketpair");
  }
  std::thread echo([fd = sv[1]] {
    uint8_t buf[64];
    while (ReadFull(fd, buf, sizeof(buf)) && WriteFull(fd, buf, sizeof(buf))) {
    }
  });
  uint8_t msg[64] = {1, 2, 3};
  std::vector<double> us(s.iters);
  for (int i = 0; i < s.warmup + s.iters; ++i) {
    const auto t0 = Clock::now();
    if (!WriteFull(sv[0], msg, sizeof(msg)) ||
        !ReadFull(sv[0], msg, sizeof(msg))) {
      Die("ping-pong");
    }
    if (i >= s.warmup) {
      us[i - s.warmup] =
          std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    }
  }
  shutdown(sv[0], SHUT_RDWR);
  echo.join();
  close(sv[0]);
  close(sv[1]);
  return Summarize(std::move(us));
}

void RunLatency(const std::vector<Platform>& ps, const Settings& s) {
  std::printf("\n== 1. Round trip of a trivial call: "
              "clGetDeviceInfo(CL_DEVICE_MAX_COMPUTE_UNITS), %d calls after "
              "%d warm-up\n\n",
              s.iters, s.warmup);
  const double calls = s.warmup + s.iters;
  const OurSession ours = FindSession();
  Usage u0 = Self();
  const Lat sock = SocketPingPong(s);
  Usage u1 = Self();
  const double sock_cpu = (u1.cpu_s - u0.cpu_s) / calls * 1e6;
  const double sock_sw = (u1.vcsw - u0.vcsw) / calls;
  const Lat nat = DeviceInfoLatency(ps[0], s);
  u0 = Self();
  const Usage w0 = Of(ours.pid);
  const Lat fwd = DeviceInfoLatency(ps[1], s);
  u1 = Self();
  const Usage w1 = Of(ours.pid);
  const double g_cpu = (u1.cpu_s - u0.cpu_s) / calls * 1e6;
  const double g_sw = (u1.vcsw - u0.vcsw) / calls;
  const double w_cpu = (w1.cpu_s - w0.cpu_s) / calls * 1e6;
  const double w_sw = (w1.vcsw - w0.vcsw) / calls;
  // A second socket run after the others, to see drift.
  const Lat sock2 = SocketPingPong(s);
  std::printf("| what                               |  p50 us |  p99 us | mean us |  min us |\n");
  std::printf("|------------------------------------|--------:|--------:|--------:|--------:|\n");
  auto row = [](const char* what, const Lat& l) {
    std::printf("| %-34s | %7.2f | %7.2f | %7.2f | %7.2f |\n", what, l.p50,
                l.p99, l.mean, l.min);
  };
  row("native (PoCL)", nat);
  row("forwarded (vgpu-opencl)", fwd);
  row("unix socketpair 64 B ping-pong", sock);
  row("  (same, after the calls)", sock2);
  std::printf("\nforwarded p50 / socket p50: %.2fx; forwarded - native p50: "
              "%.2f us; goal forwarded p50 < 10 us: %s\n",
              fwd.p50 / sock.p50, fwd.p50 - nat.p50,
              fwd.p50 < 10 ? "met" : "NOT met");
  std::printf("per round trip: socket ping-pong %.2f sleeps (voluntary "
              "context switches) and %.1f us CPU (both threads); forwarded "
              "call %.2f sleeps and %.1f us CPU in this process + %.2f "
              "sleeps and %.1f us CPU in the backend worker (pid %d)\n",
              sock_sw, sock_cpu, g_sw, g_cpu, w_sw, w_cpu, ours.pid);
  auto j = [](const Lat& l) {
    return json{{"p50_us", l.p50}, {"p99_us", l.p99}, {"mean_us", l.mean},
                {"min_us", l.min}};
  };
  Result({{"figure", "latency_device_info"},
          {"iters", s.iters},
          {"native", j(nat)},
          {"forwarded", j(fwd)},
          {"socket_pingpong_64B", j(sock)},
          {"socket_pingpong_64B_after", j(sock2)},
          {"forwarded_over_socket_p50", fwd.p50 / sock.p50},
          {"socket_sleeps_per_call", sock_sw},
          {"socket_cpu_us_per_call", sock_cpu},
          {"forwarded_guest_sleeps_per_call", g_sw},
          {"forwarded_guest_cpu_us_per_call", g_cpu},
          {"forwarded_worker_sleeps_per_call", w_sw},
          {"forwarded_worker_cpu_us_per_call", w_cpu},
          {"goal_p50_under_10us", fwd.p50 < 10}});
}

// ---------------------------------------------------------------- 2 bulk

struct Rate {
  double best = 0, median = 0;  // GB/s
};

Rate Rates(const std::vector<double>& secs, uint64_t bytes) {
  std::vector<double> g;
  for (double t : secs) g.push_back(bytes / t / 1e9);
  return {*std::max_element(g.begin(), g.end()), Median(g)};
}

void BulkCl(const Platform& p, const Settings& s, const uint8_t* src,
            uint8_t* dst, Rate* write, Rate* read) {
  const size_t bytes = s.bulk_mib * kMib;
  cl_int err = 0;
  cl_mem buf = clCreateBuffer(p.ctx, CL_MEM_READ_WRITE, bytes, nullptr, &err);
  CL_OK(err);
  // Untimed first pass (the device's memory is touched here).
  CL_OK(clEnqueueWriteBuffer(p.queue, buf, CL_TRUE, 0, bytes, src, 0, nullptr,
                             nullptr));
  CL_OK(clEnqueueReadBuffer(p.queue, buf, CL_TRUE, 0, bytes, dst, 0, nullptr,
                            nullptr));
  std::vector<double> w, r;
  for (int i = 0; i < s.bulk_reps; ++i) {
    auto t0 = Clock::now();
    CL_OK(clEnqueueWriteBuffer(p.queue, buf, CL_TRUE, 0, bytes, src, 0,
                               nullptr, nullptr));
    w.push_back(Since(t0));
    std::memset(dst, 0, 4096);
    t0 = Clock::now();
    CL_OK(clEnqueueReadBuffer(p.queue, buf, CL_TRUE, 0, bytes, dst, 0, nullptr,
                              nullptr));
    r.push_back(Since(t0));
    if (std::memcmp(src, dst, bytes) != 0) {
      Die(absl::StrCat(p.label, ": read-back differs from what was written"));
    }
  }
  CL_OK(clReleaseMemObject(buf));
  *write = Rates(w, bytes);
  *read = Rates(r, bytes);
}

Rate SocketStream(const Settings& s, const uint8_t* src, uint8_t* dst) {
  const size_t bytes = s.bulk_mib * kMib;
  constexpr size_t kPiece = 4 * kMib;
  std::vector<double> secs;
  for (int i = 0; i < s.bulk_reps + 1; ++i) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      Die("socketpair");
    }
    const auto t0 = Clock::now();
    std::thread writer([&, fd = sv[0]] {
      for (size_t off = 0; off < bytes; off += kPiece) {
        if (!WriteFull(fd, src + off, std::min(kPiece, bytes - off))) {
          Die("socket write");
        }
      }
    });
    size_t got = 0;
    while (got < bytes) {
      const ssize_t r = read(sv[1], dst + got, std::min(kPiece, bytes - got));
      if (r <= 0) Die("socket read");
      got += r;
    }
    const double t = Since(t0);
    writer.join();
    close(sv[0]);
    close(sv[1]);
    if (i > 0) secs.push_back(t);  // the first is a warm-up
  }
  return Rates(secs, bytes);
}

void RunBulk(const std::vector<Platform>& ps, const Settings& s) {
  const size_t bytes = s.bulk_mib * kMib;
  std::printf("\n== 2. Bulk: blocking write / read of %llu MiB, %d reps after "
              "one untimed pass; GB/s (1e9 B/s)\n\n",
              static_cast<unsigned long long>(s.bulk_mib), s.bulk_reps);
  auto src = Mapped(bytes);
  auto dst = Mapped(bytes);
  FillRandom(src.get(), bytes, 7);
  const Rate sock = SocketStream(s, src.get(), dst.get());
  Rate nw, nr, fw, fr;
  BulkCl(ps[0], s, src.get(), dst.get(), &nw, &nr);
  BulkCl(ps[1], s, src.get(), dst.get(), &fw, &fr);
  const Rate sock2 = SocketStream(s, src.get(), dst.get());
  std::printf("| what                                  | best GB/s | median GB/s | median / socket |\n");
  std::printf("|---------------------------------------|----------:|------------:|----------------:|\n");
  auto row = [&](const char* what, const Rate& r) {
    std::printf("| %-37s | %9.2f | %11.2f | %14.2fx |\n", what, r.best,
                r.median, r.median / sock.median);
  };
  row("clEnqueueWriteBuffer, native", nw);
  row("clEnqueueWriteBuffer, forwarded", fw);
  row("clEnqueueReadBuffer, native", nr);
  row("clEnqueueReadBuffer, forwarded", fr);
  row("unix socketpair stream, 4 MiB writes", sock);
  row("  (same, after the calls)", sock2);
  std::printf("\ngoal forwarded >= 0.8x raw socket: write %.2fx %s, read "
              "%.2fx %s\n",
              fw.median / sock.median, fw.median >= 0.8 * sock.median ? "met" : "NOT met",
              fr.median / sock.median, fr.median >= 0.8 * sock.median ? "met" : "NOT met");
  auto j = [](const Rate& r) {
    return json{{"best_gbs", r.best}, {"median_gbs", r.median}};
  };
  Result({{"figure", "bulk"},
          {"mib", s.bulk_mib},
          {"reps", s.bulk_reps},
          {"write_native", j(nw)},
          {"write_forwarded", j(fw)},
          {"read_native", j(nr)},
          {"read_forwarded", j(fr)},
          {"socket_stream", j(sock)},
          {"socket_stream_after", j(sock2)},
          {"write_forwarded_over_socket", fw.median / sock.median},
          {"read_forwarded_over_socket", fr.median / sock.median},
          {"write_forwarded_over_native", fw.median / nw.median},
          {"read_forwarded_over_native", fr.median / nr.median}});
}

// ---------------------------------------------------------------- 3 kernel

// The kernel of agents/forwarding/samples/mandelbrot.cc.
using vgpu::forwarding::samples::kMandelbrotSource;

struct Mandel {
  std::vector<double> ms;
  double median = 0;
  double build_ms = 0;
  std::vector<cl_uint> image;
};

Mandel RunMandel(const Platform& p, const Settings& s) {
  Mandel m;
  cl_int err = 0;
  const char* src = kMandelbrotSource;
  auto t0 = Clock::now();
  cl_program prog = clCreateProgramWithSource(p.ctx, 1, &src, nullptr, &err);
  CL_OK(err);
  CL_OK(clBuildProgram(prog, 1, &p.device, "", nullptr, nullptr));
  cl_kernel k = clCreateKernel(prog, "mandelbrot", &err);
  CL_OK(err);
  m.build_ms = Since(t0) * 1e3;
  const cl_uint size = s.mandel_size, iters = 256, row0 = 0;
  const size_t bytes = size_t{size} * size * sizeof(cl_uint);
  cl_mem out = clCreateBuffer(p.ctx, CL_MEM_WRITE_ONLY, bytes, nullptr, &err);
  CL_OK(err);
  CL_OK(clSetKernelArg(k, 0, sizeof(out), &out));
  CL_OK(clSetKernelArg(k, 1, sizeof(size), &size));
  CL_OK(clSetKernelArg(k, 2, sizeof(size), &size));
  CL_OK(clSetKernelArg(k, 3, sizeof(row0), &row0));
  CL_OK(clSetKernelArg(k, 4, sizeof(iters), &iters));
  const size_t global[2] = {size, size};
  for (int i = 0; i < s.mandel_reps + 1; ++i) {
    t0 = Clock::now();
    CL_OK(clEnqueueNDRangeKernel(p.queue, k, 2, nullptr, global, nullptr, 0,
                                 nullptr, nullptr));
    CL_OK(clFinish(p.queue));
    if (i > 0) m.ms.push_back(Since(t0) * 1e3);
  }
  m.median = Median(m.ms);
  m.image.resize(size_t{size} * size);
  CL_OK(clEnqueueReadBuffer(p.queue, out, CL_TRUE, 0, bytes, m.image.data(), 0,
                            nullptr, nullptr));
  clReleaseMemObject(out);
  clReleaseKernel(k);
  clReleaseProgram(prog);
  return m;
}

bool RunKernel(const std::vector<Platform>& ps, const Settings& s) {
  std::printf("\n== 3. Kernel-bound: mandelbrot %dx%d, 256 iterations, "
              "enqueue to clFinish, %d reps after one untimed launch\n\n",
              s.mandel_size, s.mandel_size, s.mandel_reps);
  // Alternate the platforms so that drift in the machine's speed is shared.
  const Mandel nat = RunMandel(ps[0], s);
  const Mandel fwd = RunMandel(ps[1], s);
  const Mandel nat2 = RunMandel(ps[0], s);
  const Mandel fwd2 = RunMandel(ps[1], s);
  std::vector<double> nall = nat.ms, fall = fwd.ms;
  nall.insert(nall.end(), nat2.ms.begin(), nat2.ms.end());
  fall.insert(fall.end(), fwd2.ms.begin(), fwd2.ms.end());
  const double nmed = Median(nall), fmed = Median(fall);
  const bool same = nat.image == fwd.image;
  auto list = [](const std::vector<double>& v) {
    std::string out;
    for (double x : v) absl::StrAppend(&out, out.empty() ? "" : ", ",
                                       absl::StrFormat("%.0f", x));
    return out;
  };
  std::printf("| platform  | median ms | min ms | runs, ms (two rounds)                                  | build ms |\n");
  std::printf("|-----------|----------:|-------:|--------------------------------------------------------|---------:|\n");
  std::printf("| native    | %9.1f | %6.1f | %s; %s | %8.1f |\n", nmed,
              *std::min_element(nall.begin(), nall.end()),
              list(nat.ms).c_str(), list(nat2.ms).c_str(), nat.build_ms);
  std::printf("| forwarded | %9.1f | %6.1f | %s; %s | %8.1f |\n", fmed,
              *std::min_element(fall.begin(), fall.end()),
              list(fwd.ms).c_str(), list(fwd2.ms).c_str(), fwd.build_ms);
  const double ratio = fmed / nmed;
  std::printf("\nforwarded / native: %.3fx (%+.1f%%); goal under 5%% slower: "
              "%s; images equal: %s\n",
              ratio, (ratio - 1) * 100, ratio < 1.05 ? "met" : "NOT met",
              same ? "yes" : "NO");
  Result({{"figure", "kernel_mandelbrot"},
          {"size", s.mandel_size},
          {"reps", 2 * s.mandel_reps},
          {"native_median_ms", nmed},
          {"forwarded_median_ms", fmed},
          {"native_ms", nall},
          {"forwarded_ms", fall},
          {"forwarded_over_native", ratio},
          {"images_equal", same}});
  return same;
}

// ---------------------------------------------------------------- 4 checkpoint

bool RunCheckpoint(const std::vector<Platform>& ps, const Settings& s) {
  namespace be = vgpu::forwarding::backend;
  const Platform& p = ps[1];
  const uint64_t each = s.ckpt_buffer_mib * kMib;
  const uint64_t total = each * s.ckpt_buffers;
  std::printf("\n== 4. Checkpoint / restore of the forwarded session holding "
              "%d x %llu MiB of buffers (pseudo-random bytes)\n\n",
              s.ckpt_buffers, static_cast<unsigned long long>(s.ckpt_buffer_mib));
  std::vector<cl_mem> bufs;
  {
    auto host = Mapped(each);
    for (int i = 0; i < s.ckpt_buffers; ++i) {
      cl_int err = 0;
      bufs.push_back(
          clCreateBuffer(p.ctx, CL_MEM_READ_WRITE, each, nullptr, &err));
      CL_OK(err);
      FillRandom(host.get(), each, 1000 + i);
      CL_OK(clEnqueueWriteBuffer(p.queue, bufs.back(), CL_TRUE, 0, each,
                                 host.get(), 0, nullptr, nullptr));
    }
    CL_OK(clFinish(p.queue));
  }

  const std::string vm = getenv("VGPU_VM");
  const OurSession ours = FindSession();
  const std::string control = ours.control;
  const uint64_t session = ours.session, mem_bytes = ours.memory_bytes;

  const std::string path = g_backend.dir + "/checkpoint.img";
  Usage u0 = Self(), w0 = Of(ours.pid);
  auto t0 = Clock::now();
  auto ck = be::CheckpointToFile(control, path);
  const double ck_s = Since(t0);
  Usage u1 = Self(), w1 = Of(ours.pid);
  const double ck_cpu_self = u1.cpu_s - u0.cpu_s;
  const double ck_cpu_worker = w1.cpu_s - w0.cpu_s;
  if (!ck.ok()) Die(absl::StrCat("checkpoint: ", ck.status().message()));

  // The session runs on: a call answers, and the first buffer still holds
  // its bytes.
  {
    std::vector<uint8_t> want(1 << 20), got(1 << 20);
    FillRandom(want.data(), want.size(), 1000);  // prefix of buffer 0
    CL_OK(clEnqueueReadBuffer(p.queue, bufs[0], CL_TRUE, 0, got.size(),
                              got.data(), 0, nullptr, nullptr));
    if (want != got) Die("the session's buffer changed across the checkpoint");
  }

  u0 = Self();
  t0 = Clock::now();
  auto rs = be::RestoreFromFile(g_backend.control, path);
  const double rs_s = Since(t0);
  u1 = Self();
  const double rs_cpu_self = u1.cpu_s - u0.cpu_s;
  double rs_cpu_worker = 0;
  if (!rs.ok()) Die(absl::StrCat("restore: ", rs.status().message()));
  uint64_t restored_bytes = 0;
  bool restored_ok = false;
  {
    auto w = be::ControlClient::Connect(rs->control);
    if (!w.ok()) Die(std::string(w.status().message()));
    auto mems = (*w)->Mems(false);
    if (!mems.ok()) Die(std::string(mems.status().message()));
    if (auto d = (*w)->Describe(); d.ok()) {
      rs_cpu_worker = Of(d->root().getPid()).cpu_s;  // its whole life
    }
    for (const auto& m : *mems) restored_bytes += m.bytes;
    // Spot check: the first MiB of the buffer whose bytes are seed 1000.
    std::vector<uint8_t> want(1 << 20), got(1 << 20);
    FillRandom(want.data(), want.size(), 1000);
    for (const auto& m : *mems) {
      if (m.bytes != each) continue;
      if ((*w)->ReadMem(m.id, 0, absl::MakeSpan(got)).ok() && got == want) {
        restored_ok = true;
      }
    }
    if (auto q = (*w)->Quit(); !q.ok()) {
      std::fprintf(stderr, "quit of the restored worker: %s\n",
                   std::string(q.message()).c_str());
    }
  }
  struct stat st {};
  stat(path.c_str(), &st);
  unlink(path.c_str());
  for (cl_mem b : bufs) clReleaseMemObject(b);

  // Baselines: memcpy, and a plain file write + fsync, of the same bytes.
  double memcpy_s = 0, file_s = 0;
  {
    auto a = Mapped(total);
    auto b = Mapped(total);
    std::vector<double> t;
    for (int i = 0; i < 3; ++i) {
      const auto c0 = Clock::now();
      std::memcpy(b.get(), a.get(), total);
      t.push_back(Since(c0));
    }
    memcpy_s = Median(t);
    const std::string f = g_backend.dir + "/plain.bin";
    const auto c0 = Clock::now();
    const int fd = open(f.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                        0600);
    if (fd < 0) Die("open plain.bin");
    for (uint64_t off = 0; off < total; off += 4 * kMib) {
      if (!WriteFull(fd, a.get() + off, std::min<uint64_t>(4 * kMib,
                                                           total - off))) {
        Die("write plain.bin");
      }
    }
    fsync(fd);
    close(fd);
    file_s = Since(c0);
    unlink(f.c_str());
  }

  const double mib = total / double(kMib);
  const double ck_mibs = mib / ck_s, rs_mibs = mib / rs_s;
  const double mc_mibs = mib / memcpy_s, file_mibs = mib / file_s;
  std::printf("session %llu (vm %s), %.0f MiB of device memory; image %.1f "
              "MiB on disk, %u sections, %.1f MiB raw\n\n",
              static_cast<unsigned long long>(session), vm.c_str(),
              mem_bytes / double(kMib), st.st_size / double(kMib),
              ck->sections, ck->raw_bytes / double(kMib));
  std::printf("| step                                  |      ms |  MiB/s | / memcpy | / file write+fsync |\n");
  std::printf("|---------------------------------------|--------:|-------:|---------:|-------------------:|\n");
  auto row = [&](const char* what, double secs) {
    std::printf("| %-37s | %7.1f | %6.0f | %7.3fx | %17.2fx |\n", what,
                secs * 1e3, mib / secs, memcpy_s / secs, file_s / secs);
  };
  row("CheckpointToFile (zstd 1, fsync)", ck_s);
  std::printf("| %-37s | %7.1f |        |          |                    |\n",
              "  of which calls held (frozen_ms)", ck->frozen_ms);
  row("RestoreFromFile (new worker)", rs_s);
  row("memcpy (median of 3)", memcpy_s);
  row("file write 4 MiB + fsync", file_s);
  std::printf("\nCPU seconds: checkpoint %.2f in this process (reader, "
              "image writer) + %.2f in the session's worker, over %.2f s; "
              "restore %.2f in this process + %.2f in the new worker (its "
              "whole life), over %.2f s\n",
              ck_cpu_self, ck_cpu_worker, ck_s, rs_cpu_self, rs_cpu_worker,
              rs_s);
  std::printf("\nrestored worker: %.0f MiB in its memory objects, spot check "
              "%s; session ran on after the checkpoint: yes\n",
              restored_bytes / double(kMib), restored_ok ? "passed" : "FAILED");
  Result({{"figure", "checkpoint"},
          {"mib", mib},
          {"checkpoint_ms", ck_s * 1e3},
          {"checkpoint_total_ms_reported", ck->total_ms},
          {"frozen_ms", ck->frozen_ms},
          {"restore_ms", rs_s * 1e3},
          {"restore_total_ms_reported", rs->stats.total_ms},
          {"memcpy_ms", memcpy_s * 1e3},
          {"file_write_fsync_ms", file_s * 1e3},
          {"checkpoint_mibs", ck_mibs},
          {"restore_mibs", rs_mibs},
          {"memcpy_mibs", mc_mibs},
          {"file_write_fsync_mibs", file_mibs},
          {"checkpoint_over_memcpy", ck_mibs / mc_mibs},
          {"restore_over_memcpy", rs_mibs / mc_mibs},
          {"checkpoint_over_file", ck_mibs / file_mibs},
          {"restore_over_file", rs_mibs / file_mibs},
          {"image_bytes", static_cast<uint64_t>(st.st_size)},
          {"checkpoint_cpu_s_bench", ck_cpu_self},
          {"checkpoint_cpu_s_worker", ck_cpu_worker},
          {"restore_cpu_s_bench", rs_cpu_self},
          {"restore_cpu_s_new_worker", rs_cpu_worker},
          {"raw_bytes", ck->raw_bytes},
          {"restored_bytes", restored_bytes},
          {"restored_spot_check", restored_ok}});
  return restored_ok && restored_bytes >= total;
}

std::string Beside(const std::string& rel) {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return rel;
  std::string self(buf, n);
  // .../agents/forwarding/bench/forwarding_bench -> .../agents/forwarding/
  for (int i = 0; i < 2; ++i) self = self.substr(0, self.rfind('/'));
  return self + "/" + rel;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  s.backend = Beside("backend/vgpu-cl-backend");
  s.library = Beside("guest/libvgpu-opencl.so");
  CLI::App app{"forwarding_bench: OpenCL API forwarding against native "
               "OpenCL (PoCL) in one process; see the top of "
               "agents/forwarding/bench/forwarding_bench.cc"};
  app.add_option("--backend", s.backend, "vgpu-cl-backend binary")
      ->capture_default_str();
  app.add_option("--library", s.library, "libvgpu-opencl.so")
      ->capture_default_str();
  app.add_option("--icd", s.icd, "the native platform's .icd file")
      ->capture_default_str();
  app.add_option("--warmup", s.warmup, "latency: untimed calls")
      ->capture_default_str();
  app.add_option("--iters", s.iters, "latency: timed calls")
      ->capture_default_str();
  app.add_option("--bulk-mib", s.bulk_mib, "bulk: MiB per transfer")
      ->capture_default_str();
  app.add_option("--bulk-reps", s.bulk_reps, "bulk: timed transfers")
      ->capture_default_str();
  app.add_option("--mandel-size", s.mandel_size, "kernel: image side")
      ->capture_default_str();
  app.add_option("--mandel-reps", s.mandel_reps,
                 "kernel: timed launches per round (two rounds)")
      ->capture_default_str();
  app.add_option("--ckpt-buffers", s.ckpt_buffers, "checkpoint: buffers")
      ->capture_default_str();
  app.add_option("--ckpt-buffer-mib", s.ckpt_buffer_mib,
                 "checkpoint: MiB per buffer")
      ->capture_default_str();
  app.add_option("--only", s.only,
                 "comma list of latency,bulk,kernel,checkpoint (default all)");
  app.add_option("--json-out", s.json_out, "also write the figures here");
  app.add_flag("--keep", s.keep,
               "keep the temp folder (the backend's log) at the end");
  CLI11_PARSE(app, argc, argv);
  auto want = [&](const char* step) {
    return s.only.empty() || s.only.find(step) != std::string::npos;
  };

  StartBackend(s);
  std::printf("temp folder %s; backend %s (pid %d)\n", g_backend.dir.c_str(),
              s.backend.c_str(), g_backend.pid);
  const std::vector<Platform> ps = FindPlatforms();
  char dev[256] = {};
  clGetDeviceInfo(ps[0].device, CL_DEVICE_NAME, sizeof(dev) - 1, dev, nullptr);
  std::printf("native platform:    %s (device %s)\n", ps[0].name.c_str(), dev);
  std::printf("forwarded platform: %s\n", ps[1].name.c_str());
  std::fflush(stdout);

  bool ok = true;
  if (want("latency")) RunLatency(ps, s);
  std::fflush(stdout);
  if (want("bulk")) RunBulk(ps, s);
  std::fflush(stdout);
  if (want("kernel")) ok &= RunKernel(ps, s);
  std::fflush(stdout);
  if (want("checkpoint")) ok &= RunCheckpoint(ps, s);
  std::fflush(stdout);

  if (!s.json_out.empty()) {
    std::ofstream(s.json_out) << g_results.dump(2) << "\n";
  }
  // The guest library's connection goes with the process; end the backend
  // first so that nothing is left behind.
  StopBackend();
  if (!s.keep) {
    std::error_code ec;
    std::filesystem::remove_all(g_backend.dir, ec);
  } else {
    std::printf("kept %s\n", g_backend.dir.c_str());
  }
  std::printf("\nresult: %s\n", ok ? "all checks passed" : "CHECKS FAILED");
  std::fflush(stdout);
  // Skip the OpenCL libraries' static destructors (the forwarding library
  // leaks its client on purpose; its backend is gone now).
  std::_Exit(ok ? 0 : 1);
}
