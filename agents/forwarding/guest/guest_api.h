// For the guest tests: the OpenCL API of one freshly loaded copy of
// libvgpu-opencl.so. Each copy is a separate file dlopen'ed RTLD_LOCAL, so
// each test gets its own process-wide client (the library's singleton) and
// its own id counter, and the test binary's own OpenCL calls still go to
// the native platform through the loader.
#ifndef VGPU_AGENTS_FORWARDING_GUEST_GUEST_API_H_
#define VGPU_AGENTS_FORWARDING_GUEST_GUEST_API_H_

#include <CL/cl.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>

#define VGPU_GUEST_API(X)                                                     \
  X(clGetPlatformIDs) X(clGetPlatformInfo) X(clGetDeviceIDs)                  \
  X(clGetDeviceInfo) X(clCreateContext) X(clCreateContextFromType)            \
  X(clReleaseContext) X(clRetainContext) X(clGetContextInfo)                  \
  X(clCreateCommandQueue) X(clCreateCommandQueueWithProperties)               \
  X(clReleaseCommandQueue) X(clGetCommandQueueInfo) X(clCreateBuffer)         \
  X(clCreateSubBuffer) X(clCreateImage) X(clCreateImage2D)                    \
  X(clReleaseMemObject) X(clGetMemObjectInfo) X(clGetImageInfo)               \
  X(clGetSupportedImageFormats) X(clCreateSampler)                            \
  X(clReleaseSampler) X(clCreateProgramWithSource)                            \
  X(clCreateProgramWithBinary) X(clBuildProgram) X(clGetProgramInfo)          \
  X(clGetProgramBuildInfo) X(clReleaseProgram) X(clCreateKernel)              \
  X(clCreateKernelsInProgram) X(clSetKernelArg) X(clGetKernelInfo)            \
  X(clGetKernelWorkGroupInfo) X(clReleaseKernel) X(clEnqueueNDRangeKernel)    \
  X(clEnqueueReadBuffer) X(clEnqueueWriteBuffer) X(clEnqueueReadBufferRect)   \
  X(clEnqueueWriteBufferRect) X(clEnqueueCopyBuffer) X(clEnqueueFillBuffer)   \
  X(clEnqueueReadImage) X(clEnqueueWriteImage) X(clEnqueueMapBuffer)          \
  X(clEnqueueMapImage) X(clEnqueueUnmapMemObject) X(clEnqueueMarker)          \
  X(clEnqueueMarkerWithWaitList) X(clEnqueueBarrierWithWaitList)              \
  X(clCreateUserEvent) X(clSetUserEventStatus) X(clSetEventCallback)          \
  X(clWaitForEvents) X(clGetEventInfo) X(clReleaseEvent) X(clFinish)          \
  X(clFlush) X(clGetExtensionFunctionAddress)

struct GuestApi {
#define VGPU_FIELD(name) decltype(&::name) name = nullptr;
  VGPU_GUEST_API(VGPU_FIELD)
#undef VGPU_FIELD
  void* handle = nullptr;
  std::string error;

  // Copies `library` to a new file under `dir` and loads it.
  bool Load(const std::string& library, const std::string& dir) {
    static std::atomic<int> n{0};
    const std::string copy =
        dir + "/libvgpu-opencl-copy" + std::to_string(n++) + ".so";
    {
      std::ifstream in(library, std::ios::binary);
      std::ofstream out(copy, std::ios::binary);
      if (!in || !out) {
        error = "cannot copy " + library + " to " + copy;
        return false;
      }
      out << in.rdbuf();
    }
    handle = dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      error = dlerror();
      return false;
    }
#define VGPU_LOAD(name)                                                 \
  name = reinterpret_cast<decltype(&::name)>(dlsym(handle, #name));     \
  if (name == nullptr) {                                                \
    error = "missing " #name;                                           \
    return false;                                                       \
  }
    VGPU_GUEST_API(VGPU_LOAD)
#undef VGPU_LOAD
    return true;
  }
};

#endif  // VGPU_AGENTS_FORWARDING_GUEST_GUEST_API_H_
