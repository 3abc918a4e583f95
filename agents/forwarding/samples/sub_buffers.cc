// sub_buffers: three sub-buffers of one parent at origins that are multiples
// of CL_DEVICE_MEM_BASE_ADDR_ALIGN, with gaps between them; kernels on the
// children and on the parent; writes through a child; reads through the
// parent (whole and as a rectangle) and through each child.
//
//   1  parent from host data; three children; their offset/size/parent info
//   2  kernel on child 0 and on child 1
//   3  write into child 2; kernel over the whole parent
//   4  read parent, a rectangle of it and each child; digest; check
#include <cstring>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void scale_add(__global int* a, int mul, int add, uint n) {
  size_t i = get_global_id(0);
  if (i < n) a[i] = a[i] * mul + add;
}
)CL";

constexpr size_t kChildInts = 1000;
constexpr size_t kChildren = 3;

void ScaleAdd(cl_command_queue q, cl_kernel k, cl_mem m, cl_int mul, cl_int add,
              size_t n) {
  const cl_uint count = static_cast<cl_uint>(n);
  SetArg(k, 0, m);
  SetArg(k, 1, mul);
  SetArg(k, 2, add);
  SetArg(k, 3, count);
  const size_t local = 64;
  const size_t global = (n + local - 1) / local * local;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, k, 1, nullptr, &global, &local, 0,
                                       nullptr, nullptr));
}

void HostScaleAdd(cl_int* a, cl_int mul, cl_int add, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    a[i] = static_cast<cl_int>(static_cast<cl_uint>(a[i]) *
                                   static_cast<cl_uint>(mul) +
                               static_cast<cl_uint>(add));
  }
}

}  // namespace

void RunSubBuffers(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();
  Digest& d = run.digest();

  // Step 1.
  const cl_uint align_bits =
      DeviceInfo<cl_uint>(run.device(), CL_DEVICE_MEM_BASE_ADDR_ALIGN);
  const size_t align = std::max<size_t>(align_bits / 8, sizeof(cl_int));
  const size_t child_bytes = kChildInts * sizeof(cl_int);
  // A gap of at least 100 bytes after each child, rounded up to the alignment.
  const size_t stride = (child_bytes + 100 + align - 1) / align * align;
  const size_t parent_bytes = kChildren * stride + align;
  const size_t parent_ints = parent_bytes / sizeof(cl_int);

  Rng rng(0x5eed0005);
  std::vector<cl_int> host(parent_ints);
  for (cl_int& v : host) v = rng.Int(-50000, 50000);
  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel k(CreateKernel(program.get(), "scale_add"));
  Mem parent(CreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                          parent_bytes, host.data()));
  Mem child[kChildren];
  for (size_t i = 0; i < kChildren; ++i) {
    cl_buffer_region region{i * stride, child_bytes};
    cl_int err = CL_SUCCESS;
    child[i] =
        Mem(clCreateSubBuffer(parent.get(), CL_MEM_READ_WRITE,
                              CL_BUFFER_CREATE_TYPE_REGION, &region, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateSubBuffer");
    size_t offset = 0, size = 0;
    cl_mem assoc = nullptr;
    VGPU_CL_CHECK(clGetMemObjectInfo(child[i].get(), CL_MEM_OFFSET,
                                     sizeof(offset), &offset, nullptr));
    VGPU_CL_CHECK(clGetMemObjectInfo(child[i].get(), CL_MEM_SIZE, sizeof(size),
                                     &size, nullptr));
    VGPU_CL_CHECK(clGetMemObjectInfo(child[i].get(),
                                     CL_MEM_ASSOCIATED_MEMOBJECT, sizeof(assoc),
                                     &assoc, nullptr));
    Expect(
        offset == region.origin && size == child_bytes && assoc == parent.get(),
        "sub-buffer " + std::to_string(i) +
            " reports its origin, size and parent");
    d.Pod(static_cast<uint64_t>(offset));
    d.Pod(static_cast<uint64_t>(size));
  }
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2.
  ScaleAdd(q, k.get(), child[0].get(), 2, 1, kChildInts);
  ScaleAdd(q, k.get(), child[1].get(), -1, 7, kChildInts);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3: 256 ints from byte 16 of child 2, then the whole parent.
  std::vector<cl_int> patch(256);
  for (size_t i = 0; i < patch.size(); ++i)
    patch[i] = static_cast<cl_int>(i * 1001);
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q, child[2].get(), CL_FALSE, 16,
                                     patch.size() * sizeof(cl_int),
                                     patch.data(), 0, nullptr, nullptr));
  ScaleAdd(q, k.get(), parent.get(), 1, 3, parent_ints);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 4.
  std::vector<cl_int> whole(parent_ints);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, parent.get(), CL_TRUE, 0, parent_bytes,
                                    whole.data(), 0, nullptr, nullptr));
  d.Vector(whole);
  // 8 rows of 16 bytes, rows 256 bytes apart, from byte 64 of row 2.
  std::vector<unsigned char> rect(8 * 16);
  const size_t buf_origin[3] = {64, 2, 0};
  const size_t host_origin[3] = {0, 0, 0};
  const size_t region[3] = {16, 8, 1};
  VGPU_CL_CHECK(clEnqueueReadBufferRect(q, parent.get(), CL_TRUE, buf_origin,
                                        host_origin, region, 256, 0, 16, 0,
                                        rect.data(), 0, nullptr, nullptr));
  d.Vector(rect);
  std::vector<cl_int> parts[kChildren];
  for (size_t i = 0; i < kChildren; ++i) {
    parts[i].resize(kChildInts);
    VGPU_CL_CHECK(clEnqueueReadBuffer(q, child[i].get(), CL_TRUE, 0,
                                      child_bytes, parts[i].data(), 0, nullptr,
                                      nullptr));
    d.Vector(parts[i]);
  }

  std::vector<cl_int> model = host;
  HostScaleAdd(model.data() + 0 * stride / sizeof(cl_int), 2, 1, kChildInts);
  HostScaleAdd(model.data() + 1 * stride / sizeof(cl_int), -1, 7, kChildInts);
  std::memcpy(reinterpret_cast<char*>(model.data()) + 2 * stride + 16,
              patch.data(), patch.size() * sizeof(cl_int));
  HostScaleAdd(model.data(), 1, 3, parent_ints);
  Expect(whole == model, "parent holds the host model's values");
  for (size_t i = 0; i < kChildren; ++i) {
    Expect(std::memcmp(parts[i].data(),
                       reinterpret_cast<const char*>(whole.data()) + i * stride,
                       child_bytes) == 0,
           "child " + std::to_string(i) + " reads as its slice of the parent");
  }
  for (size_t row = 0; row < 8; ++row) {
    Expect(std::memcmp(rect.data() + row * 16,
                       reinterpret_cast<const char*>(whole.data()) +
                           (2 + row) * 256 + 64,
                       16) == 0,
           "rectangle read row " + std::to_string(row));
  }
  run.Fact("align", static_cast<long long>(align));
  run.Fact("children", static_cast<long long>(kChildren));
  run.Fact("stride", static_cast<long long>(stride));
  run.Fact("check", "ok");
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
