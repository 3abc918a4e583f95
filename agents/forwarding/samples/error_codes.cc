// error_codes: deliberate API errors and the code each gives natively. Each
// case provokes one error with valid handles only (released or garbage
// handles are undefined behaviour, so none are used) and records the code
// observed; the digest covers (case, code) for every case. A case whose code
// differs from the expected one is reported, not thrown, so that a forwarded
// run's codes can still be compared with the native run's.
//
//   1  memory, argument, info and program errors; kernel argument 0 set
//   2  NDRange with arguments 1 and 2 still unset (argument state carried
//      across the step boundary)
//   3  all arguments set; wait-list and work-size errors (after the
//      arguments, since the order of PoCL's checks puts CL_INVALID_KERNEL_ARGS
//      first); then a valid launch
#include <functional>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void fill(__global int* a, int value, __local int* scratch) {
  size_t l = get_local_id(0);
  scratch[l] = value + (int)l;
  barrier(CLK_LOCAL_MEM_FENCE);
  a[get_global_id(0)] = scratch[get_local_size(0) - 1 - l];
}
)CL";

constexpr size_t kBufBytes = 4096;

struct Table {
  SampleRun& run;
  int cases = 0;
  int matched = 0;

  // `also` is a second code the native platform is known to give where the
  // specification names `expected` (CL_SUCCESS: none).
  void Case(const char* name, cl_int expected, cl_int observed,
            cl_int also = CL_SUCCESS) {
    ++cases;
    const bool ok =
        observed == expected || (also != CL_SUCCESS && observed == also);
    if (ok) ++matched;
    std::string want = ClErrorName(expected);
    if (also != CL_SUCCESS) want += std::string(" or ") + ClErrorName(also);
    run.Detail(std::string(name) + " expected " + want + " observed " +
               ClErrorText(observed) + (ok ? " ok" : " MISMATCH"));
    run.digest().String(name);
    run.digest().Pod(observed);
  }
};

cl_int CreateBufferErr(cl_context ctx, cl_mem_flags flags, size_t size,
                       void* host) {
  cl_int err = CL_SUCCESS;
  Mem m(clCreateBuffer(ctx, flags, size, host, &err));
  return err;
}

cl_int SubBufferErr(cl_mem parent, size_t origin, size_t size) {
  cl_buffer_region region{origin, size};
  cl_int err = CL_SUCCESS;
  Mem m(clCreateSubBuffer(parent, CL_MEM_READ_WRITE,
                          CL_BUFFER_CREATE_TYPE_REGION, &region, &err));
  return err;
}

cl_int ImageErr(cl_context ctx, cl_image_format format, size_t w, size_t h) {
  cl_image_desc desc{};
  desc.image_type = CL_MEM_OBJECT_IMAGE2D;
  desc.image_width = w;
  desc.image_height = h;
  cl_int err = CL_SUCCESS;
  Mem m(clCreateImage(ctx, CL_MEM_READ_WRITE, &format, &desc, nullptr, &err));
  return err;
}

cl_int Launch(cl_command_queue q, cl_kernel k, cl_uint dims,
              const size_t* global, const size_t* local) {
  return clEnqueueNDRangeKernel(q, k, dims, nullptr, global, local, 0, nullptr,
                                nullptr);
}

}  // namespace

void RunErrorCodes(SampleRun& run) {
  cl_context ctx = run.context();
  cl_device_id dev = run.device();
  cl_command_queue q = run.queue();
  Table t{run};
  cl_int err = CL_SUCCESS;

  // Step 1.
  Program program(BuildProgram(ctx, dev, kSource));
  Kernel k(CreateKernel(program.get(), "fill"));
  Mem buf(CreateBuffer(ctx, CL_MEM_READ_WRITE, kBufBytes));
  int host_word = 0;
  std::vector<char> host(kBufBytes + 16);

  t.Case("buffer_size_zero", CL_INVALID_BUFFER_SIZE,
         CreateBufferErr(ctx, CL_MEM_READ_WRITE, 0, nullptr));
  t.Case(
      "buffer_read_only_and_write_only", CL_INVALID_VALUE,
      CreateBufferErr(ctx, CL_MEM_READ_ONLY | CL_MEM_WRITE_ONLY, 64, nullptr));
  t.Case("buffer_use_host_ptr_null", CL_INVALID_HOST_PTR,
         CreateBufferErr(ctx, CL_MEM_USE_HOST_PTR, 64, nullptr));
  t.Case("buffer_host_ptr_without_flag", CL_INVALID_HOST_PTR,
         CreateBufferErr(ctx, CL_MEM_READ_WRITE, 64, host.data()));
  t.Case("read_out_of_range", CL_INVALID_VALUE,
         clEnqueueReadBuffer(q, buf.get(), CL_TRUE, 0, kBufBytes + 4,
                             host.data(), 0, nullptr, nullptr));
  t.Case("write_out_of_range", CL_INVALID_VALUE,
         clEnqueueWriteBuffer(q, buf.get(), CL_TRUE, kBufBytes - 4, 8,
                              host.data(), 0, nullptr, nullptr));
  t.Case("copy_overlap", CL_MEM_COPY_OVERLAP,
         clEnqueueCopyBuffer(q, buf.get(), buf.get(), 0, 64, 128, 0, nullptr,
                             nullptr));
  {
    const cl_int pattern = 0;
    t.Case("fill_pattern_size_3", CL_INVALID_VALUE,
           clEnqueueFillBuffer(q, buf.get(), &pattern, 3, 0, 12, 0, nullptr,
                               nullptr));
    void* p = clEnqueueMapBuffer(q, buf.get(), CL_TRUE, CL_MAP_READ, kBufBytes,
                                 16, 0, nullptr, nullptr, &err);
    t.Case("map_out_of_range", CL_INVALID_VALUE, err);
    if (p != nullptr) {  // only if the error was not raised
      clEnqueueUnmapMemObject(q, buf.get(), p, 0, nullptr, nullptr);
    }
  }
  t.Case("kernel_arg_index_out_of_range", CL_INVALID_ARG_INDEX,
         clSetKernelArg(k.get(), 3, sizeof(host_word), &host_word));
  const cl_long wide = 0;  // 8 bytes for an int argument
  t.Case("kernel_arg_wrong_size", CL_INVALID_ARG_SIZE,
         clSetKernelArg(k.get(), 1, sizeof(wide), &wide));
  t.Case("kernel_local_arg_size_zero", CL_INVALID_ARG_SIZE,
         clSetKernelArg(k.get(), 2, 0, nullptr));
  t.Case("kernel_local_arg_with_value", CL_INVALID_ARG_VALUE,
         clSetKernelArg(k.get(), 2, sizeof(host_word), &host_word));
  {
    cl_uint value = 0;
    t.Case("device_info_bad_name", CL_INVALID_VALUE,
           clGetDeviceInfo(dev, 0x7fff, sizeof(value), &value, nullptr));
    cl_char tiny = 0;
    t.Case("device_info_buffer_too_small", CL_INVALID_VALUE,
           clGetDeviceInfo(dev, CL_DEVICE_NAME, sizeof(tiny), &tiny, nullptr));
  }
  {
    const cl_uint align =
        DeviceInfo<cl_uint>(dev, CL_DEVICE_MEM_BASE_ADDR_ALIGN) / 8;
    if (align > 1) {
      t.Case("sub_buffer_misaligned", CL_MISALIGNED_SUB_BUFFER_OFFSET,
             SubBufferErr(buf.get(), 1, 64));
    }
    t.Case("sub_buffer_out_of_range", CL_INVALID_VALUE,
           SubBufferErr(buf.get(), 0, kBufBytes + 1));
    cl_buffer_region region{0, 256};
    Mem child(clCreateSubBuffer(buf.get(), CL_MEM_READ_WRITE,
                                CL_BUFFER_CREATE_TYPE_REGION, &region, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateSubBuffer");
    t.Case("sub_buffer_of_sub_buffer", CL_INVALID_MEM_OBJECT,
           SubBufferErr(child.get(), 0, 64));
  }
  if (DeviceInfo<cl_bool>(dev, CL_DEVICE_IMAGE_SUPPORT) == CL_TRUE) {
    // PoCL 3.1 checks each device of the context and, when none can hold
    // the image, answers CL_INVALID_OPERATION ("no devices in context that
    // support this image type + size") instead of the specific code.
    t.Case("image_bad_channel_type", CL_INVALID_IMAGE_FORMAT_DESCRIPTOR,
           ImageErr(ctx, cl_image_format{CL_RGBA, 0x7777}, 16, 16),
           CL_INVALID_OPERATION);
    t.Case(
        "image_too_wide", CL_INVALID_IMAGE_SIZE,
        ImageErr(ctx, cl_image_format{CL_RGBA, CL_UNORM_INT8},
                 DeviceInfo<size_t>(dev, CL_DEVICE_IMAGE2D_MAX_WIDTH) + 1, 16),
        CL_INVALID_OPERATION);
  }
  {
    t.Case("program_source_count_zero", CL_INVALID_VALUE, [&] {
      cl_int e = CL_SUCCESS;
      Program p(clCreateProgramWithSource(ctx, 0, nullptr, nullptr, &e));
      return e;
    }());
    // Not here: clCreateKernel on a program never built. PoCL 3.1 returns
    // CL_INVALID_PROGRAM_EXECUTABLE but then crashes at random in its error
    // path; build_errors covers clCreateKernel on a program whose build failed.
  }
  t.Case("wait_for_no_events", CL_INVALID_VALUE, clWaitForEvents(0, nullptr));
  {
    Event user(clCreateUserEvent(ctx, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateUserEvent");
    t.Case("user_event_status_running", CL_INVALID_VALUE,
           clSetUserEventStatus(user.get(), CL_RUNNING));
    VGPU_CL_CHECK(clSetUserEventStatus(user.get(), CL_COMPLETE));
  }
  {
    // Two complete user events of different contexts in one wait. (Wait-list
    // shape errors in clEnqueue* are not tested: PoCL 3.1 runs the command
    // for a list with a count of 0 and crashes for a count without a list.)
    Context other(clCreateContext(nullptr, 1, &dev, nullptr, nullptr, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateContext(second)");
    Event mine(clCreateUserEvent(ctx, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateUserEvent");
    Event theirs(clCreateUserEvent(other.get(), &err));
    VGPU_CL_CHECK_ERR(err, "clCreateUserEvent(second context)");
    VGPU_CL_CHECK(clSetUserEventStatus(mine.get(), CL_COMPLETE));
    VGPU_CL_CHECK(clSetUserEventStatus(theirs.get(), CL_COMPLETE));
    const cl_event both[2] = {mine.get(), theirs.get()};
    t.Case("wait_for_events_of_two_contexts", CL_INVALID_CONTEXT,
           clWaitForEvents(2, both));
  }
  t.Case("context_without_devices", CL_INVALID_VALUE, [&] {
    cl_int e = CL_SUCCESS;
    Context c(clCreateContext(nullptr, 0, nullptr, nullptr, nullptr, &e));
    return e;
  }());
  // Argument 0 stays set across the step boundary; 1 and 2 do not exist yet.
  SetArg(k.get(), 0, buf.get());
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2.
  {
    const size_t global = 64, local = 64;
    t.Case("ndrange_args_not_all_set", CL_INVALID_KERNEL_ARGS,
           Launch(q, k.get(), 1, &global, &local));
  }
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3.
  const cl_int value = 1000;
  SetArg(k.get(), 1, value);
  size_t kernel_wg = 0;
  VGPU_CL_CHECK(
      clGetKernelWorkGroupInfo(k.get(), dev, CL_KERNEL_WORK_GROUP_SIZE,
                               sizeof(kernel_wg), &kernel_wg, nullptr));
  // __local scratch for the valid 64-item groups; the launches that must fail
  // are refused for their sizes before any memory matters.
  VGPU_CL_CHECK(clSetKernelArg(k.get(), 2, 64 * sizeof(cl_int), nullptr));
  {
    const size_t global[4] = {64, 1, 1, 1};
    const size_t local[4] = {64, 1, 1, 1};
    t.Case("ndrange_work_dim_zero", CL_INVALID_WORK_DIMENSION,
           Launch(q, k.get(), 0, global, local));
    const cl_uint max_dims =
        DeviceInfo<cl_uint>(dev, CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS);
    t.Case("ndrange_work_dim_above_max", CL_INVALID_WORK_DIMENSION,
           Launch(q, k.get(), max_dims + 1, global, local));
    // OpenCL C 1.2 kernels need the local size to divide the global size.
    const size_t g100 = 100, l64 = 64;
    t.Case("ndrange_local_not_dividing_global", CL_INVALID_WORK_GROUP_SIZE,
           Launch(q, k.get(), 1, &g100, &l64));
    // Twice the kernel's work-group size, as 2 x wg so that no single
    // dimension needs to exceed the device's per-dimension limit.
    const size_t big_local[2] = {kernel_wg, 2};
    const size_t big_global[2] = {kernel_wg, 2};
    t.Case("ndrange_group_larger_than_max", CL_INVALID_WORK_GROUP_SIZE,
           Launch(q, k.get(), 2, big_global, big_local));
  }
  // The same kernel, now valid: it must run.
  const size_t global = 256, local = 64;
  t.Case("ndrange_valid", CL_SUCCESS, Launch(q, k.get(), 1, &global, &local));
  std::vector<cl_int> out(global);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, buf.get(), CL_TRUE, 0,
                                    global * sizeof(cl_int), out.data(), 0,
                                    nullptr, nullptr));
  for (size_t i = 0; i < global; ++i) {
    Expect(out[i] == value + static_cast<cl_int>(local - 1 - i % local),
           "the valid launch's element " + std::to_string(i));
  }
  run.digest().Vector(out);
  VGPU_CL_CHECK(clFinish(q));
  run.Fact("cases", t.cases);
  run.Fact("matched", t.matched);
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
