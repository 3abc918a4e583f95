// The kernel's migration FSM as vfio.cc encodes it, checked against the
// paths and arc lists drivers/vfio/vfio_main.c documents.
#include "agents/mediated/vfio.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <set>
#include <vector>

namespace vgpu::agents::mediated {
namespace {

using S = MigState;
constexpr uint64_t kAll = kMigFlagStopCopy | kMigFlagP2p | kMigFlagPreCopy;
constexpr uint64_t kNoP2p = kMigFlagStopCopy | kMigFlagPreCopy;
constexpr uint64_t kBasic = kMigFlagStopCopy;

std::vector<S> Path(uint64_t flags, S from, S to) {
  std::vector<S> path;
  S cur = from;
  for (int i = 0; i < 8 && cur != to; ++i) {
    auto next = NextStep(flags, cur, to);
    if (!next.ok()) return {S::kError};
    cur = *next;
    path.push_back(cur);
  }
  return path;
}

TEST(VfioFsm, CombinationPathsMatchTheKernel) {
  EXPECT_EQ(Path(kAll, S::kPreCopy, S::kStopCopy),
            (std::vector<S>{S::kPreCopyP2p, S::kStopCopy}));
  EXPECT_EQ(Path(kAll, S::kRunning, S::kStopCopy),
            (std::vector<S>{S::kRunningP2p, S::kStop, S::kStopCopy}));
  EXPECT_EQ(Path(kAll, S::kResuming, S::kRunning),
            (std::vector<S>{S::kStop, S::kRunningP2p, S::kRunning}));
  EXPECT_EQ(Path(kAll, S::kStopCopy, S::kRunning),
            (std::vector<S>{S::kStop, S::kRunningP2p, S::kRunning}));
  EXPECT_EQ(Path(kAll, S::kPreCopy, S::kResuming),
            (std::vector<S>{S::kRunning, S::kRunningP2p, S::kStop,
                            S::kResuming}));
  EXPECT_EQ(Path(kAll, S::kStop, S::kPreCopy),
            (std::vector<S>{S::kRunningP2p, S::kRunning, S::kPreCopy}));
  // Without P2P the optional state is stepped over.
  EXPECT_EQ(Path(kNoP2p, S::kPreCopy, S::kStopCopy),
            (std::vector<S>{S::kStopCopy}));
  EXPECT_EQ(Path(kBasic, S::kRunning, S::kStopCopy),
            (std::vector<S>{S::kStop, S::kStopCopy}));
  EXPECT_EQ(Path(kBasic, S::kResuming, S::kRunning),
            (std::vector<S>{S::kStop, S::kRunning}));
}

TEST(VfioFsm, RefusedArcsAreEinval) {
  for (S to : {S::kPreCopy, S::kPreCopyP2p}) {
    auto next = NextStep(kAll, S::kStopCopy, to);
    ASSERT_FALSE(next.ok());
    EXPECT_EQ(ErrnoOf(next.status()), EINVAL);
  }
  for (uint32_t t = 0; t < kMigStateCount; ++t) {
    auto next = NextStep(kAll, S::kError, static_cast<S>(t));
    ASSERT_FALSE(next.ok()) << MigStateName(static_cast<S>(t));
    EXPECT_EQ(ErrnoOf(next.status()), EINVAL);
  }
  // States the device does not offer, as source or target.
  EXPECT_EQ(ErrnoOf(NextStep(kBasic, S::kRunning, S::kPreCopy).status()),
            EINVAL);
  EXPECT_EQ(ErrnoOf(NextStep(kBasic, S::kRunning, S::kRunningP2p).status()),
            EINVAL);
  EXPECT_EQ(ErrnoOf(NextStep(kNoP2p, S::kRunningP2p, S::kStop).status()),
            EINVAL);
  EXPECT_EQ(ErrnoOf(NextStep(kAll, S::kRunning, static_cast<S>(9)).status()),
            EINVAL);
  // ERROR is never a target.
  EXPECT_EQ(ErrnoOf(NextStep(kAll, S::kRunning, S::kError).status()), EINVAL);
}

// Every pair of offered states is reachable in a few steps, and no path
// passes through a saving-group state except at its ends (or within the
// group: PRE_COPY -> PRE_COPY_P2P -> STOP_COPY keeps one session).
TEST(VfioFsm, EveryPairReachableWithoutInteriorSavingStates) {
  for (uint64_t flags : {kAll, kNoP2p, kBasic, kMigFlagStopCopy | kMigFlagP2p}) {
    for (uint32_t f = 1; f < kMigStateCount; ++f) {
      for (uint32_t t = 1; t < kMigStateCount; ++t) {
        const S from = static_cast<S>(f), to = static_cast<S>(t);
        if (!StateSupported(flags, from) || !StateSupported(flags, to)) continue;
        if (from == S::kStopCopy && (to == S::kPreCopy || to == S::kPreCopyP2p)) {
          continue;
        }
        std::vector<S> p = Path(flags, from, to);
        if (from == to) {
          EXPECT_TRUE(p.empty());
          continue;
        }
        ASSERT_FALSE(p.empty());
        ASSERT_EQ(p.back(), to) << MigFlagsString(flags) << " "
                                << MigStateName(from) << " -> "
                                << MigStateName(to);
        for (size_t i = 0; i + 1 < p.size(); ++i) {
          EXPECT_TRUE(StateSupported(flags, p[i]));
          if (InSavingGroup(from) && InSavingGroup(to)) continue;
          EXPECT_FALSE(InSavingGroup(p[i]))
              << MigStateName(from) << " -> " << MigStateName(to)
              << " passes " << MigStateName(p[i]);
        }
      }
    }
  }
}

// The arcs a driver must implement itself, per the kernel's comment.
TEST(VfioFsm, DriverArcsAreTheKernelsList) {
  auto arcs = [](uint64_t flags) {
    std::set<std::pair<S, S>> out;
    for (uint32_t f = 1; f < kMigStateCount; ++f) {
      for (uint32_t t = 1; t < kMigStateCount; ++t) {
        if (!StateSupported(flags, static_cast<S>(f)) ||
            !StateSupported(flags, static_cast<S>(t))) {
          continue;
        }
        if (IsDriverArc(flags, static_cast<S>(f), static_cast<S>(t))) {
          out.insert({static_cast<S>(f), static_cast<S>(t)});
        }
      }
    }
    return out;
  };
  const std::set<std::pair<S, S>> all = {
      {S::kResuming, S::kStop},        {S::kStop, S::kResuming},
      {S::kStop, S::kStopCopy},        {S::kStopCopy, S::kStop},
      {S::kRunning, S::kRunningP2p},   {S::kRunningP2p, S::kRunning},
      {S::kRunningP2p, S::kStop},      {S::kStop, S::kRunningP2p},
      {S::kPreCopy, S::kRunning},      {S::kPreCopy, S::kPreCopyP2p},
      {S::kPreCopyP2p, S::kPreCopy},   {S::kPreCopyP2p, S::kRunningP2p},
      {S::kPreCopyP2p, S::kStopCopy},  {S::kRunning, S::kPreCopy},
      {S::kRunningP2p, S::kPreCopyP2p},
  };
  EXPECT_EQ(arcs(kAll), all);
  const std::set<std::pair<S, S>> basic = {
      {S::kResuming, S::kStop}, {S::kStop, S::kResuming},
      {S::kStop, S::kStopCopy}, {S::kStopCopy, S::kStop},
      {S::kRunning, S::kStop},  {S::kStop, S::kRunning},
  };
  EXPECT_EQ(arcs(kBasic), basic);
  const std::set<std::pair<S, S>> precopy = {
      {S::kResuming, S::kStop}, {S::kStop, S::kResuming},
      {S::kStop, S::kStopCopy}, {S::kStopCopy, S::kStop},
      {S::kRunning, S::kStop},  {S::kStop, S::kRunning},
      {S::kRunning, S::kPreCopy}, {S::kPreCopy, S::kRunning},
      {S::kPreCopy, S::kStopCopy},
  };
  EXPECT_EQ(arcs(kNoP2p), precopy);
}

TEST(VfioFsm, SessionsOpenAndEndOnTheRightArcs) {
  EXPECT_TRUE(ArcOpensSession(S::kRunning, S::kPreCopy));
  EXPECT_TRUE(ArcOpensSession(S::kRunningP2p, S::kPreCopyP2p));
  EXPECT_TRUE(ArcOpensSession(S::kStop, S::kStopCopy));
  EXPECT_TRUE(ArcOpensSession(S::kStop, S::kResuming));
  EXPECT_FALSE(ArcOpensSession(S::kPreCopyP2p, S::kStopCopy));
  EXPECT_FALSE(ArcEndsSession(S::kPreCopy, S::kPreCopyP2p));
  EXPECT_FALSE(ArcEndsSession(S::kPreCopyP2p, S::kStopCopy));
  EXPECT_TRUE(ArcEndsSession(S::kStopCopy, S::kStop));
  EXPECT_TRUE(ArcEndsSession(S::kPreCopy, S::kRunning));
  EXPECT_TRUE(ArcEndsSession(S::kResuming, S::kStop));
}

TEST(VfioErrno, CarriedThroughStatus) {
  absl::Status s = ErrnoError(ENOMSG, "dev0: read");
  EXPECT_EQ(ErrnoOf(s), ENOMSG);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("ENOMSG"), std::string::npos);
  EXPECT_EQ(ErrnoOf(absl::InternalError("x")), 0);
  EXPECT_EQ(MigFlagsString(kAll), "STOP_COPY|P2P|PRE_COPY");
}

}  // namespace
}  // namespace vgpu::agents::mediated
