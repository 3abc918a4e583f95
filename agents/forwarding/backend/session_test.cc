// Session on the real OpenCL platform (PoCL), with guests attached over
// socketpairs: checkpoint and restore through the session's own operations,
// freezing, dirty tracking, hand-off, resume checks and bad input.
#include "agents/forwarding/backend/session.h"

#include <CL/cl.h>

#include <sys/socket.h>

#include <chrono>
#include <future>
#include <thread>

#include "agents/forwarding/backend/testing/in_process.h"
#include "agents/forwarding/backend/testing/raw_guest.h"
#include "agents/forwarding/frame.h"
#include "gtest/gtest.h"

namespace vgpu::forwarding::backend {
namespace {

using testing::InProcessSession;
using testing::RawGuest;
using testing::VectorAdd;

std::vector<float> Expected(const VectorAdd& v, uint32_t seed, float k) {
  std::vector<float> c(v.n);
  for (uint32_t i = 0; i < v.n; ++i) {
    const float a = static_cast<float>((i * 7 + seed * 13) % 1000);
    const float b = static_cast<float>((i * 7 + seed * 13 + 5) % 1000);
    c[i] = a + b * k;
  }
  return c;
}

// Everything a checkpoint carries, applied to `target` as a restore does.
void Restore(Session& source, Session& target) {
  auto log = source.SaveLog();
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_TRUE(target.Replay(*log).ok());
  for (const MemState& m : source.Mems(false)) {
    std::vector<uint8_t> bytes(m.info.bytes);
    ASSERT_TRUE(source.ReadMem(m.info.id, bytes.data(), 0, bytes.size()).ok());
    ASSERT_TRUE(target.WriteMem(m.info.id, bytes.data(), 0, bytes.size()).ok());
  }
  const SessionIdentity id = source.identity();
  ASSERT_TRUE(target.Activate(source.guest(), id.id, id.token).ok());
}

TEST(SessionTest, CheckpointRestoreCarriesObjectsArgumentsAndContents) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok()) << a.status();
  auto g = (*a)->Connect("vm1");
  ASSERT_TRUE(g.ok()) << g.status();
  auto v = VectorAdd::Build(**g, 4096);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->Fill(**g, 3).ok());
  ASSERT_TRUE(v->Run(**g, 2.0f).ok());
  auto before = v->Read(**g, v->c);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(*before, Expected(*v, 3, 2.0f));

  ASSERT_TRUE((*a)->session().Freeze().ok());
  auto b = InProcessSession::Start(2);
  ASSERT_TRUE(b.ok());
  Restore((*a)->session(), (*b)->session());
  // The restored session answers to the identity the guest knows.
  EXPECT_EQ((*b)->session().identity().id, (*g)->session());
  EXPECT_EQ((*b)->session().guest().vm, "vm1");

  // The guest resumes on the restored session with the same ids: the
  // result is there, and the kernel (with its arguments a, b, c as they
  // were set before the checkpoint) runs on.
  auto g2 = (*b)->Connect("vm1", /*resume=*/true);
  ASSERT_TRUE(g2.ok()) << g2.status();
  auto after = v->Read(**g2, v->c);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *before);
  ASSERT_TRUE(v->Run(**g2, 5.0f).ok());
  EXPECT_EQ(*v->Read(**g2, v->c), Expected(*v, 3, 5.0f));
  // And the restored session's log is the source's.
  EXPECT_EQ((*b)->session().log_entries(), (*a)->session().log_entries());
}

TEST(SessionTest, AFrozenSessionHoldsCallsUntilThawed) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE((*a)->session().Freeze().ok());
  EXPECT_TRUE((*a)->session().frozen());
  auto pending = std::async(std::launch::async, [&] {
    return (*g)->Call([](proto::Request::Builder b) { b.setPing(); });
  });
  // Held: no answer while frozen.
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(300)),
            std::future_status::timeout);
  (*a)->session().Thaw();
  auto r = pending.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code(), CL_SUCCESS);
}

TEST(SessionTest, DirtyMeansACommandMayHaveWrittenIt) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 256);
  ASSERT_TRUE(v.ok());
  auto dirty = [&] {
    std::set<uint64_t> out;
    for (const MemState& m : (*a)->session().Mems(true)) {
      if (m.dirty) out.insert(m.info.id);
    }
    return out;
  };
  EXPECT_EQ(dirty(), (std::set<uint64_t>{v->a, v->b, v->c}));  // all new
  EXPECT_EQ(dirty(), (std::set<uint64_t>{}));                  // taken
  ASSERT_TRUE(v->Fill(**g, 1).ok());
  EXPECT_EQ(dirty(), (std::set<uint64_t>{v->a, v->b}));
  // The kernel writes only c: a and b are read-only buffers.
  ASSERT_TRUE(v->Run(**g, 1.0f).ok());
  EXPECT_EQ(dirty(), (std::set<uint64_t>{v->c}));
  ASSERT_TRUE(v->Read(**g, v->c).ok());
  EXPECT_EQ(dirty(), (std::set<uint64_t>{}));  // reads dirty nothing
}

TEST(SessionTest, HandOffTellsTheGuestWhereToGoAndEndsTheSession) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  ASSERT_TRUE(g.ok());
  // Not while running: the guest could still be changing state.
  EXPECT_TRUE(absl::IsFailedPrecondition((*a)->session().HandOff("unix:/x")));
  ASSERT_TRUE((*a)->session().Freeze().ok());
  ASSERT_TRUE((*a)->session().HandOff("tcp:10.0.0.2:7400").ok());
  auto moved = (*g)->Receive();
  ASSERT_TRUE(moved.ok()) << moved.status();
  auto r = moved->reply.root();
  EXPECT_EQ(r.getSeq(), 0u);
  ASSERT_TRUE(r.isMoved());
  EXPECT_EQ(std::string(r.getMoved().getAddress()), "tcp:10.0.0.2:7400");
  // The session keeps the identity the guest knows it by.
  EXPECT_EQ(r.getMoved().getSession(), (*g)->session());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(
                            r.getMoved().getToken().begin()),
                        r.getMoved().getToken().size()),
            (*g)->token());
  (*a)->session().WaitDetached();  // returns: the session is over here
  // A late resume here is told the session moved.
  auto late = (*a)->Connect("vm1", true);
  ASSERT_FALSE(late.ok());
  EXPECT_NE(late.status().message().find("moved"), std::string::npos)
      << late.status();
}

TEST(SessionTest, ResumeNeedsTheTokenAndASessionHasOneGuest) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  // Not yet: nobody has started this session.
  EXPECT_FALSE((*a)->Connect("vm1", true).ok());
  auto g = (*a)->Connect("vm1");
  ASSERT_TRUE(g.ok());
  auto second = (*a)->Connect("vm2");
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("already belongs"),
            std::string::npos);
  // A stolen session id without the token gets nowhere.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  std::thread admit([&] {
    auto s = std::make_unique<Stream>(sv[1], "x");
    uint64_t p = 0;
    auto h = RecvFrame<proto::Request>(*s, &p);
    ASSERT_TRUE(h.ok());
    EXPECT_FALSE((*a)->session().Attach(std::move(s), h->root()).ok());
  });
  auto thief = RawGuest::Hello(std::make_unique<Stream>(sv[0], "y"), "vm1", 1,
                               std::string(32, 'x'));
  admit.join();
  ASSERT_FALSE(thief.ok());
  EXPECT_NE(thief.status().message().find("token does not match"),
            std::string::npos)
      << thief.status();
  // The real guest is untouched.
  auto ping = (*g)->Call([](proto::Request::Builder b) { b.setPing(); });
  ASSERT_TRUE(ping.ok());
  EXPECT_EQ(ping->code(), CL_SUCCESS);
}

TEST(SessionTest, AMalformedMessageIsRefusedAndTheSessionGoesOn) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  ASSERT_TRUE(g.ok());
  uint8_t header[kFrameHeaderBytes];
  EncodeFrameHeader({64, 3}, header);
  std::vector<uint8_t> frame(header, header + kFrameHeaderBytes);
  frame.resize(frame.size() + 64, 0xee);  // not a Cap'n Proto message
  frame.insert(frame.end(), {1, 2, 3});   // and a payload to skip
  ASSERT_TRUE((*g)->SendRaw(frame).ok());
  auto refused = (*g)->Receive();
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->code(), CL_INVALID_VALUE);
  EXPECT_NE(std::string(refused->reply.root().getMessage()).find("malformed"),
            std::string::npos);
  auto ping = (*g)->Call([](proto::Request::Builder b) { b.setPing(); });
  ASSERT_TRUE(ping.ok()) << ping.status();
  EXPECT_EQ(ping->code(), CL_SUCCESS);
}

TEST(SessionTest, AQueueWaitingOnAnUnsetUserEventCannotBeFrozen) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  const uint64_t user = (*g)->NewId();
  auto r = (*g)->Call([&](proto::Request::Builder b) {
    auto u = b.initCreateUserEvent();
    u.setId(user);
    u.setContext(v->context);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto e = b.initEnqueue();
    e.setQueue(v->queue);
    e.initWaitList(1).set(0, user);
    e.setMarker();
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  absl::Status s = (*a)->session().Freeze();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_FALSE((*a)->session().frozen());  // runs on
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto u = b.initSetUserEventStatus();
    u.setEvent(user);
    u.setStatus(CL_COMPLETE);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  EXPECT_TRUE((*a)->session().Freeze().ok());
}

TEST(SessionTest, TheLogFollowsLiveObjectsNotHistory) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(v->Run(**g, 0.5f).ok());  // every argument set once
  const uint64_t entries = (*a)->session().log_entries();
  for (int i = 0; i < 300; ++i) {
    const uint64_t id = (*g)->NewId();
    auto r = (*g)->Call([&](proto::Request::Builder b) {
      auto c = b.initCreateBuffer();
      c.setId(id);
      c.setContext(v->context);
      c.setSize(1 << 16);
    });
    ASSERT_EQ(r->code(), CL_SUCCESS);
    r = (*g)->Call([&](proto::Request::Builder b) {
      auto rel = b.initRelease();
      rel.setKind(proto::ObjKind::MEM);
      rel.setId(id);
    });
    ASSERT_EQ(r->code(), CL_SUCCESS);
    ASSERT_TRUE(v->Run(**g, static_cast<float>(i)).ok());
  }
  EXPECT_EQ((*a)->session().log_entries(), entries);
  EXPECT_EQ((*a)->session().memory_bytes(), 3u * 64 * 4);
}

TEST(SessionTest, MemoryLimitRefusesAndTheSessionStaysUsable) {
  auto a = InProcessSession::Start(1, /*memory_limit=*/1 << 20);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  auto r = (*g)->Call([&](proto::Request::Builder b) {
    auto c = b.initCreateBuffer();
    c.setId((*g)->NewId());
    c.setContext(v->context);
    c.setSize(2 << 20);
  });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->code(), CL_MEM_OBJECT_ALLOCATION_FAILURE);
  ASSERT_TRUE(v->Fill(**g, 1).ok());
  ASSERT_TRUE(v->Run(**g, 1.0f).ok());
}

}  // namespace
}  // namespace vgpu::forwarding::backend

namespace vgpu::forwarding::backend {
namespace {

// clEnqueueWriteBuffer(CL_FALSE) behind an unset user event returns at once
// natively; the application sets the event afterwards. Forwarded, the call
// must not wait for the event either (it would never come).
TEST(SessionTest, ANonBlockingWriteBehindAUserEventReturnsAtOnce) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  const uint64_t user = (*g)->NewId();
  auto r = (*g)->Call([&](proto::Request::Builder b) {
    auto u = b.initCreateUserEvent();
    u.setId(user);
    u.setContext(v->context);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  std::vector<float> ones(64, 1.0f);
  auto write = std::async(std::launch::async, [&] {
    return (*g)->Call(
        [&](proto::Request::Builder b) {
          auto e = b.initEnqueue();
          e.setQueue(v->queue);
          e.initWaitList(1).set(0, user);
          auto w = e.initWriteBuffer();
          w.setMem(v->a);
          w.setSize(64 * 4);
          w.setBlocking(false);
        },
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(ones.data()),
                            64 * 4));
  });
  ASSERT_EQ(write.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "the write waited for the user event";
  ASSERT_EQ(write.get()->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto u = b.initSetUserEventStatus();
    u.setEvent(user);
    u.setStatus(CL_COMPLETE);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  auto back = v->Read(**g, v->a);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, ones);
}

}  // namespace
}  // namespace vgpu::forwarding::backend

namespace vgpu::forwarding::backend {
namespace {

// A session whose live program came from a binary requires that device.
TEST(SessionTest, AProgramFromABinaryTiesTheSessionToItsDevice) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE((*a)->session().required_features().empty());
  auto bin = (*g)->Call([&](proto::Request::Builder b) {
    auto i = b.initGetInfo();
    i.setKind(proto::InfoKind::PROGRAM);
    i.setId(v->program);
    i.setParam(CL_PROGRAM_BINARIES);
  });
  ASSERT_TRUE(bin.ok());
  ASSERT_EQ(bin->code(), CL_SUCCESS);
  auto info = bin->reply.root().getInfo();
  ASSERT_GT(info.size(), 0u);
  const uint64_t p = (*g)->NewId();
  auto r = (*g)->Call([&](proto::Request::Builder b) {
    auto c = b.initCreateProgramWithBinary();
    c.setId(p);
    c.setContext(v->context);
    c.initDevices(1).set(0, 0x200);
    c.initBinaries(1).set(0, info);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS) << r->reply.root().getMessage().cStr();
  const auto req = (*a)->session().required_features();
  ASSERT_EQ(req.size(), 1u);
  EXPECT_EQ(req[0], "cl-binary:" + (*a)->session().executor().device_name());
  // Released, the binary no longer binds the session.
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto rel = b.initRelease();
    rel.setKind(proto::ObjKind::PROGRAM);
    rel.setId(p);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  EXPECT_TRUE((*a)->session().required_features().empty());
}

}  // namespace
}  // namespace vgpu::forwarding::backend

namespace vgpu::forwarding::backend {
namespace {

// The watchdog's measure: the oldest call still running, here a clFinish
// behind a long kernel.
TEST(SessionTest, LongestCallMeasuresTheOldestCallInFlight) {
  auto a = InProcessSession::Start(1);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Connect("vm1");
  auto v = VectorAdd::Build(**g, 64);
  ASSERT_TRUE(v.ok());
  // A call ends just after its reply went out: wait for that.
  auto settle = [&] {
    for (int i = 0; i < 100 && (*a)->session().LongestCall() != absl::ZeroDuration(); ++i) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return (*a)->session().LongestCall();
  };
  EXPECT_EQ(settle(), absl::ZeroDuration());
  const uint64_t p = (*g)->NewId(), k = (*g)->NewId();
  auto r = (*g)->Call([&](proto::Request::Builder b) {
    auto c = b.initCreateProgramWithSource();
    c.setId(p);
    c.setContext(v->context);
    c.initSources(1).set(0,
                         "kernel void spin(global uint* o, uint n) {\n"
                         "  uint x = get_global_id(0);\n"
                         "  for (uint i = 0; i < n; ++i) x = x * 1103515245u + 12345u;\n"
                         "  o[get_global_id(0)] = x;\n"
                         "}\n");
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) { b.initBuildProgram().setProgram(p); });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto c = b.initCreateKernel();
    c.setId(k);
    c.setProgram(p);
    c.setName("spin");
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto a0 = b.initSetKernelArg();
    a0.setKernel(k);
    a0.setSize(8);
    a0.setMem(v->c);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  const uint32_t n = 20000000;
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto a1 = b.initSetKernelArg();
    a1.setKernel(k);
    a1.setIndex(1);
    a1.setSize(4);
    a1.setValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(&n), 4));
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  r = (*g)->Call([&](proto::Request::Builder b) {
    auto e = b.initEnqueue();
    e.setQueue(v->queue);
    auto nd = e.initNdRange();
    nd.setKernel(k);
    nd.initGlobalSize(1).set(0, 64);
  });
  ASSERT_EQ(r->code(), CL_SUCCESS);
  auto finish = std::async(std::launch::async, [&] {
    return (*g)->Call([&](proto::Request::Builder b) { b.setFinish(v->queue); });
  });
  absl::Duration seen = absl::ZeroDuration();
  while (finish.wait_for(std::chrono::milliseconds(10)) !=
         std::future_status::ready) {
    seen = std::max(seen, (*a)->session().LongestCall());
  }
  ASSERT_EQ(finish.get()->code(), CL_SUCCESS);
  EXPECT_GT(seen, absl::Milliseconds(100)) << "the kernel ran " << seen;
  EXPECT_EQ(settle(), absl::ZeroDuration());
}

}  // namespace
}  // namespace vgpu::forwarding::backend
