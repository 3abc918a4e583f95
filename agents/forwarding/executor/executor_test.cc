// Executor on the host's real platform (PoCL in CI): requests are built as
// the guest library would build them and run through Execute.
#include "agents/forwarding/executor/executor.h"

#include <capnp/message.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace vgpu::forwarding::executor {
namespace {

class VecSource : public PayloadSource {
 public:
  explicit VecSource(std::vector<uint8_t> b = {}) : bytes_(std::move(b)) {}
  uint64_t size() const override { return bytes_.size(); }
  absl::Status ReadInto(void* dst, size_t n) override {
    if (pos_ + n > bytes_.size()) return absl::OutOfRangeError("past end");
    std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  size_t consumed() const { return pos_; }

 private:
  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
};

struct Result {
  cl_int code = 0;
  std::string message;
  std::vector<uint8_t> payload;
  std::vector<uint64_t> ids;
  std::vector<uint8_t> info;
  std::vector<int32_t> statuses;
  uint32_t count = 0;
};

// Builds one request with `fill`, runs it, and returns what the reply says.
class Runner {
 public:
  explicit Runner(Executor& e) : e_(e) {}
  template <typename F>
  Result Run(F fill, std::vector<uint8_t> payload = {}, bool replay = false,
             size_t* consumed = nullptr) {
    capnp::MallocMessageBuilder req;
    auto r = req.initRoot<proto::Request>();
    r.setSeq(++seq_);
    fill(r);
    capnp::MallocMessageBuilder rep;
    auto reply = rep.initRoot<proto::Reply>();
    reply.setSeq(seq_);
    VecSource src(std::move(payload));
    Result out;
    absl::Status s = e_.Execute(
        r.asReader(), src, reply, rep,
        [&](capnp::MessageBuilder&, const std::vector<iovec>& p) {
          for (const iovec& v : p) {
            auto* b = static_cast<const uint8_t*>(v.iov_base);
            out.payload.insert(out.payload.end(), b, b + v.iov_len);
          }
          return absl::OkStatus();
        },
        replay);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(src.consumed(), src.size()) << "payload not fully consumed";
    if (consumed) *consumed = src.consumed();
    auto rr = reply.asReader();
    out.code = rr.getCode();
    out.message = rr.getMessage();
    if (rr.isIds()) for (uint64_t v : rr.getIds()) out.ids.push_back(v);
    if (rr.isInfo()) {
      auto d = rr.getInfo();
      out.info.assign(d.begin(), d.end());
    }
    if (rr.isStatuses()) for (int32_t v : rr.getStatuses()) out.statuses.push_back(v);
    if (rr.isCount()) out.count = rr.getCount();
    return out;
  }

 private:
  Executor& e_;
  uint64_t seq_ = 0;
};

constexpr uint64_t kPlatform = kPlatformIdBase;
constexpr uint64_t kDevice = kDeviceIdBase;

const char kVecAdd[] =
    "__kernel void add(__global const float* a, __global const float* b,"
    "                  __global float* c) {"
    "  size_t i = get_global_id(0); c[i] = a[i] + b[i]; }";

std::vector<uint8_t> Bytes(const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n);
}

uint64_t U64(const std::vector<uint8_t>& v, size_t i = 0) {
  uint64_t x = 0;
  std::memcpy(&x, v.data() + 8 * i, 8);
  return x;
}

class ExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = Executor::Create(ExecutorOptions{});
    ASSERT_TRUE(e.ok()) << e.status();
    exec_ = std::move(*e);
    run_ = std::make_unique<Runner>(*exec_);
  }

  Result Ctx(uint64_t id) {
    return run_->Run([&](proto::Request::Builder r) {
      auto c = r.initCreateContext();
      c.setId(id);
      c.initDevices(1).set(0, kDevice);
    });
  }
  Result Queue(uint64_t id, uint64_t ctx) {
    return run_->Run([&](proto::Request::Builder r) {
      auto q = r.initCreateQueue();
      q.setId(id);
      q.setContext(ctx);
      q.setDevice(kDevice);
    });
  }
  Result Buffer(uint64_t id, uint64_t ctx, uint64_t size,
                std::vector<uint8_t> init = {}) {
    const bool copy = !init.empty();
    return run_->Run(
        [&](proto::Request::Builder r) {
          auto b = r.initCreateBuffer();
          b.setId(id);
          b.setContext(ctx);
          b.setFlags(CL_MEM_READ_WRITE | (copy ? CL_MEM_COPY_HOST_PTR : 0));
          b.setSize(size);
        },
        std::move(init));
  }
  Result Program(uint64_t id, uint64_t ctx, const char* src) {
    return run_->Run([&](proto::Request::Builder r) {
      auto p = r.initCreateProgramWithSource();
      p.setId(id);
      p.setContext(ctx);
      p.initSources(1).set(0, src);
    });
  }
  Result Build(uint64_t prog) {
    return run_->Run([&](proto::Request::Builder r) {
      r.initBuildProgram().setProgram(prog);
    });
  }
  Result Info(proto::InfoKind kind, uint64_t id, uint32_t param,
              uint64_t aux = 0) {
    return run_->Run([&](proto::Request::Builder r) {
      auto g = r.initGetInfo();
      g.setKind(kind);
      g.setId(id);
      g.setParam(param);
      g.setAux(aux);
    });
  }
  Result Release(proto::ObjKind kind, uint64_t id) {
    return run_->Run([&](proto::Request::Builder r) {
      auto g = r.initRelease();
      g.setKind(kind);
      g.setId(id);
    });
  }

  std::unique_ptr<Executor> exec_;
  std::unique_ptr<Runner> run_;
};

TEST_F(ExecutorTest, PlatformAndDevices) {
  Result p = run_->Run([](proto::Request::Builder r) { r.setGetPlatformIds(); });
  ASSERT_EQ(p.code, CL_SUCCESS);
  EXPECT_EQ(p.ids, std::vector<uint64_t>{kPlatform});
  Result d = run_->Run([](proto::Request::Builder r) {
    auto g = r.initGetDeviceIds();
    g.setPlatform(kPlatform);
    g.setDeviceType(CL_DEVICE_TYPE_ALL);
  });
  ASSERT_EQ(d.code, CL_SUCCESS);
  ASSERT_FALSE(d.ids.empty());
  EXPECT_EQ(d.ids[0], kDevice);
  Result pl = Info(proto::InfoKind::DEVICE, kDevice, CL_DEVICE_PLATFORM);
  ASSERT_EQ(pl.code, CL_SUCCESS);
  EXPECT_EQ(U64(pl.info), kPlatform);
  EXPECT_FALSE(exec_->platform_name().empty());
  EXPECT_FALSE(exec_->device_name().empty());
  Result bad = run_->Run([](proto::Request::Builder r) {
    auto g = r.initGetDeviceIds();
    g.setPlatform(0x999);
    g.setDeviceType(CL_DEVICE_TYPE_ALL);
  });
  EXPECT_EQ(bad.code, CL_INVALID_PLATFORM);
  EXPECT_FALSE(bad.message.empty());
}

TEST_F(ExecutorTest, VectorAddEndToEnd) {
  constexpr size_t kN = 1024;
  std::vector<float> a(kN), b(kN);
  for (size_t i = 0; i < kN; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = static_cast<float>(2 * i);
  }
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Buffer(0x10002, 0x10000, kN * 4, Bytes(a.data(), kN * 4)).code,
            CL_SUCCESS);
  ASSERT_EQ(Buffer(0x10003, 0x10000, kN * 4).code, CL_SUCCESS);
  ASSERT_EQ(Buffer(0x10004, 0x10000, kN * 4).code, CL_SUCCESS);
  // b through a write (the payload path).
  Result w = run_->Run(
      [&](proto::Request::Builder r) {
        auto e = r.initEnqueue();
        e.setQueue(0x10001);
        auto io = e.initWriteBuffer();
        io.setMem(0x10003);
        io.setSize(kN * 4);
        io.setBlocking(true);
      },
      Bytes(b.data(), kN * 4));
  ASSERT_EQ(w.code, CL_SUCCESS) << w.message;
  ASSERT_EQ(Program(0x10005, 0x10000, kVecAdd).code, CL_SUCCESS);
  ASSERT_EQ(Build(0x10005).code, CL_SUCCESS);
  Result k = run_->Run([](proto::Request::Builder r) {
    auto c = r.initCreateKernel();
    c.setId(0x10006);
    c.setProgram(0x10005);
    c.setName("add");
  });
  ASSERT_EQ(k.code, CL_SUCCESS);
  for (uint32_t i = 0; i < 3; ++i) {
    Result s = run_->Run([&](proto::Request::Builder r) {
      auto a = r.initSetKernelArg();
      a.setKernel(0x10006);
      a.setIndex(i);
      a.setSize(sizeof(cl_mem));
      a.setMem(0x10002 + i);
    });
    ASSERT_EQ(s.code, CL_SUCCESS);
  }
  Result nd = run_->Run([&](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    e.setEvent(0x10007);
    auto n = e.initNdRange();
    n.setKernel(0x10006);
    n.initGlobalSize(1).set(0, kN);
  });
  ASSERT_EQ(nd.code, CL_SUCCESS) << nd.message;
  Result rd = run_->Run([&](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    e.initWaitList(1).set(0, 0x10007);
    auto io = e.initReadBuffer();
    io.setMem(0x10004);
    io.setSize(kN * 4);
  });
  ASSERT_EQ(rd.code, CL_SUCCESS) << rd.message;
  ASSERT_EQ(rd.payload.size(), kN * 4);
  std::vector<float> c(kN);
  std::memcpy(c.data(), rd.payload.data(), kN * 4);
  for (size_t i = 0; i < kN; ++i) ASSERT_EQ(c[i], 3.0f * i) << i;
  // The event's info names its queue by id.
  Result eq = Info(proto::InfoKind::EVENT, 0x10007, CL_EVENT_COMMAND_QUEUE);
  ASSERT_EQ(eq.code, CL_SUCCESS);
  EXPECT_EQ(U64(eq.info), 0x10001u);
  EXPECT_TRUE(exec_->Drain().ok());
}

TEST_F(ExecutorTest, LargeReadAndWriteGoThroughMaps) {
  constexpr size_t kBytes = 4 << 20;
  std::vector<uint8_t> data(kBytes);
  for (size_t i = 0; i < kBytes; ++i) data[i] = static_cast<uint8_t>(i * 13);
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Buffer(0x10002, 0x10000, kBytes).code, CL_SUCCESS);
  Result w = run_->Run(
      [&](proto::Request::Builder r) {
        auto e = r.initEnqueue();
        e.setQueue(0x10001);
        auto io = e.initWriteBuffer();
        io.setMem(0x10002);
        io.setSize(kBytes);
      },
      data);
  ASSERT_EQ(w.code, CL_SUCCESS);
  Result rd = run_->Run([&](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    auto io = e.initReadBuffer();
    io.setMem(0x10002);
    io.setSize(kBytes);
  });
  ASSERT_EQ(rd.code, CL_SUCCESS);
  EXPECT_EQ(rd.payload, data);
}

TEST_F(ExecutorTest, InfoTranslatesHandlesToIds) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  Result devs = Info(proto::InfoKind::CONTEXT, 0x10000, CL_CONTEXT_DEVICES);
  ASSERT_EQ(devs.code, CL_SUCCESS);
  ASSERT_EQ(devs.info.size(), 8u);
  EXPECT_EQ(U64(devs.info), kDevice);
  Result qc = Info(proto::InfoKind::QUEUE, 0x10001, CL_QUEUE_CONTEXT);
  EXPECT_EQ(U64(qc.info), 0x10000u);
  Result qd = Info(proto::InfoKind::QUEUE, 0x10001, CL_QUEUE_DEVICE);
  EXPECT_EQ(U64(qd.info), kDevice);
  // Properties carry the platform by id.
  Result c2 = run_->Run([](proto::Request::Builder r) {
    auto c = r.initCreateContextFromType();
    c.setId(0x10002);
    c.setDeviceType(CL_DEVICE_TYPE_ALL);
    auto p = c.initProperties(1)[0];
    p.setName(CL_CONTEXT_PLATFORM);
    p.setValue(kPlatform);
  });
  ASSERT_EQ(c2.code, CL_SUCCESS) << c2.message;
  Result props = Info(proto::InfoKind::CONTEXT, 0x10002, CL_CONTEXT_PROPERTIES);
  ASSERT_EQ(props.code, CL_SUCCESS);
  ASSERT_EQ(props.info.size(), 24u);
  EXPECT_EQ(U64(props.info, 0), static_cast<uint64_t>(CL_CONTEXT_PLATFORM));
  EXPECT_EQ(U64(props.info, 1), kPlatform);
  // Plain values pass untouched: the device name equals the native one.
  Result name = Info(proto::InfoKind::DEVICE, kDevice, CL_DEVICE_NAME);
  EXPECT_EQ(std::string(name.info.begin(), name.info.end() - 1),
            exec_->device_name());
  // Host pointers are the guest's.
  ASSERT_EQ(Buffer(0x10003, 0x10000, 64).code, CL_SUCCESS);
  Result hp = Info(proto::InfoKind::MEM, 0x10003, CL_MEM_HOST_PTR);
  EXPECT_EQ(hp.info, std::vector<uint8_t>(8, 0));
  Result mc = Info(proto::InfoKind::MEM, 0x10003, CL_MEM_CONTEXT);
  EXPECT_EQ(U64(mc.info), 0x10000u);
}

TEST_F(ExecutorTest, InvalidIdsGiveTheNativeCodes) {
  cl_platform_id platform;
  ASSERT_EQ(clGetPlatformIDs(1, &platform, nullptr), CL_SUCCESS);
  cl_device_id device;
  ASSERT_EQ(clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, nullptr),
            CL_SUCCESS);
  // Natively, a NULL context handle.
  size_t n = 0;
  const cl_int native_ctx = clGetContextInfo(nullptr, CL_CONTEXT_DEVICES, 0,
                                             nullptr, &n);
  const cl_int native_queue =
      clGetCommandQueueInfo(nullptr, CL_QUEUE_CONTEXT, 0, nullptr, &n);
  const cl_int native_mem = clGetMemObjectInfo(nullptr, CL_MEM_SIZE, 0, nullptr, &n);
  const cl_int native_kernel = clGetKernelInfo(nullptr, CL_KERNEL_CONTEXT, 0,
                                               nullptr, &n);

  EXPECT_EQ(Info(proto::InfoKind::CONTEXT, 0x12345, CL_CONTEXT_DEVICES).code,
            native_ctx);
  EXPECT_EQ(Info(proto::InfoKind::QUEUE, 0x12345, CL_QUEUE_CONTEXT).code,
            native_queue);
  EXPECT_EQ(Info(proto::InfoKind::MEM, 0x12345, CL_MEM_SIZE).code, native_mem);
  EXPECT_EQ(Info(proto::InfoKind::KERNEL, 0x12345, CL_KERNEL_CONTEXT).code,
            native_kernel);
  EXPECT_EQ(native_ctx, CL_INVALID_CONTEXT);

  // A released id is gone; an id of the wrong kind is a bad handle too.
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  Result wrong = Info(proto::InfoKind::CONTEXT, 0x10001, CL_CONTEXT_DEVICES);
  EXPECT_EQ(wrong.code, CL_INVALID_CONTEXT);
  EXPECT_FALSE(wrong.message.empty());
  EXPECT_EQ(Queue(0x10002, 0x10001).code, CL_INVALID_CONTEXT);
  EXPECT_EQ(Buffer(0x10003, 0x10001, 16).code, CL_INVALID_CONTEXT);
  Result dev = run_->Run([](proto::Request::Builder r) {
    auto q = r.initCreateQueue();
    q.setId(0x10004);
    q.setContext(0x10000);
    q.setDevice(0x2ff);
  });
  EXPECT_EQ(dev.code, CL_INVALID_DEVICE);
  // Wait lists.
  Result wl = run_->Run([](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    e.initWaitList(1).set(0, 0x10000);
    e.setMarker();
  });
  EXPECT_EQ(wl.code, CL_INVALID_EVENT_WAIT_LIST);
  // An id in use.
  Result dup = Ctx(0x10001);
  EXPECT_EQ(dup.code, CL_INVALID_VALUE);
  EXPECT_NE(dup.message.find("in use"), std::string::npos);

  EXPECT_EQ(Release(proto::ObjKind::QUEUE, 0x10001).code, CL_SUCCESS);
  EXPECT_EQ(Release(proto::ObjKind::QUEUE, 0x10001).code,
            CL_INVALID_COMMAND_QUEUE);
  EXPECT_EQ(run_->Run([](proto::Request::Builder r) { r.setFinish(0x10001); })
                .code,
            CL_INVALID_COMMAND_QUEUE);
  // Retain keeps an id alive across one release.
  Result ret = run_->Run([](proto::Request::Builder r) {
    auto g = r.initRetain();
    g.setKind(proto::ObjKind::CONTEXT);
    g.setId(0x10000);
  });
  EXPECT_EQ(ret.code, CL_SUCCESS);
  EXPECT_EQ(Release(proto::ObjKind::CONTEXT, 0x10000).code, CL_SUCCESS);
  EXPECT_EQ(Info(proto::InfoKind::CONTEXT, 0x10000, CL_CONTEXT_DEVICES).code,
            CL_SUCCESS);
  EXPECT_EQ(Release(proto::ObjKind::CONTEXT, 0x10000).code, CL_SUCCESS);
  EXPECT_EQ(Info(proto::InfoKind::CONTEXT, 0x10000, CL_CONTEXT_DEVICES).code,
            CL_INVALID_CONTEXT);
  // Native kernel-name errors come from the real call.
  ASSERT_EQ(Ctx(0x10010).code, CL_SUCCESS);
  ASSERT_EQ(Program(0x10011, 0x10010, kVecAdd).code, CL_SUCCESS);
  ASSERT_EQ(Build(0x10011).code, CL_SUCCESS);
  Result kn = run_->Run([](proto::Request::Builder r) {
    auto c = r.initCreateKernel();
    c.setId(0x10012);
    c.setProgram(0x10011);
    c.setName("nope");
  });
  EXPECT_EQ(kn.code, CL_INVALID_KERNEL_NAME);
}

TEST_F(ExecutorTest, BuildFailureGivesTheLog) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Program(0x10001, 0x10000, "__kernel void k() { syntax error }").code,
            CL_SUCCESS);
  EXPECT_EQ(Build(0x10001).code, CL_BUILD_PROGRAM_FAILURE);
  Result log = Info(proto::InfoKind::PROGRAM_BUILD, 0x10001,
                    CL_PROGRAM_BUILD_LOG, kDevice);
  ASSERT_EQ(log.code, CL_SUCCESS);
  EXPECT_GT(log.info.size(), 1u);
  EXPECT_NE(std::string(log.info.begin(), log.info.end()).find("error"),
            std::string::npos);
}

TEST_F(ExecutorTest, ProgramBinariesRoundTrip) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Program(0x10001, 0x10000, kVecAdd).code, CL_SUCCESS);
  ASSERT_EQ(Build(0x10001).code, CL_SUCCESS);
  Result sizes = Info(proto::InfoKind::PROGRAM, 0x10001, CL_PROGRAM_BINARY_SIZES);
  ASSERT_EQ(sizes.code, CL_SUCCESS);
  Result bins = Info(proto::InfoKind::PROGRAM, 0x10001, CL_PROGRAM_BINARIES);
  ASSERT_EQ(bins.code, CL_SUCCESS);
  EXPECT_EQ(bins.info.size(), U64(sizes.info));
  Result p = run_->Run([&](proto::Request::Builder r) {
    auto b = r.initCreateProgramWithBinary();
    b.setId(0x10002);
    b.setContext(0x10000);
    b.initDevices(1).set(0, kDevice);
    b.initBinaries(1).set(0, kj::arrayPtr(bins.info.data(), bins.info.size()));
  });
  ASSERT_EQ(p.code, CL_SUCCESS);
  EXPECT_EQ(p.statuses, std::vector<int32_t>{CL_SUCCESS});
  EXPECT_EQ(Build(0x10002).code, CL_SUCCESS);
  Result ks = run_->Run([](proto::Request::Builder r) {
    auto k = r.initCreateKernelsInProgram();
    k.setProgram(0x10002);
    k.initIds(1).set(0, 0x10003);
  });
  ASSERT_EQ(ks.code, CL_SUCCESS);
  EXPECT_EQ(ks.count, 1u);
  Result kp = Info(proto::InfoKind::KERNEL, 0x10003, CL_KERNEL_PROGRAM);
  EXPECT_EQ(U64(kp.info), 0x10002u);
}

TEST(ExecutorLimitTest, MemoryLimitRefusesAndFrees) {
  ExecutorOptions o;
  o.memory_limit_bytes = 1 << 20;
  auto e = Executor::Create(o);
  ASSERT_TRUE(e.ok());
  Runner run(**e);
  auto buffer = [&](uint64_t id, uint64_t size) {
    return run.Run([&](proto::Request::Builder r) {
      auto b = r.initCreateBuffer();
      b.setId(id);
      b.setContext(0x10000);
      b.setSize(size);
    });
  };
  ASSERT_EQ(run.Run([](proto::Request::Builder r) {
              auto c = r.initCreateContext();
              c.setId(0x10000);
              c.initDevices(1).set(0, kDevice);
            }).code,
            CL_SUCCESS);
  EXPECT_EQ(buffer(0x10001, 768 << 10).code, CL_SUCCESS);
  EXPECT_EQ((*e)->memory_bytes(), 768u << 10);
  Result over = buffer(0x10002, 512 << 10);
  EXPECT_EQ(over.code, CL_MEM_OBJECT_ALLOCATION_FAILURE);
  EXPECT_NE(over.message.find("1048576"), std::string::npos) << over.message;
  // Sub-buffers do not count.
  Result sub = run.Run([](proto::Request::Builder r) {
    auto s = r.initCreateSubBuffer();
    s.setId(0x10003);
    s.setParent(0x10001);
    s.setOrigin(0);
    s.setSize(1024);
  });
  EXPECT_EQ(sub.code, CL_SUCCESS);
  EXPECT_EQ((*e)->memory_bytes(), 768u << 10);
  // An image counts its packed size.
  Result img = run.Run([](proto::Request::Builder r) {
    auto i = r.initCreateImage();
    i.setId(0x10004);
    i.setContext(0x10000);
    i.initFormat().setChannelOrder(CL_RGBA);
    i.getFormat().setChannelDataType(CL_UNORM_INT8);
    auto d = i.initDesc();
    d.setType(CL_MEM_OBJECT_IMAGE2D);
    d.setWidth(512);
    d.setHeight(256);  // 512 KiB
  });
  EXPECT_EQ(img.code, CL_MEM_OBJECT_ALLOCATION_FAILURE);
  ASSERT_EQ(run.Run([](proto::Request::Builder r) {
              auto g = r.initRelease();
              g.setKind(proto::ObjKind::MEM);
              g.setId(0x10001);
            }).code,
            CL_SUCCESS);
  EXPECT_EQ((*e)->memory_bytes(), 0u);
  EXPECT_EQ(buffer(0x10002, 512 << 10).code, CL_SUCCESS);
}

TEST(ExecutorIsolationTest, ASessionCannotUseAnothersIds) {
  auto a = Executor::Create({});
  auto b = Executor::Create({});
  ASSERT_TRUE(a.ok() && b.ok());
  Runner ra(**a), rb(**b);
  auto ctx = [](proto::Request::Builder r) {
    auto c = r.initCreateContext();
    c.setId(0x10000);
    c.initDevices(1).set(0, kDevice);
  };
  ASSERT_EQ(ra.Run(ctx).code, CL_SUCCESS);
  Result q = rb.Run([](proto::Request::Builder r) {
    auto q = r.initCreateQueue();
    q.setId(0x10001);
    q.setContext(0x10000);
    q.setDevice(kDevice);
  });
  EXPECT_EQ(q.code, CL_INVALID_CONTEXT);
  // The same id may exist in both, naming different objects.
  ASSERT_EQ(rb.Run(ctx).code, CL_SUCCESS);
  EXPECT_EQ((*a)->LiveMems().size(), 0u);
}

TEST_F(ExecutorTest, PayloadIsAlwaysConsumed) {
  std::vector<uint8_t> junk(100000, 0xab);
  // A create refused before it starts still takes its payload.
  Result r1 = Buffer(0x10002, 0x999999, junk.size(), junk);
  EXPECT_EQ(r1.code, CL_INVALID_CONTEXT);
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  // A write to a bad buffer.
  size_t consumed = 0;
  Result r2 = run_->Run(
      [&](proto::Request::Builder r) {
        auto e = r.initEnqueue();
        e.setQueue(0x10001);
        auto io = e.initWriteBuffer();
        io.setMem(0x55555);
        io.setSize(junk.size());
      },
      junk, false, &consumed);
  EXPECT_EQ(r2.code, CL_INVALID_MEM_OBJECT);
  EXPECT_EQ(consumed, junk.size());
  // A payload on a request that takes none.
  Result r3 = run_->Run([](proto::Request::Builder r) { r.setPing(); }, junk);
  EXPECT_EQ(r3.code, CL_SUCCESS);
  // Out of range write: native code, payload consumed.
  ASSERT_EQ(Buffer(0x10003, 0x10000, 16).code, CL_SUCCESS);
  Result r4 = run_->Run(
      [&](proto::Request::Builder r) {
        auto e = r.initEnqueue();
        e.setQueue(0x10001);
        auto io = e.initWriteBuffer();
        io.setMem(0x10003);
        io.setOffset(8);
        io.setSize(junk.size());
      },
      junk);
  EXPECT_EQ(r4.code, CL_INVALID_VALUE);
}

TEST_F(ExecutorTest, DrainRefusesWithAPendingUserEvent) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  Result ue = run_->Run([](proto::Request::Builder r) {
    auto u = r.initCreateUserEvent();
    u.setId(0x10002);
    u.setContext(0x10000);
  });
  ASSERT_EQ(ue.code, CL_SUCCESS);
  Result m = run_->Run([](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    e.initWaitList(1).set(0, 0x10002);
    e.setEvent(0x10003);
    e.setMarker();
  });
  ASSERT_EQ(m.code, CL_SUCCESS);
  absl::Status d = exec_->Drain();
  EXPECT_TRUE(absl::IsFailedPrecondition(d)) << d;
  EXPECT_NE(d.message().find(std::to_string(0x10002)), std::string::npos) << d;
  // Live events list both, the marker still waiting.
  auto evs = exec_->LiveEvents();
  ASSERT_EQ(evs.size(), 2u);
  // Callback notifications come through the notifier.
  absl::Notification fired;
  std::atomic<uint64_t> cookie{0};
  exec_->SetNotifier([&](uint64_t c, cl_int) {
    cookie = c;
    if (!fired.HasBeenNotified()) fired.Notify();
  });
  Result cb = run_->Run([](proto::Request::Builder r) {
    auto c = r.initSetEventCallback();
    c.setEvent(0x10003);
    c.setStatus(CL_COMPLETE);
    c.setCookie(77);
  });
  ASSERT_EQ(cb.code, CL_SUCCESS);
  Result set = run_->Run([](proto::Request::Builder r) {
    auto s = r.initSetUserEventStatus();
    s.setEvent(0x10002);
    s.setStatus(CL_COMPLETE);
  });
  ASSERT_EQ(set.code, CL_SUCCESS);
  EXPECT_TRUE(exec_->Drain().ok());
  EXPECT_TRUE(fired.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(cookie.load(), 77u);
  exec_->SetNotifier(nullptr);
}

TEST_F(ExecutorTest, WaitOnOneThreadWhileAnotherSets) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(run_->Run([](proto::Request::Builder r) {
              auto u = r.initCreateUserEvent();
              u.setId(0x10002);
              u.setContext(0x10000);
            }).code,
            CL_SUCCESS);
  Runner other(*exec_);
  std::thread waiter([&] {
    Result w = other.Run([](proto::Request::Builder r) {
      r.initWaitForEvents(1).set(0, 0x10002);
    });
    EXPECT_EQ(w.code, CL_SUCCESS);
  });
  absl::SleepFor(absl::Milliseconds(100));
  Result set = run_->Run([](proto::Request::Builder r) {
    auto s = r.initSetUserEventStatus();
    s.setEvent(0x10002);
    s.setStatus(CL_COMPLETE);
  });
  EXPECT_EQ(set.code, CL_SUCCESS);
  waiter.join();
}

TEST_F(ExecutorTest, ReadMemWriteMemRoundTrip) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Buffer(0x10002, 0x10000, 4096).code, CL_SUCCESS);
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 3);
  ASSERT_TRUE(exec_->WriteMem(0x10002, data.data(), 0, data.size()).ok());
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(exec_->ReadMem(0x10002, back.data(), 0, back.size()).ok());
  EXPECT_EQ(back, data);
  // Through the guest's read path too.
  Result rd = run_->Run([](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    auto io = e.initReadBuffer();
    io.setMem(0x10002);
    io.setOffset(100);
    io.setSize(10);
  });
  ASSERT_EQ(rd.code, CL_SUCCESS);
  EXPECT_EQ(rd.payload, std::vector<uint8_t>(data.begin() + 100, data.begin() + 110));

  // A 2D image: 7x5 RGBA8 (28-byte rows, packed).
  Result img = run_->Run([](proto::Request::Builder r) {
    auto i = r.initCreateImage();
    i.setId(0x10003);
    i.setContext(0x10000);
    i.setFlags(CL_MEM_READ_WRITE);
    i.initFormat().setChannelOrder(CL_RGBA);
    i.getFormat().setChannelDataType(CL_UNSIGNED_INT8);
    auto d = i.initDesc();
    d.setType(CL_MEM_OBJECT_IMAGE2D);
    d.setWidth(7);
    d.setHeight(5);
  });
  ASSERT_EQ(img.code, CL_SUCCESS) << img.message;
  auto mems = exec_->LiveMems();
  ASSERT_EQ(mems.size(), 2u);
  const MemInfo& mi = mems[1];
  EXPECT_EQ(mi.id, 0x10003u);
  EXPECT_EQ(mi.type, static_cast<cl_mem_object_type>(CL_MEM_OBJECT_IMAGE2D));
  EXPECT_EQ(mi.bytes, 7u * 5 * 4);
  EXPECT_EQ(mi.row_pitch, 28u);
  EXPECT_EQ(mi.region[0], 7u);
  EXPECT_EQ(mi.region[1], 5u);
  EXPECT_EQ(mi.region[2], 1u);
  std::vector<uint8_t> pix(mi.bytes);
  for (size_t i = 0; i < pix.size(); ++i) pix[i] = static_cast<uint8_t>(i);
  ASSERT_TRUE(exec_->WriteMem(0x10003, pix.data(), 0, pix.size()).ok());
  std::vector<uint8_t> pback(mi.bytes);
  ASSERT_TRUE(exec_->ReadMem(0x10003, pback.data(), 0, pback.size()).ok());
  EXPECT_EQ(pback, pix);
  std::vector<uint8_t> part(8);
  ASSERT_TRUE(exec_->ReadMem(0x10003, part.data(), 28, 8).ok());
  EXPECT_EQ(part, std::vector<uint8_t>(pix.begin() + 28, pix.begin() + 36));
  // A guest read of one row with a padded row pitch.
  Result ri = run_->Run([](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    auto io = e.initReadImage();
    io.setMem(0x10003);
    auto o = io.initOrigin(3);
    o.set(0, 0); o.set(1, 1); o.set(2, 0);
    auto g = io.initRegion(3);
    g.set(0, 7); g.set(1, 2); g.set(2, 1);
    io.setRowPitch(32);
  });
  ASSERT_EQ(ri.code, CL_SUCCESS) << ri.message;
  ASSERT_EQ(ri.payload.size(), 32u + 28u);
  EXPECT_EQ(std::vector<uint8_t>(ri.payload.begin(), ri.payload.begin() + 28),
            std::vector<uint8_t>(pix.begin() + 28, pix.begin() + 56));
  EXPECT_EQ(std::vector<uint8_t>(ri.payload.begin() + 32, ri.payload.end()),
            std::vector<uint8_t>(pix.begin() + 56, pix.begin() + 84));
  EXPECT_FALSE(exec_->ReadMem(0x10003, pback.data(), 100, 100).ok());
}

TEST_F(ExecutorTest, RestoreEventOnlyInReplay) {
  ASSERT_EQ(Ctx(0x10000).code, CL_SUCCESS);
  ASSERT_EQ(Queue(0x10001, 0x10000).code, CL_SUCCESS);
  auto restore = [](proto::Request::Builder r) {
    auto e = r.initRestoreEvent();
    e.setId(0x10005);
    e.setContext(0x10000);
    e.setQueue(0x10001);
    e.setCommandType(CL_COMMAND_NDRANGE_KERNEL);
    e.setStatus(CL_COMPLETE);
  };
  Result no = run_->Run(restore);
  EXPECT_EQ(no.code, CL_INVALID_OPERATION);
  EXPECT_FALSE(no.message.empty());
  Result yes = run_->Run(restore, {}, /*replay=*/true);
  ASSERT_EQ(yes.code, CL_SUCCESS) << yes.message;
  Result t = Info(proto::InfoKind::EVENT, 0x10005, CL_EVENT_COMMAND_TYPE);
  ASSERT_EQ(t.info.size(), 4u);
  uint32_t type;
  std::memcpy(&type, t.info.data(), 4);
  EXPECT_EQ(type, static_cast<uint32_t>(CL_COMMAND_NDRANGE_KERNEL));
  EXPECT_EQ(U64(Info(proto::InfoKind::EVENT, 0x10005, CL_EVENT_COMMAND_QUEUE).info),
            0x10001u);
  Result st = Info(proto::InfoKind::EVENT, 0x10005,
                   CL_EVENT_COMMAND_EXECUTION_STATUS);
  int32_t status;
  std::memcpy(&status, st.info.data(), 4);
  EXPECT_EQ(status, CL_COMPLETE);
  // Usable in wait lists.
  Result m = run_->Run([](proto::Request::Builder r) {
    auto e = r.initEnqueue();
    e.setQueue(0x10001);
    e.initWaitList(1).set(0, 0x10005);
    e.setBarrier();
  });
  EXPECT_EQ(m.code, CL_SUCCESS);
  auto evs = exec_->LiveEvents();
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].command_type,
            static_cast<cl_command_type>(CL_COMMAND_NDRANGE_KERNEL));
  EXPECT_EQ(evs[0].queue, 0x10001u);
}

}  // namespace
}  // namespace vgpu::forwarding::executor
