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
  GuestMove want;
  const char* why;
};

TEST(GuestGate, JudgesEveryStateOfAMigratingDomain) {
  const Case cases[] = {
      {"memory copy", {true, VIR_DOMAIN_RUNNING, 1, true}, GuestMove::kRunning,
       "is running, its migration under way"},
      {"user pause during the copy",
       {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER, true},
       GuestMove::kRunning, "is paused, its migration under way"},
      {"final copy",
       {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_MIGRATION, true},
       GuestMove::kStopped, "is paused for migration"},
      {"post-copy", {true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY, true},
       GuestMove::kLeft, "runs on the destination"},
      {"gone (transient, or --undefinesource)", {false, 0, 0, false},
       GuestMove::kLeft, "is gone from this host"},
      {"shut off, migrated",
       {true, VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_MIGRATED, false},
       GuestMove::kLeft, "is shut off here, migrated"},
      {"migration failed, resumed here", {true, VIR_DOMAIN_RUNNING, 1, false},
       GuestMove::kStayed, "is running here with no migration under way"},
      {"no migration at all (or a save, which is not one)",
       {true, VIR_DOMAIN_RUNNING, 1, false}, GuestMove::kStayed,
       "no migration under way"},
      {"destroyed during the copy",
       {true, VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_DESTROYED, false},
       GuestMove::kStayed, "is shut off without migrating"},
      {"crashed", {true, VIR_DOMAIN_CRASHED, 0, false}, GuestMove::kStayed,
       "is crashed without migrating"},
  };
  for (const Case& c : cases) {
    std::string why;
    EXPECT_EQ(JudgeDomain(c.o, &why), c.want) << c.what << ": " << why;
    EXPECT_THAT(why, HasSubstr(c.why)) << c.what;
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

// The test driver's domain "test" runs and never migrates: nothing to
// follow, so no gate on it from the source's side (a peer cannot pull a
// VM whose guest stays). From a destination's side, a running domain has
// arrived. A domain that does not exist cannot be followed.
TEST(GuestGate, LibvirtGateWatchesARealDomain) {
  auto refused = NewLibvirtGate("test:///default", "test");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("libvirt is not migrating test away (domain test is "
                        "running here with no migration under way)"));

  auto arrived =
      NewLibvirtGate("test:///default", "test", GuestSide::kDestination);
  ASSERT_TRUE(arrived.ok()) << arrived.status();
  std::string why;
  auto now = (*arrived)->Poll(&why);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(*now, GuestMove::kLeft) << why;
  EXPECT_EQ(why, "domain test runs on the destination");
  // No migration to cancel (and no jobs in the test driver): said plainly.
  absl::Status cancel = (*arrived)->CancelGuestMove();
  EXPECT_FALSE(cancel.ok());
  EXPECT_THAT(std::string(cancel.message()),
              HasSubstr("cancelling the job of domain test"));

  auto none = NewLibvirtGate("test:///default", "no-such-vm");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("has no running domain no-such-vm to follow"));

  auto unreachable =
      NewLibvirtGate("qemu+unix:///system?socket=/nonexistent", "test");
  ASSERT_FALSE(unreachable.ok());
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace vgpu::migrator
