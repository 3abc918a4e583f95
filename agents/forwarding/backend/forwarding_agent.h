// The API-forwarding agent: the agent contract (agents/agent.h) for one
// forwarded OpenCL session, driven over the session worker's control
// socket (control_client.h).
//
// Source: PRE_COPY rounds send memory objects as "mem<ID>" memory-region
// sections: every object in round 0, then those a command may have written
// since (a buffer is dirty once a write, copy, fill or kernel launch that
// names it was enqueued). Reads happen with the session's calls held and its
// queues drained around each object, so the bytes are consistent. STOP_COPY
// freezes the session (the call in progress finishes; queues drain) and the
// final Save sends the session log ("cllog", apiSessionLog) and the objects
// still dirty. Abort thaws. Release hands the guest over to the destination
// backend (SetDestinationHint), which makes the guest library reconnect
// there.
//
// Destination: a fresh, empty worker. Sections are staged in memory (the
// contract: nothing reaches the device before RUNNING); RUNNING replays the
// log, writes every object's latest contents and lets the guest resume.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_FORWARDING_AGENT_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_FORWARDING_AGENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agents/agent.h"
#include "agents/forwarding/backend/control_client.h"

namespace vgpu::forwarding::backend {

inline constexpr char kWrapperName[] = "vgpu-opencl";

// The descriptor of a session as its worker describes it.
agents::Descriptor DescribeSession(control::SessionInfo::Reader info);

// A source agent on the session behind `control` (a worker's control
// address).
absl::StatusOr<std::unique_ptr<agents::Agent>> OpenForwardingSource(
    const std::string& control);

// A destination agent on a fresh target worker (`target` as the
// supervisor's createTarget returned it), for a session described by
// `source`, of VM `vm`.
absl::StatusOr<std::unique_ptr<agents::Agent>> OpenForwardingDestination(
    control::SessionInfo::Reader target, const agents::Descriptor& source,
    const std::string& vm);

// The hint a destination gives its source: the guest address of the
// backend the guest goes to next (the session keeps its id and token).
std::string HandoffHint(control::SessionInfo::Reader target);

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_FORWARDING_AGENT_H_
