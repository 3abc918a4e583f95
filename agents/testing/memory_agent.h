// An in-process reference vGPU (a register bank and a VRAM buffer with
// exact dirty tracking) and its agent: the smallest thing that honours the
// agent contract, used to test the contract kit itself and as a model for
// real agents. Not thread-safe; tests drive it from one thread.
#ifndef VGPU_AGENTS_TESTING_MEMORY_AGENT_H_
#define VGPU_AGENTS_TESTING_MEMORY_AGENT_H_

#include <memory>
#include <vector>

#include "agents/agent.h"

namespace vgpu::agents::testing {

struct MemoryDevice {
  std::vector<uint8_t> registers = std::vector<uint8_t>(64);
  std::vector<uint8_t> vram;
  std::vector<bool> dirty;
  bool tracking = false;
  bool quiesced = false;

  explicit MemoryDevice(size_t pages) : vram(pages * 4096), dirty(pages) {}
  // A guest write: refused while quiesced, tracked while tracking.
  absl::Status Write(uint64_t offset, absl::Span<const uint8_t> bytes);
};

std::unique_ptr<Agent> NewMemorySourceAgent(std::shared_ptr<MemoryDevice> d);
std::unique_ptr<Agent> NewMemoryDestinationAgent(
    std::shared_ptr<MemoryDevice> d, const Descriptor& expected);

}  // namespace vgpu::agents::testing

#endif  // VGPU_AGENTS_TESTING_MEMORY_AGENT_H_
