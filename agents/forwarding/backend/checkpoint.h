// Checkpoint and restore of one forwarded session to and from an image file
// (docs/formats/image.md), without vgpud: `vgpu-cl-backend checkpoint` and
// `restore`. They drive the same agent vgpud uses (forwarding_agent.h): a
// checkpoint freezes the session (the call in progress finishes, queues
// drain), writes its log, identity and memory objects, and lets it run on;
// a restore replays them into a fresh worker, which takes over the
// session's identity so that the guest library's resume finds it.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_CHECKPOINT_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace vgpu::forwarding::backend {

struct CheckpointStats {
  uint64_t raw_bytes = 0;     // section bytes
  uint64_t stored_bytes = 0;  // bytes in the file
  uint32_t sections = 0;
  double frozen_ms = 0;       // how long the guest's calls were held
  double total_ms = 0;
};

// `session_control`: the session worker's control address.
absl::StatusOr<CheckpointStats> CheckpointToFile(
    const std::string& session_control, const std::string& path,
    int zstd_level = 1);

struct RestoreResult {
  uint64_t session = 0;     // the identity it took over
  std::string control;      // the new worker's control address
  CheckpointStats stats;
};

// `supervisor_control`: the backend's control address.
absl::StatusOr<RestoreResult> RestoreFromFile(
    const std::string& supervisor_control, const std::string& path);

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_CHECKPOINT_H_
