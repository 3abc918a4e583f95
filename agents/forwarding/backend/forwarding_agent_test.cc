// The agent contract kit on the API-forwarding agent, over real sessions on
// PoCL, plus a migration through the agents that a guest follows to the new
// session.
#include "agents/forwarding/backend/forwarding_agent.h"

#include <CL/cl.h>

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agents/forwarding/backend/testing/in_process.h"
#include "agents/forwarding/backend/testing/raw_guest.h"
#include "agents/testing/contract_kit.h"
#include "gtest/gtest.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace vgpu::forwarding::backend {
namespace {

using agents::Agent;
using testing::InProcessSession;
using testing::RawGuest;
using testing::VectorAdd;

struct Device {
  std::unique_ptr<InProcessSession> backend;
  std::unique_ptr<RawGuest> guest;  // sources only
  VectorAdd v;
  uint32_t seed = 1;
};

codec::Message<control::SessionInfo> TargetInfo(InProcessSession& t) {
  codec::Message<control::SessionInfo> info;
  auto r = info.mutable_root();
  r.setSession(t.options().session);
  r.setControl(t.control_address());
  r.setGuestAddress(t.options().guest_address);
  r.setToken(kj::arrayPtr(
      reinterpret_cast<const capnp::byte*>(t.options().token.data()),
      t.options().token.size()));
  return info;
}

class ForwardingHarness : public agents::testing::AgentHarness {
 public:
  std::string name() const override { return "apiForwarding"; }

  absl::StatusOr<std::unique_ptr<Agent>> MakeSource() override {
    Device d;
    auto b = InProcessSession::Start(next_id_++);
    if (!b.ok()) return b.status();
    d.backend = std::move(*b);
    auto g = d.backend->Connect("vm1");
    if (!g.ok()) return g.status();
    d.guest = std::move(*g);
    auto v = VectorAdd::Build(*d.guest, 1 << 16);
    if (!v.ok()) return v.status();
    d.v = *v;
    if (auto s = d.v.Fill(*d.guest, d.seed); !s.ok()) return s;
    if (auto s = d.v.Run(*d.guest, 1.5f); !s.ok()) return s;
    auto agent = OpenForwardingSource(d.backend->control_address());
    if (!agent.ok()) return agent.status();
    // Where the guest would be sent at release: no backend there, which
    // only matters to a guest that follows (the kit's has none).
    (*agent)->SetDestinationHint("unix:/tmp/vgpu-fwd-nowhere");
    devices_[agent->get()] = std::move(d);
    return agent;
  }

  absl::StatusOr<std::unique_ptr<Agent>> MakeDestination(
      const Agent& source) override {
    Device d;
    auto b = InProcessSession::Start(next_id_++);
    if (!b.ok()) return b.status();
    d.backend = std::move(*b);
    auto info = TargetInfo(*d.backend);
    auto agent = OpenForwardingDestination(info.root(), source.descriptor(),
                                           "vm1");
    if (!agent.ok()) return agent.status();
    devices_[agent->get()] = std::move(d);
    return agent;
  }

  absl::Status Mutate(Agent& source) override {
    Device& d = devices_.at(&source);
    ++d.seed;
    if (auto s = d.v.Fill(*d.guest, d.seed); !s.ok()) return s;
    return d.v.Run(*d.guest, static_cast<float>(d.seed));
  }

  // Every memory object's id and contents, and the object count.
  absl::StatusOr<std::string> Fingerprint(Agent& agent) override {
    Session& s = devices_.at(&agent).backend->session();
    XXH64_state_t* st = XXH64_createState();
    XXH64_reset(st, 0);
    const std::vector<MemState> mems = s.Mems(false);
    for (const MemState& m : mems) {
      std::vector<uint8_t> bytes(m.info.bytes);
      if (auto r = s.ReadMem(m.info.id, bytes.data(), 0, bytes.size());
          !r.ok()) {
        XXH64_freeState(st);
        return r;
      }
      XXH64_update(st, &m.info.id, sizeof(m.info.id));
      XXH64_update(st, bytes.data(), bytes.size());
    }
    const uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    return absl::StrCat(mems.size(), " objects, ", absl::Hex(h));
  }

  absl::Status CheckRunning(Agent& agent) override {
    Device& d = devices_.at(&agent);
    if (d.backend->session().frozen()) {
      return absl::FailedPreconditionError("session frozen");
    }
    if (d.guest == nullptr) return absl::OkStatus();
    auto r = d.guest->Call([](proto::Request::Builder b) { b.setPing(); });
    if (!r.ok()) return r.status();
    return r->code() == CL_SUCCESS ? absl::OkStatus()
                                   : absl::InternalError("ping failed");
  }

 private:
  uint64_t next_id_ = 1;
  std::map<const Agent*, Device> devices_;
};

using agents::testing::AgentContractTest;
INSTANTIATE_TEST_SUITE_P(
    ApiForwarding, AgentContractTest,
    ::testing::Values(agents::testing::HarnessFactory(
        [] { return std::make_unique<ForwardingHarness>(); })));

TEST(ForwardingAgentTest, DescriptorSaysWhatTheSessionNeeds) {
  ForwardingHarness h;
  auto src = h.MakeSource();
  ASSERT_TRUE(src.ok()) << src.status();
  auto d = (*src)->descriptor().root();
  EXPECT_EQ(d.getStrategy(), schema::Strategy::API_FORWARDING);
  EXPECT_EQ(std::string(d.getWrapperName()), kWrapperName);
  EXPECT_EQ(d.getWrapperAbi().getMajor(), proto::ABI_MAJOR);
  EXPECT_EQ(d.getVramBytes(), 3u * (1 << 16) * 4);
  EXPECT_FALSE(std::string(d.getArchitecture()).empty());
}

// A whole migration through the agents while the guest keeps using the
// session between rounds: the destination holds what the stopped source
// held, and the source releases. (The guest following the hand-off is
// tests/e2e/forwarding_test's.)
TEST(ForwardingAgentTest, AMigrationThroughTheAgentsCarriesTheSession) {
  ForwardingHarness h;
  auto src = h.MakeSource();
  ASSERT_TRUE(src.ok()) << src.status();
  auto dst = h.MakeDestination(**src);
  ASSERT_TRUE(dst.ok()) << dst.status();
  auto image = agents::testing::Migrate(h, **src, 3);
  ASSERT_TRUE(image.ok()) << image.status();
  auto want = h.Fingerprint(**src);
  ASSERT_TRUE(agents::ReceiveImage(**dst, *image).ok());
  EXPECT_EQ(*h.Fingerprint(**dst), *want);
  ASSERT_TRUE((*src)->TransitionTo(agents::State::kReleased).ok());
}

TEST(ForwardingAgentTest, SectionsThatAreNotASessionAreRefused) {
  ForwardingHarness h;
  auto src = h.MakeSource();
  ASSERT_TRUE(src.ok());
  auto dst = h.MakeDestination(**src);
  ASSERT_TRUE(dst.ok());
  // An image whose only section is some vendor's blob: refused, named.
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  root.initVm().setName("vm1");
  auto dev = root.initDevices(1)[0];
  dev.setIndex(0);
  dev.setDescriptor((*src)->descriptor().root());
  codec::MemorySink sink;
  auto w = codec::ImageWriter::Create(&sink, m, {});
  ASSERT_TRUE(w.ok());
  codec::SectionHeader sh;
  sh.mutable_root().setName("blob");
  sh.mutable_root().setDeclaredBytes(4);
  sh.mutable_root().initVendorBlob().setVendor("acme");
  const uint8_t four[4] = {1, 2, 3, 4};
  auto added = (*w)->AddSection(sh, four);
  ASSERT_TRUE(added.ok()) << added.status();
  ASSERT_TRUE((*w)->Finish().ok());
  absl::Status s = agents::ReceiveImage(**dst, sink.bytes());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not part of a forwarded OpenCL session"),
            std::string::npos)
      << s;
  // Refused and still receiving; the coordinator's abort discards it.
  EXPECT_EQ((*dst)->state(), agents::State::kResuming);
  EXPECT_TRUE((*dst)->TransitionTo(agents::State::kPrepared).ok());
}

}  // namespace
}  // namespace vgpu::forwarding::backend
