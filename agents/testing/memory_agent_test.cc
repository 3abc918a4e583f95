// The contract kit run against the in-process reference agent.
#include "agents/testing/contract_kit.h"
#include "agents/testing/memory_agent.h"

#include <map>

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace vgpu::agents::testing {
namespace {

class MemoryHarness : public AgentHarness {
 public:
  std::string name() const override { return "memory"; }
  absl::StatusOr<std::unique_ptr<Agent>> MakeSource() override {
    auto dev = std::make_shared<MemoryDevice>(64);
    for (size_t i = 0; i < dev->vram.size(); i += 97) {
      dev->vram[i] = static_cast<uint8_t>(i * 7);
    }
    dev->registers[3] = 0x42;
    auto agent = NewMemorySourceAgent(dev);
    devices_[agent.get()] = dev;
    return agent;
  }
  absl::StatusOr<std::unique_ptr<Agent>> MakeDestination(
      const Agent& source) override {
    auto dev = std::make_shared<MemoryDevice>(64);
    auto agent = NewMemoryDestinationAgent(dev, source.descriptor());
    devices_[agent.get()] = dev;
    return agent;
  }
  absl::Status Mutate(Agent& source) override {
    MemoryDevice& d = *devices_.at(&source);
    uint8_t b[16];
    for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(++counter_ + i);
    d.registers[counter_ % 64] ^= 1;
    return d.Write((counter_ * 4096 * 5) % d.vram.size(), b);
  }
  absl::StatusOr<std::string> Fingerprint(Agent& agent) override {
    MemoryDevice& d = *devices_.at(&agent);
    return absl::StrCat(XXH3_64bits(d.vram.data(), d.vram.size()), "/",
                        XXH3_64bits(d.registers.data(), d.registers.size()));
  }
  absl::Status CheckRunning(Agent& agent) override {
    MemoryDevice& d = *devices_.at(&agent);
    uint8_t b = d.vram[0];
    return d.Write(0, absl::MakeConstSpan(&b, 1));  // refused if quiesced
  }

 private:
  std::map<const Agent*, std::shared_ptr<MemoryDevice>> devices_;
  uint64_t counter_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Memory, AgentContractTest,
                         ::testing::Values(HarnessFactory([] {
                           return std::make_unique<MemoryHarness>();
                         })));

}  // namespace
}  // namespace vgpu::agents::testing
