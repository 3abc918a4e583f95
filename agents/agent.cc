#include "agents/agent.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::agents {

const char* StateName(State s) {
  switch (s) {
    case State::kRunning:
      return "RUNNING";
    case State::kPreCopy:
      return "PRE_COPY";
    case State::kStopCopy:
      return "STOP_COPY";
    case State::kReleased:
      return "RELEASED";
    case State::kPrepared:
      return "PREPARED";
    case State::kResuming:
      return "RESUMING";
    case State::kError:
      return "ERROR";
  }
  return "?";
}

const char* RoleName(Role r) {
  return r == Role::kSource ? "source" : "destination";
}

const Transition* FindTransition(Role role, State from, State to) {
  for (const Transition& t : kTransitions) {
    if (t.role == role && t.from == from && t.to == to) return &t;
  }
  return nullptr;
}

absl::Status Agent::TransitionTo(State to) {
  const Transition* arc = FindTransition(role_, state_, to);
  if (arc == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s agent: %s -> %s is not an allowed transition", RoleName(role_),
        StateName(state_), StateName(to)));
  }
  absl::Status s = faults_ != nullptr ? faults_->Before(arc->from, arc->to)
                                      : absl::OkStatus();
  if (s.ok()) s = OnTransition(arc->from, arc->to);
  if (s.ok()) {
    state_ = to;
    return s;
  }
  // Fall back. A recovery equal to `from` needs no device action.
  State fallback = arc->recovery;
  if (fallback != arc->from && fallback != State::kError) {
    absl::Status r = faults_ != nullptr ? faults_->Before(arc->from, fallback)
                                        : absl::OkStatus();
    if (r.ok()) r = OnTransition(arc->from, fallback);
    if (!r.ok()) {
      fallback = State::kError;
      s = absl::Status(s.code(),
                       absl::StrCat(s.message(), "; recovery to ",
                                    StateName(arc->recovery),
                                    " failed too: ", r.message()));
    }
  }
  state_ = fallback;
  return absl::Status(
      s.code(), absl::StrFormat("%s agent: %s -> %s (%s) failed, now %s: %s",
                                RoleName(role_), StateName(arc->from),
                                StateName(to), arc->what, StateName(state_),
                                s.message()));
}

absl::Status Agent::Save(codec::ImageWriter& writer, uint32_t device,
                         uint32_t round) {
  if (role_ != Role::kSource ||
      (state_ != State::kPreCopy && state_ != State::kStopCopy)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Save needs a source in PRE_COPY or STOP_COPY; this ",
                     RoleName(role_), " is ", StateName(state_)));
  }
  return DoSave(writer, device, round);
}

absl::Status Agent::Load(const codec::SectionHeader& header,
                         codec::ImageReader& reader) {
  if (role_ != Role::kDestination || state_ != State::kResuming) {
    return absl::FailedPreconditionError(
        absl::StrCat("Load needs a destination in RESUMING; this ",
                     RoleName(role_), " is ", StateName(state_)));
  }
  return DoLoad(header, reader);
}

absl::Status TransitionGroup(const std::vector<Agent*>& agents, State to) {
  for (size_t i = 0; i < agents.size(); ++i) {
    absl::Status s = agents[i]->PrepareGroupTransition(to);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("device ", i, ": ",
                                                 s.message()));
    }
  }
  for (size_t i = 0; i < agents.size(); ++i) {
    absl::Status s = agents[i]->TransitionTo(to);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("device ", i, ": ",
                                                 s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ReceiveImage(Agent& destination,
                          absl::Span<const uint8_t> image) {
  if (auto s = destination.TransitionTo(State::kResuming); !s.ok()) return s;
  codec::MemorySource src(image, "migration image");
  auto reader = codec::ImageReader::Open(&src);
  if (!reader.ok()) return reader.status();
  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) return next.status();
    if (!next->has_value()) break;
    if (auto s = destination.Load(**next, **reader); !s.ok()) return s;
  }
  return TransitionGroup({&destination}, State::kRunning);
}

}  // namespace vgpu::agents
