#include "agents/forwarding/backend/testing/raw_guest.h"

#include <CL/cl.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::testing {
namespace {

constexpr uint64_t kDevice = 0x200;
constexpr uint64_t kPlatform = 0x100;

constexpr char kSource[] =
    "kernel void axpy(global const float* a, global const float* b,\n"
    "                 global float* c, float k) {\n"
    "  size_t i = get_global_id(0);\n"
    "  c[i] = a[i] + b[i] * k;\n"
    "}\n";

absl::Status Check(const absl::StatusOr<CallResult>& r, const char* what) {
  if (!r.ok()) return r.status();
  if (r->code() != CL_SUCCESS) {
    return absl::InternalError(absl::StrCat(
        what, ": CL error ", r->code(), " ",
        r->reply.root().getMessage().cStr()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RawGuest>> RawGuest::Hello(
    std::unique_ptr<Stream> stream, const std::string& vm,
    uint64_t resume_session, const std::string& token, uint32_t abi_major) {
  std::unique_ptr<RawGuest> g(new RawGuest(std::move(stream)));
  auto r = g->Call([&](proto::Request::Builder b) {
    auto h = b.initHello();
    h.initAbi().setMajor(abi_major);
    h.setLibrary("raw-guest test");
    h.setVm(vm);
    h.initFeatures(1).set(0, "cl1.2");
    h.setResumeSession(resume_session);
    h.setResumeToken(kj::arrayPtr(
        reinterpret_cast<const capnp::byte*>(token.data()), token.size()));
  });
  if (!r.ok()) return r.status();
  if (r->code() != 0 || !r->reply.root().isHello()) {
    return absl::FailedPreconditionError(r->reply.root().getMessage().cStr());
  }
  auto h = r->reply.root().getHello();
  g->session_ = h.getSession();
  g->token_.assign(reinterpret_cast<const char*>(h.getToken().begin()),
                   h.getToken().size());
  return g;
}

absl::StatusOr<CallResult> RawGuest::Receive() {
  uint64_t payload = 0;
  auto msg = RecvFrame<proto::Reply>(*stream_, &payload);
  if (!msg.ok()) return msg.status();
  CallResult r{std::move(*msg), {}};
  r.payload.resize(payload);
  if (payload > 0) {
    absl::Status s = stream_->ReadFull(r.payload.data(), payload);
    if (!s.ok()) return s;
  }
  return r;
}

absl::StatusOr<CallResult> RawGuest::Call(
    const std::function<void(proto::Request::Builder)>& fill,
    absl::Span<const uint8_t> payload) {
  capnp::MallocMessageBuilder m;
  auto req = m.initRoot<proto::Request>();
  const uint64_t seq = ++seq_;
  req.setSeq(seq);
  fill(req);
  iovec v{const_cast<uint8_t*>(payload.data()), payload.size()};
  absl::Status s = SendFrame(*stream_, m,
                             payload.empty() ? absl::Span<const iovec>()
                                             : absl::MakeConstSpan(&v, 1));
  if (!s.ok()) return s;
  while (true) {
    auto r = Receive();
    if (!r.ok()) return r.status();
    if (r->reply.root().getSeq() == seq) return r;
    notifications_.push_back(std::move(r->reply));
  }
}

absl::Status RawGuest::SendRaw(absl::Span<const uint8_t> bytes) {
  return stream_->Write(bytes.data(), bytes.size());
}

absl::StatusOr<VectorAdd> VectorAdd::Build(RawGuest& g, uint32_t n) {
  VectorAdd v;
  v.n = n;
  v.context = g.NewId();
  absl::Status s = Check(g.Call([&](proto::Request::Builder b) {
    auto c = b.initCreateContext();
    c.setId(v.context);
    auto p = c.initProperties(1);
    p[0].setName(CL_CONTEXT_PLATFORM);
    p[0].setValue(kPlatform);
    c.initDevices(1).set(0, kDevice);
  }), "createContext");
  if (!s.ok()) return s;
  v.queue = g.NewId();
  s = Check(g.Call([&](proto::Request::Builder b) {
    auto q = b.initCreateQueue();
    q.setId(v.queue);
    q.setContext(v.context);
    q.setDevice(kDevice);
  }), "createQueue");
  if (!s.ok()) return s;
  for (uint64_t* mem : {&v.a, &v.b, &v.c}) {
    *mem = g.NewId();
    s = Check(g.Call([&](proto::Request::Builder b) {
      auto c = b.initCreateBuffer();
      c.setId(*mem);
      c.setContext(v.context);
      c.setFlags(mem == &v.c ? CL_MEM_WRITE_ONLY : CL_MEM_READ_ONLY);
      c.setSize(uint64_t{n} * 4);
    }), "createBuffer");
    if (!s.ok()) return s;
  }
  v.program = g.NewId();
  s = Check(g.Call([&](proto::Request::Builder b) {
    auto p = b.initCreateProgramWithSource();
    p.setId(v.program);
    p.setContext(v.context);
    p.initSources(1).set(0, kSource);
  }), "createProgramWithSource");
  if (!s.ok()) return s;
  s = Check(g.Call([&](proto::Request::Builder b) {
    b.initBuildProgram().setProgram(v.program);
  }), "buildProgram");
  if (!s.ok()) return s;
  v.kernel = g.NewId();
  s = Check(g.Call([&](proto::Request::Builder b) {
    auto k = b.initCreateKernel();
    k.setId(v.kernel);
    k.setProgram(v.program);
    k.setName("axpy");
  }), "createKernel");
  if (!s.ok()) return s;
  const uint64_t mems[3] = {v.a, v.b, v.c};
  for (uint32_t i = 0; i < 3; ++i) {
    s = Check(g.Call([&](proto::Request::Builder b) {
      auto a = b.initSetKernelArg();
      a.setKernel(v.kernel);
      a.setIndex(i);
      a.setSize(sizeof(cl_mem));
      a.setMem(mems[i]);
    }), "setKernelArg");
    if (!s.ok()) return s;
  }
  return v;
}

absl::Status VectorAdd::Fill(RawGuest& g, uint32_t seed) {
  for (uint64_t mem : {a, b}) {
    std::vector<float> data(n);
    for (uint32_t i = 0; i < n; ++i) {
      data[i] = static_cast<float>((i * 7 + seed * 13 + (mem == b ? 5 : 0)) % 1000);
    }
    absl::Status s = Check(
        g.Call(
            [&](proto::Request::Builder r) {
              auto e = r.initEnqueue();
              e.setQueue(queue);
              auto w = e.initWriteBuffer();
              w.setMem(mem);
              w.setSize(uint64_t{n} * 4);
              w.setBlocking(true);
            },
            absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(data.data()),
                                data.size() * 4)),
        "writeBuffer");
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status VectorAdd::Run(RawGuest& g, float k) {
  absl::Status s = Check(g.Call([&](proto::Request::Builder b) {
    auto a = b.initSetKernelArg();
    a.setKernel(kernel);
    a.setIndex(3);
    a.setSize(4);
    a.setValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(&k), 4));
  }), "setKernelArg k");
  if (!s.ok()) return s;
  s = Check(g.Call([&](proto::Request::Builder b) {
    auto e = b.initEnqueue();
    e.setQueue(queue);
    auto nd = e.initNdRange();
    nd.setKernel(kernel);
    nd.initGlobalSize(1).set(0, n);
  }), "ndRange");
  if (!s.ok()) return s;
  return Check(g.Call([&](proto::Request::Builder b) { b.setFinish(queue); }),
               "finish");
}

absl::StatusOr<std::vector<float>> VectorAdd::Read(RawGuest& g, uint64_t mem) {
  auto r = g.Call([&](proto::Request::Builder b) {
    auto e = b.initEnqueue();
    e.setQueue(queue);
    auto rd = e.initReadBuffer();
    rd.setMem(mem);
    rd.setSize(uint64_t{n} * 4);
    rd.setBlocking(true);
  });
  absl::Status s = Check(r, "readBuffer");
  if (!s.ok()) return s;
  if (r->payload.size() != uint64_t{n} * 4) {
    return absl::DataLossError(absl::StrCat("read returned ", r->payload.size(),
                                            " bytes"));
  }
  std::vector<float> out(n);
  std::memcpy(out.data(), r->payload.data(), r->payload.size());
  return out;
}

}  // namespace vgpu::forwarding::testing
