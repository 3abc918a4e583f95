#include "agents/forwarding/backend/session_log.h"

#include <CL/cl.h>

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "agents/forwarding/frame.h"

#include "gtest/gtest.h"

namespace vgpu::forwarding::backend {
namespace {

using proto::Request;

// Builds requests the way the guest library sends them.
class Calls {
 public:
  Calls& Context(uint64_t id) {
    Request::Builder r = New();
    r.initCreateContext().setId(id);
    return Rec(0);
  }
  Calls& Queue(uint64_t id, uint64_t ctx) {
    auto q = New().initCreateQueue();
    q.setId(id);
    q.setContext(ctx);
    return Rec(0);
  }
  Calls& Buffer(uint64_t id, uint64_t ctx, uint64_t size, uint64_t flags = 0) {
    auto b = New().initCreateBuffer();
    b.setId(id);
    b.setContext(ctx);
    b.setSize(size);
    b.setFlags(flags);
    return Rec((flags & CL_MEM_COPY_HOST_PTR) ? size : 0);
  }
  Calls& Sub(uint64_t id, uint64_t parent) {
    auto b = New().initCreateSubBuffer();
    b.setId(id);
    b.setParent(parent);
    return Rec(0);
  }
  Calls& Program(uint64_t id, uint64_t ctx) {
    auto p = New().initCreateProgramWithSource();
    p.setId(id);
    p.setContext(ctx);
    p.initSources(1).set(0, "kernel void k(global int* a) { a[0] = 1; }");
    return Rec(0);
  }
  Calls& Build(uint64_t program) {
    New().initBuildProgram().setProgram(program);
    return Rec(0);
  }
  Calls& Kernel(uint64_t id, uint64_t program) {
    auto k = New().initCreateKernel();
    k.setId(id);
    k.setProgram(program);
    k.setName("k");
    return Rec(0);
  }
  Calls& ArgMem(uint64_t kernel, uint32_t index, uint64_t mem) {
    auto a = New().initSetKernelArg();
    a.setKernel(kernel);
    a.setIndex(index);
    a.setSize(8);
    a.setMem(mem);
    return Rec(0);
  }
  Calls& ArgValue(uint64_t kernel, uint32_t index, int v) {
    auto a = New().initSetKernelArg();
    a.setKernel(kernel);
    a.setIndex(index);
    a.setSize(4);
    a.setValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(&v), 4));
    return Rec(0);
  }
  Calls& Release(proto::ObjKind kind, uint64_t id) {
    auto g = New().initRelease();
    g.setKind(kind);
    g.setId(id);
    return Rec(0);
  }
  Calls& Retain(proto::ObjKind kind, uint64_t id) {
    auto g = New().initRetain();
    g.setKind(kind);
    g.setId(id);
    return Rec(0);
  }
  Calls& Query(uint64_t id) {
    auto g = New().initGetInfo();
    g.setId(id);
    return Rec(0);
  }
  SessionLog log;

 private:
  Request::Builder New() {
    msg_ = std::make_unique<capnp::MallocMessageBuilder>();
    auto r = msg_->initRoot<Request>();
    r.setSeq(++seq_);
    return r;
  }
  Calls& Rec(uint64_t payload) {
    log.Record(msg_->getRoot<Request>().asReader(), payload);
    return *this;
  }
  std::unique_ptr<capnp::MallocMessageBuilder> msg_;
  uint64_t seq_ = 0;
};

// What a replay does, as a readable list: "createBuffer 65540", ...
std::vector<std::string> Describe(const std::vector<ReplayCall>& calls) {
  std::vector<std::string> out;
  codec::MessageLimits limits;
  for (const ReplayCall& c : calls) {
    auto m = codec::DecodeMessage<Request>(c.request, limits);
    EXPECT_TRUE(m.ok());
    Request::Reader r = m->root();
    EXPECT_EQ(r.getSeq(), 0u);
    switch (r.which()) {
      case Request::CREATE_CONTEXT: out.push_back("context " + std::to_string(r.getCreateContext().getId())); break;
      case Request::CREATE_QUEUE: out.push_back("queue " + std::to_string(r.getCreateQueue().getId())); break;
      case Request::CREATE_BUFFER: out.push_back("buffer " + std::to_string(r.getCreateBuffer().getId()) + " payload " + std::to_string(c.payload_bytes)); break;
      case Request::CREATE_SUB_BUFFER: out.push_back("sub " + std::to_string(r.getCreateSubBuffer().getId())); break;
      case Request::CREATE_PROGRAM_WITH_SOURCE: out.push_back("program " + std::to_string(r.getCreateProgramWithSource().getId())); break;
      case Request::BUILD_PROGRAM: out.push_back("build " + std::to_string(r.getBuildProgram().getProgram())); break;
      case Request::CREATE_KERNEL: out.push_back("kernel " + std::to_string(r.getCreateKernel().getId())); break;
      case Request::SET_KERNEL_ARG: {
        auto a = r.getSetKernelArg();
        out.push_back("arg " + std::to_string(a.getKernel()) + "[" + std::to_string(a.getIndex()) + "]" + (a.isMem() ? "=mem " + std::to_string(a.getMem()) : "=value"));
        break;
      }
      case Request::RETAIN: out.push_back("retain " + std::to_string(r.getRetain().getId())); break;
      case Request::RELEASE: out.push_back("release " + std::to_string(r.getRelease().getId())); break;
      default: out.push_back("other");
    }
  }
  return out;
}

constexpr uint64_t C = 0x10000, Q = 0x10001, B1 = 0x10002, B2 = 0x10003,
                   P = 0x10004, K = 0x10005, S = 0x10006;

TEST(SessionLogTest, ReplaysWhatBuiltTheLiveObjectsInOrder) {
  Calls c;
  c.Context(C).Queue(Q, C).Buffer(B1, C, 4096, CL_MEM_COPY_HOST_PTR)
      .Program(P, C).Build(P).Kernel(K, P).ArgMem(K, 0, B1).ArgValue(K, 1, 7)
      .Query(K);
  EXPECT_EQ(Describe(c.log.Replay()),
            (std::vector<std::string>{"context 65536", "queue 65537",
                                      "buffer 65538 payload 4096",
                                      "program 65540", "build 65540",
                                      "kernel 65541", "arg 65541[0]=mem 65538",
                                      "arg 65541[1]=value"}));
}

TEST(SessionLogTest, OnlyTheLastArgumentPerIndexIsKept) {
  Calls c;
  c.Context(C).Buffer(B1, C, 64).Buffer(B2, C, 64).Program(P, C).Build(P)
      .Kernel(K, P);
  for (int i = 0; i < 1000; ++i) c.ArgMem(K, 0, (i % 2) ? B1 : B2).ArgValue(K, 1, i);
  const auto calls = Describe(c.log.Replay());
  EXPECT_EQ(calls.size(), 8u);
  EXPECT_EQ(calls[6], "arg 65541[0]=mem 65538");
  EXPECT_EQ(c.log.entry_count(), 8u);
}

TEST(SessionLogTest, ReleasedObjectsLeaveTheLogSoItsSizeFollowsLiveState) {
  Calls c;
  c.Context(C).Queue(Q, C);
  const uint64_t base = c.log.encoded_bytes();
  for (uint64_t i = 0; i < 5000; ++i) {
    const uint64_t id = 0x20000 + i;
    c.Buffer(id, C, 1 << 20).Release(proto::ObjKind::MEM, id);
  }
  EXPECT_EQ(c.log.encoded_bytes(), base);
  EXPECT_EQ(c.log.entry_count(), 2u);
  EXPECT_EQ(c.log.live_objects(), 2u);
}

TEST(SessionLogTest, ADeadObjectStaysWhileSomethingNeedsItAndIsReleasedInReplay) {
  Calls c;
  c.Context(C).Buffer(B1, C, 64).Program(P, C).Build(P).Kernel(K, P)
      .ArgMem(K, 0, B1).Sub(S, B1);
  // The application lets go of the program and the buffer; the kernel
  // still holds the program, its argument and the sub-buffer the buffer.
  c.Release(proto::ObjKind::PROGRAM, P).Release(proto::ObjKind::MEM, B1);
  auto calls = Describe(c.log.Replay());
  ASSERT_EQ(calls.size(), 9u);
  EXPECT_EQ(calls[7], "release 65540");  // newest first: the program...
  EXPECT_EQ(calls[8], "release 65538");  // ...then the buffer
  // The argument moves to another buffer: B1 is still the sub-buffer's.
  c.Buffer(B2, C, 64).ArgMem(K, 0, B2);
  calls = Describe(c.log.Replay());
  EXPECT_NE(std::find(calls.begin(), calls.end(), "buffer 65538 payload 0"),
            calls.end());
  // Sub-buffer and kernel go: the program and B1 go with them.
  c.Release(proto::ObjKind::MEM, S).Release(proto::ObjKind::KERNEL, K);
  calls = Describe(c.log.Replay());
  EXPECT_EQ(calls, (std::vector<std::string>{"context 65536",
                                             "buffer 65539 payload 0"}));
}

TEST(SessionLogTest, RetainCountsAreReplayed) {
  Calls c;
  c.Context(C).Retain(proto::ObjKind::CONTEXT, C)
      .Retain(proto::ObjKind::CONTEXT, C).Release(proto::ObjKind::CONTEXT, C);
  EXPECT_EQ(Describe(c.log.Replay()),
            (std::vector<std::string>{"context 65536", "retain 65536"}));
}

TEST(SessionLogTest, StorageAndDirtyHelpers) {
  Calls c;
  c.Context(C).Buffer(B1, C, 64, CL_MEM_READ_ONLY).Buffer(B2, C, 64).Sub(S, B2)
      .Program(P, C).Kernel(K, P).ArgMem(K, 0, B1).ArgMem(K, 1, S);
  EXPECT_EQ(c.log.StorageOf(S), B2);
  EXPECT_EQ(c.log.StorageOf(B1), B1);
  EXPECT_TRUE(c.log.IsReadOnly(B1));
  EXPECT_FALSE(c.log.IsReadOnly(S));
  EXPECT_EQ(c.log.KernelMemArgs(K), (std::vector<uint64_t>{B1, S}));
}

TEST(SessionLogTest, EncodeDecodeRoundTripAndBoundedDecoding) {
  Calls c;
  c.Context(C).Queue(Q, C).Buffer(B1, C, 100, CL_MEM_COPY_HOST_PTR);
  const auto calls = c.log.Replay();
  const std::vector<uint8_t> blob = SessionLog::Encode(calls);
  auto back = SessionLog::Decode(blob);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), calls.size());
  EXPECT_EQ((*back)[2].payload_bytes, 100u);
  EXPECT_EQ((*back)[2].request, calls[2].request);

  // Every truncation is refused, saying where.
  for (size_t n = 0; n < blob.size(); n += 7) {
    auto cut = SessionLog::Decode(absl::MakeConstSpan(blob.data(), n));
    EXPECT_FALSE(cut.ok()) << n;
  }
  std::vector<uint8_t> bad = blob;
  bad[0] ^= 1;
  EXPECT_NE(SessionLog::Decode(bad).status().message().find("VCLG"),
            std::string::npos);
  bad = blob;
  bad.push_back(0);
  EXPECT_NE(SessionLog::Decode(bad).status().message().find("stray"),
            std::string::npos);
  EXPECT_TRUE(absl::IsResourceExhausted(SessionLog::Decode(blob, 2).status()));

  // A query smuggled into a log is refused: a log never holds one.
  capnp::MallocMessageBuilder m;
  m.initRoot<Request>().initGetInfo().setId(1);
  const auto q = SessionLog::Encode({{codec::EncodeMessageBytes(m), 0}});
  auto refused = SessionLog::Decode(q);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("never holds"), std::string::npos)
      << refused.status();
}

// Found by cl_request_fuzzer: a request whose frame carried slack (its
// message was larger than its own encoding) decoded at the door, but the
// log's copy of it was judged "too complex" when read back, so the
// session's checkpoint could not be restored. A decoder now budgets a
// message by its own encoding: whatever the door lets in, the log reads
// back.
TEST(SessionLogTest, WhatTheDoorAcceptsTheLogReadsBack) {
  std::string bytes;
  ASSERT_TRUE(absl::Base64Unescape("VkNMMXAAAAAAAAAAAAAAAAAAAAANAAAAAAAAAAcABAABAAAAAAAAAAYAAAAAAAAAAAAB//oAAAAAAAAAAAAAAAAAAAAAAAAAAAkAAAAAAAAAAAAAAAAEAAEAAAAwAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &bytes));
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  SessionLog log;
  size_t off = 0;
  while (bytes.size() - off >= kFrameHeaderBytes) {
    auto h = DecodeFrameHeader(data + off);
    if (!h.ok()) break;
    off += kFrameHeaderBytes;
    if (h->message_bytes > bytes.size() - off) break;
    auto msg = codec::DecodeMessage<proto::Request>(
        absl::MakeConstSpan(data + off, h->message_bytes), FrameLimits());
    off += h->message_bytes;
    const uint64_t payload = std::min<uint64_t>(h->payload_bytes,
                                                bytes.size() - off);
    off += payload;
    if (msg.ok()) log.Record(msg->root(), payload);
  }
  const std::vector<ReplayCall> calls = log.Replay();
  auto back = SessionLog::Decode(SessionLog::Encode(calls));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->size(), calls.size());
}

}  // namespace
}  // namespace vgpu::forwarding::backend
