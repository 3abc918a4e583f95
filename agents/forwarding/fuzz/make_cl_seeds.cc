// Writes the seed corpora of the forwarding fuzzers: a guest's frames for a
// small vector-add session (create, build, arguments, writes, a launch, a
// read, releases), and that session's log. Run once; the output is
// committed under corpus/.
#include <CL/cl.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "agents/forwarding/backend/session_log.h"
#include "agents/forwarding/frame.h"

namespace {

using vgpu::forwarding::proto::Request;

struct Frames {
  std::vector<uint8_t> bytes;
  vgpu::forwarding::backend::SessionLog log;
  uint64_t seq = 0;
  void Add(const std::function<void(Request::Builder)>& fill,
           uint64_t payload = 0) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<Request>();
    r.setSeq(++seq);
    fill(r);
    std::vector<uint8_t> msg = vgpu::codec::EncodeMessageBytes(m);
    uint8_t h[vgpu::forwarding::kFrameHeaderBytes];
    vgpu::forwarding::EncodeFrameHeader(
        {static_cast<uint32_t>(msg.size()), payload}, h);
    bytes.insert(bytes.end(), h, h + sizeof(h));
    bytes.insert(bytes.end(), msg.begin(), msg.end());
    bytes.resize(bytes.size() + payload, 0x5a);
    log.Record(m.getRoot<Request>().asReader(), payload);
  }
};

void Write(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s REQUEST_CORPUS_DIR LOG_CORPUS_DIR\n",
                 argv[0]);
    return 2;
  }
  Frames f;
  const uint64_t ctx = 0x10000, q = 0x10001, a = 0x10002, b = 0x10003,
                 p = 0x10004, k = 0x10005, s = 0x10006;
  f.Add([&](Request::Builder r) {
    auto c = r.initCreateContext();
    c.setId(ctx);
    c.initDevices(1).set(0, 0x200);
  });
  f.Add([&](Request::Builder r) {
    auto c = r.initCreateQueue();
    c.setId(q);
    c.setContext(ctx);
    c.setDevice(0x200);
  });
  for (uint64_t id : {a, b}) {
    f.Add([&](Request::Builder r) {
      auto c = r.initCreateBuffer();
      c.setId(id);
      c.setContext(ctx);
      c.setFlags(CL_MEM_COPY_HOST_PTR);
      c.setSize(64);
    }, 64);
  }
  f.Add([&](Request::Builder r) {
    auto c = r.initCreateSubBuffer();
    c.setId(s);
    c.setParent(a);
    c.setSize(32);
  });
  f.Add([&](Request::Builder r) {
    auto c = r.initCreateProgramWithSource();
    c.setId(p);
    c.setContext(ctx);
    c.initSources(1).set(0, "kernel void k(global int* x) { x[0] = 1; }");
  });
  f.Add([&](Request::Builder r) { r.initBuildProgram().setProgram(p); });
  f.Add([&](Request::Builder r) {
    auto c = r.initCreateKernel();
    c.setId(k);
    c.setProgram(p);
    c.setName("k");
  });
  f.Add([&](Request::Builder r) {
    auto c = r.initSetKernelArg();
    c.setKernel(k);
    c.setSize(8);
    c.setMem(s);
  });
  f.Add([&](Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(q);
    e.initNdRange().initGlobalSize(1).set(0, 1);
  });
  f.Add([&](Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(q);
    auto w = e.initWriteBuffer();
    w.setMem(b);
    w.setSize(16);
  }, 16);
  f.Add([&](Request::Builder r) {
    auto g = r.initRelease();
    g.setKind(vgpu::forwarding::proto::ObjKind::MEM);
    g.setId(a);
  });
  f.Add([&](Request::Builder r) {
    auto g = r.initRetain();
    g.setKind(vgpu::forwarding::proto::ObjKind::KERNEL);
    g.setId(k);
  });
  Write(std::string(argv[1]) + "/vector_add_session", f.bytes);
  Write(std::string(argv[2]) + "/vector_add_log",
        vgpu::forwarding::backend::SessionLog::Encode(f.log.Replay()));
  return 0;
}
