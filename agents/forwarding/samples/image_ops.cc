// image_ops: 2D images in CL_RGBA/CL_UNORM_INT8 and CL_RGBA/CL_FLOAT, two
// samplers (nearest with integer coordinates, linear with normalised ones),
// kernels that blur, downscale and rotate, clEnqueueWrite/ReadImage (with and
// without a row pitch), clEnqueueCopyImage and image <-> buffer copies.
// Skipped, with the reason, on a device without image support.
//
//   1  build; create images, buffer and samplers; write the source image
//   2  blur src -> blurred (float); downscale src -> half (float, linear)
//   3  rotate blurred -> rotated (RGBA8); copy a region of src -> crop
//   4  rotated -> buffer -> roundtrip (copy image to buffer and back)
//   5  read everything back; digest; check copies exactly, kernels roughly
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void blur(__read_only image2d_t src, __write_only image2d_t dst,
                   sampler_t smp) {
  int2 p = (int2)(get_global_id(0), get_global_id(1));
  float4 acc = (float4)(0.0f);
  for (int dy = -1; dy <= 1; ++dy)
    for (int dx = -1; dx <= 1; ++dx)
      acc += read_imagef(src, smp, p + (int2)(dx, dy));
  write_imagef(dst, p, acc / 9.0f);
}
__kernel void downscale(__read_only image2d_t src, __write_only image2d_t dst,
                        sampler_t linear) {
  int2 p = (int2)(get_global_id(0), get_global_id(1));
  float2 uv = ((float2)(p.x, p.y) + 0.5f) / (float2)(get_image_width(dst),
                                                     get_image_height(dst));
  write_imagef(dst, p, read_imagef(src, linear, uv));
}
/* dst is src turned 90 degrees clockwise: dst(x, y) = src(y, H - 1 - x). */
__kernel void rotate90(__read_only image2d_t src, __write_only image2d_t dst,
                       sampler_t smp) {
  int x = get_global_id(0), y = get_global_id(1);
  int h = get_image_height(src);
  write_imagef(dst, (int2)(x, y), read_imagef(src, smp, (int2)(y, h - 1 - x)));
}
)CL";

constexpr size_t kW = 256, kH = 192;
constexpr size_t kCropX = 32, kCropY = 16, kCrop = 64;
constexpr size_t kPatchX = 100, kPatchY = 50, kPatchW = 40, kPatchH = 30;
constexpr size_t kPatchPitch = kPatchW * 4 + 16;  // padded rows

cl_mem MakeImage(cl_context ctx, cl_mem_flags flags, cl_channel_type type,
                 size_t w, size_t h) {
  cl_image_format format{CL_RGBA, type};
  cl_image_desc desc{};
  desc.image_type = CL_MEM_OBJECT_IMAGE2D;
  desc.image_width = w;
  desc.image_height = h;
  cl_int err = CL_SUCCESS;
  cl_mem m = clCreateImage(ctx, flags, &format, &desc, nullptr, &err);
  VGPU_CL_CHECK_ERR(err, "clCreateImage");
  return m;
}

void Launch2D(cl_command_queue q, cl_kernel k, size_t w, size_t h) {
  const size_t global[2] = {w, h};
  const size_t local[2] = {16, 8};
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 2, nullptr, global, local, 0,
                                       nullptr, nullptr));
}

template <typename T>
std::vector<T> ReadImage(cl_command_queue q, cl_mem image, size_t w, size_t h) {
  std::vector<T> v(w * h * 4);
  const size_t origin[3] = {0, 0, 0};
  const size_t region[3] = {w, h, 1};
  VGPU_CL_CHECK(clEnqueueReadImage(q, image, CL_TRUE, origin, region, 0, 0,
                                   v.data(), 0, nullptr, nullptr));
  return v;
}

}  // namespace

void RunImageOps(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();
  if (DeviceInfo<cl_bool>(run.device(), CL_DEVICE_IMAGE_SUPPORT) != CL_TRUE) {
    run.Skip("the device has no image support (CL_DEVICE_IMAGE_SUPPORT false)");
    return;
  }

  // Step 1.
  cl_uint nformats = 0;
  VGPU_CL_CHECK(clGetSupportedImageFormats(
      ctx, CL_MEM_READ_WRITE, CL_MEM_OBJECT_IMAGE2D, 0, nullptr, &nformats));
  std::vector<cl_image_format> formats(nformats);
  VGPU_CL_CHECK(clGetSupportedImageFormats(ctx, CL_MEM_READ_WRITE,
                                           CL_MEM_OBJECT_IMAGE2D, nformats,
                                           formats.data(), nullptr));
  run.digest().Vector(formats);

  Rng rng(0x5eed0003);
  std::vector<cl_uchar> full(kW * kH * 4);  // the first write
  for (auto& b : full) b = static_cast<cl_uchar>(rng.Next() >> 56);
  std::vector<cl_uchar> patch(kPatchPitch * kPatchH, 0xEE);  // pad bytes unused
  for (size_t y = 0; y < kPatchH; ++y) {
    for (size_t x = 0; x < kPatchW * 4; ++x) {
      patch[y * kPatchPitch + x] =
          static_cast<cl_uchar>((x * 7 + y * 13) & 0xff);
    }
  }
  // What the source image holds after both writes.
  std::vector<cl_uchar> src = full;
  for (size_t y = 0; y < kPatchH; ++y) {
    for (size_t x = 0; x < kPatchW * 4; ++x) {
      src[((kPatchY + y) * kW + kPatchX) * 4 + x] = patch[y * kPatchPitch + x];
    }
  }

  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel blur(CreateKernel(program.get(), "blur"));
  Kernel downscale(CreateKernel(program.get(), "downscale"));
  Kernel rotate(CreateKernel(program.get(), "rotate90"));
  Mem img_src(MakeImage(ctx, CL_MEM_READ_ONLY, CL_UNORM_INT8, kW, kH));
  Mem img_blur(MakeImage(ctx, CL_MEM_READ_WRITE, CL_FLOAT, kW, kH));
  Mem img_half(MakeImage(ctx, CL_MEM_WRITE_ONLY, CL_FLOAT, kW / 2, kH / 2));
  Mem img_rot(MakeImage(ctx, CL_MEM_READ_WRITE, CL_UNORM_INT8, kH, kW));
  Mem img_crop(MakeImage(ctx, CL_MEM_READ_WRITE, CL_UNORM_INT8, kCrop, kCrop));
  Mem img_round(MakeImage(ctx, CL_MEM_READ_WRITE, CL_UNORM_INT8, kH, kW));
  Mem buf(CreateBuffer(ctx, CL_MEM_READ_WRITE, kW * kH * 4));
  cl_int err = CL_SUCCESS;
  Sampler nearest(clCreateSampler(ctx, CL_FALSE, CL_ADDRESS_CLAMP_TO_EDGE,
                                  CL_FILTER_NEAREST, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateSampler(nearest)");
  Sampler linear(clCreateSampler(ctx, CL_TRUE, CL_ADDRESS_CLAMP_TO_EDGE,
                                 CL_FILTER_LINEAR, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateSampler(linear)");
  {
    // The whole image first (its own pixels, before the patch), then the
    // patch through a padded row pitch.
    const size_t origin[3] = {0, 0, 0};
    const size_t region[3] = {kW, kH, 1};
    VGPU_CL_CHECK(clEnqueueWriteImage(q, img_src.get(), CL_TRUE, origin, region,
                                      kW * 4, 0, full.data(), 0, nullptr,
                                      nullptr));
    const size_t porigin[3] = {kPatchX, kPatchY, 0};
    const size_t pregion[3] = {kPatchW, kPatchH, 1};
    VGPU_CL_CHECK(clEnqueueWriteImage(q, img_src.get(), CL_TRUE, porigin,
                                      pregion, kPatchPitch, 0, patch.data(), 0,
                                      nullptr, nullptr));
  }
  size_t info[2] = {0, 0};
  VGPU_CL_CHECK(clGetImageInfo(img_rot.get(), CL_IMAGE_WIDTH, sizeof(size_t),
                               &info[0], nullptr));
  VGPU_CL_CHECK(clGetImageInfo(img_rot.get(), CL_IMAGE_HEIGHT, sizeof(size_t),
                               &info[1], nullptr));
  Expect(info[0] == kH && info[1] == kW, "rotated image is H x W");
  run.digest().Pod(info);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2.
  SetArg(blur.get(), 0, img_src.get());
  SetArg(blur.get(), 1, img_blur.get());
  SetArg(blur.get(), 2, nearest.get());
  Launch2D(q, blur.get(), kW, kH);
  SetArg(downscale.get(), 0, img_src.get());
  SetArg(downscale.get(), 1, img_half.get());
  SetArg(downscale.get(), 2, linear.get());
  Launch2D(q, downscale.get(), kW / 2, kH / 2);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3.
  SetArg(rotate.get(), 0, img_blur.get());
  SetArg(rotate.get(), 1, img_rot.get());
  SetArg(rotate.get(), 2, nearest.get());
  Launch2D(q, rotate.get(), kH, kW);
  {
    const size_t from[3] = {kCropX, kCropY, 0};
    const size_t to[3] = {0, 0, 0};
    const size_t region[3] = {kCrop, kCrop, 1};
    VGPU_CL_CHECK(clEnqueueCopyImage(q, img_src.get(), img_crop.get(), from, to,
                                     region, 0, nullptr, nullptr));
  }
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 4.
  {
    const size_t origin[3] = {0, 0, 0};
    const size_t region[3] = {kH, kW, 1};
    VGPU_CL_CHECK(clEnqueueCopyImageToBuffer(
        q, img_rot.get(), buf.get(), origin, region, 0, 0, nullptr, nullptr));
    VGPU_CL_CHECK(clEnqueueCopyBufferToImage(
        q, buf.get(), img_round.get(), 0, origin, region, 0, nullptr, nullptr));
  }
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 5.
  std::vector<float> blurred = ReadImage<float>(q, img_blur.get(), kW, kH);
  std::vector<float> half = ReadImage<float>(q, img_half.get(), kW / 2, kH / 2);
  std::vector<cl_uchar> rotated = ReadImage<cl_uchar>(q, img_rot.get(), kH, kW);
  std::vector<cl_uchar> crop =
      ReadImage<cl_uchar>(q, img_crop.get(), kCrop, kCrop);
  std::vector<cl_uchar> round = ReadImage<cl_uchar>(q, img_round.get(), kH, kW);
  std::vector<cl_uchar> bytes(kW * kH * 4);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, buf.get(), CL_TRUE, 0, bytes.size(),
                                    bytes.data(), 0, nullptr, nullptr));
  Digest& d = run.digest();
  d.Vector(blurred);
  d.Vector(half);
  d.Vector(rotated);
  d.Vector(crop);
  d.Vector(round);
  d.Vector(bytes);

  // Copies are exact.
  for (size_t y = 0; y < kCrop; ++y) {
    for (size_t x = 0; x < kCrop * 4; ++x) {
      Expect(
          crop[y * kCrop * 4 + x] == src[((kCropY + y) * kW + kCropX) * 4 + x],
          "copied region equals the source region");
    }
  }
  Expect(bytes == rotated, "image -> buffer copy equals the image");
  Expect(round == rotated, "buffer -> image copy equals the image");
  // Kernels: blur against the host's (read_imagef of UNORM8 may be off by
  // an ulp or so), rotation against the blurred image within one level.
  double max_err = 0;
  int max_level = 0;
  for (size_t y = 0; y < kH; ++y) {
    for (size_t x = 0; x < kW; ++x) {
      for (size_t c = 0; c < 4; ++c) {
        float acc = 0;
        for (int dy = -1; dy <= 1; ++dy) {
          for (int dx = -1; dx <= 1; ++dx) {
            const long sx =
                std::clamp<long>(static_cast<long>(x) + dx, 0, kW - 1);
            const long sy =
                std::clamp<long>(static_cast<long>(y) + dy, 0, kH - 1);
            acc += src[(sy * kW + sx) * 4 + c] / 255.0f;
          }
        }
        const float b = blurred[(y * kW + x) * 4 + c];
        max_err =
            std::max(max_err, static_cast<double>(std::fabs(acc / 9.0f - b)));
        // rotated(rx, ry) = blurred(ry, H - 1 - rx)  =>  rx = H-1-y, ry = x.
        const int level = rotated[(x * kH + (kH - 1 - y)) * 4 + c];
        max_level = std::max(
            max_level,
            std::abs(level - static_cast<int>(std::lround(b * 255.0f))));
      }
    }
  }
  Expect(max_err < 1e-4, "blur matches the host's within 1e-4 (off by " +
                             std::to_string(max_err) + ")");
  Expect(max_level <= 1, "rotation matches the blurred image within a level");
  run.Fact("size", std::to_string(kW) + "x" + std::to_string(kH));
  run.Fact("formats", nformats);
  run.Fact("kernels", 3);
  run.Fact("copies", 3);
  run.Fact("check", "ok");
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
