// reduction: sum, min and max of 2^20 ints and 2^20 floats, each a tree in
// __local memory with barriers, in passes of 64-item work-groups until one
// value is left (2^20 -> 16384 -> 256 -> 4 -> 1). The float sum's order is
// fixed by the kernel and the work sizes, so it is the same on every run.
//
//   1  build; upload both inputs; allocate the partial-result buffers
//   2  int pass 1 (the partials stay on the device)
//   3  int passes 2-4; float pass 1
//   4  float passes 2-4
//   5  read back the last two passes' buffers; digest; check with the host
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdio>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
#define DEFINE_REDUCE(T, NAME, LOWEST, HIGHEST, MINF, MAXF)                   \
__kernel void NAME(__global const T* in_sum, __global const T* in_min,        \
                   __global const T* in_max, uint count,                      \
                   __global T* out_sum, __global T* out_min,                  \
                   __global T* out_max, __local T* ls, __local T* lmin,       \
                   __local T* lmax) {                                         \
  uint gid = get_global_id(0);                                                \
  uint lid = get_local_id(0);                                                 \
  T s = 0, mn = HIGHEST, mx = LOWEST;                                         \
  if (gid < count) { s = in_sum[gid]; mn = in_min[gid]; mx = in_max[gid]; }   \
  ls[lid] = s; lmin[lid] = mn; lmax[lid] = mx;                                \
  barrier(CLK_LOCAL_MEM_FENCE);                                               \
  for (uint stride = get_local_size(0) / 2; stride > 0; stride >>= 1) {       \
    if (lid < stride) {                                                       \
      ls[lid] += ls[lid + stride];                                            \
      lmin[lid] = MINF(lmin[lid], lmin[lid + stride]);                        \
      lmax[lid] = MAXF(lmax[lid], lmax[lid + stride]);                        \
    }                                                                         \
    barrier(CLK_LOCAL_MEM_FENCE);                                             \
  }                                                                           \
  if (lid == 0) {                                                             \
    uint g = get_group_id(0);                                                 \
    out_sum[g] = ls[0]; out_min[g] = lmin[0]; out_max[g] = lmax[0];           \
  }                                                                           \
}
DEFINE_REDUCE(int, reduce_int, INT_MIN, INT_MAX, min, max)
DEFINE_REDUCE(float, reduce_float, -FLT_MAX, FLT_MAX, fmin, fmax)
)CL";

constexpr cl_uint kN = 1 << 20;
constexpr size_t kLocal = 64;

size_t Groups(size_t count) { return (count + kLocal - 1) / kLocal; }

// The three partial-result arrays of one pass.
struct Partials {
  Mem sum, min, max;
};

Partials MakePartials(cl_context ctx, size_t count, size_t elem) {
  Partials p;
  p.sum = Mem(CreateBuffer(ctx, CL_MEM_READ_WRITE, count * elem));
  p.min = Mem(CreateBuffer(ctx, CL_MEM_READ_WRITE, count * elem));
  p.max = Mem(CreateBuffer(ctx, CL_MEM_READ_WRITE, count * elem));
  return p;
}

// One pass over `count` values; returns how many values it leaves.
size_t Pass(cl_command_queue q, cl_kernel k, size_t elem, cl_mem in_sum,
            cl_mem in_min, cl_mem in_max, size_t count, const Partials& out) {
  const cl_uint n = static_cast<cl_uint>(count);
  SetArg(k, 0, in_sum);
  SetArg(k, 1, in_min);
  SetArg(k, 2, in_max);
  SetArg(k, 3, n);
  SetArg(k, 4, out.sum.get());
  SetArg(k, 5, out.min.get());
  SetArg(k, 6, out.max.get());
  for (cl_uint i = 7; i < 10; ++i) {
    VGPU_CL_CHECK(clSetKernelArg(k, i, kLocal * elem, nullptr));
  }
  const size_t global = Groups(count) * kLocal;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 1, nullptr, &global, &kLocal, 0,
                                       nullptr, nullptr));
  return Groups(count);
}

// Passes until one value is left, starting from `count` values in `from`
// (pass 1 reads the input through all three arrays). The result of the last
// pass is in b (4 passes alternate a, b, a, b).
size_t Finish(cl_command_queue q, cl_kernel k, size_t elem, const Partials& a,
              const Partials& b, size_t count, int* passes) {
  const Partials* from = &a;
  const Partials* to = &b;
  while (count > 1) {
    count = Pass(q, k, elem, from->sum.get(), from->min.get(), from->max.get(),
                 count, *to);
    ++*passes;
    std::swap(from, to);
  }
  return count;
}

template <typename T>
std::vector<T> Read(cl_command_queue q, cl_mem m, size_t count) {
  std::vector<T> v(count);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, m, CL_TRUE, 0, count * sizeof(T),
                                    v.data(), 0, nullptr, nullptr));
  return v;
}

}  // namespace

void RunReduction(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();

  // Step 1.
  Rng rng(0x5eed0002);
  std::vector<cl_int> ints(kN);
  std::vector<float> floats(kN);
  for (cl_uint i = 0; i < kN; ++i) {
    ints[i] = rng.Int(-1000, 1000);
    floats[i] = rng.Float();
  }
  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel kint(CreateKernel(program.get(), "reduce_int"));
  Kernel kfloat(CreateKernel(program.get(), "reduce_float"));
  Mem in_int(CreateBuffer(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                          kN * sizeof(cl_int), ints.data()));
  Mem in_float(CreateBuffer(ctx, CL_MEM_READ_ONLY, kN * sizeof(float)));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q, in_float.get(), CL_FALSE, 0,
                                     kN * sizeof(float), floats.data(), 0,
                                     nullptr, nullptr));
  const size_t g1 = Groups(kN), g2 = Groups(g1);
  Partials int_a = MakePartials(ctx, g1, sizeof(cl_int));
  Partials int_b = MakePartials(ctx, g2, sizeof(cl_int));
  Partials float_a = MakePartials(ctx, g1, sizeof(float));
  Partials float_b = MakePartials(ctx, g2, sizeof(float));
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2.
  int int_passes = 1;
  size_t left = Pass(q, kint.get(), sizeof(cl_int), in_int.get(), in_int.get(),
                     in_int.get(), kN, int_a);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3.
  left = Finish(q, kint.get(), sizeof(cl_int), int_a, int_b, left, &int_passes);
  Expect(left == 1, "int reduction leaves one value");
  int float_passes = 1;
  size_t fleft = Pass(q, kfloat.get(), sizeof(float), in_float.get(),
                      in_float.get(), in_float.get(), kN, float_a);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 4.
  fleft = Finish(q, kfloat.get(), sizeof(float), float_a, float_b, fleft,
                 &float_passes);
  Expect(fleft == 1, "float reduction leaves one value");
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 5: b holds pass 2's 256 partials with the final value over its first.
  Expect(int_passes == 4 && float_passes == 4, "four passes per type");
  std::vector<cl_int> is = Read<cl_int>(q, int_b.sum.get(), g2);
  std::vector<cl_int> imn = Read<cl_int>(q, int_b.min.get(), g2);
  std::vector<cl_int> imx = Read<cl_int>(q, int_b.max.get(), g2);
  std::vector<float> fs = Read<float>(q, float_b.sum.get(), g2);
  std::vector<float> fmn = Read<float>(q, float_b.min.get(), g2);
  std::vector<float> fmx = Read<float>(q, float_b.max.get(), g2);
  Digest& d = run.digest();
  d.Vector(is);
  d.Vector(imn);
  d.Vector(imx);
  d.Vector(fs);
  d.Vector(fmn);
  d.Vector(fmx);

  long long hsum = 0;
  cl_int hmin = INT_MAX, hmax = INT_MIN;
  double hfsum = 0;
  float hfmin = FLT_MAX, hfmax = -FLT_MAX;
  for (cl_uint i = 0; i < kN; ++i) {
    hsum += ints[i];
    hmin = std::min(hmin, ints[i]);
    hmax = std::max(hmax, ints[i]);
    hfsum += floats[i];
    hfmin = std::fmin(hfmin, floats[i]);
    hfmax = std::fmax(hfmax, floats[i]);
  }
  Expect(is[0] == hsum && imn[0] == hmin && imx[0] == hmax,
         "int sum/min/max match the host's");
  Expect(fmn[0] == hfmin && fmx[0] == hfmax, "float min/max match the host's");
  Expect(std::fabs(fs[0] - hfsum) < 0.05, "float sum " + std::to_string(fs[0]) +
                                              " is near the host's " +
                                              std::to_string(hfsum));
  char fsum[32];
  std::snprintf(fsum, sizeof(fsum), "%.6f", fs[0]);
  run.Fact("n", kN);
  run.Fact("passes", int_passes + float_passes);
  run.Fact("int_sum", is[0]);
  run.Fact("int_min", imn[0]);
  run.Fact("int_max", imx[0]);
  run.Fact("float_sum", fsum);
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
