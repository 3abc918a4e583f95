#include "agents/forwarding/samples/sample.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

namespace vgpu::forwarding::samples {

SampleRun::SampleRun(std::string name, cl_platform_id platform,
                     cl_device_id device, cl_context context,
                     cl_command_queue queue, const RunOptions& options)
    : name_(std::move(name)),
      platform_(platform),
      device_(device),
      context_(context),
      queue_(queue),
      options_(options) {}

void SampleRun::Fact(const std::string& key, const std::string& value) {
  facts_.emplace_back(key, value);
}

void SampleRun::Fact(const std::string& key, long long value) {
  facts_.emplace_back(key, std::to_string(value));
}

void SampleRun::EndStep() {
  ++steps_done_;
  if (options_.pause_at != steps_done_ || options_.pause_file.empty()) return;
  // stdout is what the controlling test reads; it must see the line before
  // it checkpoints, so flush now rather than at exit.
  std::printf("PAUSED %s step %d\n", name_.c_str(), steps_done_);
  std::fflush(stdout);
  const char* path = options_.pause_file.c_str();
  while (access(path, F_OK) != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    throw SampleFailure(std::string("cannot delete the pause file ") + path +
                        ": " + std::strerror(errno));
  }
}

void Expect(bool ok, const std::string& what) {
  if (!ok) throw SampleFailure("check failed: " + what);
}

const std::vector<SampleInfo>& AllSamples() {
  static const std::vector<SampleInfo> kSamples = {
      {"vector_add", 4, "float vectors, several launches chained on device",
       RunVectorAdd},
      {"reduction", 5,
       "int and float sum/min/max, __local memory and barriers, multi-pass",
       RunReduction},
      {"image_ops", 5,
       "RGBA8 and float 2D images, sampler, blur/rotate, image copies",
       RunImageOps},
      {"events", 4,
       "user events, wait lists, callbacks, markers/barriers, event info",
       RunEvents},
      {"sub_buffers", 4, "aligned sub-buffers, kernels on them, parent reads",
       RunSubBuffers},
      {"multi_queue", 4, "two queues, cross-queue event dependencies",
       RunMultiQueue},
      {"build_errors", 3,
       "failing build, build status and log, wrong kernel name",
       RunBuildErrors},
      {"error_codes", 3, "a table of deliberate errors and their codes",
       RunErrorCodes},
      {"mandelbrot", 4, "kernel-bound benchmark, --size scales it",
       RunMandelbrot},
  };
  return kSamples;
}

}  // namespace vgpu::forwarding::samples
