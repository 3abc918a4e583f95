// The agent contract: one Agent per vGPU instance, in a source or a
// destination role, driven by the migrator's coordinator (one job thread per
// migration; an agent is never called from two threads at once).
//
// States mirror VFIO migration v2 (linux/vfio.h), so that the mediated agent
// is a thin mapping and every other strategy keeps the same discipline:
//
//   source:       RUNNING -> PRE_COPY -> STOP_COPY -> RELEASED
//                    ^__________|___________|        (abort: back to RUNNING)
//   destination:  PREPARED -> RESUMING -> RUNNING
//                    ^___________|                   (abort: back to PREPARED)
//
// Every allowed transition is a row of kTransitions below, with the state
// the agent falls back to if the transition fails; a transition not in the
// table is refused (FAILED_PRECONDITION) and changes nothing. If the
// fallback fails too, the agent ends in ERROR and must be destroyed.
#ifndef VGPU_AGENTS_AGENT_H_
#define VGPU_AGENTS_AGENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "state-codecs/image.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/descriptor.capnp.h"

namespace vgpu::agents {

enum class Role : uint8_t { kSource, kDestination };

enum class State : uint8_t {
  kRunning,   // source: running untracked. destination: activated.
  kPreCopy,   // source: running, dirty tracking on, sections readable
  kStopCopy,  // source: quiesced; the final sections are readable
  kReleased,  // source: state handed over and the device released (final)
  kPrepared,  // destination: device created, nothing loaded
  kResuming,  // destination: receiving sections (staged, not applied)
  kError,     // a fallback failed as well: destroy the agent
};

const char* StateName(State s);
const char* RoleName(Role r);

struct Transition {
  Role role;
  State from;
  State to;
  State recovery;  // where a failure of this transition leaves the agent
  const char* what;
};

// The whole state machine. Recovery states are chosen so that the source
// stays authoritative: any failure before RELEASED ends with the source
// RUNNING, and the destination never runs half-loaded state.
inline constexpr Transition kTransitions[] = {
    // source
    {Role::kSource, State::kRunning, State::kPreCopy, State::kRunning,
     "start dirty tracking"},
    {Role::kSource, State::kRunning, State::kStopCopy, State::kRunning,
     "quiesce without pre-copy"},
    {Role::kSource, State::kPreCopy, State::kStopCopy, State::kRunning,
     "quiesce for the final copy"},
    {Role::kSource, State::kPreCopy, State::kRunning, State::kError,
     "abort pre-copy: tracking off"},
    {Role::kSource, State::kStopCopy, State::kRunning, State::kError,
     "abort: resume the source"},
    {Role::kSource, State::kStopCopy, State::kReleased, State::kStopCopy,
     "release after the destination confirmed"},
    // destination
    {Role::kDestination, State::kPrepared, State::kResuming, State::kPrepared,
     "start receiving"},
    {Role::kDestination, State::kResuming, State::kRunning, State::kPrepared,
     "apply the staged state and run"},
    {Role::kDestination, State::kResuming, State::kPrepared, State::kError,
     "abort: discard staged state"},
};

// Returns the row for (role, from, to), or nullptr if the arc is not allowed.
const Transition* FindTransition(Role role, State from, State to);

// What is left to copy, in bytes. Agents that cannot tell report the
// pessimistic figure (everything), never zero, so a downtime budget is
// never broken by an optimistic guess.
struct PendingBytes {
  uint64_t initial = 0;  // not yet sent at all
  uint64_t dirty = 0;    // sent, then changed
  bool exact = false;
  uint64_t total() const { return initial + dirty; }
};

// Test seam: consulted before every transition hook, so the contract kit
// can fail any arc. Production agents have none.
class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  virtual absl::Status Before(State from, State to) = 0;
};

using Descriptor = codec::Message<schema::DeviceDescriptor>;

class Agent {
 public:
  virtual ~Agent() = default;
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  Role role() const { return role_; }
  State state() const { return state_; }

  // Any state. Source: the live device. Destination: what it was prepared
  // for. Never blocks on the device for long.
  virtual const Descriptor& descriptor() const = 0;

  // Moves to `to` along kTransitions. On failure the agent is in the arc's
  // recovery state (or ERROR if reaching it failed too) and the original
  // error is returned with the arc named. May block while the device
  // quiesces or resumes.
  absl::Status TransitionTo(State to);

  // Source, PRE_COPY or STOP_COPY. Never zero while something is unsent.
  virtual absl::StatusOr<PendingBytes> Pending() = 0;

  // Source, PRE_COPY: writes the sections changed since the previous call
  // (everything on the first) as pre-copy round `round`. STOP_COPY: writes
  // everything still unsent, completely: after it Pending() is zero.
  // `device` is this agent's index in the image manifest. Blocks on I/O.
  absl::Status Save(codec::ImageWriter& writer, uint32_t device,
                    uint32_t round);

  // Destination, RESUMING: takes one section whose header the reader has
  // returned; reads its data from `reader` (every chunk verified) and stages
  // it. Nothing reaches the device before RESUMING -> RUNNING. A section
  // that does not fit this device is refused (FAILED_PRECONDITION or
  // DATA_LOSS) and leaves the staged state as it was.
  absl::Status Load(const codec::SectionHeader& header,
                    codec::ImageReader& reader);

  void set_fault_injector(FaultInjector* f) { faults_ = f; }

  // The vGPUs of one VM stop and start together. Before the first of them
  // takes the arc into `to` (STOP_COPY on a source, RUNNING on a
  // destination), the coordinator calls this on every one of them, so
  // devices that may DMA to each other all stop initiating peer-to-peer
  // DMA before any of them stops (VFIO's RUNNING_P2P and PRE_COPY_P2P),
  // and none runs before all are loaded. The contract state does not
  // change; a failure is handled like a failure of the arc itself (the
  // coordinator aborts). Same thread and phase as TransitionTo.
  virtual absl::Status PrepareGroupTransition(State to) {
    return absl::OkStatus();
  }

  // Source: what the destination's device said its clients need to find
  // it (TargetDevice::hint() on the destination, carried back by the peer
  // protocol's prepare), before any transition. An API-forwarding session
  // uses it at release to send its guest library to the new backend;
  // devices the hypervisor rewires ignore it.
  virtual void SetDestinationHint(const std::string& hint) {}

 protected:
  explicit Agent(Role role)
      : role_(role),
        state_(role == Role::kSource ? State::kRunning : State::kPrepared) {}

  // Performs the device side of an arc. Called by TransitionTo with the
  // arc already checked; also called for the recovery arc after a failure
  // (from the failed arc's `from` state to its recovery state; for a
  // recovery equal to `from` nothing is called).
  virtual absl::Status OnTransition(State from, State to) = 0;
  virtual absl::Status DoSave(codec::ImageWriter& writer, uint32_t device,
                              uint32_t round) = 0;
  virtual absl::Status DoLoad(const codec::SectionHeader& header,
                              codec::ImageReader& reader) = 0;

 private:
  Role role_;
  State state_;
  FaultInjector* faults_ = nullptr;
};

// Calls PrepareGroupTransition(to) on every agent, then TransitionTo(to)
// on each in order; stops at the first failure and returns it, naming the
// agent's index.
absl::Status TransitionGroup(const std::vector<Agent*>& agents, State to);

// A whole image into one PREPARED destination: RESUMING, every section in
// order through Load, then RUNNING through the group step. For tools, the
// contract kit and benchmarks; the coordinator streams and checks on its
// own.
absl::Status ReceiveImage(Agent& destination,
                          absl::Span<const uint8_t> image);

}  // namespace vgpu::agents

#endif  // VGPU_AGENTS_AGENT_H_
