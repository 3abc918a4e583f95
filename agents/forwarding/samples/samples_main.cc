// vgpu-cl-samples: the OpenCL fidelity samples. Each sample runs a fixed
// program in numbered steps and prints a digest of every result byte, so that
// a run natively (PoCL through the ICD loader) and a run through the
// forwarding guest library, including one checkpointed or migrated between
// steps, can be compared byte for byte.
//
//   vgpu-cl-samples [--list] [--json] [--pause-at STEP --pause-file PATH]
//                   [--size N] [--platform I] [--device I] SAMPLE... | all
//
// Output, one line per sample:
//   SAMPLE <name> digest <16 hex> steps <n> <facts...>
// or with --json one object per line. A failing sample prints
//   SAMPLE <name> FAILED step <k> <what failed>
// and the reason on stderr; the other samples still run. Exit status: 0 when
// every sample ran to its end, 1 when one failed, 2 on a usage error.
#include <CL/cl.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "agents/forwarding/samples/cl_util.h"
#include "agents/forwarding/samples/sample.h"
#include "nlohmann/json.hpp"

namespace {

using namespace vgpu::forwarding::samples;  // NOLINT

struct Target {
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
};

Target PickDevice(unsigned platform_index, unsigned device_index) {
  cl_uint n = 0;
  VGPU_CL_CHECK(clGetPlatformIDs(0, nullptr, &n));
  std::vector<cl_platform_id> platforms(n);
  VGPU_CL_CHECK(clGetPlatformIDs(n, platforms.data(), nullptr));
  if (platform_index >= n) {
    throw SampleFailure("--platform " + std::to_string(platform_index) +
                        ": only " + std::to_string(n) + " platform(s)");
  }
  Target t;
  t.platform = platforms[platform_index];
  cl_uint nd = 0;
  VGPU_CL_CHECK(
      clGetDeviceIDs(t.platform, CL_DEVICE_TYPE_ALL, 0, nullptr, &nd));
  std::vector<cl_device_id> devices(nd);
  VGPU_CL_CHECK(clGetDeviceIDs(t.platform, CL_DEVICE_TYPE_ALL, nd,
                               devices.data(), nullptr));
  if (device_index >= nd) {
    throw SampleFailure("--device " + std::to_string(device_index) +
                        ": the platform has only " + std::to_string(nd) +
                        " device(s)");
  }
  t.device = devices[device_index];
  return t;
}

std::string FactsText(const SampleRun& run) {
  std::string s;
  for (const auto& [k, v] : run.facts()) s += " " + k + " " + v;
  if (run.elapsed_ms() >= 0) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), " ms %.1f", run.elapsed_ms());
    s += buf;
  }
  return s;
}

// Runs one sample in its own context and queue, so samples never share
// objects and a failure in one leaves the next one a clean start.
bool RunOne(const SampleInfo& info, const Target& target,
            const RunOptions& options, bool json) {
  std::string failure;
  int failed_step = 0;
  cl_int err = CL_SUCCESS;
  Context context;
  Queue queue;
  SampleRun* run_ptr = nullptr;
  std::unique_ptr<SampleRun> run;
  try {
    context = Context(
        clCreateContext(nullptr, 1, &target.device, nullptr, nullptr, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateContext");
    queue = Queue(clCreateCommandQueue(context.get(), target.device, 0, &err));
    VGPU_CL_CHECK_ERR(err, "clCreateCommandQueue");
    run = std::make_unique<SampleRun>(info.name, target.platform, target.device,
                                      context.get(), queue.get(), options);
    run_ptr = run.get();
    info.run(*run);
    if (run->skipped().empty() && run->steps_done() != info.steps) {
      throw SampleFailure("ended after " + std::to_string(run->steps_done()) +
                          " of " + std::to_string(info.steps) + " steps");
    }
  } catch (const std::exception& e) {
    failure = e.what();
    failed_step = run_ptr == nullptr ? 0 : run_ptr->steps_done() + 1;
  }

  if (!failure.empty()) {
    std::fprintf(stderr, "vgpu-cl-samples: %s step %d: %s\n", info.name,
                 failed_step, failure.c_str());
    // The first line of the reason is the failing call and its error.
    std::string first = failure.substr(0, failure.find('\n'));
    if (json) {
      nlohmann::ordered_json j;
      j["sample"] = info.name;
      j["failed"] = true;
      j["step"] = failed_step;
      j["error"] = failure;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("SAMPLE %s FAILED step %d %s\n", info.name, failed_step,
                  first.c_str());
    }
    std::fflush(stdout);
    return false;
  }

  if (json) {
    nlohmann::ordered_json j;
    j["sample"] = info.name;
    j["failed"] = false;
    if (!run->skipped().empty()) {
      j["skipped"] = run->skipped();
    } else {
      j["digest"] = run->digest().Hex();
      j["steps"] = run->steps_done();
    }
    nlohmann::ordered_json facts = nlohmann::ordered_json::object();
    for (const auto& [k, v] : run->facts()) facts[k] = v;
    j["facts"] = facts;
    if (!run->details().empty()) j["details"] = run->details();
    if (run->elapsed_ms() >= 0) j["elapsed_ms"] = run->elapsed_ms();
    std::printf("%s\n", j.dump().c_str());
  } else {
    for (const std::string& d : run->details()) {
      std::printf("  %s: %s\n", info.name, d.c_str());
    }
    if (!run->skipped().empty()) {
      std::printf("SAMPLE %s skipped %s\n", info.name, run->skipped().c_str());
    } else {
      std::printf("SAMPLE %s digest %s steps %d%s\n", info.name,
                  run->digest().Hex().c_str(), run->steps_done(),
                  FactsText(*run).c_str());
    }
  }
  std::fflush(stdout);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-cl-samples: OpenCL fidelity samples; each prints a digest of its "
      "results"};
  bool list = false;
  bool json = false;
  RunOptions options;
  unsigned platform_index = 0;
  unsigned device_index = 0;
  std::vector<std::string> names;
  app.add_flag("--list", list, "list the samples and their step counts");
  app.add_flag("--json", json, "one JSON object per sample");
  app.add_option("--pause-at", options.pause_at,
                 "after this step of each sample, print PAUSED and wait for "
                 "--pause-file")
      ->check(CLI::PositiveNumber);
  app.add_option("--pause-file", options.pause_file,
                 "the file whose appearance ends a pause (deleted then)");
  app.add_option("--size", options.size,
                 "mandelbrot's image side in pixels (default 512)")
      ->check(CLI::PositiveNumber);
  app.add_option("--platform", platform_index, "platform index")
      ->capture_default_str();
  app.add_option("--device", device_index, "device index in the platform")
      ->capture_default_str();
  app.add_option("samples", names, "sample names, or all");
  CLI11_PARSE(app, argc, argv);

  const std::vector<SampleInfo>& all = AllSamples();
  if (list) {
    for (const SampleInfo& s : all) {
      std::printf("%-13s steps %d  %s\n", s.name, s.steps, s.summary);
    }
    return 0;
  }
  if (options.pause_at > 0 && options.pause_file.empty()) {
    std::fprintf(stderr, "vgpu-cl-samples: --pause-at needs --pause-file\n");
    return 2;
  }
  if (names.empty()) {
    std::fprintf(stderr,
                 "vgpu-cl-samples: name the samples to run, or all (--list "
                 "lists them)\n");
    return 2;
  }
  std::vector<const SampleInfo*> chosen;
  std::set<std::string> seen;
  for (const std::string& n : names) {
    bool found = false;
    for (const SampleInfo& s : all) {
      if (n == "all" || n == s.name) {
        found = true;
        if (seen.insert(s.name).second) chosen.push_back(&s);
      }
    }
    if (!found) {
      std::fprintf(stderr, "vgpu-cl-samples: no sample named '%s'\n",
                   n.c_str());
      return 2;
    }
  }

  Target target;
  try {
    target = PickDevice(platform_index, device_index);
    std::fprintf(stderr, "vgpu-cl-samples: platform \"%s\", device \"%s\"\n",
                 PlatformInfoString(target.platform, CL_PLATFORM_NAME).c_str(),
                 DeviceInfoString(target.device, CL_DEVICE_NAME).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vgpu-cl-samples: no OpenCL device: %s\n", e.what());
    return 1;
  }

  bool ok = true;
  for (const SampleInfo* s : chosen)
    ok = RunOne(*s, target, options, json) && ok;
  return ok ? 0 : 1;
}
