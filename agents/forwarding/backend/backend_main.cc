// vgpu-cl-backend: the host side of OpenCL API forwarding. Serves guest
// sessions (libvgpu-opencl) on the host's OpenCL platform, one worker
// process per session, and offers the control socket vgpud's
// API-forwarding agent uses to checkpoint, restore and migrate sessions.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <climits>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "agents/forwarding/backend/worker.h"

namespace {

std::string Self() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

int main(int argc, char** argv) {
  using vgpu::forwarding::backend::RunSupervisor;
  using vgpu::forwarding::backend::RunWorker;
  CLI::App app{
      "vgpu-cl-backend: runs forwarded OpenCL sessions from guests "
      "(libvgpu-opencl) on this host's OpenCL platform, each session in its "
      "own worker process, and lets vgpud checkpoint, restore and migrate "
      "them."};
  vgpu::forwarding::backend::SupervisorOptions so;
  so.guest_address = "unix:/run/vgpu/cl.sock";
  so.control_address = "unix:/run/vgpu/cl-control.sock";
  so.run_dir = "/run/vgpu/cl";
  app.add_option("--listen", so.guest_address,
                 "where guests connect: unix:PATH or tcp:HOST:PORT")
      ->capture_default_str();
  app.add_option("--control", so.control_address,
                 "control socket for vgpud and tools (unix:PATH)")
      ->capture_default_str();
  app.add_option("--run-dir", so.run_dir,
                 "folder for the session workers' control sockets")
      ->capture_default_str();
  app.add_option("--memory-limit", so.memory_limit,
                 "device memory per session in bytes (buffers and images); "
                 "0: no limit")
      ->capture_default_str();
  app.add_option("--max-sessions", so.max_sessions,
                 "sessions served at once")
      ->capture_default_str();
  app.add_flag("--quiet", so.quiet, "do not print the listening addresses");

  // Internal: how the supervisor starts a session's worker.
  vgpu::forwarding::backend::WorkerOptions wo;
  CLI::App* worker = app.add_subcommand("worker", "")->group("");
  worker->add_option("--session", wo.session)->required();
  worker->add_option("--control", wo.control_address)->required();
  worker->add_option("--attach-fd", wo.attach_fd)->required();
  worker->add_option("--guest-address", wo.guest_address);
  worker->add_option("--memory-limit", wo.memory_limit);
  worker->add_flag("--target", wo.target);
  CLI11_PARSE(app, argc, argv);

  if (worker->parsed()) {
    const char* hex = std::getenv("VGPU_CL_SESSION_TOKEN");
    if (hex == nullptr) return 2;
    wo.token = absl::HexStringToBytes(hex);
    unsetenv("VGPU_CL_SESSION_TOKEN");
    return RunWorker(wo);
  }
  so.self = Self();
  if (mkdir(so.run_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "vgpu-cl-backend: cannot create %s: %s\n",
                 so.run_dir.c_str(), std::strerror(errno));
    return 1;
  }
  return RunSupervisor(so);
}
