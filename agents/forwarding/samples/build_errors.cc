// build_errors: builds that fail and what the API says about them. The
// failing build's error code, status and log text are all in the digest: a
// forwarding layer must hand back the compiler's own log, not a summary. (The
// log's temporary source file name is normalised away: NormalizedLog.)
//
//   1  a program with syntax errors: CL_BUILD_PROGRAM_FAILURE, build status
//      CL_BUILD_ERROR, the log; clCreateKernel on it fails. A second program
//      fails through #error when built with -DFAIL.
//   2  the second program rebuilt without -DFAIL succeeds: status, options,
//      kernel count and names; clCreateKernel with a wrong name gives
//      CL_INVALID_KERNEL_NAME; kernel info
//   3  the kernel runs; a build with an unknown option fails
#include <algorithm>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kBroken[] = R"CL(
__kernel void broken(__global int* a) {
  int x = ;
  a[get_global_id(0)] = undefined_name + 1
}
)CL";

constexpr char kConditional[] = R"CL(
#ifdef FAIL
#error "built with FAIL defined"
#endif
__kernel void square(__global int* a, uint n) {
  size_t i = get_global_id(0);
  if (i < n) a[i] = a[i] * a[i];
}
__kernel void negate(__global int* a, uint n) {
  size_t i = get_global_id(0);
  if (i < n) a[i] = -a[i];
}
)CL";

constexpr cl_uint kN = 1024;

cl_program Create(cl_context ctx, const char* source) {
  cl_int err = CL_SUCCESS;
  cl_program p = clCreateProgramWithSource(ctx, 1, &source, nullptr, &err);
  VGPU_CL_CHECK_ERR(err, "clCreateProgramWithSource");
  return p;
}

cl_build_status Status(cl_program p, cl_device_id dev) {
  cl_build_status s = 0;
  VGPU_CL_CHECK(clGetProgramBuildInfo(p, dev, CL_PROGRAM_BUILD_STATUS,
                                      sizeof(s), &s, nullptr));
  return s;
}

std::string ProgramString(cl_program p, cl_program_info what) {
  size_t size = 0;
  VGPU_CL_CHECK(clGetProgramInfo(p, what, 0, nullptr, &size));
  std::string s(size, '\0');
  VGPU_CL_CHECK(clGetProgramInfo(p, what, size, s.data(), nullptr));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// The build log with the compiler's name for the source file replaced by
// "<source>". PoCL compiles a temporary copy in its kernel cache
// (".../kcache/tempfile_dr5LvZ.cl:3:11: expected expression"), whose name
// changes with every build and with the cache directory; the rest of the log
// (positions, messages, the device line) is the result being compared.
std::string NormalizedLog(cl_program p, cl_device_id dev) {
  const std::string raw = BuildLog(p, dev);
  std::string out;
  size_t from = 0;
  for (size_t at = raw.find(".cl:"); at != std::string::npos;
       at = raw.find(".cl:", at + 1)) {
    size_t start = at;
    while (start > from && raw[start - 1] != ' ' && raw[start - 1] != '\n' &&
           raw[start - 1] != '\t') {
      --start;
    }
    out.append(raw, from, start - from);
    out += "<source>";
    from = at + 3;  // keep the ':'
  }
  out.append(raw, from, std::string::npos);
  return out;
}

std::string FirstLine(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

int CountErrors(const std::string& log) {
  int n = 0;
  for (size_t at = log.find("error"); at != std::string::npos;
       at = log.find("error", at + 1)) {
    ++n;
  }
  return n;
}

}  // namespace

void RunBuildErrors(SampleRun& run) {
  cl_context ctx = run.context();
  cl_device_id dev = run.device();
  cl_command_queue q = run.queue();
  Digest& d = run.digest();

  // Step 1.
  Program broken(Create(ctx, kBroken));
  const cl_int build =
      clBuildProgram(broken.get(), 1, &dev, "", nullptr, nullptr);
  Expect(
      build == CL_BUILD_PROGRAM_FAILURE,
      "building a program with syntax errors gives CL_BUILD_PROGRAM_FAILURE, "
      "got " +
          ClErrorText(build));
  const cl_build_status status = Status(broken.get(), dev);
  Expect(status == CL_BUILD_ERROR,
         "build status is CL_BUILD_ERROR, got " + std::to_string(status));
  const std::string log = NormalizedLog(broken.get(), dev);
  Expect(!log.empty(), "a failed build has a build log");
  d.Pod(build);
  d.Pod(status);
  d.String(log);
  run.Detail("log: " + FirstLine(log));
  cl_int err = CL_SUCCESS;
  cl_kernel none = clCreateKernel(broken.get(), "broken", &err);
  Expect(none == nullptr && err == CL_INVALID_PROGRAM_EXECUTABLE,
         "clCreateKernel on a failed program gives "
         "CL_INVALID_PROGRAM_EXECUTABLE, got " +
             ClErrorText(err));
  d.Pod(err);

  Program cond(Create(ctx, kConditional));
  const cl_int build_fail =
      clBuildProgram(cond.get(), 1, &dev, "-DFAIL", nullptr, nullptr);
  Expect(
      build_fail == CL_BUILD_PROGRAM_FAILURE,
      "#error gives CL_BUILD_PROGRAM_FAILURE, got " + ClErrorText(build_fail));
  const std::string cond_log = NormalizedLog(cond.get(), dev);
  Expect(cond_log.find("built with FAIL defined") != std::string::npos,
         "the #error text is in the build log:\n" + cond_log);
  d.Pod(build_fail);
  d.String(cond_log);
  run.Detail("log with -DFAIL: " + FirstLine(cond_log));
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 2: the same program object, rebuilt.
  const cl_int build_ok =
      clBuildProgram(cond.get(), 1, &dev, "-DOK=1", nullptr, nullptr);
  if (build_ok != CL_SUCCESS) {
    throw SampleFailure("clBuildProgram (rebuild without -DFAIL) failed: " +
                        ClErrorText(build_ok) + "; build log:\n" +
                        BuildLog(cond.get(), dev));
  }
  d.Pod(build_ok);
  d.Pod(Status(cond.get(), dev));
  {
    size_t size = 0;
    VGPU_CL_CHECK(clGetProgramBuildInfo(
        cond.get(), dev, CL_PROGRAM_BUILD_OPTIONS, 0, nullptr, &size));
    std::string options(size, '\0');
    VGPU_CL_CHECK(clGetProgramBuildInfo(cond.get(), dev,
                                        CL_PROGRAM_BUILD_OPTIONS, size,
                                        options.data(), nullptr));
    while (!options.empty() && options.back() == '\0') options.pop_back();
    Expect(options == "-DOK=1",
           "CL_PROGRAM_BUILD_OPTIONS is the last build's: " + options);
    d.String(options);
  }
  size_t num_kernels = 0;
  VGPU_CL_CHECK(clGetProgramInfo(cond.get(), CL_PROGRAM_NUM_KERNELS,
                                 sizeof(num_kernels), &num_kernels, nullptr));
  d.Pod(static_cast<uint64_t>(num_kernels));
  // The order of CL_PROGRAM_KERNEL_NAMES is the implementation's; sorted, the
  // names are a result.
  std::string names = ProgramString(cond.get(), CL_PROGRAM_KERNEL_NAMES);
  std::vector<std::string> split;
  for (size_t from = 0; from <= names.size();) {
    size_t semi = names.find(';', from);
    if (semi == std::string::npos) semi = names.size();
    split.push_back(names.substr(from, semi - from));
    from = semi + 1;
  }
  std::sort(split.begin(), split.end());
  Expect(num_kernels == 2 && split.size() == 2 && split[0] == "negate" &&
             split[1] == "square",
         "the program has kernels negate and square: " + names);
  for (const std::string& s : split) d.String(s);

  cl_kernel wrong = clCreateKernel(cond.get(), "no_such_kernel", &err);
  Expect(wrong == nullptr && err == CL_INVALID_KERNEL_NAME,
         "clCreateKernel with a wrong name gives CL_INVALID_KERNEL_NAME, got " +
             ClErrorText(err));
  d.Pod(err);
  Kernel square(CreateKernel(cond.get(), "square"));
  cl_uint num_args = 0;
  VGPU_CL_CHECK(clGetKernelInfo(square.get(), CL_KERNEL_NUM_ARGS,
                                sizeof(num_args), &num_args, nullptr));
  size_t fn_size = 0;
  VGPU_CL_CHECK(clGetKernelInfo(square.get(), CL_KERNEL_FUNCTION_NAME, 0,
                                nullptr, &fn_size));
  std::string fn(fn_size, '\0');
  VGPU_CL_CHECK(clGetKernelInfo(square.get(), CL_KERNEL_FUNCTION_NAME, fn_size,
                                fn.data(), nullptr));
  while (!fn.empty() && fn.back() == '\0') fn.pop_back();
  Expect(num_args == 2 && fn == "square", "kernel info of square");
  d.Pod(num_args);
  d.String(fn);
  VGPU_CL_CHECK(clFinish(q));
  run.EndStep();

  // Step 3.
  std::vector<cl_int> host(kN);
  for (cl_uint i = 0; i < kN; ++i) host[i] = static_cast<cl_int>(i) - 512;
  Mem buf(CreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                       kN * sizeof(cl_int), host.data()));
  const cl_uint n = kN;
  SetArg(square.get(), 0, buf.get());
  SetArg(square.get(), 1, n);
  const size_t global = kN;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(q, square.get(), 1, nullptr, &global,
                                       nullptr, 0, nullptr, nullptr));
  std::vector<cl_int> out(kN);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q, buf.get(), CL_TRUE, 0,
                                    kN * sizeof(cl_int), out.data(), 0, nullptr,
                                    nullptr));
  d.Vector(out);
  for (cl_uint i = 0; i < kN; ++i) {
    Expect(out[i] == host[i] * host[i],
           "square of element " + std::to_string(i));
  }
  Program bad_opts(Create(ctx, kConditional));
  const cl_int opts = clBuildProgram(bad_opts.get(), 1, &dev,
                                     "-cl-no-such-option", nullptr, nullptr);
  const std::string opts_log = NormalizedLog(bad_opts.get(), dev);
  d.String(opts_log);
  run.Detail("log with a bad option: " + FirstLine(opts_log));
  Expect(opts == CL_INVALID_BUILD_OPTIONS || opts == CL_BUILD_PROGRAM_FAILURE,
         "an unknown build option fails the build, got " + ClErrorText(opts));
  d.Pod(opts);
  VGPU_CL_CHECK(clFinish(q));

  run.Fact("build", ClErrorName(build));
  run.Fact("log_bytes", static_cast<long long>(log.size()));
  run.Fact("log_errors", CountErrors(log));
  run.Fact("wrong_name", ClErrorName(CL_INVALID_KERNEL_NAME));
  run.Fact("bad_option", ClErrorName(opts));
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples
