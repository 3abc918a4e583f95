// vgpu-cl-backend: the host side of OpenCL API forwarding. Serves guest
// sessions (libvgpu-opencl) on the host's OpenCL platform, one worker
// process per session, and offers the control socket vgpud's
// API-forwarding agent uses to checkpoint, restore and migrate sessions.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <cctype>
#include <climits>
#include <optional>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "agents/forwarding/backend/checkpoint.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/backend/worker.h"
#include "nlohmann/json.hpp"

namespace {

std::string Self() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

// "4096", "64K", "4G" -> bytes (binary suffixes).
std::optional<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return std::nullopt;
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  if (digits == 0 || digits > 15) return std::nullopt;
  uint64_t v = std::stoull(text.substr(0, digits));
  const std::string suffix = text.substr(digits);
  int shift = 0;
  if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else if (suffix == "T") shift = 40;
  else if (!suffix.empty()) return std::nullopt;
  return v << shift;
}

int ListSessions(const std::string& control, bool json) {
  auto c = vgpu::forwarding::backend::ControlClient::Connect(control);
  if (!c.ok()) {
    std::fprintf(stderr, "vgpu-cl-backend: %s\n",
                 std::string(c.status().message()).c_str());
    return 1;
  }
  auto list = (*c)->ListSessions();
  if (!list.ok()) {
    std::fprintf(stderr, "vgpu-cl-backend: %s\n",
                 std::string(list.status().message()).c_str());
    return 1;
  }
  if (!json) {
    std::printf("%-20s %-12s %-10s %10s %12s %8s  %s\n", "SESSION", "VM",
                "STATE", "CALLS", "MEMORY", "LOG", "CONTROL");
  }
  for (const auto& info : *list) {
    auto r = info.root();
    const char* state = r.getFrozen() ? "frozen"
                        : r.getAttached() ? "attached"
                                          : "waiting";
    if (json) {
      nlohmann::json j = {{"session", r.getSession()},
                          {"vm", r.getGuest().getVm().cStr()},
                          {"library", r.getGuest().getLibrary().cStr()},
                          {"state", state},
                          {"calls", r.getCalls()},
                          {"memory_bytes", r.getMemoryBytes()},
                          {"log_entries", r.getLogEntries()},
                          {"log_bytes", r.getLogBytes()},
                          {"control", r.getControl().cStr()},
                          {"device", r.getDevice().cStr()},
                          {"pid", r.getPid()}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%-20llu %-12s %-10s %10llu %12llu %8llu  %s\n",
                  static_cast<unsigned long long>(r.getSession()),
                  r.getGuest().getVm().cStr(), state,
                  static_cast<unsigned long long>(r.getCalls()),
                  static_cast<unsigned long long>(r.getMemoryBytes()),
                  static_cast<unsigned long long>(r.getLogEntries()),
                  r.getControl().cStr());
    }
  }
  return 0;
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
  std::string memory_limit = "0";
  app.add_option("--memory-limit", memory_limit,
                 "device memory per session (buffers and images): bytes or "
                 "with a K/M/G/T suffix (4G); 0: no limit")
      ->capture_default_str()
      ->check([](const std::string& v) {
        return ParseSize(v).has_value() ? std::string()
                                        : "expected bytes, e.g. 4096 or 4G";
      });
  app.add_option("--max-sessions", so.max_sessions,
                 "sessions served at once")
      ->capture_default_str();
  double call_limit_s = 0;
  app.add_option("--call-limit", call_limit_s,
                 "seconds one call may run (a kernel that never ends) before "
                 "its session is ended; 0: no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
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
  worker->add_option("--call-limit-ms", wo.call_limit_ms);
  std::string list_control = so.control_address;
  bool list_json = false;
  CLI::App* sessions = app.add_subcommand(
      "sessions",
      "list the sessions a running backend serves: id, VM, guest library, "
      "calls, device memory, log size, and the control address to register "
      "with vgpud (vgpu-migrate register VM --device apiForwarding:ADDRESS)");
  sessions->add_option("--control", list_control,
                       "the supervisor's control address")
      ->capture_default_str();
  sessions->add_flag("--json", list_json, "one JSON object per session");
  std::string session_control, image_path, restore_control = so.control_address;
  CLI::App* checkpoint = app.add_subcommand(
      "checkpoint",
      "write a checkpoint image of one live session to a file: its calls are "
      "held and its queues drained while the state is read, then it runs on");
  checkpoint->add_option("session", session_control,
                         "the session's control address (`sessions` lists it)")
      ->required();
  checkpoint->add_option("image", image_path, "the image file to write")
      ->required();
  CLI::App* restore = app.add_subcommand(
      "restore",
      "restore a session from a checkpoint image into a fresh worker of a "
      "running backend; the guest library resumes it there when it next "
      "reconnects to this backend");
  restore->add_option("image", image_path, "the image file to read")
      ->required();
  restore->add_option("--control", restore_control,
                      "the backend's control address")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  so.memory_limit = *ParseSize(memory_limit);
  so.call_limit_ms = static_cast<uint64_t>(call_limit_s * 1000);
  if (sessions->parsed()) return ListSessions(list_control, list_json);
  if (checkpoint->parsed()) {
    auto st = vgpu::forwarding::backend::CheckpointToFile(session_control,
                                                          image_path);
    if (!st.ok()) {
      std::fprintf(stderr, "vgpu-cl-backend checkpoint: %s\n",
                   std::string(st.status().message()).c_str());
      return 1;
    }
    std::printf(
        "checkpoint %s: %u sections, %.1f MiB of state as %.1f MiB; calls "
        "held %.1f ms, %.1f ms in all\n",
        image_path.c_str(), st->sections, st->raw_bytes / 1048576.0,
        st->stored_bytes / 1048576.0, st->frozen_ms, st->total_ms);
    return 0;
  }
  if (restore->parsed()) {
    auto r = vgpu::forwarding::backend::RestoreFromFile(restore_control,
                                                        image_path);
    if (!r.ok()) {
      std::fprintf(stderr, "vgpu-cl-backend restore: %s\n",
                   std::string(r.status().message()).c_str());
      return 1;
    }
    std::printf("restored session %llu from %s in %.1f ms (%.1f MiB); its "
                "control: %s\n",
                static_cast<unsigned long long>(r->session), image_path.c_str(),
                r->stats.total_ms, r->stats.raw_bytes / 1048576.0,
                r->control.c_str());
    return 0;
  }

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
