// Following a guest's migration: the verdict on every state a libvirt
// domain can show during (and around) its live migration, and the libvirt
// gate against libvirt's own test driver.
#include "migrator/guest_gate.h"

#include <libvirt/libvirt.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace vgpu::migrator {
namespace {

using ::testing::HasSubstr;

struct Case {
  const char* what;
  DomainObservation o;
  bool seen_job_before;
  absl::Duration elapsed;
  GuestMove want;
  const char* why;
  bool seen_job_after;
};

TEST(GuestGate, JudgesEveryStateOfAMigratingDomain) {
  const absl::Duration grace = absl::Seconds(30);
  const absl::Duration early = absl::Seconds(1);
  const Case cases[] = {
      {"not begun yet", {true, VIR_DOMAIN_RUNNING, 1, false}, false, early,
       GuestMove::kRunning, "is running, its migration not begun", false},
      {"never began", {true, VIR_DOMAIN_RUNNING, 1, false}, false, grace,
       GuestMove::kStayed, "no migration of it began within 30s", false},
      {"memory copy", {true, VIR_DOMAIN_RUNNING, 1, true}, false, early,
       GuestMove::kRunning, "its migration under way", true},
      {"user pause during the copy",
       {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER, true}, true, early,
       GuestMove::kRunning, "is paused, its migration under way", true},
      {"final copy",
       {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_MIGRATION, true}, true,
       early, GuestMove::kStopped, "is paused for migration", true},
      {"post-copy", {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY, true},
       true, early, GuestMove::kLeft, "runs on the destination", true},
      {"gone (transient, or --undefinesource)", {false, 0, 0, false}, true,
       early, GuestMove::kLeft, "is gone from this host", true},
      {"shut off, migrated",
       {true, VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_MIGRATED, false}, true,
       early, GuestMove::kLeft, "is shut off here, migrated", true},
      {"migration failed, resumed here", {true, VIR_DOMAIN_RUNNING, 1, false},
       true, early, GuestMove::kStayed,
       "is running here: its migration ended without moving it", true},
      {"destroyed during the copy",
       {true, VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_DESTROYED, false}, true,
       early, GuestMove::kStayed, "is shut off without migrating", true},
      {"crashed", {true, VIR_DOMAIN_CRASHED, 0, false}, false, early,
       GuestMove::kStayed, "is crashed without migrating", false},
  };
  for (const Case& c : cases) {
    bool seen = c.seen_job_before;
    std::string why;
    EXPECT_EQ(JudgeDomain(c.o, &seen, c.elapsed, grace, &why), c.want)
        << c.what << ": " << why;
    EXPECT_THAT(why, HasSubstr(c.why)) << c.what;
    EXPECT_EQ(seen, c.seen_job_after) << c.what;
  }
}

TEST(GuestGate, JudgesTheGuestArrivingAtTheDestination) {
  struct {
    const char* what;
    DomainObservation o;
    GuestMove want;
    const char* why;
  } cases[] = {
      {"waiting for its state",
       {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_MIGRATION, false},
       GuestMove::kStopped, "is paused on the destination, waiting"},
      {"starting up", {true, VIR_DOMAIN_PAUSED, 0, false}, GuestMove::kStopped,
       "waiting for its state"},
      {"resumed by libvirt", {true, VIR_DOMAIN_RUNNING, 2, false},
       GuestMove::kLeft, "runs on the destination"},
      {"post-copy", {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY, false},
       GuestMove::kLeft, "runs on the destination"},
      {"incoming domain removed", {false, 0, 0, false}, GuestMove::kStayed,
       "is gone from the destination: its migration failed"},
      {"incoming QEMU died",
       {true, VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_FAILED, false},
       GuestMove::kStayed, "is shut off on the destination: its migration failed"},
  };
  for (const auto& c : cases) {
    std::string why;
    EXPECT_EQ(JudgeArrival(c.o, &why), c.want) << c.what << ": " << why;
    EXPECT_THAT(why, HasSubstr(c.why)) << c.what;
  }
}

// The test driver's domain "test" runs and never migrates: the gate says
// it runs until the grace is over, then that it stayed. A domain that
// does not exist cannot be followed.
TEST(GuestGate, LibvirtGateWatchesARealDomain) {
  auto gate = NewLibvirtGate("test:///default", "test", absl::Milliseconds(300));
  ASSERT_TRUE(gate.ok()) << gate.status();
  std::string why;
  auto now = (*gate)->Poll(&why);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(*now, GuestMove::kRunning) << why;
  EXPECT_EQ(why, "domain test is running, its migration not begun");
  absl::SleepFor(absl::Milliseconds(350));
  now = (*gate)->Poll(&why);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(*now, GuestMove::kStayed) << why;

  // From a destination's side, a running domain has arrived.
  auto arrived = NewLibvirtGate("test:///default", "test", absl::Seconds(1),
                                GuestSide::kDestination);
  ASSERT_TRUE(arrived.ok()) << arrived.status();
  now = (*arrived)->Poll(&why);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(*now, GuestMove::kLeft) << why;

  auto none = NewLibvirtGate("test:///default", "no-such-vm", absl::Seconds(1));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("has no running domain no-such-vm to follow"));

  auto unreachable = NewLibvirtGate("qemu+unix:///system?socket=/nonexistent",
                                    "test", absl::Seconds(1));
  ASSERT_FALSE(unreachable.ok());
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace vgpu::migrator
