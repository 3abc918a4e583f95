// Faults during a migration between vgpud hosts (RELIABILITY.md scenarios
// 1, 2, 3 and 13): the link cut during pre-copy and during stop-copy, the
// destination daemon killed, cancel in every phase, and a link that
// delays, drops, resets and corrupts (a userspace proxy). In every case
// the source runs again with its state unchanged, the destination keeps
// nothing, and a later migration succeeds.
#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e/checks.h"
#include "tests/e2e/cluster.h"
#include "tests/fault_proxy/fault_proxy.h"

namespace vgpu::e2e {
namespace {

constexpr uint64_t kVram = 64ull << 20;

struct World {
  std::unique_ptr<Cluster> c;
  std::string dev;
  uint64_t hash = 0;
};

// A cluster with vm1 on host1: 64 MiB of incompressible VRAM, so a
// bandwidth cap makes pre-copy last.
World MakeWorld(ClusterOptions options) {
  World w;
  auto c = Cluster::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return w;
  std::fprintf(stderr, "cluster mode: %s\n", (*c)->Mode().c_str());
  w.c = std::move(*c);
  auto dev = w.c->StartDevice("vm1-gpu0", "64M");
  EXPECT_TRUE(dev.ok()) << dev.status();
  w.dev = *dev;
  EXPECT_TRUE(FillRandom(w.dev, kVram, 7).ok());
  EXPECT_TRUE(w.c->Register(0, "vm1", {w.dev}).ok());
  auto h = VramHash(w.dev);
  EXPECT_TRUE(h.ok());
  w.hash = h.ok() ? *h : 0;
  return w;
}

// What every failed migration must leave: the source running with the
// same VRAM, nothing of vm1 at `dest`, and no device process there.
void ExpectCleanFailure(World& w, const JobView& job, int dest) {
  EXPECT_NE(job.state, "done");
  EXPECT_TRUE(job.source_resumed) << job.error;
  EXPECT_TRUE(DeviceRuns(w.dev)) << "the source must run again";
  auto h = VramHash(w.dev);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, w.hash) << "the source's state changed";
  // The destination tears down when it notices (at once, or after its
  // peer timeout for a silent link).
  const std::string run = w.c->Dir() + "/" + w.c->Name(dest) + "/run/";
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (Cluster::CountProcesses(run) > 0 && absl::Now() < deadline) {
    usleep(100 * 1000);
  }
  EXPECT_EQ(Cluster::CountProcesses(run), 0) << "a device is left at " << run;
  if (w.c->HostRunning(dest)) {
    auto list = w.c->List(dest);
    ASSERT_TRUE(list.ok());
    for (const VmView& v : *list) EXPECT_NE(v.name, "vm1");
    auto snaps = w.c->Snapshots(dest, "");
    ASSERT_TRUE(snaps.ok());
    EXPECT_TRUE(snaps->empty());
  }
}

MigrateOpts Slow() {
  MigrateOpts o;
  o.bandwidth = 16 << 20;  // 64 MiB of random VRAM: about 4 s of pre-copy
  return o;
}

TEST(Faults, LinkCutHalfwayThroughPrecopyThenRetryElsewhere) {
  World w = MakeWorld(Hosts(3));
  ASSERT_NE(w.c, nullptr);
  if (!w.c->netns()) GTEST_FAIL() << "needs network namespaces: " << w.c->Mode();
  auto job = w.c->Migrate(0, "vm1", 1, Slow());
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(w.c->WaitJob(0, *job, absl::Seconds(20), "precopy").ok());
  usleep(2000 * 1000);  // about half of the pre-copy
  auto mid = w.c->Job(0, *job);
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(mid->phase, "precopy");
  EXPECT_GT(mid->wire_bytes, 8u << 20);
  EXPECT_LT(mid->wire_bytes, 56u << 20);
  ASSERT_TRUE(w.c->CutLink(1).ok());
  absl::Time cut = absl::Now();
  auto end = w.c->WaitJob(0, *job, absl::Seconds(30));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "failed");
  EXPECT_LT(absl::Now() - cut, absl::Seconds(15)) << "the source noticed late";
  ExpectCleanFailure(w, *end, 1);

  auto retry = w.c->MigrateAndWait(0, "vm1", 2);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->state, "done") << retry->error;
}

TEST(Faults, LinkCutDuringStopCopyResumesTheSource) {
  World w = MakeWorld(Hosts(2));
  ASSERT_NE(w.c, nullptr);
  if (!w.c->netns()) GTEST_FAIL() << "needs network namespaces: " << w.c->Mode();
  MigrateOpts o;
  o.pause_at = "stopcopy";
  auto job = w.c->Migrate(0, "vm1", 1, o);
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(w.c->WaitJob(0, *job, absl::Seconds(20), "stopcopy").ok());
  ASSERT_TRUE(w.c->CutLink(1).ok());
  absl::Time cut = absl::Now();
  ASSERT_TRUE(w.c->Continue(0, *job).ok());
  auto end = w.c->WaitJob(0, *job, absl::Seconds(30));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "failed");
  EXPECT_LT(absl::Now() - cut, absl::Seconds(15));
  ExpectCleanFailure(w, *end, 1);
  ASSERT_TRUE(w.c->HealLink(1).ok());
  auto retry = w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->state, "done") << retry->error;
}

TEST(Faults, DestinationDaemonKilledDuringStopCopy) {
  World w = MakeWorld(Hosts(2));
  ASSERT_NE(w.c, nullptr);
  MigrateOpts o;
  o.pause_at = "stopcopy";
  auto job = w.c->Migrate(0, "vm1", 1, o);
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(w.c->WaitJob(0, *job, absl::Seconds(20), "stopcopy").ok());
  w.c->StopHost(1, SIGKILL);
  absl::Time killed = absl::Now();
  ASSERT_TRUE(w.c->Continue(0, *job).ok());
  auto end = w.c->WaitJob(0, *job, absl::Seconds(30));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "failed");
  EXPECT_LT(absl::Now() - killed, absl::Seconds(10));
  ExpectCleanFailure(w, *end, 1);
  ASSERT_TRUE(w.c->StartHost(1).ok());
  auto retry = w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->state, "done") << retry->error;
}

TEST(Faults, SourceDaemonKilledMidPrecopy) {
  World w = MakeWorld(Hosts(2));
  ASSERT_NE(w.c, nullptr);
  auto job = w.c->Migrate(0, "vm1", 1, Slow());
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(w.c->WaitJob(0, *job, absl::Seconds(20), "precopy").ok());
  usleep(1000 * 1000);
  w.c->StopHost(0, SIGKILL);
  // The device was in pre-copy (tracking on, still running): it runs on,
  // and the destination drops what it prepared when the link closes.
  EXPECT_TRUE(DeviceRuns(w.dev));
  const std::string run = w.c->Dir() + "/host2/run/";
  absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (Cluster::CountProcesses(run) > 0 && absl::Now() < deadline) {
    usleep(100 * 1000);
  }
  EXPECT_EQ(Cluster::CountProcesses(run), 0);
  auto list = w.c->List(1);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST(Faults, CancelInEveryPhaseThenMigrate) {
  World w = MakeWorld(Hosts(2));
  ASSERT_NE(w.c, nullptr);
  int from = 0, to = 1;
  std::string endpoint = w.dev;
  for (const char* phase :
       {"begin", "prepare", "precopy", "stopcopy", "finish", "confirm"}) {
    SCOPED_TRACE(phase);
    w.dev = endpoint;
    auto h = VramHash(endpoint);
    ASSERT_TRUE(h.ok());
    w.hash = *h;
    MigrateOpts o;
    o.pause_at = phase;
    auto job = w.c->Migrate(from, "vm1", to, o);
    ASSERT_TRUE(job.ok()) << job.status();
    ASSERT_TRUE(w.c->WaitJob(from, *job, absl::Seconds(20), phase).ok());
    ASSERT_TRUE(w.c->Cancel(from, *job).ok());
    auto end = w.c->WaitJob(from, *job, absl::Seconds(20));
    ASSERT_TRUE(end.ok());
    EXPECT_EQ(end->state, "cancelled") << end->error;
    EXPECT_EQ(end->error_code, 1);  // CANCELLED
    ExpectCleanFailure(w, *end, to);
    // The next migration of the VM goes through; then it comes back.
    auto next = w.c->MigrateAndWait(from, "vm1", to);
    ASSERT_TRUE(next.ok());
    ASSERT_EQ(next->state, "done") << next->error;
    EXPECT_EQ(w.c->Cancel(from, next->id).code(),
              absl::StatusCode::kFailedPrecondition);
    auto list = w.c->List(to);
    ASSERT_TRUE(list.ok());
    ASSERT_EQ(list->size(), 1u);
    endpoint = (*list)[0].endpoints[0];
    std::swap(from, to);
  }
}

// host1 reaches host2 through a fault proxy on this machine.
struct ProxiedWorld {
  World w;
  std::unique_ptr<fault_proxy::FaultProxy> proxy;
};

ProxiedWorld MakeProxied() {
  ProxiedWorld p;
  auto c = Cluster::Create(Hosts(2));
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return p;
  fault_proxy::FaultProxyOptions po;
  po.listen = (*c)->ProxyListenAddress() + ":0";
  po.upstream = (*c)->PeerAddress(1);
  auto proxy = fault_proxy::FaultProxy::Start(po);
  EXPECT_TRUE(proxy.ok()) << proxy.status();
  if (!proxy.ok()) return p;
  p.proxy = std::move(*proxy);
  (*c)->StopHost(0, SIGTERM);
  (*c)->OverridePeer(0, 1, p.proxy->address());
  EXPECT_TRUE((*c)->StartHost(0).ok());
  p.w.c = std::move(*c);
  auto dev = p.w.c->StartDevice("vm1-gpu0", "64M");
  EXPECT_TRUE(dev.ok());
  p.w.dev = *dev;
  EXPECT_TRUE(FillRandom(p.w.dev, kVram, 11).ok());
  EXPECT_TRUE(p.w.c->Register(0, "vm1", {p.w.dev}).ok());
  p.w.hash = *VramHash(p.w.dev);
  return p;
}

TEST(Faults, ProxyCorruptionIsDetectedAndNeverApplied) {
  ProxiedWorld p = MakeProxied();
  ASSERT_NE(p.proxy, nullptr);
  // One flipped bit a megabyte into the stream, after the TLS handshake.
  p.proxy->SetFlipAtOffset(1 << 20);
  auto end = p.w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "failed");
  EXPECT_GE(p.proxy->stats().client_to_upstream.flips, 1u);
  ExpectCleanFailure(p.w, *end, 1);
  p.proxy->SetFlipAtOffset(std::nullopt);
  auto retry = p.w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->state, "done") << retry->error;
}

TEST(Faults, ProxyResetAndDropAbortWithinTheBudget) {
  ProxiedWorld p = MakeProxied();
  ASSERT_NE(p.proxy, nullptr);
  p.proxy->SetResetAfterBytes(8 << 20);
  auto reset = p.w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(reset.ok());
  EXPECT_EQ(reset->state, "failed");
  ExpectCleanFailure(p.w, *reset, 1);
  p.proxy->SetResetAfterBytes(0);

  auto job = p.w.c->Migrate(0, "vm1", 1, Slow());
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(p.w.c->WaitJob(0, *job, absl::Seconds(20), "precopy").ok());
  usleep(500 * 1000);
  p.proxy->SetDrop(true);
  absl::Time dropped = absl::Now();
  auto end = p.w.c->WaitJob(0, *job, absl::Seconds(30));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "failed");
  EXPECT_LT(absl::Now() - dropped, absl::Seconds(15));
  ExpectCleanFailure(p.w, *end, 1);
  p.proxy->SetDrop(false);
}

TEST(Faults, ProxyDelayStillConverges) {
  ProxiedWorld p = MakeProxied();
  ASSERT_NE(p.proxy, nullptr);
  p.proxy->SetDelay(absl::Milliseconds(20));
  auto end = p.w.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->state, "done") << end->error;
  EXPECT_GT(end->downtime_ms, 20);  // at least a round trip of the link
}

}  // namespace
}  // namespace vgpu::e2e
