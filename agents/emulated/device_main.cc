// vgpu-emu-device: the reference emulated vGPU as a process of its own (in
// the manner of a vhost-user-gpu backend). Guests program it and agents
// migrate it through a Unix socket; see docs/formats/emulated-device.md.
//
//   vgpu-emu-device --socket PATH [--vram 64M] [--name NAME] [--incoming]
//
// SIGTERM or SIGINT: stop serving, fail blocked calls, exit 0. Logs one line
// per connection and per error to stderr.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agents/emulated/internal/emu_gpu.h"
#include "agents/emulated/internal/server.h"

namespace {

using vgpu::agents::emulated::internal::EmuGpu;
using vgpu::agents::emulated::internal::EmuGpuOptions;
using vgpu::agents::emulated::internal::Server;

// "64M", "1G", "512K" (binary units) or plain bytes.
bool ParseSize(std::string text, uint64_t* out) {
  text = absl::AsciiStrToUpper(text);
  uint64_t unit = 1;
  if (!text.empty()) {
    switch (text.back()) {
      case 'K':
        unit = uint64_t{1} << 10;
        break;
      case 'M':
        unit = uint64_t{1} << 20;
        break;
      case 'G':
        unit = uint64_t{1} << 30;
        break;
      default:
        break;
    }
    if (unit != 1) text.pop_back();
  }
  uint64_t n;
  if (!absl::SimpleAtoi(text, &n) || n > UINT64_MAX / unit) return false;
  *out = n * unit;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-emu-device: the reference emulated vGPU (Bochs DISPI "
      "display + 2D command engine)"};
  std::string socket_path;
  std::string vram_text = "64M";
  std::string name = "emu0";
  bool incoming = false;
  uint64_t latency_us = 0;
  app.add_option("--socket", socket_path, "Unix socket to listen on")
      ->required();
  app.add_option("--vram", vram_text,
                 "VRAM size: bytes or K/M/G (multiple of 64K, 1M..4G-64K)")
      ->capture_default_str();
  app.add_option("--name", name, "instance name (logs, device info)")
      ->capture_default_str();
  app.add_flag("--incoming", incoming,
               "start quiesced and empty, as a migration destination");
  app.add_option("--command-latency-us", latency_us,
                 "time each command takes (a slow-GPU model for tests)");
  CLI11_PARSE(app, argc, argv);

  const std::string tag = absl::StrFormat("vgpu-emu-device[%s]", name);
  auto log = [tag](const std::string& line) {
    std::fprintf(stderr, "%s: %s\n", tag.c_str(), line.c_str());
  };

  EmuGpuOptions options;
  options.name = name;
  options.incoming = incoming;
  options.command_latency = absl::Microseconds(latency_us);
  options.log = log;
  if (!ParseSize(vram_text, &options.vram_bytes)) {
    log("--vram: not a size: " + vram_text);
    return 2;
  }

  // Signals are taken synchronously through a signalfd, so every thread
  // (created below) inherits the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int stop_fd = signalfd(-1, &stop_signals, SFD_CLOEXEC);
  if (stop_fd < 0) {
    log("signalfd failed");
    return 1;
  }

  absl::StatusOr<std::unique_ptr<EmuGpu>> gpu = EmuGpu::Create(options);
  if (!gpu.ok()) {
    log(gpu.status().ToString());
    return 2;
  }
  Server server(gpu->get(), socket_path, log);
  absl::Status s = server.Listen();
  if (!s.ok()) {
    log(s.ToString());
    return 1;
  }
  log(absl::StrFormat("listening on %s: %u bytes of VRAM%s", socket_path,
                      options.vram_bytes,
                      incoming ? ", incoming (quiesced until resumed)" : ""));
  s = server.Serve(stop_fd);
  if (!s.ok()) {
    log(s.ToString());
    return 1;
  }
  signalfd_siginfo info;
  if (read(stop_fd, &info, sizeof(info)) == sizeof(info)) {
    log(absl::StrFormat("signal %u: exiting", info.ssi_signo));
  }
  close(stop_fd);
  return 0;
}
