#include "agents/forwarding/samples/cl_util.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t for the streaming digest
#include <xxhash.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace vgpu::forwarding::samples {

const char* ClErrorName(cl_int code) {
  switch (code) {
    case CL_SUCCESS:
      return "CL_SUCCESS";
    case CL_DEVICE_NOT_FOUND:
      return "CL_DEVICE_NOT_FOUND";
    case CL_DEVICE_NOT_AVAILABLE:
      return "CL_DEVICE_NOT_AVAILABLE";
    case CL_COMPILER_NOT_AVAILABLE:
      return "CL_COMPILER_NOT_AVAILABLE";
    case CL_MEM_OBJECT_ALLOCATION_FAILURE:
      return "CL_MEM_OBJECT_ALLOCATION_FAILURE";
    case CL_OUT_OF_RESOURCES:
      return "CL_OUT_OF_RESOURCES";
    case CL_OUT_OF_HOST_MEMORY:
      return "CL_OUT_OF_HOST_MEMORY";
    case CL_PROFILING_INFO_NOT_AVAILABLE:
      return "CL_PROFILING_INFO_NOT_AVAILABLE";
    case CL_MEM_COPY_OVERLAP:
      return "CL_MEM_COPY_OVERLAP";
    case CL_IMAGE_FORMAT_MISMATCH:
      return "CL_IMAGE_FORMAT_MISMATCH";
    case CL_IMAGE_FORMAT_NOT_SUPPORTED:
      return "CL_IMAGE_FORMAT_NOT_SUPPORTED";
    case CL_BUILD_PROGRAM_FAILURE:
      return "CL_BUILD_PROGRAM_FAILURE";
    case CL_MAP_FAILURE:
      return "CL_MAP_FAILURE";
    case CL_MISALIGNED_SUB_BUFFER_OFFSET:
      return "CL_MISALIGNED_SUB_BUFFER_OFFSET";
    case CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST:
      return "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST";
    case CL_COMPILE_PROGRAM_FAILURE:
      return "CL_COMPILE_PROGRAM_FAILURE";
    case CL_LINKER_NOT_AVAILABLE:
      return "CL_LINKER_NOT_AVAILABLE";
    case CL_LINK_PROGRAM_FAILURE:
      return "CL_LINK_PROGRAM_FAILURE";
    case CL_DEVICE_PARTITION_FAILED:
      return "CL_DEVICE_PARTITION_FAILED";
    case CL_KERNEL_ARG_INFO_NOT_AVAILABLE:
      return "CL_KERNEL_ARG_INFO_NOT_AVAILABLE";
    case CL_INVALID_VALUE:
      return "CL_INVALID_VALUE";
    case CL_INVALID_DEVICE_TYPE:
      return "CL_INVALID_DEVICE_TYPE";
    case CL_INVALID_PLATFORM:
      return "CL_INVALID_PLATFORM";
    case CL_INVALID_DEVICE:
      return "CL_INVALID_DEVICE";
    case CL_INVALID_CONTEXT:
      return "CL_INVALID_CONTEXT";
    case CL_INVALID_QUEUE_PROPERTIES:
      return "CL_INVALID_QUEUE_PROPERTIES";
    case CL_INVALID_COMMAND_QUEUE:
      return "CL_INVALID_COMMAND_QUEUE";
    case CL_INVALID_HOST_PTR:
      return "CL_INVALID_HOST_PTR";
    case CL_INVALID_MEM_OBJECT:
      return "CL_INVALID_MEM_OBJECT";
    case CL_INVALID_IMAGE_FORMAT_DESCRIPTOR:
      return "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR";
    case CL_INVALID_IMAGE_SIZE:
      return "CL_INVALID_IMAGE_SIZE";
    case CL_INVALID_SAMPLER:
      return "CL_INVALID_SAMPLER";
    case CL_INVALID_BINARY:
      return "CL_INVALID_BINARY";
    case CL_INVALID_BUILD_OPTIONS:
      return "CL_INVALID_BUILD_OPTIONS";
    case CL_INVALID_PROGRAM:
      return "CL_INVALID_PROGRAM";
    case CL_INVALID_PROGRAM_EXECUTABLE:
      return "CL_INVALID_PROGRAM_EXECUTABLE";
    case CL_INVALID_KERNEL_NAME:
      return "CL_INVALID_KERNEL_NAME";
    case CL_INVALID_KERNEL_DEFINITION:
      return "CL_INVALID_KERNEL_DEFINITION";
    case CL_INVALID_KERNEL:
      return "CL_INVALID_KERNEL";
    case CL_INVALID_ARG_INDEX:
      return "CL_INVALID_ARG_INDEX";
    case CL_INVALID_ARG_VALUE:
      return "CL_INVALID_ARG_VALUE";
    case CL_INVALID_ARG_SIZE:
      return "CL_INVALID_ARG_SIZE";
    case CL_INVALID_KERNEL_ARGS:
      return "CL_INVALID_KERNEL_ARGS";
    case CL_INVALID_WORK_DIMENSION:
      return "CL_INVALID_WORK_DIMENSION";
    case CL_INVALID_WORK_GROUP_SIZE:
      return "CL_INVALID_WORK_GROUP_SIZE";
    case CL_INVALID_WORK_ITEM_SIZE:
      return "CL_INVALID_WORK_ITEM_SIZE";
    case CL_INVALID_GLOBAL_OFFSET:
      return "CL_INVALID_GLOBAL_OFFSET";
    case CL_INVALID_EVENT_WAIT_LIST:
      return "CL_INVALID_EVENT_WAIT_LIST";
    case CL_INVALID_EVENT:
      return "CL_INVALID_EVENT";
    case CL_INVALID_OPERATION:
      return "CL_INVALID_OPERATION";
    case CL_INVALID_GL_OBJECT:
      return "CL_INVALID_GL_OBJECT";
    case CL_INVALID_BUFFER_SIZE:
      return "CL_INVALID_BUFFER_SIZE";
    case CL_INVALID_MIP_LEVEL:
      return "CL_INVALID_MIP_LEVEL";
    case CL_INVALID_GLOBAL_WORK_SIZE:
      return "CL_INVALID_GLOBAL_WORK_SIZE";
    case CL_INVALID_PROPERTY:
      return "CL_INVALID_PROPERTY";
    case CL_INVALID_IMAGE_DESCRIPTOR:
      return "CL_INVALID_IMAGE_DESCRIPTOR";
    case CL_INVALID_COMPILER_OPTIONS:
      return "CL_INVALID_COMPILER_OPTIONS";
    case CL_INVALID_LINKER_OPTIONS:
      return "CL_INVALID_LINKER_OPTIONS";
    case CL_INVALID_DEVICE_PARTITION_COUNT:
      return "CL_INVALID_DEVICE_PARTITION_COUNT";
    case CL_INVALID_PIPE_SIZE:
      return "CL_INVALID_PIPE_SIZE";
    case CL_INVALID_DEVICE_QUEUE:
      return "CL_INVALID_DEVICE_QUEUE";
    case CL_INVALID_SPEC_ID:
      return "CL_INVALID_SPEC_ID";
    case CL_MAX_SIZE_RESTRICTION_EXCEEDED:
      return "CL_MAX_SIZE_RESTRICTION_EXCEEDED";
    case -1001:  // CL_PLATFORM_NOT_FOUND_KHR: the ICD loader found no ICDs
      return "CL_PLATFORM_NOT_FOUND_KHR";
    default:
      return "CL_UNKNOWN_ERROR";
  }
}

std::string ClErrorText(cl_int code) {
  return std::string(ClErrorName(code)) + " (" + std::to_string(code) + ")";
}

namespace {

std::string CallName(const char* expr) {
  const char* paren = std::strchr(expr, '(');
  return paren == nullptr ? std::string(expr) : std::string(expr, paren);
}

std::string BaseName(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash == nullptr ? file : slash + 1;
}

}  // namespace

ClError::ClError(std::string call, cl_int code, std::string where)
    : std::runtime_error(call + " failed: " + ClErrorText(code) + " at " +
                         where),
      call_(std::move(call)),
      code_(code) {}

void CheckCl(cl_int code, const char* expr, const char* file, int line) {
  if (code == CL_SUCCESS) return;
  throw ClError(CallName(expr), code,
                BaseName(file) + ":" + std::to_string(line));
}

Digest::Digest() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

Digest::~Digest() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void Digest::Bytes(const void* data, size_t size) {
  if (size == 0) return;
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}

void Digest::String(const std::string& s) {
  Pod(static_cast<uint64_t>(s.size()));
  Bytes(s.data(), s.size());
}

uint64_t Digest::Value() const {
  return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_));
}

std::string Digest::Hex() const {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, Value());
  return buf;
}

uint64_t Rng::Next() {
  uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int32_t Rng::Int(int32_t lo, int32_t hi) {
  const uint64_t span =
      static_cast<uint64_t>(static_cast<int64_t>(hi) - lo) + 1;
  return static_cast<int32_t>(lo + static_cast<int64_t>(Next() % span));
}

float Rng::Float() {
  const int32_t v = static_cast<int32_t>(Next() >> 43) - (1 << 20);  // 21 bits
  return static_cast<float>(v) / static_cast<float>(1 << 20);
}

std::string BuildLog(cl_program program, cl_device_id device) {
  size_t size = 0;
  VGPU_CL_CHECK(clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0,
                                      nullptr, &size));
  std::string log(size, '\0');
  if (size > 0) {
    VGPU_CL_CHECK(clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG,
                                        size, log.data(), nullptr));
  }
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n' ||
                          log.back() == ' ' || log.back() == '\r')) {
    log.pop_back();
  }
  return log;
}

cl_program BuildProgram(cl_context context, cl_device_id device,
                        const char* source, const char* options) {
  cl_int err = CL_SUCCESS;
  Program program(
      clCreateProgramWithSource(context, 1, &source, nullptr, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateProgramWithSource");
  err = clBuildProgram(program.get(), 1, &device, options, nullptr, nullptr);
  if (err != CL_SUCCESS) {
    std::string log = BuildLog(program.get(), device);
    throw SampleFailure("clBuildProgram failed: " + ClErrorText(err) +
                        "; build log:\n" + log);
  }
  cl_program p = program.get();
  clRetainProgram(p);  // the caller's reference; `program` drops its own
  return p;
}

cl_kernel CreateKernel(cl_program program, const char* name) {
  cl_int err = CL_SUCCESS;
  cl_kernel k = clCreateKernel(program, name, &err);
  if (err != CL_SUCCESS) {
    throw ClError(std::string("clCreateKernel(\"") + name + "\")", err,
                  "cl_util.cc");
  }
  return k;
}

cl_mem CreateBuffer(cl_context context, cl_mem_flags flags, size_t size,
                    void* host) {
  cl_int err = CL_SUCCESS;
  cl_mem m = clCreateBuffer(context, flags, size, host, &err);
  VGPU_CL_CHECK_ERR(err, "clCreateBuffer");
  return m;
}

std::string DeviceInfoString(cl_device_id device, cl_device_info what) {
  size_t size = 0;
  VGPU_CL_CHECK(clGetDeviceInfo(device, what, 0, nullptr, &size));
  std::string s(size, '\0');
  VGPU_CL_CHECK(clGetDeviceInfo(device, what, size, s.data(), nullptr));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

std::string PlatformInfoString(cl_platform_id platform, cl_platform_info what) {
  size_t size = 0;
  VGPU_CL_CHECK(clGetPlatformInfo(platform, what, 0, nullptr, &size));
  std::string s(size, '\0');
  VGPU_CL_CHECK(clGetPlatformInfo(platform, what, size, s.data(), nullptr));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

}  // namespace vgpu::forwarding::samples
