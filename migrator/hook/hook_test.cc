// The libvirt hook against a real vgpud (one host on loopback, with the
// reference mediated GPU): every operation it handles, domains that are
// not ours, malformed XML, an incompatible destination, vgpud unreachable
// or silent, the argument contract, and the installer.
#include "migrator/hook/hook.h"

#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "agents/mediated/mediated_agent.h"
#include "agents/mediated/reference_device.h"
#include "migrator/hook/domain_xml.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/control.capnp.h"

extern char** environ;

namespace vgpu::hook {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kUuid[] = "5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01";

std::string Dir() {
  // Under /tmp: Unix socket paths must fit 108 bytes, and Bazel's test
  // temporary directory is deeper than that.
  static std::string dir = [] {
    char tmpl[] = "/tmp/vgpu-hook-test.XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  return dir;
}

bool Accepts(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

int PortOf(int which) { return 20000 + (getpid() % 10000) * 2 + which; }

// One vgpud with a reference mediated GPU (type REF-4C, 32 MiB instances):
// h1 (the tests' host, index 1), or h0 (index 0, a source to pull from,
// with libvirt's test driver as its hypervisor). Each names the other as a
// peer on loopback.
class Vgpud {
 public:
  explicit Vgpud(int which = 1) {
    const std::string name = absl::StrCat("h", which);
    const std::string dir = absl::StrCat(Dir(), "/", name);
    mkdir(dir.c_str(), 0700);
    socket_ = dir + "/control.sock";
    std::ofstream(dir + "/vgpud.json")
        << R"({"mediated": {"reference": {"type": "REF-4C", "instances": 4,
              "vram": "32M", "workload": "4M"}})"
        << (which == 0 ? R"(, "libvirt": {"uri": "test:///default"})" : "")
        << "}";
    const std::string bin =
        absl::StrCat(std::getenv("TEST_SRCDIR"), "/vgpu_migrate/migrator/vgpud");
    std::vector<std::string> args = {
        bin, "--config", dir + "/vgpud.json", "--host", name, "--listen",
        absl::StrCat("127.0.0.1:", PortOf(which)), "--peer",
        absl::StrCat("h", 1 - which, "=127.0.0.1:", PortOf(1 - which)),
        "--control", socket_, "--store", dir + "/store",
        "--run-dir", dir + "/run", "--insecure"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, (dir + "/vgpud.log").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(),
                          environ),
              0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 200 && !Accepts(socket_); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  ~Vgpud() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  const std::string& socket() const { return socket_; }

  // VM names vgpud lists, and the health of the first VM's devices.
  std::vector<std::string> Vms(std::string* health = nullptr) {
    auto rpc = migrator::internal::RpcClient::ConnectUnix(socket_);
    if (!rpc.ok()) return {};
    auto api = (*rpc)->Bootstrap<schema::Control>();
    auto reply = (*rpc)->Wait(api.listVmsRequest().send(), absl::Seconds(5),
                              "list");
    std::vector<std::string> out;
    if (!reply.ok()) return out;
    for (auto v : reply->getVms()) {
      out.push_back(v.getName());
      if (health != nullptr && v.getDevices().size() > 0) {
        *health = v.getDevices()[0].getHealth();
      }
    }
    return out;
  }
  struct JobSeen {
    std::string kind, state, error, waiting;
  };
  // The jobs about VM `vm`, oldest first.
  std::vector<JobSeen> Jobs(const std::string& vm) {
    auto rpc = migrator::internal::RpcClient::ConnectUnix(socket_);
    std::vector<JobSeen> out;
    if (!rpc.ok()) return out;
    auto api = (*rpc)->Bootstrap<schema::Control>();
    auto reply = (*rpc)->Wait(api.jobsRequest().send(), absl::Seconds(5), "jobs");
    if (!reply.ok()) return out;
    for (auto j : reply->getJobs()) {
      if (vm != j.getVm().cStr()) continue;
      out.push_back({j.getKind(), j.getState(), j.getError().getMessage(),
                     j.getWaiting()});
    }
    return out;
  }
  // Starts a migration of `vm` to `to`, held at phase `pause`; its id.
  std::string Migrate(const std::string& vm, const std::string& to,
                      const std::string& pause) {
    auto rpc = migrator::internal::RpcClient::ConnectUnix(socket_);
    if (!rpc.ok()) return "";
    auto api = (*rpc)->Bootstrap<schema::Control>();
    auto req = api.migrateRequest();
    req.setVm(vm);
    req.setTo(to);
    req.initOptions().setPauseAt(pause);
    auto reply = (*rpc)->Wait(req.send(), absl::Seconds(5), "migrate");
    if (!reply.ok()) return "";
    const std::string id = reply->getJob();
    // Wait until it is held there.
    for (int i = 0; i < 200; ++i) {
      auto w = api.watchRequest();
      w.setJob(id);
      w.setWaitMs(50);
      auto st = (*rpc)->Wait(w.send(), absl::Seconds(5), "watch");
      if (st.ok() && pause == st->getStatus().getPhase().cStr()) break;
    }
    return id;
  }
  void Cancel(const std::string& job) {
    auto rpc = migrator::internal::RpcClient::ConnectUnix(socket_);
    if (!rpc.ok()) return;
    auto api = (*rpc)->Bootstrap<schema::Control>();
    auto req = api.cancelRequest();
    req.setJob(job);
    (void)(*rpc)->Wait(req.send(), absl::Seconds(5), "cancel");
  }
  // Waits (up to `seconds`) until no job about `vm` runs; the jobs then.
  std::vector<JobSeen> Settled(const std::string& vm, int seconds = 20) {
    for (int i = 0; i < seconds * 20; ++i) {
      auto jobs = Jobs(vm);
      bool running = false;
      for (const auto& j : jobs) running |= j.state == "running";
      if (!running) return jobs;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return Jobs(vm);
  }
  std::vector<std::string> SnapshotTags(const std::string& vm) {
    auto rpc = migrator::internal::RpcClient::ConnectUnix(socket_);
    auto api = (*rpc)->Bootstrap<schema::Control>();
    auto req = api.snapshotsRequest();
    req.setVm(vm);
    auto reply = (*rpc)->Wait(req.send(), absl::Seconds(5), "snapshots");
    std::vector<std::string> out;
    if (!reply.ok()) return out;
    for (auto s : reply->getSnapshots()) out.push_back(s.getTag());
    return out;
  }

 private:
  std::string socket_;
  pid_t pid_ = -1;
};

Vgpud* daemon = nullptr;
Vgpud* source = nullptr;

Vgpud& Daemon() {
  if (daemon == nullptr) daemon = new Vgpud(1);
  return *daemon;
}
Vgpud& Source() {
  if (source == nullptr) source = new Vgpud(0);
  return *source;
}

// Stops vgpud and removes the scratch directory when the tests end.
class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    delete daemon;
    daemon = nullptr;
    delete source;
    source = nullptr;
    // VGPU_KEEP_TEST_DIR=1 keeps the daemons' logs for a look.
    if (std::getenv("VGPU_KEEP_TEST_DIR") == nullptr) {
      std::system(absl::StrCat("rm -rf '", Dir(), "'").c_str());
    }
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

std::string DescriptorOf(const std::string& type) {
  agents::mediated::RefVgpuConfig c;
  c.name = kUuid;
  c.type = type;
  c.vram_bytes = 32 << 20;
  auto dev = agents::mediated::RefVgpu::Create(c);
  auto d = agents::mediated::DescribeMediated(**dev,
                                              agents::mediated::RefInfo(c));
  return EncodeDescriptor(*d);
}

// `source`: the host the metadata says holds the vGPUs.
std::string Domain(const std::string& name, const std::string& devices,
                   const std::string& source = "") {
  return absl::StrCat(
      "<domain type='kvm'><name>", name,
      "</name><uuid>6f1c2a9e-3b7d-4c1e-9a55-0d2f4e8b7c31</uuid>",
      devices.empty()
          ? ""
          : absl::StrCat("<metadata><vgpu:vm xmlns:vgpu='", kNamespace, "'",
                         source.empty() ? "" : " source='" + source + "'", ">",
                         devices, "</vgpu:vm></metadata>"),
      "<devices><hostdev mode='subsystem' type='mdev'><source><address uuid='",
      kUuid, "'/></source></hostdev></devices></domain>");
}

std::string Mediated(const std::string& descriptor_b64 = "") {
  return absl::StrCat(
      "<vgpu:device strategy='mediated' endpoint='", kUuid, "'>",
      descriptor_b64.empty()
          ? ""
          : absl::StrCat("<vgpu:descriptor>", descriptor_b64,
                         "</vgpu:descriptor>"),
      "</vgpu:device>");
}

HookOptions Options() {
  HookOptions o;
  o.socket = Daemon().socket();
  o.timeout = absl::Seconds(20);
  o.state_dir = Dir() + "/state";
  return o;
}

HookResult Hook(const std::string& domain, const std::string& op,
               const std::string& sub, const std::string& xml,
               const HookOptions& o = Options()) {
  return RunHook({domain, op, sub, "-"}, xml, o);
}

// The vGPU state is neither here nor on any host that would send it: the
// guest must not arrive without it. With no source in the metadata (or
// this host, or one nobody can reach), vgpud asks its peers (h0 here),
// and says what each answered.
TEST(Hook, MigrateBeginWithoutTheStateAnywhereIsRefused) {
  for (const std::string source : {"", "h1", "no-such-host.invalid"}) {
    HookResult r = Hook("vm1", "migrate", "begin",
                        Domain("vm1", Mediated(DescriptorOf("REF-4C")), source));
    EXPECT_EQ(r.exit_code, 1) << source;
    EXPECT_THAT(r.err, HasSubstr("vm1 migrate begin: refused: pulling the "
                                 "vGPUs: no host sends vm1: "))
        << source;
    EXPECT_THAT(r.err, HasSubstr("h0: ")) << source;
    EXPECT_EQ(r.out, "");
    if (source == "no-such-host.invalid") {
      EXPECT_THAT(r.err, HasSubstr("no-such-host.invalid: peer "
                                   "no-such-host.invalid: cannot resolve"));
    }
  }
}

HookOptions SourceOptions() {
  HookOptions o = Options();
  o.socket = Source().socket();
  o.state_dir = Dir() + "/state0";
  return o;
}

// h1's hook is asked to take "test" (the domain libvirt's test driver runs
// on h0) while no libvirt migration of it runs on h0: h0 refuses to send
// its vGPU state (a peer gets a VM's vGPUs only while the guest goes to
// it), h1's hook vetoes, and everything stays as it was. The pull that
// libvirt does drive is tests/libvirt/migrate_e2e.sh's.
TEST(Hook, APullOfAGuestLibvirtIsNotMigratingIsRefused) {
  ASSERT_EQ(RunHook({"test", "prepare", "begin", "-"},
                    Domain("test", Mediated()), SourceOptions())
                .exit_code,
            0);
  ASSERT_THAT(Source().Vms(), ::testing::Contains("test"));

  HookResult r = Hook("test", "migrate", "begin",
                      Domain("test", Mediated(DescriptorOf("REF-4C")), "h0"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(
                         "refused: pulling the vGPUs: no host sends test: "
                         "h0: libvirt is not migrating test away (domain test is running here "
                         "with no migration under way): its vGPUs go only "
                         "where its guest goes"));
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(Source().Jobs("test").empty()) << "h0 started nothing";
  std::string health;
  ASSERT_THAT(Source().Vms(&health), ::testing::Contains("test"));
  EXPECT_THAT(health, HasSubstr("RUNNING"));
  auto pulls = Daemon().Settled("test");
  ASSERT_EQ(pulls.size(), 1u);
  EXPECT_EQ(pulls[0].kind, "pull");
  EXPECT_EQ(pulls[0].state, "failed");
  EXPECT_THAT(Daemon().Vms(), Not(::testing::Contains("test")));
  EXPECT_EQ(RunHook({"test", "release", "end", "-"}, Domain("test", Mediated()),
                    SourceOptions())
                .exit_code,
            0);
}

// libvirt stops a domain whose vGPUs a migration is moving away (as after
// a live migration): they are the destination's, so the hook saves
// nothing. The migration is held at pre-copy (a test seam) to look.
TEST(Hook, StoppedEndSavesNothingOfVgpusThatAreLeaving) {
  ASSERT_EQ(RunHook({"vm5", "prepare", "begin", "-"}, Domain("vm5", Mediated()),
                    SourceOptions())
                .exit_code,
            0);
  const std::string job = Source().Migrate("vm5", "h1", "precopy");
  ASSERT_THAT(job, ::testing::StartsWith("h0-migrate-"));
  HookResult stopped = RunHook({"vm5", "stopped", "end", "-"},
                               Domain("vm5", Mediated()), SourceOptions());
  EXPECT_EQ(stopped.exit_code, 0);
  EXPECT_THAT(stopped.err,
              HasSubstr("vm5: vGPUs are leaving with job " + job));
  EXPECT_THAT(Source().SnapshotTags("vm5"), ::testing::IsEmpty());
  Source().Cancel(job);
  auto after = Source().Settled("vm5");
  ASSERT_FALSE(after.empty());
  EXPECT_EQ(after.back().state, "cancelled");
  EXPECT_EQ(RunHook({"vm5", "release", "end", "-"}, Domain("vm5", Mediated()),
                    SourceOptions())
                .exit_code,
            0);
}

// A pull needs a source that can watch the guest (a libvirt connection)
// and a guest there to watch.
TEST(Hook, APullNeedsASourceThatCanFollowTheGuest) {
  const std::string desc = DescriptorOf("REF-4C");
  ASSERT_EQ(Hook("vm8", "prepare", "begin", Domain("vm8", Mediated())).exit_code,
            0);
  HookResult r = RunHook({"vm8", "migrate", "begin", "-"},
                         Domain("vm8", Mediated(desc), "h1"), SourceOptions());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("h1 cannot follow the guest of vm8: it has no "
                               "libvirt connection"));
  EXPECT_THAT(Daemon().Vms(), ::testing::Contains("vm8")) << "left alone";
  EXPECT_EQ(Hook("vm8", "release", "end", Domain("vm8", Mediated())).exit_code,
            0);

  ASSERT_EQ(RunHook({"vm9", "prepare", "begin", "-"}, Domain("vm9", Mediated()),
                    SourceOptions())
                .exit_code,
            0);
  r = Hook("vm9", "migrate", "begin", Domain("vm9", Mediated(desc), "h0"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("has no running domain vm9 to follow"));
  EXPECT_EQ(RunHook({"vm9", "release", "end", "-"}, Domain("vm9", Mediated()),
                    SourceOptions())
                .exit_code,
            0);
}

// The vGPU state arrived first (as vgpu-migrate --to does): the domain XML
// that comes with the guest names the source's mdev; the hook rewrites it
// to the instance that took the state here.
TEST(Hook, MigrateBeginRewritesMdevUuidsToThisHostsInstances) {
  const std::string here = "0b9c6a3e-1d2b-4e8f-9c6a-0b1d2e3f4a77";
  std::string xml = Domain("vm7", "<vgpu:device strategy='mediated' "
                                   "endpoint='" + here + "'/>");
  ASSERT_EQ(Hook("vm7", "prepare", "begin", xml).exit_code, 0);
  ASSERT_THAT(Daemon().Vms(), ::testing::Contains("vm7"));
  // The incoming domain still names the source's instance (kUuid).
  HookResult r = Hook("vm7", "migrate", "begin",
                      Domain("vm7", Mediated(DescriptorOf("REF-4C"))));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_FALSE(r.out.empty());
  auto info = ReadDomain(r.out);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->mdevs, std::vector<std::string>{here});
  EXPECT_EQ((*info->vgpus)[0].endpoint, here);
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(kUuid, " is ", here)));
  EXPECT_EQ(Hook("vm7", "release", "end", xml).exit_code, 0);
}

TEST(Hook, MigrateBeginVetoesAnIncompatibleDestination) {
  HookResult r = Hook("vm1", "migrate", "begin",
                     Domain("vm1", Mediated(DescriptorOf("REF-8C"))));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("vm1 migrate begin: refused"));
  EXPECT_THAT(r.err, HasSubstr("vendor-type"));
  EXPECT_THAT(r.err, HasSubstr("REF-8C"));
}

TEST(Hook, DomainsWithoutTheMetadataAreNotOurs) {
  for (const char* op : {"migrate", "prepare", "restore"}) {
    HookResult r = Hook("plain", op, "begin", Domain("plain", ""));
    EXPECT_EQ(r.exit_code, 0) << op << ": " << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
  }
  // Nothing reached vgpud: no VM named plain.
  EXPECT_THAT(Daemon().Vms(), ::testing::Not(::testing::Contains("plain")));
}

TEST(Hook, MalformedXmlIsRefusedWhereRefusingIsPossible) {
  HookResult r = Hook("vm1", "migrate", "begin", "<domain><name>vm1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("does not parse: line 1"));
  r = Hook("vm1", "stopped", "end", "not xml at all");
  EXPECT_EQ(r.exit_code, 0) << "a stop cannot be refused, only reported";
  EXPECT_THAT(r.err, HasSubstr("does not parse"));
  r = Hook("vm1", "migrate", "begin",
          Domain("vm1", "<vgpu:device strategy='mediated'/>"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("device 0 lacks its endpoint attribute"));
}

TEST(Hook, UnreachableOrSilentVgpudIsARefusalWithinTheTimeout) {
  HookOptions o = Options();
  o.socket = Dir() + "/nobody.sock";
  HookResult r = Hook("vm1", "migrate", "begin",
                     Domain("vm1", Mediated(DescriptorOf("REF-4C"))), o);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot reach vgpud at " + o.socket));
  // A socket that accepts and never answers.
  const std::string silent = Dir() + "/silent.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", silent.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  o.socket = silent;
  o.timeout = absl::Seconds(2);
  const auto start = std::chrono::steady_clock::now();
  r = Hook("vm1", "prepare", "begin", Domain("vm1", Mediated()), o);
  const double secs = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - start)
                          .count();
  close(fd);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no answer within"));
  EXPECT_LT(secs, 5.0) << "the hook must not wedge libvirt";
}

TEST(Hook, ArgumentsAndUnhandledOperations) {
  HookResult r = RunHook({"vm1", "migrate"}, "", Options());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("got 2 argument(s)"));
  for (const char* op : {"start", "started", "reconnect", "attach"}) {
    r = Hook("vm1", op, "begin", Domain("vm1", Mediated()));
    EXPECT_EQ(r.exit_code, 0) << op;
    EXPECT_EQ(r.err, "") << op;
  }
}

// prepare registers; stopped saves the vGPU state; release forgets the
// VM; restore + prepare bring the saved state back.
TEST(Hook, LifecycleThroughVgpud) {
  const std::string xml = Domain("vm9", Mediated());
  HookResult r = Hook("vm9", "prepare", "begin", xml);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string health;
  std::vector<std::string> vms = Daemon().Vms(&health);
  ASSERT_THAT(vms, ::testing::Contains("vm9"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  r = Hook("vm9", "stopped", "end", xml);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("vGPU state saved"));
  EXPECT_THAT(Daemon().SnapshotTags("vm9"),
              ::testing::Contains("libvirt-stopped"));

  r = Hook("vm9", "release", "end", xml);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(Daemon().Vms(), ::testing::Not(::testing::Contains("vm9")));

  r = Hook("vm9", "restore", "begin",
          Domain("vm9", Mediated(DescriptorOf("REF-4C"))));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Hook("vm9", "prepare", "begin", xml);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("vGPU state restored from snapshot"));
  vms = Daemon().Vms(&health);
  EXPECT_THAT(vms, ::testing::Contains("vm9"));
  // The restored vGPU passes its own consistency check.
  bool found = false;
  for (int i = 0; i < 20 && !found; ++i) {
    Daemon().Vms(&health);
    found = health.find("stamps intact") != std::string::npos;
  }
  EXPECT_TRUE(found) << health;

  // Restoring a domain whose state was never saved here is refused.
  r = Hook("never", "restore", "begin", Domain("never", Mediated()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Hook("never", "prepare", "begin", Domain("never", Mediated()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no snapshot tagged libvirt-stopped of never"));
}

TEST(Hook, InstallWritesTheScriptAndSaysToRestart) {
  const std::string hooks = Dir() + "/hooks";
  HookOptions o = Options();
  const std::string self = absl::StrCat(std::getenv("TEST_SRCDIR"),
                                        "/vgpu_migrate/migrator/vgpud");
  auto r = Install(hooks, self, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->restart_needed);
  EXPECT_EQ(r->path, hooks + "/qemu.d/50-vgpu-migrate");
  struct stat st;
  ASSERT_EQ(stat(r->path.c_str(), &st), 0);
  EXPECT_TRUE(st.st_mode & S_IXUSR);
  std::ifstream f(r->path);
  std::string text((std::istreambuf_iterator<char>(f)),
                   std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("--socket '" + o.socket + "'"));
  EXPECT_THAT(text, HasSubstr("--timeout 20"));
  auto again = Install(hooks, self, o);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->restart_needed) << "qemu.d existed already";
  EXPECT_EQ(Install(hooks, Dir() + "/no-such-binary", o).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace vgpu::hook
