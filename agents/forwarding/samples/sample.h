// The fidelity samples' framework: what a sample is given (the device, a
// context, an in-order queue), what it records (the digest, short facts,
// detail lines), and the step boundary where a test may pause the process to
// checkpoint or migrate the session.
#ifndef VGPU_AGENTS_FORWARDING_SAMPLES_SAMPLE_H_
#define VGPU_AGENTS_FORWARDING_SAMPLES_SAMPLE_H_

#include <CL/cl.h>

#include <string>
#include <utility>
#include <vector>

#include "agents/forwarding/samples/cl_util.h"

namespace vgpu::forwarding::samples {

struct RunOptions {
  int pause_at = 0;        // pause after this step of each sample; 0: never
  std::string pause_file;  // wait for this file to appear, then delete it
  int size = 0;            // --size: scales mandelbrot; 0: its default
};

// One sample's run: its OpenCL objects live in the sample's own stack frame;
// this holds what it reports.
class SampleRun {
 public:
  SampleRun(std::string name, cl_platform_id platform, cl_device_id device,
            cl_context context, cl_command_queue queue,
            const RunOptions& options);

  const std::string& name() const { return name_; }
  cl_platform_id platform() const { return platform_; }
  cl_device_id device() const { return device_; }
  cl_context context() const { return context_; }
  cl_command_queue queue() const { return queue_; }  // in-order, no profiling
  const RunOptions& options() const { return options_; }

  Digest& digest() { return digest_; }

  // A short fact for the SAMPLE line ("n 65536"). Facts are informative; only
  // the digest is compared between runs.
  void Fact(const std::string& key, const std::string& value);
  void Fact(const std::string& key, long long value);
  // A detail line printed before the SAMPLE line (the error_codes table).
  void Detail(const std::string& line) { details_.push_back(line); }
  // Time of the compute part (mandelbrot); printed, never digested.
  void SetElapsedMs(double ms) { elapsed_ms_ = ms; }
  // The sample does not apply to this device (no image support); the run
  // counts as complete.
  void Skip(const std::string& why) { skipped_ = why; }

  // Ends the current step. The sample calls it after it has finished (or, where
  // it says so, flushed) its queues, with every object it still needs kept
  // alive, so a checkpoint or migration here has device state to carry.
  // Pauses when the step is the one --pause-at names.
  void EndStep();

  int steps_done() const { return steps_done_; }
  const std::vector<std::pair<std::string, std::string>>& facts() const {
    return facts_;
  }
  const std::vector<std::string>& details() const { return details_; }
  double elapsed_ms() const { return elapsed_ms_; }
  const std::string& skipped() const { return skipped_; }

 private:
  std::string name_;
  cl_platform_id platform_;
  cl_device_id device_;
  cl_context context_;
  cl_command_queue queue_;
  RunOptions options_;
  Digest digest_;
  std::vector<std::pair<std::string, std::string>> facts_;
  std::vector<std::string> details_;
  double elapsed_ms_ = -1;
  std::string skipped_;
  int steps_done_ = 0;
};

struct SampleInfo {
  const char* name;
  int steps;  // how many times the sample calls EndStep when it completes
  const char* summary;
  void (*run)(SampleRun& run);
};

// Every sample, in the order `all` runs them.
const std::vector<SampleInfo>& AllSamples();

// The samples (one file each).
void RunVectorAdd(SampleRun& run);
void RunReduction(SampleRun& run);
void RunImageOps(SampleRun& run);
void RunEvents(SampleRun& run);
void RunSubBuffers(SampleRun& run);
void RunMultiQueue(SampleRun& run);
void RunBuildErrors(SampleRun& run);
void RunErrorCodes(SampleRun& run);
void RunMandelbrot(SampleRun& run);

// Throws SampleFailure("what: ...") when `ok` is false.
void Expect(bool ok, const std::string& what);

}  // namespace vgpu::forwarding::samples

#endif  // VGPU_AGENTS_FORWARDING_SAMPLES_SAMPLE_H_
