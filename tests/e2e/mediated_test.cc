// End to end, mediated and direct pass-through: vgpud hosts on network
// namespaces with the reference mediated GPU, a VM with two mediated vGPUs
// whose contexts keep running moves between them (both vGPUs through the
// P2P states), a host offering another vGPU type refuses it up front, and
// a whole GPU passed through without VFIO migration is refused with the
// reason before anything moves.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster.h"

namespace vgpu::e2e {
namespace {

constexpr char kGpu0[] = "6f1c2a8e-3b7d-4c55-9a10-2d4e8b7f0a01";
constexpr char kGpu1[] = "6f1c2a8e-3b7d-4c55-9a10-2d4e8b7f0a02";

std::string Reference(const std::string& type, int instances) {
  return absl::StrCat(R"("mediated": {"reference": {"type": ")", type,
                      R"(", "instances": )", instances,
                      R"(, "vram": "32M", "workload": "4M"}})");
}

std::unique_ptr<Cluster> MakeCluster(const ClusterOptions& options) {
  auto c = Cluster::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  std::fprintf(stderr, "cluster of %d hosts, mode: %s\n", (*c)->size(),
               (*c)->Mode().c_str());
  return std::move(*c);
}

const VmView* FindVm(const std::vector<VmView>& vms, const std::string& name) {
  for (const VmView& v : vms) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

// The context sequence numbers a reference vGPU's health line reports.
std::vector<uint64_t> Sequences(const std::string& health) {
  std::vector<uint64_t> out;
  size_t at = health.find("context sequences ");
  if (at == std::string::npos) return out;
  for (absl::string_view n : absl::StrSplit(
           health.substr(at + strlen("context sequences ")), '/')) {
    uint64_t v = 0;
    if (absl::SimpleAtoi(n, &v)) out.push_back(v);
  }
  return out;
}

TEST(Mediated, TwoVgpusWithRunningContextsMoveTogether) {
  ClusterOptions o = Hosts(2);
  o.extra_config[0] = Reference("REF-4C", 4);
  o.extra_config[1] = Reference("REF-4C", 4);
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  // Registering unused UUIDs creates the instances, whose guests start.
  ASSERT_TRUE(c->RegisterDevices(0, "vm1",
                                 {absl::StrCat("mediated:", kGpu0),
                                  absl::StrCat("mediated:", kGpu1)})
                  .ok());
  usleep(500 * 1000);
  auto before = c->List(0);
  ASSERT_TRUE(before.ok());
  const VmView* v = FindVm(*before, "vm1");
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->health.size(), 2u);
  for (const std::string& h : v->health) {
    EXPECT_TRUE(absl::StartsWith(h, "RUNNING; stamps intact")) << h;
  }
  std::vector<uint64_t> seq_before = Sequences(v->health[0]);
  ASSERT_EQ(seq_before.size(), 4u);
  EXPECT_GT(seq_before[0], 0u) << "the guest runs";

  auto check = c->Check(0, "vm1", 1);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->state, "compatible") << check->error;

  auto job = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ(job->state, "done") << job->error;
  EXPECT_GT(job->downtime_ms, 0);
  // Pages never written travel as zero runs; the stamped pages and eight
  // context images (about 29 KiB each) are real bytes.
  EXPECT_GT(job->raw_bytes, 1u << 20);

  // The source no longer has the VM; the destination runs it, its
  // contexts carrying on from the migrated sequence numbers.
  auto src = c->List(0);
  ASSERT_TRUE(src.ok());
  EXPECT_EQ(FindVm(*src, "vm1"), nullptr);
  auto after = c->List(1);
  ASSERT_TRUE(after.ok());
  v = FindVm(*after, "vm1");
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->strategies, (std::vector<std::string>{"mediated", "mediated"}));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(absl::StartsWith(v->health[i], "RUNNING; stamps intact"))
        << v->health[i];
    EXPECT_EQ(v->problems[i], "");
  }
  std::vector<uint64_t> arrived = Sequences(v->health[0]);
  ASSERT_EQ(arrived.size(), 4u);
  for (int k = 0; k < 4; ++k) EXPECT_GE(arrived[k], seq_before[k]) << k;
  usleep(500 * 1000);
  auto later = c->List(1);
  ASSERT_TRUE(later.ok());
  std::vector<uint64_t> running = Sequences(FindVm(*later, "vm1")->health[0]);
  ASSERT_EQ(running.size(), 4u);
  EXPECT_GT(running[0], arrived[0]) << "the guest keeps running on host2";
  EXPECT_TRUE(absl::StartsWith(FindVm(*later, "vm1")->health[0],
                               "RUNNING; stamps intact"));

  // And back, into the instances host1 has free again.
  auto back = c->MigrateAndWait(1, "vm1", 0);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->state, "done") << back->error;
}

// A live snapshot of the running vGPUs (pre-copy rounds overlaid in the
// store, context images replaced by their newest) restores into fresh
// instances that pass the stamp check and run on.
TEST(Mediated, LiveSnapshotRestoresIntoFreshInstances) {
  ClusterOptions o = Hosts(1);
  o.extra_config[0] = Reference("REF-4C", 4);
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->RegisterDevices(0, "vm1",
                                 {absl::StrCat("mediated:", kGpu0),
                                  absl::StrCat("mediated:", kGpu1)})
                  .ok());
  usleep(500 * 1000);
  auto job = c->Snapshot(0, "vm1", "t1");
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = c->WaitJob(0, *job, absl::Seconds(60));
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state, "done") << done->error;
  auto list = c->List(0);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(absl::StartsWith(FindVm(*list, "vm1")->health[0], "RUNNING"))
      << "the source runs again after the snapshot";

  auto restore = c->Restore(0, done->snapshot, "vm1-copy");
  ASSERT_TRUE(restore.ok()) << restore.status();
  auto restored = c->WaitJob(0, *restore, absl::Seconds(60));
  ASSERT_TRUE(restored.ok());
  ASSERT_EQ(restored->state, "done") << restored->error;
  list = c->List(0);
  ASSERT_TRUE(list.ok());
  const VmView* copy = FindVm(*list, "vm1-copy");
  ASSERT_NE(copy, nullptr);
  ASSERT_EQ(copy->health.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NE(copy->endpoints[i], kGpu0);
    EXPECT_NE(copy->endpoints[i], kGpu1);
    EXPECT_TRUE(absl::StartsWith(copy->health[i], "RUNNING; stamps intact"))
        << copy->health[i];
    EXPECT_GT(Sequences(copy->health[i])[0], 0u);
  }
  // Four instances: two for vm1, two for the copy; a second copy is more
  // than the reference GPU has, and fails without leaving anything.
  auto more = c->Restore(0, done->snapshot, "vm1-copy2");
  ASSERT_TRUE(more.ok());
  auto full = c->WaitJob(0, *more, absl::Seconds(60));
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->state, "failed");
  list = c->List(0);
  EXPECT_EQ(FindVm(*list, "vm1-copy2"), nullptr);
}

TEST(Mediated, AnotherVgpuTypeIsRefusedBeforeAnythingMoves) {
  ClusterOptions o = Hosts(2);
  o.extra_config[0] = Reference("REF-4C", 2);
  o.extra_config[1] = Reference("REF-8C", 2);
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(
      c->RegisterDevices(0, "vm1", {absl::StrCat("mediated:", kGpu0)}).ok());
  auto check = c->Check(0, "vm1", 1);
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check->state, "refused");
  EXPECT_EQ(check->refused_rules, std::vector<std::string>{"vendor-type"});
  auto job = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, "failed");
  EXPECT_EQ(job->raw_bytes, 0u);
  EXPECT_TRUE(job->source_resumed);
  auto src = c->List(0);
  ASSERT_TRUE(src.ok());
  ASSERT_NE(FindVm(*src, "vm1"), nullptr);
  EXPECT_TRUE(absl::StartsWith(FindVm(*src, "vm1")->health[0],
                               "RUNNING; stamps intact"));
  // A third instance is more than host1's reference GPU has.
  ASSERT_TRUE(
      c->RegisterDevices(0, "vm2", {absl::StrCat("mediated:", kGpu1)}).ok());
  absl::Status full = c->RegisterDevices(
      0, "vm3", {"mediated:6f1c2a8e-3b7d-4c55-9a10-2d4e8b7f0a03"});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
}

// A fake sysfs with one NVIDIA GPU bound to plain vfio-pci.
std::string FakeSysfs(const std::string& root) {
  const std::string dev = root + "/devices/pci0000:00/0000:3b:00.0";
  for (const std::string& d :
       {root + "/bus/pci/devices", root + "/bus/pci/drivers/vfio-pci",
        root + "/kernel/iommu_groups/7", dev}) {
    std::string path;
    for (absl::string_view part : absl::StrSplit(d, '/', absl::SkipEmpty())) {
      path += "/" + std::string(part);
      mkdir(path.c_str(), 0755);
    }
  }
  std::ofstream(dev + "/vendor") << "0x10de\n";
  std::ofstream(dev + "/device") << "0x2330\n";
  std::ofstream(dev + "/class") << "0x030200\n";
  symlink((root + "/bus/pci/drivers/vfio-pci").c_str(),
          (dev + "/driver").c_str());
  symlink((root + "/kernel/iommu_groups/7").c_str(),
          (dev + "/iommu_group").c_str());
  symlink(dev.c_str(), (root + "/bus/pci/devices/0000:3b:00.0").c_str());
  return root;
}

TEST(Passthrough, AGpuWithoutVfioMigrationIsRefusedWithTheReason) {
  ClusterOptions o = Hosts(2);
  const std::string sys =
      FakeSysfs(absl::StrCat(::testing::TempDir(), "/fake-sys-", getpid()));
  o.extra_config[0] =
      absl::StrCat(R"("passthrough": {"sys_root": ")", sys, R"("})");
  auto c = MakeCluster(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(
      c->RegisterDevices(0, "vm1", {"directPassthrough:0000:3b:00.0"}).ok());
  auto check = c->Check(0, "vm1", 1);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->state, "refused");
  EXPECT_EQ(check->refused_rules,
            std::vector<std::string>{"migration-support"});
  auto job = c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, "failed");
  EXPECT_NE(job->error.find("offers no migration"), std::string::npos)
      << job->error;
  EXPECT_EQ(job->raw_bytes, 0u);
  // A device not bound to vfio is not passed through at all.
  absl::Status s =
      c->RegisterDevices(0, "vm2", {"directPassthrough:0000:99:00.0"});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

}  // namespace
}  // namespace vgpu::e2e
