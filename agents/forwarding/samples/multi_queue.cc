// multi_queue: two in-order queues on one context whose commands depend on
// each other only through events (each kernel's inputs are the other queue's
// outputs), finished queue by queue.
//
//   1  q1 writes A, q2 writes B; clFinish on each
//   2  four rounds of  q1: A = 2A + 1;  q2: B = B + A (waits on q1);
//      q1: A = A - B (waits on q2); flush both, finish q2 then q1
//   3  q2 copies A to C after q1's last kernel; q1 runs C = 2C + 1 after it
//   4  read A and C on q1, B on q2; digest; check with the host
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void twice_plus_one(__global uint* a, uint n) {
  size_t i = get_global_id(0);
  if (i < n) a[i] = a[i] * 2u + 1u;
}
__kernel void add(__global uint* dst, __global const uint* src, uint n) {
  size_t i = get_global_id(0);
  if (i < n) dst[i] += src[i];
}
__kernel void sub(__global uint* dst, __global const uint* src, uint n) {
  size_t i = get_global_id(0);
  if (i < n) dst[i] -= src[i];
}
)CL";

constexpr cl_uint kN = 1 << 14;
constexpr int kRounds = 4;

void Launch(cl_command_queue q, cl_kernel k, cl_event wait, cl_event* out) {
  const size_t global = kN, local = 64;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 1, nullptr, &global, &local,
                                       wait == nullptr ? 0 : 1,
                                       wait == nullptr ? nullptr : &wait, out));
}

}  // namespace

void RunMultiQueue(SampleRun& run) {
  cl_context ctx = run.context();
  cl_int err = CL_SUCCESS;
  // Two queues of the sample's own, so neither is the framework's queue.
  Queue q1(clCreateCommandQueue(ctx, run.device(), 0, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateCommandQueue(q1)");
  Queue q2(clCreateCommandQueue(ctx, run.device(), 0, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateCommandQueue(q2)");
  const size_t bytes = kN * sizeof(cl_uint);
  const cl_uint n = kN;

  // Step 1.
  Rng rng(0x5eed0006);
  std::vector<cl_uint> ha(kN), hb(kN);
  for (cl_uint i = 0; i < kN; ++i) {
    ha[i] = static_cast<cl_uint>(rng.Next());
    hb[i] = static_cast<cl_uint>(rng.Next());
  }
  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel k_twice(CreateKernel(program.get(), "twice_plus_one"));
  Kernel k_add(CreateKernel(program.get(), "add"));
  Kernel k_sub(CreateKernel(program.get(), "sub"));
  Kernel k_twice_c(CreateKernel(program.get(), "twice_plus_one"));
  Mem a(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem b(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem c(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q1.get(), a.get(), CL_FALSE, 0, bytes,
                                     ha.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q2.get(), b.get(), CL_FALSE, 0, bytes,
                                     hb.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clFinish(q1.get()));
  VGPU_CL_CHECK(clFinish(q2.get()));
  run.EndStep();

  // Step 2.
  SetArg(k_twice.get(), 0, a.get());
  SetArg(k_twice.get(), 1, n);
  SetArg(k_add.get(), 0, b.get());
  SetArg(k_add.get(), 1, a.get());
  SetArg(k_add.get(), 2, n);
  SetArg(k_sub.get(), 0, a.get());
  SetArg(k_sub.get(), 1, b.get());
  SetArg(k_sub.get(), 2, n);
  Event last;  // q1's last command of the previous round
  for (int r = 0; r < kRounds; ++r) {
    Event e1, e2, e3;
    // No race on A: q1 is in order, so this doubling follows the previous
    // round's sub, which itself waited for q2's add that read A.
    Launch(q1.get(), k_twice.get(), nullptr, e1.out());
    Launch(q2.get(), k_add.get(), e1.get(), e2.out());
    Launch(q1.get(), k_sub.get(), e2.get(), e3.out());
    last = std::move(e3);
  }
  VGPU_CL_CHECK(clFlush(q1.get()));
  VGPU_CL_CHECK(clFlush(q2.get()));
  VGPU_CL_CHECK(clFinish(q2.get()));
  VGPU_CL_CHECK(clFinish(q1.get()));
  run.EndStep();

  // Step 3: `last` (q1's final sub, complete now) still gates q2's copy, so
  // a restored session must know that event too.
  Event e_copy;
  cl_event last_ev = last.get();
  VGPU_CL_CHECK(clEnqueueCopyBuffer(q2.get(), a.get(), c.get(), 0, 0, bytes, 1,
                                    &last_ev, e_copy.out()));
  SetArg(k_twice_c.get(), 0, c.get());
  SetArg(k_twice_c.get(), 1, n);
  Launch(q1.get(), k_twice_c.get(), e_copy.get(), nullptr);
  VGPU_CL_CHECK(clFinish(q1.get()));
  VGPU_CL_CHECK(clFinish(q2.get()));
  run.EndStep();

  // Step 4.
  std::vector<cl_uint> ra(kN), rb(kN), rc(kN);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q1.get(), a.get(), CL_FALSE, 0, bytes,
                                    ra.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueReadBuffer(q1.get(), c.get(), CL_FALSE, 0, bytes,
                                    rc.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueReadBuffer(q2.get(), b.get(), CL_FALSE, 0, bytes,
                                    rb.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clFinish(q1.get()));
  VGPU_CL_CHECK(clFinish(q2.get()));
  Digest& d = run.digest();
  d.Vector(ra);
  d.Vector(rb);
  d.Vector(rc);
  for (int r = 0; r < kRounds; ++r) {
    for (cl_uint i = 0; i < kN; ++i) {
      ha[i] = ha[i] * 2u + 1u;
      hb[i] += ha[i];
      ha[i] -= hb[i];
    }
  }
  std::vector<cl_uint> hc = ha;
  for (cl_uint& v : hc) v = v * 2u + 1u;
  Expect(ra == ha && rb == hb && rc == hc,
         "buffers hold the host model's values (cross-queue events were "
         "respected)");
  run.Fact("n", kN);
  run.Fact("rounds", kRounds);
  run.Fact("queues", 2);
  run.Fact("check", "ok");
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
