#include "agents/testing/contract_kit.h"

#include <gmock/gmock.h>

#include <set>

#include "absl/strings/str_cat.h"

namespace vgpu::agents::testing {

using ::testing::HasSubstr;

absl::StatusOr<std::vector<uint8_t>> Migrate(AgentHarness& h, Agent& source,
                                             int rounds) {
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  root.initVm().setName("contract-vm");
  auto dev = root.initDevices(1)[0];
  dev.setIndex(0);
  dev.setDescriptor(source.descriptor().root());
  codec::MemorySink sink;
  codec::WriterOptions opts;
  opts.chunk_size = 64 << 10;
  auto writer = codec::ImageWriter::Create(&sink, m, opts);
  if (!writer.ok()) return writer.status();
  if (auto s = source.TransitionTo(State::kPreCopy); !s.ok()) return s;
  for (int r = 0; r < rounds; ++r) {
    if (auto s = source.Save(**writer, 0, r); !s.ok()) return s;
    if (auto s = h.Mutate(source); !s.ok()) return s;
  }
  // As the coordinator does, through the group step.
  if (auto s = TransitionGroup({&source}, State::kStopCopy); !s.ok()) return s;
  if (auto s = source.Save(**writer, 0, rounds); !s.ok()) return s;
  auto pending = source.Pending();
  if (!pending.ok()) return pending.status();
  if (pending->total() != 0) {
    return absl::InternalError("bytes still pending after the final save");
  }
  if (auto s = (*writer)->Finish(); !s.ok()) return s;
  return sink.bytes();
}

absl::Status Receive(Agent& destination, const std::vector<uint8_t>& image) {
  return ReceiveImage(destination, image);
}

namespace {

// Drives a fresh agent of `role` to `state`; false if not reachable.
absl::StatusOr<std::unique_ptr<Agent>> AgentIn(AgentHarness& h, Role role,
                                               State state,
                                               std::unique_ptr<Agent>* source) {
  auto src = h.MakeSource();
  if (!src.ok()) return src.status();
  if (role == Role::kSource) {
    std::unique_ptr<Agent> a = std::move(*src);
    if (state == State::kRunning) return a;
    if (state == State::kPreCopy || state == State::kStopCopy ||
        state == State::kReleased) {
      if (auto s = a->TransitionTo(State::kPreCopy); !s.ok()) return s;
    }
    if (state == State::kStopCopy || state == State::kReleased) {
      if (auto s = a->TransitionTo(State::kStopCopy); !s.ok()) return s;
    }
    if (state == State::kReleased) {
      if (auto s = a->TransitionTo(State::kReleased); !s.ok()) return s;
    }
    return a;
  }
  auto dst = h.MakeDestination(**src);
  if (!dst.ok()) return dst.status();
  std::unique_ptr<Agent> d = std::move(*dst);
  if (state == State::kResuming) {
    if (auto s = d->TransitionTo(State::kResuming); !s.ok()) return s;
  }
  if (state == State::kRunning) {
    // A destination reaches RUNNING only with a whole image loaded.
    auto img = Migrate(h, **src, 1);
    if (!img.ok()) return img.status();
    if (auto s = Receive(*d, *img); !s.ok()) return s;
  }
  if (source != nullptr) *source = std::move(*src);
  return d;
}

const State kAll[] = {State::kRunning,  State::kPreCopy,  State::kStopCopy,
                      State::kReleased, State::kPrepared, State::kResuming,
                      State::kError};

bool Reachable(Role role, State s) {
  if (role == Role::kSource) {
    return s == State::kRunning || s == State::kPreCopy ||
           s == State::kStopCopy || s == State::kReleased;
  }
  return s == State::kPrepared || s == State::kResuming ||
         s == State::kRunning;
}

}  // namespace

TEST_P(AgentContractTest, SourceArcsAllWork) {
  // Each path through the source's side of the table.
  const std::vector<std::vector<State>> paths = {
      {State::kPreCopy, State::kStopCopy, State::kReleased},
      {State::kStopCopy, State::kRunning},
      {State::kPreCopy, State::kRunning},
      {State::kPreCopy, State::kStopCopy, State::kRunning},
      {State::kStopCopy, State::kReleased},
  };
  for (const auto& path : paths) {
    auto a = harness_->MakeSource();
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ((*a)->state(), State::kRunning);
    for (State to : path) {
      ASSERT_TRUE((*a)->TransitionTo(to).ok()) << StateName(to);
      EXPECT_EQ((*a)->state(), to);
    }
    if ((*a)->state() == State::kRunning) {
      EXPECT_TRUE(harness_->CheckRunning(**a).ok());
    }
  }
}

TEST_P(AgentContractTest, InvalidArcsAreRefusedAndChangeNothing) {
  int tried = 0;
  for (Role role : {Role::kSource, Role::kDestination}) {
    for (State from : kAll) {
      if (!Reachable(role, from)) continue;
      for (State to : kAll) {
        if (FindTransition(role, from, to) != nullptr) continue;
        auto a = AgentIn(*harness_, role, from, nullptr);
        ASSERT_TRUE(a.ok()) << a.status();
        absl::Status s = (*a)->TransitionTo(to);
        EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition)
            << RoleName(role) << " " << StateName(from) << "->"
            << StateName(to);
        EXPECT_EQ((*a)->state(), from);
        ++tried;
      }
    }
  }
  EXPECT_GT(tried, 20);
}

TEST_P(AgentContractTest, FaultAtEveryArcReachesItsRecoveryState) {
  for (const Transition& arc : kTransitions) {
    SCOPED_TRACE(absl::StrCat(RoleName(arc.role), " ", StateName(arc.from),
                              "->", StateName(arc.to)));
    std::unique_ptr<Agent> source;
    auto a = AgentIn(*harness_, arc.role, arc.from, &source);
    ASSERT_TRUE(a.ok()) << a.status();
    std::string before;
    if (arc.role == Role::kSource) {
      auto f = harness_->Fingerprint(**a);
      ASSERT_TRUE(f.ok());
      before = *f;
    }
    ArcFaults faults;
    faults.Fail(arc.from, arc.to);
    (*a)->set_fault_injector(&faults);
    absl::Status s = (*a)->TransitionTo(arc.to);
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("injected fault"));
    EXPECT_EQ((*a)->state(), arc.recovery);
    (*a)->set_fault_injector(nullptr);
    if (arc.role == Role::kSource && arc.recovery == State::kRunning) {
      // The source is unchanged and still runs; a clean retry migrates.
      auto after = harness_->Fingerprint(**a);
      ASSERT_TRUE(after.ok());
      EXPECT_EQ(*after, before) << "a failed transition changed the source";
      EXPECT_TRUE(harness_->CheckRunning(**a).ok());
      auto img = Migrate(*harness_, **a, 1);
      EXPECT_TRUE(img.ok()) << img.status();
    }
    // When the fallback fails as well, the agent says so: ERROR.
    if (arc.recovery != arc.from && arc.recovery != State::kError) {
      auto b = AgentIn(*harness_, arc.role, arc.from, nullptr);
      ASSERT_TRUE(b.ok());
      ArcFaults both;
      both.Fail(arc.from, arc.to);
      both.Fail(arc.from, arc.recovery);
      (*b)->set_fault_injector(&both);
      EXPECT_FALSE((*b)->TransitionTo(arc.to).ok());
      EXPECT_EQ((*b)->state(), State::kError);
      (*b)->set_fault_injector(nullptr);
      EXPECT_EQ((*b)->TransitionTo(State::kRunning).code(),
                absl::StatusCode::kFailedPrecondition);
    }
  }
}

TEST_P(AgentContractTest, SaveLoadRoundTripCarriesTheWholeState) {
  auto src = harness_->MakeSource();
  ASSERT_TRUE(src.ok());
  auto dst = harness_->MakeDestination(**src);
  ASSERT_TRUE(dst.ok()) << dst.status();
  auto image = Migrate(*harness_, **src, 3);
  ASSERT_TRUE(image.ok()) << image.status();
  auto want = harness_->Fingerprint(**src);
  ASSERT_TRUE(want.ok());
  ASSERT_TRUE(Receive(**dst, *image).ok());
  EXPECT_EQ((*dst)->state(), State::kRunning);
  auto got = harness_->Fingerprint(**dst);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *want) << "the destination differs from the stopped source";
  EXPECT_TRUE(harness_->CheckRunning(**dst).ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kReleased).ok());
}

TEST_P(AgentContractTest, AbortLeavesTheSourceUnchangedAndRunning) {
  for (State abort_from : {State::kPreCopy, State::kStopCopy}) {
    auto src = harness_->MakeSource();
    ASSERT_TRUE(src.ok());
    auto before = harness_->Fingerprint(**src);
    ASSERT_TRUE(before.ok());
    codec::MemorySink sink;
    codec::Manifest m;
    m.mutable_root().initDevices(1)[0].setDescriptor(
        (*src)->descriptor().root());
    auto w = codec::ImageWriter::Create(&sink, m, {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*src)->TransitionTo(State::kPreCopy).ok());
    ASSERT_TRUE((*src)->Save(**w, 0, 0).ok());
    if (abort_from == State::kStopCopy) {
      ASSERT_TRUE((*src)->TransitionTo(State::kStopCopy).ok());
      ASSERT_TRUE((*src)->Save(**w, 0, 1).ok());
    }
    ASSERT_TRUE((*src)->TransitionTo(State::kRunning).ok());
    auto after = harness_->Fingerprint(**src);
    ASSERT_TRUE(after.ok());
    EXPECT_EQ(*after, *before) << "abort from " << StateName(abort_from);
    EXPECT_TRUE(harness_->CheckRunning(**src).ok());
    EXPECT_TRUE(harness_->Mutate(**src).ok());
    // And the next migration of the same device succeeds.
    EXPECT_TRUE(Migrate(*harness_, **src, 1).ok());
  }
}

TEST_P(AgentContractTest, PendingIsNeverZeroWhileSomethingIsUnsent) {
  auto src = harness_->MakeSource();
  ASSERT_TRUE(src.ok());
  ASSERT_TRUE((*src)->TransitionTo(State::kPreCopy).ok());
  auto p = (*src)->Pending();
  ASSERT_TRUE(p.ok());
  EXPECT_GT(p->total(), 0u);
  codec::MemorySink sink;
  codec::Manifest m;
  m.mutable_root().initDevices(1)[0].setDescriptor((*src)->descriptor().root());
  auto w = codec::ImageWriter::Create(&sink, m, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*src)->Save(**w, 0, 0).ok());
  ASSERT_TRUE(harness_->Mutate(**src).ok());
  p = (*src)->Pending();
  ASSERT_TRUE(p.ok());
  EXPECT_GT(p->total(), 0u) << "a mutation after a save left nothing pending";
  ASSERT_TRUE((*src)->TransitionTo(State::kStopCopy).ok());
  ASSERT_TRUE((*src)->Save(**w, 0, 1).ok());
  p = (*src)->Pending();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->total(), 0u);
}

TEST_P(AgentContractTest, SaveAndLoadRefuseTheWrongState) {
  auto src = harness_->MakeSource();
  ASSERT_TRUE(src.ok());
  codec::MemorySink sink;
  codec::Manifest m;
  m.mutable_root().initDevices(1)[0].setDescriptor((*src)->descriptor().root());
  auto w = codec::ImageWriter::Create(&sink, m, {});
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*src)->Save(**w, 0, 0).code(),
            absl::StatusCode::kFailedPrecondition);
  auto dst = harness_->MakeDestination(**src);
  ASSERT_TRUE(dst.ok());
  auto image = Migrate(*harness_, **src, 1);
  ASSERT_TRUE(image.ok());
  codec::MemorySource in(*image);
  auto reader = codec::ImageReader::Open(&in);
  ASSERT_TRUE(reader.ok());
  auto next = (*reader)->NextSection();
  ASSERT_TRUE(next.ok() && next->has_value());
  EXPECT_EQ((*dst)->Load(**next, **reader).code(),
            absl::StatusCode::kFailedPrecondition)
      << "a PREPARED destination took a section";
}

}  // namespace vgpu::agents::testing
