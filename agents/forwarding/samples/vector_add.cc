// vector_add: float vectors, several launches whose inputs are earlier
// launches' outputs, read back only in the last step, so that between steps
// the results exist on the device only.
//
//   1  build; create a, b, c, d; write a and b
//   2  c = a + b; d = 0.5 * c + b
//   3  a = c + d; c = a + b
//   4  read a, c, d back; digest; check against the host
#include <cmath>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void vadd(__global const float* x, __global const float* y,
                   __global float* out, uint n) {
  size_t i = get_global_id(0);
  if (i < n) out[i] = x[i] + y[i];
}
__kernel void vaxpy(float alpha, __global const float* x,
                    __global const float* y, __global float* out, uint n) {
  size_t i = get_global_id(0);
  if (i < n) out[i] = alpha * x[i] + y[i];
}
)CL";

constexpr cl_uint kN = 1 << 16;
constexpr size_t kLocal = 64;

void Launch(cl_command_queue q, cl_kernel k) {
  const size_t global = kN;
  const size_t local = kLocal;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 1, nullptr, &global, &local, 0,
                                       nullptr, nullptr));
}

}  // namespace

void RunVectorAdd(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();
  const size_t bytes = kN * sizeof(float);

  // Step 1.
  Rng rng(0x5eed0001);
  std::vector<float> a(kN), b(kN);
  for (cl_uint i = 0; i < kN; ++i) {
    a[i] = rng.Float();
    b[i] = rng.Float();
  }
  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel vadd(CreateKernel(program.get(), "vadd"));
  Kernel vaxpy(CreateKernel(program.get(), "vaxpy"));
  Mem da(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem db(CreateBuffer(ctx, CL_MEM_READ_ONLY, bytes));
  Mem dc(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem dd(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q, da.get(), CL_FALSE, 0, bytes, a.data(),
                                     0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q, db.get(), CL_FALSE, 0, bytes, b.data(),
                                     0, nullptr, nullptr));
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2.
  const cl_uint n = kN;
  const float alpha = 0.5f;
  SetArg(vadd.get(), 0, da.get());
  SetArg(vadd.get(), 1, db.get());
  SetArg(vadd.get(), 2, dc.get());
  SetArg(vadd.get(), 3, n);
  Launch(q, vadd.get());
  SetArg(vaxpy.get(), 0, alpha);
  SetArg(vaxpy.get(), 1, dc.get());
  SetArg(vaxpy.get(), 2, db.get());
  SetArg(vaxpy.get(), 3, dd.get());
  SetArg(vaxpy.get(), 4, n);
  Launch(q, vaxpy.get());
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3: the kernels keep their step-2 arguments except those reset here,
  // so restored kernel argument state matters too.
  SetArg(vadd.get(), 0, dc.get());
  SetArg(vadd.get(), 1, dd.get());
  SetArg(vadd.get(), 2, da.get());
  Launch(q, vadd.get());
  SetArg(vadd.get(), 0, da.get());
  SetArg(vadd.get(), 1, db.get());
  SetArg(vadd.get(), 2, dc.get());
  Launch(q, vadd.get());
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 4.
  std::vector<float> ra(kN), rc(kN), rd(kN);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, da.get(), CL_FALSE, 0, bytes, ra.data(),
                                    0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, dc.get(), CL_FALSE, 0, bytes, rc.data(),
                                    0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, dd.get(), CL_TRUE, 0, bytes, rd.data(),
                                    0, nullptr, nullptr));
  run.digest().Vector(ra);
  run.digest().Vector(rc);
  run.digest().Vector(rd);

  // The device may contract alpha*x+y into an fma, so d (and what depends on
  // it) is compared with a tolerance; c = a + b of step 2 is exact.
  double max_err = 0;
  for (cl_uint i = 0; i < kN; ++i) {
    const float c1 = a[i] + b[i];
    const float d = alpha * c1 + b[i];
    const float a2 = c1 + d;
    const float c2 = a2 + b[i];
    max_err = std::fmax(max_err, std::fabs(rd[i] - d));
    max_err = std::fmax(max_err, std::fabs(ra[i] - a2));
    max_err = std::fmax(max_err, std::fabs(rc[i] - c2));
  }
  Expect(max_err < 1e-5, "vector_add results differ from the host's by " +
                             std::to_string(max_err));
  run.Fact("n", kN);
  run.Fact("launches", 4);
  run.Fact("check", "ok");
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
