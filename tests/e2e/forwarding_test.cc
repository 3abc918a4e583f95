// End to end, API forwarding: every host (a network namespace, as root)
// runs vgpud and vgpu-cl-backend; OpenCL programs run unmodified through
// libvgpu-opencl.so and the system's ICD loader. Checked against the same
// programs run natively on PoCL:
//   - the fidelity samples and clinfo give the same output;
//   - a session live-migrated between the hosts by vgpud in the middle of
//     a run finishes with the native digests;
//   - a session checkpointed, killed and restored in the middle of a run
//     finishes with the native digests;
//   - a session whose backend worker dies gets a CL error, not a hang, and
//     the other sessions of that backend go on;
//   - a library of another protocol ABI is refused with the reason.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agents/forwarding/backend/checkpoint.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/backend/testing/raw_guest.h"
#include "agents/forwarding/transport.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster.h"

namespace vgpu::e2e {
namespace {

using forwarding::backend::ControlClient;
using forwarding::backend::SessionInfo;

constexpr char kSamples[] = "agents/forwarding/samples/vgpu-cl-samples";
constexpr char kLibrary[] = "agents/forwarding/guest/libvgpu-opencl.so";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  return absl::StrCat(getcwd(cwd, sizeof(cwd)), "/", path);
}

// "SAMPLE <name> digest <hex> ..." lines -> name -> digest.
std::map<std::string, std::string> Digests(const std::string& text) {
  std::map<std::string, std::string> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<std::string> w = absl::StrSplit(line, ' ');
    if (w.size() >= 4 && w[0] == "SAMPLE" && w[2] == "digest") out[w[1]] = w[3];
  }
  return out;
}

std::string Shell(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

// Waits for `pid` to exit; its exit status, or -1 (killed) after `timeout`.
int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

bool WaitForText(const std::string& path, const std::string& needle,
                 absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (absl::StrContains(ReadFile(path), needle)) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

class ForwardingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions o = Hosts(2);
    o.cl_backends = true;
    auto c = Cluster::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = std::move(*c);
    std::fprintf(stderr, "cluster of 2 hosts, mode: %s\n", c_->Mode().c_str());
    for (int i = 0; i < 2; ++i) {
      auto g = c_->StartClBackend(i);
      ASSERT_TRUE(g.ok()) << g.status();
      guests_.push_back(*g);
    }
    // The library as an installable client driver, as install_icd.sh
    // writes it.
    icd_ = c_->Dir() + "/icd";
    mkdir(icd_.c_str(), 0755);
    std::ofstream(icd_ + "/vgpu.icd")
        << Absolute(Cluster::Runfile(kLibrary)) << "\n";
  }

  // Starts vgpu-cl-samples on `host` through the library.
  // Words of `args` that hold spaces are split.
  pid_t StartApp(int host, const std::string& vm,
                 const std::vector<std::string>& args, const std::string& log,
                 int reconnect_ms = 20000) {
    std::vector<std::string> argv = {Cluster::Runfile(kSamples)};
    for (const std::string& a : args) {
      for (absl::string_view w : absl::StrSplit(a, ' ', absl::SkipEmpty())) {
        argv.emplace_back(w);
      }
    }
    auto pid = c_->SpawnOnHost(
        host, argv,
        {"OCL_ICD_VENDORS=" + icd_, "VGPU_CL_BACKEND=" + guests_[host],
         "VGPU_VM=" + vm, absl::StrCat("VGPU_CL_RECONNECT_MS=", reconnect_ms)},
        log);
    EXPECT_TRUE(pid.ok()) << pid.status();
    return pid.ok() ? *pid : -1;
  }

  std::map<std::string, std::string> Native(const std::string& args) {
    return Digests(Shell(absl::StrCat("env -u OCL_ICD_VENDORS ",
                                    Cluster::Runfile(kSamples), " ", args,
                                    " 2>/dev/null")));
  }

  absl::StatusOr<SessionInfo> SessionOf(int host, const std::string& vm) {
    auto c = ControlClient::Connect(c_->ClControl(host));
    if (!c.ok()) return c.status();
    auto list = (*c)->ListSessions();
    if (!list.ok()) return list.status();
    for (auto& s : *list) {
      if (std::string(s.root().getGuest().getVm()) == vm) return std::move(s);
    }
    return absl::NotFoundError(absl::StrCat("no session of ", vm, " on host ",
                                            host));
  }

  // Lets a paused app go on, and answers each later pause at once, until
  // it exits; returns its exit status.
  int ResumeToEnd(pid_t pid, const std::string& pause_file) {
    const absl::Time end = absl::Now() + absl::Seconds(120);
    while (absl::Now() < end) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (!Exists(pause_file)) std::ofstream(pause_file) << "go\n";
      absl::SleepFor(absl::Milliseconds(20));
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
  }

  std::unique_ptr<Cluster> c_;
  std::vector<std::string> guests_;
  std::string icd_;
};

// Samples whose state lives on the device across steps; `events` is left
// out of mid-run moves on purpose: after its step 1 a command waits on a
// user event the program sets in step 2, so its queue cannot drain there
// (a move is refused; SessionTest covers that refusal).
constexpr char kMidRun[] =
    "vector_add reduction image_ops sub_buffers multi_queue mandelbrot";

TEST_F(ForwardingTest, SamplesAndClinfoThroughTheLibraryMatchNative) {
  const auto native = Native("all");
  ASSERT_EQ(native.size(), 9u) << "native run incomplete";
  const std::string log = c_->Dir() + "/all.log";
  const pid_t app = StartApp(0, "vm-all", {"all"}, log);
  ASSERT_EQ(WaitExit(app, absl::Seconds(120)), 0) << ReadFile(log);
  EXPECT_EQ(Digests(ReadFile(log)), native) << ReadFile(log);

  // clinfo: everything but the platform's name is the host platform's.
  const std::string native_clinfo = Shell("env -u OCL_ICD_VENDORS clinfo");
  const std::string clog = c_->Dir() + "/clinfo.log";
  auto pid = c_->SpawnOnHost(
      0, {"/usr/bin/clinfo"},
      {"OCL_ICD_VENDORS=" + icd_, "VGPU_CL_BACKEND=" + guests_[0]}, clog);
  ASSERT_TRUE(pid.ok());
  ASSERT_EQ(WaitExit(*pid, absl::Seconds(30)), 0);
  const std::string forwarded = ReadFile(clog);
  EXPECT_TRUE(absl::StrContains(forwarded,
                                "vgpu-opencl on Portable Computing Language"));
  auto mask = [](std::string s, const std::string& name) {
    return absl::StrReplaceAll(s, {{name, "<platform name>"}});
  };
  EXPECT_EQ(mask(forwarded, "vgpu-opencl on Portable Computing Language"),
            mask(native_clinfo, "Portable Computing Language"));
}

TEST_F(ForwardingTest, LiveMigrationByVgpudInTheMiddleOfARun) {
  const auto native = Native(kMidRun);
  const std::string log = c_->Dir() + "/migrate.log";
  const std::string go = c_->Dir() + "/migrate.go";
  const pid_t app = StartApp(
      0, "vmcl", {"--pause-at", "2", "--pause-file", go, kMidRun}, log);
  ASSERT_TRUE(WaitForText(log, "PAUSED vector_add step 2", absl::Seconds(30)))
      << ReadFile(log);
  auto before = SessionOf(0, "vmcl");
  ASSERT_TRUE(before.ok()) << before.status();
  const uint64_t id = before->root().getSession();
  // vgpud registers the session by itself, under the VM its library named.
  bool registered = false;
  for (int i = 0; i < 100 && !registered; ++i) {
    auto vms = c_->List(0);
    ASSERT_TRUE(vms.ok());
    for (const VmView& v : *vms) {
      registered |= v.name == "vmcl" && v.strategies.size() == 1 &&
                    v.strategies[0] == "apiForwarding" &&
                    v.endpoints[0] == std::string(before->root().getControl());
    }
    if (!registered) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(registered) << "vgpud did not pick up the session";
  auto check = c_->Check(0, "vmcl", 1);
  ASSERT_TRUE(check.ok()) << check.status();
  auto job = c_->MigrateAndWait(0, "vmcl", 1);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, "done") << job->error;
  std::fprintf(stderr, "migrated a forwarded session: downtime %.1f ms, %u rounds\n",
               job->downtime_ms, job->rounds);
  // The session now lives on host 1 under the same identity; host 0 keeps
  // nothing of it, and vgpud knows the VM on host 1.
  auto after = SessionOf(1, "vmcl");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->root().getSession(), id);
  EXPECT_TRUE(absl::IsNotFound(SessionOf(0, "vmcl").status()));
  auto vms = c_->List(1);
  ASSERT_TRUE(vms.ok());
  bool listed = false;
  for (const VmView& v : *vms) listed |= v.name == "vmcl";
  EXPECT_TRUE(listed);

  ASSERT_EQ(ResumeToEnd(app, go), 0) << ReadFile(log);
  EXPECT_EQ(Digests(ReadFile(log)), native) << ReadFile(log);
  // The calls after the move ran on host 1.
  auto done = SessionOf(1, "vmcl");
  EXPECT_FALSE(done.ok()) << "the session ends with its program";
}

TEST_F(ForwardingTest, CheckpointKillAndRestoreInTheMiddleOfARun) {
  const auto native = Native(kMidRun);
  const std::string log = c_->Dir() + "/restore.log";
  const std::string go = c_->Dir() + "/restore.go";
  const pid_t app = StartApp(
      0, "vmck", {"--pause-at", "2", "--pause-file", go, kMidRun}, log);
  ASSERT_TRUE(WaitForText(log, "PAUSED vector_add step 2", absl::Seconds(30)))
      << ReadFile(log);
  auto s = SessionOf(0, "vmck");
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string image = c_->Dir() + "/vmck.vgi";
  auto st = forwarding::backend::CheckpointToFile(s->root().getControl(), image);
  ASSERT_TRUE(st.ok()) << st.status();
  // The host loses the session (its worker dies), then it is restored.
  ASSERT_EQ(kill(s->root().getPid(), SIGKILL), 0);
  absl::SleepFor(absl::Milliseconds(200));
  auto r = forwarding::backend::RestoreFromFile(c_->ClControl(0), image);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->session, s->root().getSession());
  ASSERT_EQ(ResumeToEnd(app, go), 0) << ReadFile(log);
  EXPECT_EQ(Digests(ReadFile(log)), native) << ReadFile(log);
}

TEST_F(ForwardingTest, AKilledWorkerFailsItsSessionAndSparesTheOthers) {
  const auto native = Native("vector_add reduction");
  const std::string calm_log = c_->Dir() + "/calm.log";
  const std::string calm_go = c_->Dir() + "/calm.go";
  const pid_t calm = StartApp(0, "vm-calm",
                              {"--pause-at", "1", "--pause-file", calm_go,
                               "vector_add", "reduction"},
                              calm_log);
  const std::string log = c_->Dir() + "/victim.log";
  const std::string go = c_->Dir() + "/victim.go";
  const pid_t victim =
      StartApp(0, "vm-victim",
               {"--pause-at", "1", "--pause-file", go, "--size", "2048",
                "mandelbrot"},
               log, /*reconnect_ms=*/1500);
  ASSERT_TRUE(WaitForText(log, "PAUSED", absl::Seconds(30))) << ReadFile(log);
  ASSERT_TRUE(WaitForText(calm_log, "PAUSED", absl::Seconds(30)));
  auto s = SessionOf(0, "vm-victim");
  ASSERT_TRUE(s.ok()) << s.status();
  // Let the victim launch its long kernel, then kill its worker mid-call.
  std::ofstream(go) << "go\n";
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_EQ(kill(s->root().getPid(), SIGKILL), 0);
  const absl::Time t0 = absl::Now();
  const int rc = ResumeToEnd(victim, go);
  EXPECT_EQ(rc, 1) << ReadFile(log);
  EXPECT_TRUE(absl::StrContains(ReadFile(log), "CL_OUT_OF_RESOURCES"))
      << ReadFile(log);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(15)) << "no hang";
  // The other session never noticed.
  ASSERT_EQ(ResumeToEnd(calm, calm_go), 0) << ReadFile(calm_log);
  EXPECT_EQ(Digests(ReadFile(calm_log)), native);
}

// A kernel that runs past the backend's call limit ends its session (the
// runtime cannot cancel it); the guest gets a CL error, the backend goes on.
TEST_F(ForwardingTest, ACallPastTheLimitEndsItsSessionOnly) {
  const std::string dir = c_->Dir() + "/limited";
  mkdir(dir.c_str(), 0755);
  const std::string guests = "unix:" + dir + "/cl.sock";
  auto backend = c_->SpawnOnHost(
      0,
      {Cluster::Runfile("agents/forwarding/backend/vgpu-cl-backend"),
       "--listen", guests, "--control", "unix:" + dir + "/clc.sock",
       "--run-dir", dir + "/run", "--call-limit", "1"},
      {}, dir + "/backend.log");
  ASSERT_TRUE(backend.ok());
  ASSERT_TRUE(WaitForText(dir + "/backend.log", "guests on", absl::Seconds(10)));
  const std::string log = dir + "/app.log";
  auto app = c_->SpawnOnHost(
      0, {Cluster::Runfile(kSamples), "--size", "8192", "mandelbrot"},
      {"OCL_ICD_VENDORS=" + icd_, "VGPU_CL_BACKEND=" + guests, "VGPU_VM=vm-long",
       "VGPU_CL_RECONNECT_MS=1500"},
      log);
  ASSERT_TRUE(app.ok());
  const absl::Time t0 = absl::Now();
  EXPECT_EQ(WaitExit(*app, absl::Seconds(30)), 1) << ReadFile(log);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(15));
  EXPECT_TRUE(absl::StrContains(ReadFile(log), "CL_OUT_OF_RESOURCES"))
      << ReadFile(log);
  EXPECT_TRUE(absl::StrContains(ReadFile(dir + "/backend.log"),
                                "past the limit of 1s"))
      << ReadFile(dir + "/backend.log");
  // The backend still serves: a short program runs through it.
  const std::string ok_log = dir + "/ok.log";
  auto ok = c_->SpawnOnHost(
      0, {Cluster::Runfile(kSamples), "vector_add"},
      {"OCL_ICD_VENDORS=" + icd_, "VGPU_CL_BACKEND=" + guests, "VGPU_VM=vm-ok"},
      ok_log);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(WaitExit(*ok, absl::Seconds(30)), 0) << ReadFile(ok_log);
  EXPECT_EQ(Digests(ReadFile(ok_log)), Native("vector_add"));
}

TEST_F(ForwardingTest, ALibraryOfAnotherAbiIsRefusedWithTheReason) {
  auto stream = forwarding::Dial(guests_[0], absl::Seconds(5));
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto g = forwarding::testing::RawGuest::Hello(std::move(*stream), "vm-old", 0,
                                                "", /*abi_major=*/2);
  ASSERT_FALSE(g.ok());
  EXPECT_TRUE(absl::StrContains(g.status().message(), "forwarding ABI 2.0"))
      << g.status();
  EXPECT_TRUE(absl::StrContains(g.status().message(), "speaks 1.x"))
      << g.status();
}

}  // namespace
}  // namespace vgpu::e2e
