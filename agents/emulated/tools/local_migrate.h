// Live migration of one emulated vGPU between two device processes on this
// host, through the agent contract: the source agent streams pre-copy
// rounds and the final copy into a pipe while the destination agent loads
// them, until the pending bytes fit the downtime budget. This is the data
// path the migrator's coordinator will drive between hosts; here it lets
// the emulated agent be used, measured and demonstrated end to end.
// Runs on the calling thread plus one receiving thread.
#ifndef VGPU_AGENTS_EMULATED_TOOLS_LOCAL_MIGRATE_H_
#define VGPU_AGENTS_EMULATED_TOOLS_LOCAL_MIGRATE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vgpu::agents::emulated {

struct LocalMigrateOptions {
  std::string from_socket;  // a running vgpu-emu-device
  std::string to_socket;    // a vgpu-emu-device started with --incoming
  uint32_t max_rounds = 30;
  // Stop pre-copy once this many bytes (or fewer) are left.
  uint64_t downtime_bytes = 4 << 20;
  int threads = 0;  // compression threads; 0 = one per core
  // Progress after each round: round, bytes sent so far, bytes pending.
  std::function<void(uint32_t, uint64_t, uint64_t)> on_round;
};

struct LocalMigrateResult {
  uint32_t rounds = 0;              // pre-copy rounds
  std::vector<uint64_t> pending;    // bytes pending after each round
  uint64_t final_bytes = 0;         // state bytes written during stop-copy
  uint64_t raw_bytes = 0;           // all state bytes sent
  uint64_t stream_bytes = 0;        // bytes on the wire (compressed, framed)
  double total_seconds = 0;
  double downtime_seconds = 0;      // source stopped -> destination running
};

// On any failure the source is resumed (it stays authoritative) and the
// destination falls back to PREPARED; the error says where it failed.
absl::StatusOr<LocalMigrateResult> MigrateLocally(
    const LocalMigrateOptions& options);

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_TOOLS_LOCAL_MIGRATE_H_
