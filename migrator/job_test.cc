#include "migrator/job.h"

#include <thread>

#include "gtest/gtest.h"
#include "migrator/inventory.h"

namespace vgpu::migrator {
namespace {

TEST(Job, WatchWakesOnChangeAndCancelIsRefusedAfterCommit) {
  JobTable table("h1");
  auto job = table.Create("migrate", "vm1", "h2");
  EXPECT_EQ(job->id(), "h1-migrate-1");
  uint64_t seq = job->Get().seq;
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    job->Update([](JobData& d) { d.phase = Phase::kPreCopy; });
  });
  JobData d = job->Watch(seq, absl::Seconds(5));
  t.join();
  EXPECT_EQ(d.phase, Phase::kPreCopy);
  EXPECT_GT(d.seq, seq);

  EXPECT_TRUE(job->CommitOrCancelled());
  EXPECT_EQ(job->RequestCancel().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Job, CancelBeforeCommitWins) {
  JobTable table("h1");
  auto job = table.Create("migrate", "vm1", "h2");
  EXPECT_TRUE(job->RequestCancel().ok());
  EXPECT_FALSE(job->CommitOrCancelled());
  EXPECT_EQ(job->Checkpoint(Phase::kFinish).code(), absl::StatusCode::kCancelled);
}

TEST(Job, PauseHoldsAtThePhaseUntilContinue) {
  JobTable table("h1");
  auto job = table.Create("migrate", "vm1", "h2");
  job->PauseAt(Phase::kStopCopy);
  EXPECT_TRUE(job->Checkpoint(Phase::kPreCopy).ok());  // not this one
  std::atomic<bool> passed{false};
  std::thread t([&] {
    EXPECT_TRUE(job->Checkpoint(Phase::kStopCopy).ok());
    passed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(passed);
  EXPECT_TRUE(job->Continue().ok());
  t.join();
  EXPECT_TRUE(passed);
  EXPECT_EQ(job->Continue().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Job, PhaseNamesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(Phase::kDone); ++i) {
    Phase p;
    ASSERT_TRUE(ParsePhase(PhaseName(static_cast<Phase>(i)), &p));
    EXPECT_EQ(static_cast<int>(p), i);
  }
  Phase p;
  EXPECT_FALSE(ParsePhase("warp", &p));
}

TEST(Inventory, OneJobAtATimeAndReservations) {
  Inventory inv;
  EXPECT_FALSE(inv.Register(VmEntry{"bad name!", "", {}, "", false}).ok());
  ASSERT_TRUE(inv.Register(VmEntry{"vm1", "", {{"emulation", "/s", false}}, "", false}).ok());
  EXPECT_TRUE(inv.Acquire("vm1", "j1").ok());
  EXPECT_EQ(inv.Acquire("vm1", "j2").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(inv.Unregister("vm1").code(), absl::StatusCode::kFailedPrecondition);
  inv.Release("vm1", "j2");  // not the holder: no effect
  EXPECT_EQ(inv.Acquire("vm1", "j3").code(), absl::StatusCode::kFailedPrecondition);
  inv.Release("vm1", "j1");
  EXPECT_TRUE(inv.Acquire("vm1", "j3").ok());
  inv.Remove("vm1", "j3");
  EXPECT_EQ(inv.Get("vm1").status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(inv.Reserve("vm2", "", "in1").ok());
  EXPECT_EQ(inv.Reserve("vm2", "", "in2").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(inv.Get("vm2").status().code(), absl::StatusCode::kNotFound)
      << "an arriving VM is not usable yet";
  inv.Commit("vm2", "in1", {{"emulation", "/t", true}});
  auto vm2 = inv.Get("vm2");
  ASSERT_TRUE(vm2.ok());
  EXPECT_TRUE(vm2->devices[0].owned);
  EXPECT_TRUE(vm2->job.empty());
  ASSERT_TRUE(inv.Reserve("vm3", "", "in3").ok());
  inv.CancelReservation("vm3", "in3");
  EXPECT_TRUE(inv.Reserve("vm3", "", "in4").ok());
}

}  // namespace
}  // namespace vgpu::migrator
