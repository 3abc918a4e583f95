// End-to-end migration between vgpud hosts (network namespaces as root):
// the counter workload's invariant across a live migration and a chain of
// them, compatibility refusals, and snapshot/restore through vgpud
// (RELIABILITY.md scenarios 7 and 11's chained A -> B -> C).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "agents/emulated/command.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e/checks.h"
#include "tests/e2e/cluster.h"

namespace vgpu::e2e {
namespace {

std::unique_ptr<Cluster> MakeCluster(const ClusterOptions& options) {
  auto c = Cluster::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  std::fprintf(stderr, "cluster of %d hosts, mode: %s\n", (*c)->size(),
               (*c)->Mode().c_str());
  return std::move(*c);
}

std::string EndpointOf(Cluster& c, int host, const std::string& vm) {
  auto list = c.List(host);
  if (!list.ok()) return "";
  for (const VmView& v : *list) {
    if (v.name == vm && !v.endpoints.empty()) return v.endpoints[0];
  }
  return "";
}

TEST(Migration, WorkloadInvariantHoldsAndSourceStaysFrozen) {
  auto c = MakeCluster(Hosts(2));
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "64M");
  ASSERT_TRUE(dev.ok()) << dev.status();
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  auto wl = c->StartWorkload(*dev, 4000);
  ASSERT_TRUE(wl.ok());
  usleep(800 * 1000);

  auto job = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, "done") << job->error;
  EXPECT_GT(job->downtime_ms, 0);
  EXPECT_GE(job->rounds, 1u);
  EXPECT_GE(job->raw_bytes, 64u << 20);
  Cluster::KillProcess(*wl);

  // The source is stopped for good: its memory no longer changes.
  auto frozen = CountersOf(*dev);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  usleep(300 * 1000);
  auto still = CountersOf(*dev);
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(frozen->base, still->base);
  EXPECT_EQ(frozen->prefix, still->prefix);
  EXPECT_GT(frozen->Total(*agents::emulated::WorkloadLayout::For(64 << 20)), 0u)
      << "the workload never ran before the migration";

  // The VM lives on host2 only, with the source's exact counters, and the
  // workload carries on there.
  EXPECT_EQ(EndpointOf(*c, 0, "vm1"), "");
  std::string there = EndpointOf(*c, 1, "vm1");
  ASSERT_NE(there, "");
  auto arrived = CountersOf(there);
  ASSERT_TRUE(arrived.ok()) << arrived.status();
  // The destination also ran the commands that were still queued in the
  // ring when the source stopped (they travel with the ring): it may be
  // ahead of the frozen source by at most a ring's worth, never behind.
  EXPECT_TRUE(agents::emulated::CheckProgress(*frozen, *arrived, false).ok());
  const auto layout = *agents::emulated::WorkloadLayout::For(64 << 20);
  EXPECT_LE(arrived->Total(layout) - frozen->Total(layout),
            agents::emulated::kRingCapacity);
  auto after = RunWorkload(there, *arrived, 3000);
  EXPECT_TRUE(after.ok()) << after.status();
}

TEST(Migration, ChainHost1ToHost2ToHost3ToHost1) {
  auto c = MakeCluster(Hosts(3));
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "32M");
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  agents::emulated::CounterState last;
  std::string endpoint = *dev;
  int at = 0;
  for (int to : {1, 2, 0}) {
    // Work happens on every host before it moves on.
    auto ran = RunWorkload(endpoint, last, 2000);
    ASSERT_TRUE(ran.ok()) << "on " << c->Name(at) << ": " << ran.status();
    last = *ran;
    auto job = c->MigrateAndWait(at, "vm1", to);
    ASSERT_TRUE(job.ok()) << job.status();
    ASSERT_EQ(job->state, "done") << c->Name(at) << " -> " << c->Name(to)
                                  << ": " << job->error;
    endpoint = EndpointOf(*c, to, "vm1");
    ASSERT_NE(endpoint, "");
    EXPECT_EQ(EndpointOf(*c, at, "vm1"), "");
    at = to;
  }
  auto arrived = CountersOf(endpoint);
  ASSERT_TRUE(arrived.ok());
  EXPECT_EQ(arrived->base, last.base);
  EXPECT_EQ(arrived->prefix, last.prefix);
  EXPECT_TRUE(RunWorkload(endpoint, last, 1000).ok());
}

TEST(Migration, CompatibilityRefusalNamesTheRuleAndMovesNothing) {
  ClusterOptions o = Hosts(2);
  o.max_vram[1] = "32M";  // host2 hosts emulated vGPUs up to 32 MiB
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "64M");
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  auto before = VramHash(*dev);
  ASSERT_TRUE(before.ok());

  auto check = c->Check(0, "vm1", 1);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->state, "refused");
  EXPECT_EQ(check->refused_rules, std::vector<std::string>{"vram"});

  auto job = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, "failed");
  EXPECT_EQ(job->error_code, 9) << job->error;  // FAILED_PRECONDITION
  EXPECT_NE(job->error.find("vram"), std::string::npos) << job->error;
  EXPECT_EQ(job->refused_rules, std::vector<std::string>{"vram"});
  EXPECT_TRUE(job->source_resumed);
  EXPECT_EQ(job->raw_bytes, 0u);  // refused before a byte moved
  EXPECT_EQ(EndpointOf(*c, 1, "vm1"), "");
  EXPECT_EQ(Cluster::CountProcesses(c->Dir() + "/host2/run/"), 0);
  EXPECT_TRUE(DeviceRuns(*dev));
  EXPECT_EQ(*VramHash(*dev), *before);

  // Asking a host about a VM it does not have is NOT_FOUND.
  EXPECT_EQ(c->Check(1, "vm1", 0).status().code(), absl::StatusCode::kNotFound);
}

TEST(Migration, SnapshotAndRestoreThroughVgpud) {
  auto c = MakeCluster(Hosts(1));
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "32M");
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  auto ran = RunWorkload(*dev, {}, 3000);
  ASSERT_TRUE(ran.ok()) << ran.status();

  auto job = c->Snapshot(0, "vm1", "t1");
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = c->WaitJob(0, *job, absl::Seconds(60));
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state, "done") << done->error;
  ASSERT_FALSE(done->snapshot.empty());
  EXPECT_TRUE(DeviceRuns(*dev)) << "the source must run again after a snapshot";
  auto list = c->Snapshots(0, "vm1");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(*list, std::vector<std::string>{done->snapshot});

  // The source goes on; the restored copy holds the snapshot's state.
  auto later = RunWorkload(*dev, *ran, 1000);
  ASSERT_TRUE(later.ok());
  auto restore = c->Restore(0, done->snapshot, "vm1-copy");
  ASSERT_TRUE(restore.ok()) << restore.status();
  auto restored = c->WaitJob(0, *restore, absl::Seconds(60));
  ASSERT_TRUE(restored.ok());
  ASSERT_EQ(restored->state, "done") << restored->error;
  std::string copy = EndpointOf(*c, 0, "vm1-copy");
  ASSERT_NE(copy, "");
  auto counters = CountersOf(copy);
  ASSERT_TRUE(counters.ok()) << counters.status();
  EXPECT_EQ(counters->base, ran->base);
  EXPECT_EQ(counters->prefix, ran->prefix);
  EXPECT_TRUE(RunWorkload(copy, *counters, 500).ok());

  // Restoring over a VM that exists is refused and changes nothing.
  auto again = c->Restore(0, done->snapshot, "vm1");
  ASSERT_TRUE(again.ok());
  auto refused = c->WaitJob(0, *again, absl::Seconds(30));
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->state, "failed");
  EXPECT_NE(refused->error.find("already exists"), std::string::npos)
      << refused->error;
}

TEST(Migration, LiveSnapshotUnderTheWorkloadRestoresAConsistentState) {
  auto c = MakeCluster(Hosts(1));
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "64M");
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  auto before = RunWorkload(*dev, {}, 2000);
  ASSERT_TRUE(before.ok());
  auto wl = c->StartWorkload(*dev, 8000);  // writes during the snapshot
  ASSERT_TRUE(wl.ok());
  usleep(500 * 1000);
  auto job = c->Snapshot(0, "vm1", "live");
  ASSERT_TRUE(job.ok());
  auto done = c->WaitJob(0, *job, absl::Seconds(60));
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state, "done") << done->error;
  EXPECT_GE(done->rounds, 1u) << "no pre-copy round before the stop";
  EXPECT_TRUE(DeviceRuns(*dev));
  Cluster::KillProcess(*wl);

  auto restore = c->Restore(0, done->snapshot, "vm1-copy");
  ASSERT_TRUE(restore.ok());
  auto restored = c->WaitJob(0, *restore, absl::Seconds(60));
  ASSERT_TRUE(restored.ok());
  ASSERT_EQ(restored->state, "done") << restored->error;
  std::string copy = EndpointOf(*c, 0, "vm1-copy");
  ASSERT_NE(copy, "");
  // Rounds taken while the guest wrote, overlaid in the store: the result
  // must still be one consistent moment of the counters, past `before`.
  auto counters = CountersOf(copy);
  ASSERT_TRUE(counters.ok()) << counters.status();
  EXPECT_TRUE(agents::emulated::CheckProgress(*before, *counters, true).ok());
  EXPECT_TRUE(RunWorkload(copy, *counters, 500).ok());
}

// Runs vgpu-migrate against host `host`; returns its exit status and
// output (stdout and stderr).
int Cli(Cluster& c, int host, const std::string& args, std::string* out) {
  std::string cmd = Cluster::Runfile("migrator/vgpu-migrate") + " --socket " +
                    c.Control(host) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  out->clear();
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  int rc = pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(Cli, ExitCodesAndErrorsAUserSees) {
  ClusterOptions o = Hosts(2);
  o.max_vram[1] = "8M";
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "16M");
  ASSERT_TRUE(dev.ok());
  std::string out;
  ASSERT_EQ(Cli(*c, 0, "register vm1 --device emulation:" + *dev, &out), 0)
      << out;
  EXPECT_EQ(Cli(*c, 0, "list", &out), 0);
  EXPECT_NE(out.find("vm1"), std::string::npos) << out;
  EXPECT_NE(out.find("16.0 MiB"), std::string::npos) << out;

  // Refused by the compatibility check: exit 3 and the rule in the table.
  EXPECT_EQ(Cli(*c, 0, "--check --to host2 vm1", &out), 3) << out;
  EXPECT_NE(out.find("REFUSED"), std::string::npos) << out;
  EXPECT_NE(out.find("vram"), std::string::npos) << out;
  EXPECT_EQ(Cli(*c, 0, "--to host2 vm1", &out), 3) << out;
  EXPECT_NE(out.find("running again"), std::string::npos) << out;

  EXPECT_EQ(Cli(*c, 0, "--to nowhere vm1", &out), 1);
  EXPECT_NE(out.find("nowhere"), std::string::npos) << out;
  EXPECT_EQ(Cli(*c, 0, "--to host2 vm9", &out), 1);
  EXPECT_NE(out.find("no VM named vm9"), std::string::npos) << out;
  std::string missing = c->Dir() + "/nothing.sock";
  FILE* p = popen((Cluster::Runfile("migrator/vgpu-migrate") + " --socket " +
                   missing + " list 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512] = {0};
  size_t n = fread(buf, 1, sizeof(buf) - 1, p);
  buf[n] = 0;
  EXPECT_EQ(WEXITSTATUS(pclose(p)), 1);
  EXPECT_NE(std::string(buf).find("is vgpud running?"), std::string::npos) << buf;

  // A snapshot, JSON for machines.
  EXPECT_EQ(Cli(*c, 0, "--json snapshot vm1 --tag t", &out), 0) << out;
  EXPECT_NE(out.find("\"state\": \"done\""), std::string::npos) << out;
  EXPECT_EQ(Cli(*c, 0, "verify", &out), 0) << out;
  EXPECT_NE(out.find("all intact"), std::string::npos) << out;
}

TEST(Daemon, SigtermDuringAMigrationResumesTheSourceAndExitsZero) {
  auto c = MakeCluster(Hosts(2));
  ASSERT_NE(c, nullptr);
  auto dev = c->StartDevice("vm1-gpu0", "32M");
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(FillRandom(*dev, 32 << 20, 5).ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  MigrateOpts slow;
  slow.bandwidth = 8 << 20;
  auto job = c->Migrate(0, "vm1", 1, slow);
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(c->WaitJob(0, *job, absl::Seconds(20), "precopy").ok());
  usleep(500 * 1000);
  int status = c->StopHost(0, SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "vgpud did not exit 0 on SIGTERM: wait status " << status;
  EXPECT_TRUE(DeviceRuns(*dev)) << "vgpud stopped without resuming the source";
  // host2 drops what it prepared once the link closes.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Cluster::CountProcesses(c->Dir() + "/host2/run/") > 0 &&
         absl::Now() < deadline) {
    usleep(100 * 1000);
  }
  EXPECT_EQ(Cluster::CountProcesses(c->Dir() + "/host2/run/"), 0);
  // A restarted host1 knows nothing of vm1 until it is registered again,
  // and the migration then goes through.
  ASSERT_TRUE(c->StartHost(0).ok());
  ASSERT_TRUE(c->Register(0, "vm1", {*dev}).ok());
  auto done = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state, "done") << done->error;
}

}  // namespace
}  // namespace vgpu::e2e
