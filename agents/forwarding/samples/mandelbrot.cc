// mandelbrot: the kernel-bound sample, used to time forwarded against
// native runs. --size N makes the image N x N (default 512); the iteration
// cap is fixed. The compute time (steps 2 and 3, enqueue to clFinish, pauses
// excluded) is printed as "ms" and kept out of the digest.
//
//   1  build; allocate the image buffer
//   2  the top half of the rows
//   3  the bottom half
//   4  read back; digest the iteration counts
#include <chrono>
#include <vector>

#include "agents/forwarding/samples/mandelbrot_kernel.h"
#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {

const char kMandelbrotSource[] = R"CL(
__kernel void mandelbrot(__global uint* out, uint width, uint height,
                         uint row0, uint max_iter) {
  uint x = get_global_id(0);
  uint y = get_global_id(1) + row0;
  if (x >= width || y >= height) return;
  float cr = -2.0f + 2.75f * (float)x / (float)width;
  float ci = -1.25f + 2.5f * (float)y / (float)height;
  float zr = 0.0f, zi = 0.0f;
  uint i = 0;
  while (i < max_iter && zr * zr + zi * zi <= 4.0f) {
    float t = zr * zr - zi * zi + cr;
    zi = 2.0f * zr * zi + ci;
    zr = t;
    ++i;
  }
  out[y * width + x] = i;
}
)CL";

namespace {



constexpr cl_uint kDefaultSize = 512;
constexpr cl_uint kMaxIter = 256;

double Launch(cl_command_queue q, cl_kernel k, cl_uint width, cl_uint row0,
              cl_uint rows) {
  const auto start = std::chrono::steady_clock::now();
  SetArg(k, 3, row0);
  const size_t global[2] = {width, rows};
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 2, nullptr, global, nullptr, 0,
                                       nullptr, nullptr));
  VGPU_CL_CHECK(clFinish(q));
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

void RunMandelbrot(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();
  const cl_uint size = run.options().size > 0
                           ? static_cast<cl_uint>(run.options().size)
                           : kDefaultSize;

  // Step 1.
  Program program(BuildProgram(ctx, run.device(), kMandelbrotSource));
  Kernel k(CreateKernel(program.get(), "mandelbrot"));
  const size_t bytes = static_cast<size_t>(size) * size * sizeof(cl_uint);
  Mem out(CreateBuffer(ctx, CL_MEM_WRITE_ONLY, bytes));
  SetArg(k.get(), 0, out.get());
  SetArg(k.get(), 1, size);
  SetArg(k.get(), 2, size);
  SetArg(k.get(), 4, kMaxIter);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Steps 2 and 3.
  const cl_uint top = size / 2;
  double ms = Launch(q, k.get(), size, 0, top);
  run.EndStep();
  ms += Launch(q, k.get(), size, top, size - top);
  run.EndStep();

  // Step 4.
  std::vector<cl_uint> counts(static_cast<size_t>(size) * size);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, out.get(), CL_TRUE, 0, bytes,
                                    counts.data(), 0, nullptr, nullptr));
  run.digest().Pod(size);
  run.digest().Vector(counts);
  long long inside = 0;
  unsigned long long total = 0;
  for (cl_uint c : counts) {
    inside += c == kMaxIter;
    total += c;
  }
  Expect(inside > 0 && inside < static_cast<long long>(counts.size()),
         "the image has points inside and outside the set");
  run.Fact("size", std::to_string(size) + "x" + std::to_string(size));
  run.Fact("max_iter", kMaxIter);
  run.Fact("inside", inside);
  run.Fact("iterations", static_cast<long long>(total));
  run.SetElapsedMs(ms);
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
