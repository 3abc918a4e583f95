// The agent contract test kit: the same tests, run against every agent in
// the tree. An agent's test file provides an AgentHarness and instantiates:
//
//   INSTANTIATE_TEST_SUITE_P(Emulated, AgentContractTest,
//       ::testing::Values(HarnessFactory([] { return MakeHarness(); })));
//
// The kit drives agents only through agents/agent.h, injects a failure at
// every transition through FaultInjector, and compares device fingerprints
// to decide whether state survived or stayed untouched.
#ifndef VGPU_AGENTS_TESTING_CONTRACT_KIT_H_
#define VGPU_AGENTS_TESTING_CONTRACT_KIT_H_

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "agents/agent.h"

namespace vgpu::agents::testing {

class AgentHarness {
 public:
  virtual ~AgentHarness() = default;
  virtual std::string name() const = 0;
  // A source agent over a fresh, running device holding some state.
  virtual absl::StatusOr<std::unique_ptr<Agent>> MakeSource() = 0;
  // A destination agent prepared to receive `source`'s device.
  virtual absl::StatusOr<std::unique_ptr<Agent>> MakeDestination(
      const Agent& source) = 0;
  // Changes the source's device state as its guest would. The device must
  // be running (RUNNING or PRE_COPY).
  virtual absl::Status Mutate(Agent& source) = 0;
  // A digest of everything migration must carry (registers, queued work,
  // memory). Stable while nobody mutates.
  virtual absl::StatusOr<std::string> Fingerprint(Agent& agent) = 0;
  // Whether the device accepts work (for "the source keeps running").
  virtual absl::Status CheckRunning(Agent& agent) = 0;
};

using HarnessFactory = std::function<std::unique_ptr<AgentHarness>()>;

class AgentContractTest : public ::testing::TestWithParam<HarnessFactory> {
 protected:
  void SetUp() override { harness_ = GetParam()(); }
  std::unique_ptr<AgentHarness> harness_;
};

// Fails the chosen arcs.
class ArcFaults : public FaultInjector {
 public:
  void Fail(State from, State to) { arcs_.push_back({from, to}); }
  absl::Status Before(State from, State to) override {
    for (auto [f, t] : arcs_) {
      if (f == from && t == to) {
        return absl::InternalError("injected fault");
      }
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::pair<State, State>> arcs_;
};

// Writes a complete migration image of `source` (which must be RUNNING):
// pre-copy rounds with a mutation between them, then stop-copy. Leaves the
// source in STOP_COPY.
absl::StatusOr<std::vector<uint8_t>> Migrate(AgentHarness& h, Agent& source,
                                             int rounds);
// Feeds an image to a PREPARED destination and activates it.
absl::Status Receive(Agent& destination, const std::vector<uint8_t>& image);

}  // namespace vgpu::agents::testing

#endif  // VGPU_AGENTS_TESTING_CONTRACT_KIT_H_
