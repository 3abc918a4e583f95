// Small helpers shared by the fidelity samples: CL error names, a checked-call
// macro that throws, RAII handles for cl_* objects, the XXH3 result digest and
// the deterministic data generator.
//
// Only the standard OpenCL C API is used (no C++ wrapper), so the same binary
// runs through whichever ICD the loader picks (PoCL natively, the forwarding
// guest library when OCL_ICD_VENDORS points at it).
#ifndef VGPU_AGENTS_FORWARDING_SAMPLES_CL_UTIL_H_
#define VGPU_AGENTS_FORWARDING_SAMPLES_CL_UTIL_H_

#include <CL/cl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgpu::forwarding::samples {

// "CL_INVALID_VALUE" for -30; "CL_UNKNOWN_ERROR" for codes not in OpenCL 3.0.
const char* ClErrorName(cl_int code);

// "CL_INVALID_VALUE (-30)".
std::string ClErrorText(cl_int code);

// An OpenCL call returned an error the sample did not expect. `call` is the
// API function's name, `where` is file:line.
class ClError : public std::runtime_error {
 public:
  ClError(std::string call, cl_int code, std::string where);
  const std::string& call() const { return call_; }
  cl_int code() const { return code_; }

 private:
  std::string call_;
  cl_int code_;
};

// A sample's own check failed (wrong result, unexpected info value).
class SampleFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws ClError when `code` is not CL_SUCCESS. `expr` is the stringified call;
// only the function name (up to the first '(') is kept for the message.
void CheckCl(cl_int code, const char* expr, const char* file, int line);

#define VGPU_CL_CHECK(call) \
  ::vgpu::forwarding::samples::CheckCl((call), #call, __FILE__, __LINE__)
// For the clCreate* calls that return their error through a pointer.
#define VGPU_CL_CHECK_ERR(err, fn) \
  ::vgpu::forwarding::samples::CheckCl((err), fn, __FILE__, __LINE__)

// Owns one reference to a cl_* object and releases it when destroyed, so a
// sample that throws half-way does not leak objects into the next sample's
// session.
template <typename T, cl_int(CL_API_CALL* Release)(T)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T h) : h_(h) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = o.h_;
      o.h_ = nullptr;
    }
    return *this;
  }
  ~Handle() { reset(); }

  T get() const { return h_; }
  // For the clEnqueue* calls that return an event through a pointer.
  T* out() {
    reset();
    return &h_;
  }
  // Releases the object now (release errors at teardown are not results).
  void reset() {
    if (h_ != nullptr) Release(h_);
    h_ = nullptr;
  }
  explicit operator bool() const { return h_ != nullptr; }

 private:
  T h_ = nullptr;
};

using Context = Handle<cl_context, clReleaseContext>;
using Queue = Handle<cl_command_queue, clReleaseCommandQueue>;
using Mem = Handle<cl_mem, clReleaseMemObject>;
using Program = Handle<cl_program, clReleaseProgram>;
using Kernel = Handle<cl_kernel, clReleaseKernel>;
using Event = Handle<cl_event, clReleaseEvent>;
using Sampler = Handle<cl_sampler, clReleaseSampler>;

// XXH3-64 over every result byte a sample produces. Variable-length values
// are length-prefixed so that ("ab","c") and ("a","bc") digest differently.
class Digest {
 public:
  Digest();
  ~Digest();
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;

  void Bytes(const void* data, size_t size);
  template <typename T>
  void Pod(const T& value) {
    Bytes(&value, sizeof(value));
  }
  template <typename T>
  void Vector(const std::vector<T>& v) {
    Pod(static_cast<uint64_t>(v.size()));
    Bytes(v.data(), v.size() * sizeof(T));
  }
  void String(const std::string& s);

  uint64_t Value() const;
  std::string Hex() const;  // 16 lower-case hex digits

 private:
  void* state_;  // XXH3_state_t, kept out of the header
};

// The fixed-seed generator all sample data comes from (splitmix64): the same
// sequence on every host, independent of the C++ library's <random>.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next();
  // Uniform in [lo, hi], both inclusive.
  int32_t Int(int32_t lo, int32_t hi);
  // Multiples of 2^-20 in [-1, 1): exactly representable, so host and device
  // see the same input values.
  float Float();

 private:
  uint64_t s_;
};

// Builds `source` for `device`; on failure throws SampleFailure carrying the
// build log, since an unexpected build failure is useless without it.
cl_program BuildProgram(cl_context context, cl_device_id device,
                        const char* source, const char* options = "");

// The build log of `program` for `device` (trailing NULs and whitespace
// stripped).
std::string BuildLog(cl_program program, cl_device_id device);

cl_kernel CreateKernel(cl_program program, const char* name);
cl_mem CreateBuffer(cl_context context, cl_mem_flags flags, size_t size,
                    void* host = nullptr);

template <typename T>
void SetArg(cl_kernel kernel, cl_uint index, const T& value) {
  VGPU_CL_CHECK(clSetKernelArg(kernel, index, sizeof(T), &value));
}

template <typename T>
T DeviceInfo(cl_device_id device, cl_device_info what) {
  T value{};
  VGPU_CL_CHECK(clGetDeviceInfo(device, what, sizeof(T), &value, nullptr));
  return value;
}
std::string DeviceInfoString(cl_device_id device, cl_device_info what);
std::string PlatformInfoString(cl_platform_id platform, cl_platform_info what);

template <typename T>
T EventInfo(cl_event event, cl_event_info what) {
  T value{};
  VGPU_CL_CHECK(clGetEventInfo(event, what, sizeof(T), &value, nullptr));
  return value;
}

}  // namespace vgpu::forwarding::samples

#endif  // VGPU_AGENTS_FORWARDING_SAMPLES_CL_UTIL_H_
