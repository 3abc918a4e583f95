// DeviceProcess: starts a vgpu-emu-device process for a test and stops it
// at teardown. The binary comes from the test's runfiles (add
// "//agents/emulated:vgpu-emu-device" to the test's `data`); the socket
// lives in a directory of its own under TEST_TMPDIR (through a short
// symlink in /tmp when that path is too long for a Unix socket). The device
// dies with the test process (PR_SET_PDEATHSIG) even if the test crashes.
// Test-only; used from the test's main thread.
#ifndef VGPU_AGENTS_EMULATED_TESTING_DEVICE_PROCESS_H_
#define VGPU_AGENTS_EMULATED_TESTING_DEVICE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vgpu::agents::emulated::testing {

struct DeviceProcessOptions {
  std::string name = "emu";
  std::string vram = "8M";
  bool incoming = false;
  uint64_t command_latency_us = 0;
};

class DeviceProcess {
 public:
  // Starts the device and waits (up to 10 s) until its socket accepts.
  static absl::StatusOr<std::unique_ptr<DeviceProcess>> Start(
      const DeviceProcessOptions& options);
  // Stops the device if it still runs (SIGTERM, then SIGKILL after 5 s).
  ~DeviceProcess();

  const std::string& socket_path() const { return socket_path_; }
  pid_t pid() const { return pid_; }

  // SIGTERM, then waits; returns the wait status (or -1 if already reaped).
  int Stop();

 private:
  DeviceProcess() = default;
  pid_t pid_ = -1;
  std::string dir_;          // under TEST_TMPDIR
  std::string link_;         // short symlink to dir_, if one was needed
  std::string socket_path_;  // what clients connect to
};

// The path of a binary of this package in the test's runfiles.
std::string RunfilePath(const std::string& package_relative);

}  // namespace vgpu::agents::emulated::testing

#endif  // VGPU_AGENTS_EMULATED_TESTING_DEVICE_PROCESS_H_
