#include "agents/mediated/vfio.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace vgpu::agents::mediated {
namespace {

using S = MigState;

// kNext[cur][target]: the next state on the shortest path from cur toward
// target when every optional state is offered. The table is the kernel's
// (vfio_mig_get_next_state); paths never pass through a saving-group state
// except at their ends, and STOP_COPY cannot go back to a PRE_COPY state.
// Rows and columns in enum order: ERROR STOP RUNNING STOP_COPY RESUMING
// RUNNING_P2P PRE_COPY PRE_COPY_P2P.
constexpr S kNext[kMigStateCount][kMigStateCount] = {
    // from ERROR: nothing but a reset leaves it.
    {S::kError, S::kError, S::kError, S::kError, S::kError, S::kError,
     S::kError, S::kError},
    // from STOP
    {S::kError, S::kStop, S::kRunningP2p, S::kStopCopy, S::kResuming,
     S::kRunningP2p, S::kRunningP2p, S::kRunningP2p},
    // from RUNNING
    {S::kError, S::kRunningP2p, S::kRunning, S::kRunningP2p, S::kRunningP2p,
     S::kRunningP2p, S::kPreCopy, S::kRunningP2p},
    // from STOP_COPY
    {S::kError, S::kStop, S::kStop, S::kStopCopy, S::kStop, S::kStop,
     S::kError, S::kError},
    // from RESUMING
    {S::kError, S::kStop, S::kStop, S::kStop, S::kResuming, S::kStop,
     S::kStop, S::kStop},
    // from RUNNING_P2P
    {S::kError, S::kStop, S::kRunning, S::kStop, S::kStop, S::kRunningP2p,
     S::kRunning, S::kPreCopyP2p},
    // from PRE_COPY
    {S::kError, S::kRunning, S::kRunning, S::kPreCopyP2p, S::kRunning,
     S::kRunning, S::kPreCopy, S::kPreCopyP2p},
    // from PRE_COPY_P2P
    {S::kError, S::kRunningP2p, S::kRunningP2p, S::kStopCopy, S::kRunningP2p,
     S::kRunningP2p, S::kPreCopy, S::kPreCopyP2p},
};

// The migration flags a state needs (state_flags_table).
uint64_t NeededFlags(S s) {
  switch (s) {
    case S::kStop:
    case S::kRunning:
    case S::kStopCopy:
    case S::kResuming:
      return kMigFlagStopCopy;
    case S::kRunningP2p:
      return kMigFlagStopCopy | kMigFlagP2p;
    case S::kPreCopy:
      return kMigFlagStopCopy | kMigFlagPreCopy;
    case S::kPreCopyP2p:
      return kMigFlagStopCopy | kMigFlagP2p | kMigFlagPreCopy;
    case S::kError:
      return ~0ull;
  }
  return ~0ull;
}

constexpr char kErrnoPayload[] = "vgpu-migrate/errno";

}  // namespace

const char* MigStateName(MigState s) {
  switch (s) {
    case S::kError:
      return "ERROR";
    case S::kStop:
      return "STOP";
    case S::kRunning:
      return "RUNNING";
    case S::kStopCopy:
      return "STOP_COPY";
    case S::kResuming:
      return "RESUMING";
    case S::kRunningP2p:
      return "RUNNING_P2P";
    case S::kPreCopy:
      return "PRE_COPY";
    case S::kPreCopyP2p:
      return "PRE_COPY_P2P";
  }
  return "?";
}

std::string MigFlagsString(uint64_t flags) {
  std::vector<std::string> names;
  if (flags & kMigFlagStopCopy) names.push_back("STOP_COPY");
  if (flags & kMigFlagP2p) names.push_back("P2P");
  if (flags & kMigFlagPreCopy) names.push_back("PRE_COPY");
  uint64_t rest = flags & ~(kMigFlagStopCopy | kMigFlagP2p | kMigFlagPreCopy);
  if (rest != 0) names.push_back(absl::StrCat("0x", absl::Hex(rest)));
  return names.empty() ? "none" : absl::StrJoin(names, "|");
}

bool StateSupported(uint64_t flags, MigState s) {
  if (s == S::kError) return true;  // every device can fail
  if (static_cast<uint32_t>(s) >= kMigStateCount) return false;
  const uint64_t need = NeededFlags(s);
  return (flags & need) == need;
}

absl::StatusOr<MigState> NextStep(uint64_t flags, MigState cur,
                                  MigState target) {
  if (static_cast<uint32_t>(cur) >= kMigStateCount ||
      static_cast<uint32_t>(target) >= kMigStateCount ||
      (cur != S::kError && !StateSupported(flags, cur)) ||
      target == S::kError || !StateSupported(flags, target)) {
    return ErrnoError(EINVAL,
                      absl::StrCat("state ", MigStateName(target),
                                   " is not offered by a device with flags ",
                                   MigFlagsString(flags)));
  }
  S next = kNext[static_cast<uint32_t>(cur)][static_cast<uint32_t>(target)];
  // Optional states the device lacks are stepped over.
  while (next != S::kError && !StateSupported(flags, next)) {
    next = kNext[static_cast<uint32_t>(next)][static_cast<uint32_t>(target)];
  }
  if (next == S::kError) {
    return ErrnoError(EINVAL, absl::StrCat("no arc from ", MigStateName(cur),
                                           " to ", MigStateName(target)));
  }
  return next;
}

bool IsDriverArc(uint64_t flags, MigState from, MigState to) {
  if (from == to) return false;
  auto next = NextStep(flags, from, to);
  return next.ok() && *next == to;
}

bool ArcOpensSession(MigState from, MigState to) {
  return (from == S::kRunning && to == S::kPreCopy) ||
         (from == S::kRunningP2p && to == S::kPreCopyP2p) ||
         (from == S::kStop && to == S::kStopCopy) ||
         (from == S::kStop && to == S::kResuming);
}

bool InSavingGroup(MigState s) {
  return s == S::kPreCopy || s == S::kPreCopyP2p || s == S::kStopCopy;
}

bool ArcEndsSession(MigState from, MigState to) {
  if (from == S::kResuming) return to != S::kResuming;
  return InSavingGroup(from) && !InSavingGroup(to);
}

absl::Status ErrnoError(int err, absl::string_view message) {
  absl::StatusCode code;
  switch (err) {
    case EINVAL:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    case ENOTTY:
      code = absl::StatusCode::kUnimplemented;
      break;
    case ENOMSG:
      code = absl::StatusCode::kUnavailable;
      break;
    case ENOMEM:
    case E2BIG:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case ENOENT:
    case ENODEV:
      code = absl::StatusCode::kNotFound;
      break;
    case EPERM:
    case EACCES:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EIO:
      code = absl::StatusCode::kDataLoss;
      break;
    default:
      code = absl::StatusCode::kInternal;
  }
  absl::Status s(code, absl::StrCat(message, " (", strerrorname_np(err), ")"));
  s.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return s;
}

int ErrnoOf(const absl::Status& s) {
  auto p = s.GetPayload(kErrnoPayload);
  if (!p.has_value()) return 0;
  int err = 0;
  for (char c : std::string(*p)) err = err * 10 + (c - '0');
  return err;
}

}  // namespace vgpu::agents::mediated
