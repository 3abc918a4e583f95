// libvgpu-opencl end to end: a fresh copy of the library per test, talking
// to an in-process TestServer over a unix socket, which runs the calls on
// PoCL through an Executor. Results and error codes are compared with the
// same calls made natively (this binary also links the ICD loader).
#include <CL/cl.h>
#include <CL/cl_ext.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "agents/forwarding/executor/executor.h"
#include "agents/forwarding/guest/guest_api.h"
#include "agents/forwarding/guest/testing/test_server.h"
#include "gtest/gtest.h"

namespace vgpu::forwarding {
namespace {

std::string g_library;  // argv[1]: the built library

// A fresh directory for unix sockets: short paths, and unique even when
// sandboxed test runs share /tmp and pids (each sandbox has its own pid
// namespace).
std::string SocketDir() {
  static const std::string dir = [] {
    char templ[] = "/tmp/vgpu-gt-XXXXXX";
    const char* d = mkdtemp(templ);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

std::string TmpDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

const char kVecAdd[] =
    "__kernel void add(__global const float* a, __global const float* b,"
    "                  __global float* c) {"
    "  size_t i = get_global_id(0); c[i] = a[i] + b[i]; }";
const char kBroken[] = "__kernel void k(__global int* x) { x[0] = y; }";

std::shared_ptr<testing::TestSession> NewSession() {
  auto e = executor::Executor::Create({});
  EXPECT_TRUE(e.ok()) << e.status();
  auto s = std::make_shared<testing::TestSession>();
  s->executor = std::move(*e);
  return s;
}

// Native PoCL handles, for comparisons.
struct Native {
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  cl_context context = nullptr;
  cl_command_queue queue = nullptr;
  Native() {
    clGetPlatformIDs(1, &platform, nullptr);
    clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, nullptr);
    context = clCreateContext(nullptr, 1, &device, nullptr, nullptr, nullptr);
    queue = clCreateCommandQueue(context, device, 0, nullptr);
  }
  ~Native() {
    clReleaseCommandQueue(queue);
    clReleaseContext(context);
  }
};

std::string DeviceString(const GuestApi* api, cl_device_id d, cl_uint p) {
  size_t n = 0;
  auto info = api ? api->clGetDeviceInfo : &::clGetDeviceInfo;
  EXPECT_EQ(info(d, p, 0, nullptr, &n), CL_SUCCESS);
  std::string s(n, '\0');
  EXPECT_EQ(info(d, p, n, s.data(), nullptr), CL_SUCCESS);
  return s;
}

class GuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    // Unix socket paths are short: not under TEST_TMPDIR.
    socket_ = absl::StrCat(SocketDir(), "/cl", n++, ".sock");
    session_ = NewSession();
    auto s = testing::TestServer::Start("unix:" + socket_, session_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    setenv("VGPU_CL_BACKEND", ("unix:" + socket_).c_str(), 1);
    setenv("VGPU_VM", "guest-test", 1);
    setenv("VGPU_CL_RECONNECT_MS", "1500", 1);
    ASSERT_TRUE(api_.Load(g_library, TmpDir())) << api_.error;
  }

  // Platform, device, context and queue through the library.
  void Open() {
    cl_uint n = 0;
    ASSERT_EQ(api_.clGetPlatformIDs(1, &platform_, &n), CL_SUCCESS);
    ASSERT_EQ(n, 1u);
    ASSERT_EQ(api_.clGetDeviceIDs(platform_, CL_DEVICE_TYPE_ALL, 1, &device_,
                                  nullptr),
              CL_SUCCESS);
    cl_int err;
    context_ = api_.clCreateContext(nullptr, 1, &device_, nullptr, nullptr, &err);
    ASSERT_EQ(err, CL_SUCCESS);
    queue_ = api_.clCreateCommandQueue(context_, device_, 0, &err);
    ASSERT_EQ(err, CL_SUCCESS);
  }

  cl_program Build(const char* src, cl_int* build_code) {
    cl_int err;
    cl_program p =
        api_.clCreateProgramWithSource(context_, 1, &src, nullptr, &err);
    EXPECT_EQ(err, CL_SUCCESS);
    *build_code = api_.clBuildProgram(p, 1, &device_, "", nullptr, nullptr);
    return p;
  }

  std::string socket_;
  std::shared_ptr<testing::TestSession> session_;
  std::unique_ptr<testing::TestServer> server_;
  GuestApi api_;
  cl_platform_id platform_ = nullptr;
  cl_device_id device_ = nullptr;
  cl_context context_ = nullptr;
  cl_command_queue queue_ = nullptr;
};

TEST_F(GuestTest, HandlesCarryTheIcdDispatchFirst) {
  Open();
  // The loader calls through the first word of every handle.
  auto* dispatch = *reinterpret_cast<void* const*>(context_);
  ASSERT_NE(dispatch, nullptr);
  EXPECT_EQ(*reinterpret_cast<void* const*>(queue_), dispatch);
  EXPECT_EQ(*reinterpret_cast<void* const*>(platform_), dispatch);
  void* get_platforms = *reinterpret_cast<void* const*>(dispatch);
  EXPECT_EQ(get_platforms, reinterpret_cast<void*>(api_.clGetPlatformIDs));
  EXPECT_NE(api_.clGetExtensionFunctionAddress("clIcdGetPlatformIDsKHR"), nullptr);
  EXPECT_EQ(api_.clGetExtensionFunctionAddress("clFooBarKHR"), nullptr);
}

TEST_F(GuestTest, VectorAdd) {
  Open();
  constexpr size_t kN = 4096;
  std::vector<float> a(kN), b(kN), c(kN, -1.0f);
  for (size_t i = 0; i < kN; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = static_cast<float>(i) * 0.5f;
  }
  cl_int err;
  cl_mem ma = api_.clCreateBuffer(context_, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                  kN * 4, a.data(), &err);
  ASSERT_EQ(err, CL_SUCCESS);
  cl_mem mb = api_.clCreateBuffer(context_, CL_MEM_READ_ONLY, kN * 4, nullptr, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  cl_mem mc = api_.clCreateBuffer(context_, CL_MEM_WRITE_ONLY, kN * 4, nullptr, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  ASSERT_EQ(api_.clEnqueueWriteBuffer(queue_, mb, CL_FALSE, 0, kN * 4, b.data(),
                                      0, nullptr, nullptr),
            CL_SUCCESS);
  cl_int build;
  cl_program p = Build(kVecAdd, &build);
  ASSERT_EQ(build, CL_SUCCESS);
  cl_kernel k = api_.clCreateKernel(p, "add", &err);
  ASSERT_EQ(err, CL_SUCCESS);
  ASSERT_EQ(api_.clSetKernelArg(k, 0, sizeof(cl_mem), &ma), CL_SUCCESS);
  ASSERT_EQ(api_.clSetKernelArg(k, 1, sizeof(cl_mem), &mb), CL_SUCCESS);
  ASSERT_EQ(api_.clSetKernelArg(k, 2, sizeof(cl_mem), &mc), CL_SUCCESS);
  const size_t global = kN;
  cl_event done;
  ASSERT_EQ(api_.clEnqueueNDRangeKernel(queue_, k, 1, nullptr, &global, nullptr,
                                        0, nullptr, &done),
            CL_SUCCESS);
  ASSERT_EQ(api_.clEnqueueReadBuffer(queue_, mc, CL_TRUE, 0, kN * 4, c.data(),
                                     1, &done, nullptr),
            CL_SUCCESS);
  for (size_t i = 0; i < kN; ++i) ASSERT_EQ(c[i], a[i] + b[i]) << i;
  cl_command_queue eq = nullptr;
  ASSERT_EQ(api_.clGetEventInfo(done, CL_EVENT_COMMAND_QUEUE, sizeof(eq), &eq,
                                nullptr),
            CL_SUCCESS);
  EXPECT_EQ(eq, queue_);
  cl_int status = 0;
  ASSERT_EQ(api_.clGetEventInfo(done, CL_EVENT_COMMAND_EXECUTION_STATUS,
                                sizeof(status), &status, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(status, CL_COMPLETE);
  cl_program kp = nullptr;
  ASSERT_EQ(api_.clGetKernelInfo(k, CL_KERNEL_PROGRAM, sizeof(kp), &kp, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(kp, p);
  EXPECT_EQ(api_.clReleaseEvent(done), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseKernel(k), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseProgram(p), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseMemObject(ma), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseMemObject(mb), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseMemObject(mc), CL_SUCCESS);
  EXPECT_EQ(session_->executor->memory_bytes(), 0u);
  EXPECT_EQ(api_.clReleaseCommandQueue(queue_), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseContext(context_), CL_SUCCESS);
}

TEST_F(GuestTest, InfoEqualsNative) {
  Open();
  Native native;
  for (cl_uint p : {CL_DEVICE_NAME, CL_DEVICE_EXTENSIONS, CL_DEVICE_VERSION,
                    CL_DRIVER_VERSION, CL_DEVICE_VENDOR}) {
    EXPECT_EQ(DeviceString(&api_, device_, p), DeviceString(nullptr, native.device, p))
        << "param " << p;
  }
  size_t wg = 0, nwg = 0;
  ASSERT_EQ(api_.clGetDeviceInfo(device_, CL_DEVICE_MAX_WORK_GROUP_SIZE,
                                 sizeof(wg), &wg, nullptr),
            CL_SUCCESS);
  clGetDeviceInfo(native.device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof(nwg),
                  &nwg, nullptr);
  EXPECT_EQ(wg, nwg);
  // The caller's size rules, applied by the library as natively.
  char tiny[2];
  EXPECT_EQ(api_.clGetDeviceInfo(device_, CL_DEVICE_NAME, sizeof(tiny), tiny,
                                 nullptr),
            clGetDeviceInfo(native.device, CL_DEVICE_NAME, sizeof(tiny), tiny,
                            nullptr));
  // Platform name: the one intended difference.
  char name[256], nname[256];
  ASSERT_EQ(api_.clGetPlatformInfo(platform_, CL_PLATFORM_NAME, sizeof(name),
                                   name, nullptr),
            CL_SUCCESS);
  clGetPlatformInfo(native.platform, CL_PLATFORM_NAME, sizeof(nname), nname,
                    nullptr);
  EXPECT_EQ(std::string(name), std::string("vgpu-opencl on ") + nname);
  // Handle-valued answers name this library's handles.
  cl_platform_id dp = nullptr;
  ASSERT_EQ(api_.clGetDeviceInfo(device_, CL_DEVICE_PLATFORM, sizeof(dp), &dp,
                                 nullptr),
            CL_SUCCESS);
  EXPECT_EQ(dp, platform_);
  cl_device_id devs[4] = {};
  size_t ret = 0;
  ASSERT_EQ(api_.clGetContextInfo(context_, CL_CONTEXT_DEVICES, sizeof(devs),
                                  devs, &ret),
            CL_SUCCESS);
  EXPECT_EQ(ret, sizeof(cl_device_id));
  EXPECT_EQ(devs[0], device_);
  cl_context qc = nullptr;
  ASSERT_EQ(api_.clGetCommandQueueInfo(queue_, CL_QUEUE_CONTEXT, sizeof(qc), &qc,
                                       nullptr),
            CL_SUCCESS);
  EXPECT_EQ(qc, context_);
  // Host pointers are answered locally.
  std::vector<char> host(64);
  cl_int err;
  cl_mem m = api_.clCreateBuffer(context_, CL_MEM_USE_HOST_PTR, host.size(),
                                 host.data(), &err);
  ASSERT_EQ(err, CL_SUCCESS);
  void* hp = nullptr;
  ASSERT_EQ(api_.clGetMemObjectInfo(m, CL_MEM_HOST_PTR, sizeof(hp), &hp, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(hp, host.data());
  size_t size = 0;
  ASSERT_EQ(api_.clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof(size), &size, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(size, 64u);
}

TEST_F(GuestTest, ErrorCodesEqualNative) {
  Open();
  Native native;
  cl_int build;
  cl_program p = Build(kVecAdd, &build);
  ASSERT_EQ(build, CL_SUCCESS);
  const char* src = kVecAdd;
  cl_program np =
      clCreateProgramWithSource(native.context, 1, &src, nullptr, nullptr);
  ASSERT_EQ(clBuildProgram(np, 1, &native.device, "", nullptr, nullptr),
            CL_SUCCESS);
  cl_int err = 0, nerr = 0;
  EXPECT_EQ(api_.clCreateKernel(p, "nope", &err), nullptr);
  EXPECT_EQ(clCreateKernel(np, "nope", &nerr), nullptr);
  EXPECT_EQ(err, nerr);
  EXPECT_EQ(err, CL_INVALID_KERNEL_NAME);

  cl_mem m = api_.clCreateBuffer(context_, CL_MEM_READ_WRITE, 64, nullptr, &err);
  cl_mem nm = clCreateBuffer(native.context, CL_MEM_READ_WRITE, 64, nullptr, &nerr);
  char buf[128];
  const cl_int guest_oob = api_.clEnqueueReadBuffer(queue_, m, CL_TRUE, 32, 64,
                                                    buf, 0, nullptr, nullptr);
  const cl_int native_oob = clEnqueueReadBuffer(native.queue, nm, CL_TRUE, 32, 64,
                                                buf, 0, nullptr, nullptr);
  EXPECT_EQ(guest_oob, native_oob);
  EXPECT_EQ(guest_oob, CL_INVALID_VALUE);
  // Write out of range; a zero-size buffer; a bad kernel arg index.
  EXPECT_EQ(api_.clEnqueueWriteBuffer(queue_, m, CL_TRUE, 60, 8, buf, 0, nullptr,
                                      nullptr),
            clEnqueueWriteBuffer(native.queue, nm, CL_TRUE, 60, 8, buf, 0,
                                 nullptr, nullptr));
  EXPECT_EQ(api_.clCreateBuffer(context_, 0, 0, nullptr, &err), nullptr);
  clCreateBuffer(native.context, 0, 0, nullptr, &nerr);
  EXPECT_EQ(err, nerr);
  cl_kernel k = api_.clCreateKernel(p, "add", &err);
  cl_kernel nk = clCreateKernel(np, "add", &nerr);
  EXPECT_EQ(api_.clSetKernelArg(k, 7, sizeof(cl_mem), &m),
            clSetKernelArg(nk, 7, sizeof(cl_mem), &nm));
  // A released handle.
  cl_mem gone = api_.clCreateBuffer(context_, 0, 16, nullptr, &err);
  ASSERT_EQ(api_.clReleaseMemObject(gone), CL_SUCCESS);
  EXPECT_EQ(api_.clReleaseMemObject(gone), CL_INVALID_MEM_OBJECT);
  EXPECT_EQ(api_.clGetContextInfo(nullptr, CL_CONTEXT_DEVICES, 0, nullptr,
                                  nullptr),
            clGetContextInfo(nullptr, CL_CONTEXT_DEVICES, 0, nullptr, nullptr));
  // Wait list rules.
  EXPECT_EQ(api_.clEnqueueMarkerWithWaitList(queue_, 1, nullptr, nullptr),
            clEnqueueMarkerWithWaitList(native.queue, 1, nullptr, nullptr));
  clReleaseKernel(nk);
  clReleaseMemObject(nm);
  clReleaseProgram(np);
}

TEST_F(GuestTest, BuildFailureLogEqualsNative) {
  Open();
  Native native;
  cl_int build;
  cl_program p = Build(kBroken, &build);
  const char* src = kBroken;
  cl_program np =
      clCreateProgramWithSource(native.context, 1, &src, nullptr, nullptr);
  const cl_int nbuild = clBuildProgram(np, 1, &native.device, "", nullptr, nullptr);
  EXPECT_EQ(build, nbuild);
  EXPECT_EQ(build, CL_BUILD_PROGRAM_FAILURE);
  auto log = [](decltype(&::clGetProgramBuildInfo) f, cl_program prog,
                cl_device_id d) {
    size_t n = 0;
    f(prog, d, CL_PROGRAM_BUILD_LOG, 0, nullptr, &n);
    std::string s(n, '\0');
    f(prog, d, CL_PROGRAM_BUILD_LOG, n, s.data(), nullptr);
    return s;
  };
  // PoCL names a random temporary file in its log (two native builds
  // differ there too): that name is masked.
  auto mask = [](std::string s) {
    return std::regex_replace(s, std::regex("tempfile_[A-Za-z0-9]+"), "tempfile_X");
  };
  const std::string glog = mask(log(api_.clGetProgramBuildInfo, p, device_));
  const std::string nlog = mask(log(&::clGetProgramBuildInfo, np, native.device));
  EXPECT_FALSE(nlog.empty());
  EXPECT_EQ(glog, nlog);
  cl_build_status st;
  ASSERT_EQ(api_.clGetProgramBuildInfo(p, device_, CL_PROGRAM_BUILD_STATUS,
                                       sizeof(st), &st, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(st, CL_BUILD_ERROR);
  clReleaseProgram(np);
}

TEST_F(GuestTest, BinariesMapsRectsImagesAndCallbacks) {
  Open();
  cl_int err, build;
  cl_program p = Build(kVecAdd, &build);
  ASSERT_EQ(build, CL_SUCCESS);
  // Binaries round trip through the per-device pointers.
  size_t bsize = 0;
  ASSERT_EQ(api_.clGetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof(bsize),
                                  &bsize, nullptr),
            CL_SUCCESS);
  std::vector<unsigned char> bin(bsize);
  unsigned char* ptrs[1] = {bin.data()};
  ASSERT_EQ(api_.clGetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof(ptrs), ptrs,
                                  nullptr),
            CL_SUCCESS);
  const unsigned char* cbin = bin.data();
  cl_int bstatus = -1;
  cl_program pb = api_.clCreateProgramWithBinary(context_, 1, &device_, &bsize,
                                                 &cbin, &bstatus, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  EXPECT_EQ(bstatus, CL_SUCCESS);
  EXPECT_EQ(api_.clBuildProgram(pb, 0, nullptr, nullptr, nullptr, nullptr),
            CL_SUCCESS);
  cl_kernel ks[4];
  cl_uint nk = 0;
  ASSERT_EQ(api_.clCreateKernelsInProgram(pb, 4, ks, &nk), CL_SUCCESS);
  EXPECT_EQ(nk, 1u);

  // Map / unmap.
  cl_mem m = api_.clCreateBuffer(context_, CL_MEM_READ_WRITE, 256, nullptr, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  auto* w = static_cast<uint8_t*>(api_.clEnqueueMapBuffer(
      queue_, m, CL_TRUE, CL_MAP_WRITE_INVALIDATE_REGION, 0, 256, 0, nullptr,
      nullptr, &err));
  ASSERT_EQ(err, CL_SUCCESS);
  for (int i = 0; i < 256; ++i) w[i] = static_cast<uint8_t>(i);
  cl_uint maps = 0;
  api_.clGetMemObjectInfo(m, CL_MEM_MAP_COUNT, sizeof(maps), &maps, nullptr);
  EXPECT_EQ(maps, 1u);
  ASSERT_EQ(api_.clEnqueueUnmapMemObject(queue_, m, w, 0, nullptr, nullptr),
            CL_SUCCESS);
  auto* r = static_cast<uint8_t*>(api_.clEnqueueMapBuffer(
      queue_, m, CL_TRUE, CL_MAP_READ, 16, 16, 0, nullptr, nullptr, &err));
  ASSERT_EQ(err, CL_SUCCESS);
  EXPECT_EQ(r[0], 16);
  EXPECT_EQ(r[15], 31);
  ASSERT_EQ(api_.clEnqueueUnmapMemObject(queue_, m, r, 0, nullptr, nullptr),
            CL_SUCCESS);

  // Rect read: a 4x2 block from a 16-byte-pitch buffer into a 8-byte-pitch
  // host region at host origin (2, 1).
  const size_t bo[3] = {4, 1, 0}, ho[3] = {2, 1, 0}, region[3] = {4, 2, 1};
  std::vector<uint8_t> host(8 * 4, 0xee);
  ASSERT_EQ(api_.clEnqueueReadBufferRect(queue_, m, CL_TRUE, bo, ho, region, 16,
                                         0, 8, 0, host.data(), 0, nullptr,
                                         nullptr),
            CL_SUCCESS);
  EXPECT_EQ(host[8 + 2], 16 + 4);
  EXPECT_EQ(host[8 + 5], 16 + 7);
  EXPECT_EQ(host[16 + 2], 32 + 4);
  EXPECT_EQ(host[8 + 1], 0xee);
  // Rect write back, shifted.
  const size_t bo2[3] = {0, 10, 0};
  ASSERT_EQ(api_.clEnqueueWriteBufferRect(queue_, m, CL_TRUE, bo2, ho, region,
                                          16, 0, 8, 0, host.data(), 0, nullptr,
                                          nullptr),
            CL_SUCCESS);
  uint8_t row[4];
  ASSERT_EQ(api_.clEnqueueReadBuffer(queue_, m, CL_TRUE, 160, 4, row, 0, nullptr,
                                     nullptr),
            CL_SUCCESS);
  EXPECT_EQ(row[0], 20);
  EXPECT_EQ(row[3], 23);

  // Images: write with a padded pitch, read packed.
  cl_image_format fmt{CL_RGBA, CL_UNSIGNED_INT8};
  cl_image_desc desc{};
  desc.image_type = CL_MEM_OBJECT_IMAGE2D;
  desc.image_width = 5;
  desc.image_height = 3;
  cl_mem img = api_.clCreateImage(context_, CL_MEM_READ_WRITE, &fmt, &desc,
                                  nullptr, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  std::vector<uint8_t> px(32 * 3, 0);
  for (size_t y = 0; y < 3; ++y)
    for (size_t x = 0; x < 20; ++x) px[y * 32 + x] = static_cast<uint8_t>(y * 20 + x);
  const size_t io[3] = {0, 0, 0}, ir[3] = {5, 3, 1};
  ASSERT_EQ(api_.clEnqueueWriteImage(queue_, img, CL_TRUE, io, ir, 32, 0,
                                     px.data(), 0, nullptr, nullptr),
            CL_SUCCESS);
  std::vector<uint8_t> packed(60);
  ASSERT_EQ(api_.clEnqueueReadImage(queue_, img, CL_TRUE, io, ir, 0, 0,
                                    packed.data(), 0, nullptr, nullptr),
            CL_SUCCESS);
  for (size_t i = 0; i < 60; ++i) ASSERT_EQ(packed[i], i) << i;
  size_t rp = 0;
  auto* mi = static_cast<uint8_t*>(api_.clEnqueueMapImage(
      queue_, img, CL_TRUE, CL_MAP_READ, io, ir, &rp, nullptr, 0, nullptr,
      nullptr, &err));
  ASSERT_EQ(err, CL_SUCCESS);
  EXPECT_EQ(rp, 20u);
  EXPECT_EQ(mi[59], 59);
  EXPECT_EQ(api_.clEnqueueUnmapMemObject(queue_, img, mi, 0, nullptr, nullptr),
            CL_SUCCESS);

  // A user event gating a marker, and a callback on the marker.
  cl_event user = api_.clCreateUserEvent(context_, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  cl_event marker;
  ASSERT_EQ(api_.clEnqueueMarkerWithWaitList(queue_, 1, &user, &marker),
            CL_SUCCESS);
  struct Seen {
    absl::Notification fired;
    cl_event event = nullptr;
    cl_int status = 1;
  } seen;
  ASSERT_EQ(api_.clSetEventCallback(
                marker, CL_COMPLETE,
                [](cl_event e, cl_int status, void* u) {
                  auto* s = static_cast<Seen*>(u);
                  s->event = e;
                  s->status = status;
                  s->fired.Notify();
                },
                &seen),
            CL_SUCCESS);
  EXPECT_FALSE(session_->executor->Drain().ok());
  ASSERT_EQ(api_.clSetUserEventStatus(user, CL_COMPLETE), CL_SUCCESS);
  ASSERT_EQ(api_.clWaitForEvents(1, &marker), CL_SUCCESS);
  // Released before the callback may have run: the handle stays valid for it.
  ASSERT_EQ(api_.clReleaseEvent(marker), CL_SUCCESS);
  ASSERT_TRUE(seen.fired.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(seen.event, marker);
  EXPECT_EQ(seen.status, CL_COMPLETE);
  EXPECT_TRUE(session_->executor->Drain().ok());
}

TEST_F(GuestTest, MovedSessionResumesAtTheNewAddress) {
  Open();
  cl_int err;
  std::vector<uint8_t> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  cl_mem m = api_.clCreateBuffer(context_, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                                 data.size(), data.data(), &err);
  ASSERT_EQ(err, CL_SUCCESS);
  // The second backend holds the same session (the same executor state).
  auto b = testing::TestServer::Start(absl::StrCat("unix:", socket_, ".b"), session_);
  ASSERT_TRUE(b.ok()) << b.status();
  server_->MoveOnNextRequest((*b)->address());
  // This read reaches A, which answers `moved` instead; the library resumes
  // at B and sends the read again there.
  std::vector<uint8_t> back(data.size());
  ASSERT_EQ(api_.clEnqueueReadBuffer(queue_, m, CL_TRUE, 0, back.size(),
                                     back.data(), 0, nullptr, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(back, data);
  EXPECT_EQ((*b)->hellos(), 1);
  EXPECT_GE((*b)->requests(), 1);
  // Handles stay the same; later calls go to B.
  const int before = (*b)->requests();
  size_t size = 0;
  ASSERT_EQ(api_.clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof(size), &size, nullptr),
            CL_SUCCESS);
  EXPECT_EQ(size, data.size());
  EXPECT_EQ((*b)->requests(), before + 1);
  server_->Kill();
  EXPECT_EQ(api_.clFinish(queue_), CL_SUCCESS);
}

TEST_F(GuestTest, ReplugAtTheSameAddressResumes) {
  Open();
  cl_int err;
  cl_mem m = api_.clCreateBuffer(context_, CL_MEM_READ_WRITE, 64, nullptr, &err);
  ASSERT_EQ(err, CL_SUCCESS);
  server_->StallOnNextRequest();
  auto call = std::async(std::launch::async, [&] {
    size_t size = 0;
    cl_int e = api_.clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof(size), &size, nullptr);
    return std::make_pair(e, size);
  });
  absl::SleepFor(absl::Milliseconds(200));
  server_->Kill();  // the channel goes away mid-call...
  absl::SleepFor(absl::Milliseconds(200));
  server_.reset();
  // ... and comes back at the same address within the window.
  auto again = testing::TestServer::Start("unix:" + socket_, session_);
  ASSERT_TRUE(again.ok()) << again.status();
  auto [code, size] = call.get();
  EXPECT_EQ(code, CL_SUCCESS);
  EXPECT_EQ(size, 64u);
  EXPECT_EQ((*again)->hellos(), 1);
}

TEST_F(GuestTest, BackendKilledMidCallFailsWithinTheWindow) {
  Open();
  server_->StallOnNextRequest();
  const auto start = std::chrono::steady_clock::now();
  auto call = std::async(std::launch::async, [&] { return api_.clFinish(queue_); });
  absl::SleepFor(absl::Milliseconds(200));
  server_->Kill();
  ASSERT_EQ(call.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the call hangs";
  EXPECT_EQ(call.get(), CL_OUT_OF_RESOURCES);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                 start)
                       .count();
  EXPECT_GE(s, 1.5);  // the window (VGPU_CL_RECONNECT_MS) was tried
  EXPECT_LT(s, 8.0);
  // Later calls fail at once.
  EXPECT_EQ(api_.clFlush(queue_), CL_OUT_OF_RESOURCES);
}

TEST(GuestNoBackendTest, NoPlatformsAndOneMessage) {
  setenv("VGPU_CL_BACKEND", "unix:/nonexistent/vgpu.sock", 1);
  GuestApi api;
  ASSERT_TRUE(api.Load(g_library, TmpDir())) << api.error;
  cl_uint n = 7;
  EXPECT_EQ(api.clGetPlatformIDs(0, nullptr, &n), CL_PLATFORM_NOT_FOUND_KHR);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(api.clGetPlatformIDs(0, nullptr, nullptr), CL_INVALID_VALUE);
}

TEST(GuestLoaderTest, ClinfoListsTheForwardedPlatform) {
  const std::string sock = absl::StrCat(SocketDir(), "/loader.sock");
  auto session = NewSession();
  auto server = testing::TestServer::Start("unix:" + sock, session);
  ASSERT_TRUE(server.ok()) << server.status();
  char real[PATH_MAX];
  ASSERT_NE(realpath(g_library.c_str(), real), nullptr);
  const std::string dir = TmpDir() + "/vendors";
  ASSERT_EQ(system(absl::StrCat("mkdir -p ", dir, " && echo ", real, " > ", dir,
                                "/vgpu.icd")
                       .c_str()),
            0);
  const std::string cmd = absl::StrCat("OCL_ICD_VENDORS=", dir,
                                       " VGPU_CL_BACKEND=unix:", sock,
                                       " clinfo -l 2>&1");
  FILE* f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), f)) out += buf;
  EXPECT_EQ(pclose(f), 0) << out;
  EXPECT_NE(out.find("vgpu-opencl on Portable Computing Language"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(session->executor->device_name()), std::string::npos) << out;
}

}  // namespace
}  // namespace vgpu::forwarding

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PATH_TO_libvgpu-opencl.so\n", argv[0]);
    return 2;
  }
  vgpu::forwarding::g_library = argv[1];
  return RUN_ALL_TESTS();
}
