// Conversions between the C++ command/status values (command.h) and their
// Cap'n Proto forms (state.capnp, protocol.capnp). FromProto validates what
// a schema cannot: payload sizes and enum values an older build does not
// know. Pure functions; any thread.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_PROTO_CONVERT_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "agents/emulated/command.h"
#include "agents/emulated/protocol.capnp.h"
#include "agents/emulated/state.capnp.h"

namespace vgpu::agents::emulated::internal {

void ToProto(const Command& command, proto::Command::Builder out);
// INVALID_ARGUMENT for an unknown op or raster op or an oversized WRITE.
absl::StatusOr<Command> FromProto(proto::Command::Reader in);

// Checks what Submit and LoadRing demand of a command before it may enter
// the ring (bounds against VRAM are the engine's business, not this).
absl::Status ValidateCommand(const Command& command);

proto::EngineError ToProto(EngineError error);
absl::StatusOr<EngineError> FromProto(proto::EngineError error);

void ToProto(const EngineStatus& status, proto::EngineStatus::Builder out);
absl::StatusOr<EngineStatus> FromProto(proto::EngineStatus::Reader in);

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_PROTO_CONVERT_H_
