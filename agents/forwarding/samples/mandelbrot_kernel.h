// The mandelbrot kernel of the samples, also the kernel-bound workload of
// the forwarding benchmark: one row of work-items per image row from
// `row0`, each counting iterations up to `max_iter`.
#ifndef VGPU_AGENTS_FORWARDING_SAMPLES_MANDELBROT_KERNEL_H_
#define VGPU_AGENTS_FORWARDING_SAMPLES_MANDELBROT_KERNEL_H_

namespace vgpu::forwarding::samples {

// OpenCL C source of `mandelbrot(global uint* out, uint width, uint height,
// uint row0, uint max_iter)`.
extern const char kMandelbrotSource[];

}  // namespace vgpu::forwarding::samples

#endif  // VGPU_AGENTS_FORWARDING_SAMPLES_MANDELBROT_KERNEL_H_
