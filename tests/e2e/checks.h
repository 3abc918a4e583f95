// Guest-side checks for end-to-end tests: the counter workload's invariant
// on a device's VRAM, running the workload on a migrated device, and
// filling VRAM with incompressible bytes (so that bandwidth caps and link
// faults meet real traffic). Test-only, main thread.
#ifndef VGPU_TESTS_E2E_CHECKS_H_
#define VGPU_TESTS_E2E_CHECKS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "agents/emulated/workload.h"

namespace vgpu::e2e {

// The counters in the device's VRAM, invariant checked (DATA_LOSS names
// the first page that breaks it). Attaches as the device's agent briefly.
absl::StatusOr<agents::emulated::CounterState> CountersOf(
    const std::string& socket);

// Runs the workload as a guest of `socket` for `pages` counter writes,
// carrying on from the VRAM; checks it started at or after `earlier` and
// ended ahead of it. Returns the state it ended in.
absl::StatusOr<agents::emulated::CounterState> RunWorkload(
    const std::string& socket, const agents::emulated::CounterState& earlier,
    uint64_t pages);

// Writes pseudo-random bytes (seeded) over the first `bytes` of VRAM.
absl::Status FillRandom(const std::string& socket, uint64_t bytes,
                        uint64_t seed);

// XXH3 of the device's whole VRAM (attaches as the agent briefly).
absl::StatusOr<uint64_t> VramHash(const std::string& socket);

// True if the device executes commands now (a fence completes in time):
// the source runs again.
bool DeviceRuns(const std::string& socket);

}  // namespace vgpu::e2e

#endif  // VGPU_TESTS_E2E_CHECKS_H_
