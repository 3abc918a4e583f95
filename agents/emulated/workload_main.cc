// vgpu-emu-workload: runs the counter workload (workload.h) against a
// vgpu-emu-device as a guest.
//
//   vgpu-emu-workload --socket PATH [--pages-per-second N] [--duration S]
//
// Prints one progress line a second and a final summary to stdout; exits 0
// when the duration ends or on SIGTERM/SIGINT, 1 on a device or invariant
// error.
#include <signal.h>

#include <atomic>
#include <cstdio>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/workload.h"

namespace {

std::atomic<bool> g_stop{false};  // set by the signal handler only

void OnSignal(int) { g_stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  using namespace vgpu::agents::emulated;  // NOLINT
  CLI::App app{"vgpu-emu-workload: the counter workload for vgpu-emu-device"};
  std::string socket_path;
  double rate = 0;
  double duration_s = 0;
  uint32_t frame_every = 1024;
  app.add_option("--socket", socket_path, "the device's socket")->required();
  app.add_option("--pages-per-second", rate,
                 "counter pages written per second (0: as fast as possible)")
      ->capture_default_str();
  app.add_option("--duration", duration_s, "seconds to run (0: until a signal)")
      ->capture_default_str();
  app.add_option("--frame-every", frame_every,
                 "draw a frame every this many pages (0: never)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sa.sa_flags = SA_RESETHAND;  // a second signal stops it at once
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  absl::StatusOr<std::unique_ptr<GuestClient>> guest =
      GuestClient::Connect(socket_path, "vgpu-emu-workload");
  if (!guest.ok()) {
    std::fprintf(stderr, "vgpu-emu-workload: %s\n",
                 guest.status().ToString().c_str());
    return 1;
  }
  WorkloadOptions options;
  options.pages_per_second = rate;
  options.frame_every_pages = frame_every;
  if (duration_s > 0) options.duration = absl::Seconds(duration_s);
  options.progress = [](const WorkloadStats& st) {
    std::printf("pages %llu frames %llu base %llu prefix %llu\n",
                static_cast<unsigned long long>(st.pages_written),
                static_cast<unsigned long long>(st.frames),
                static_cast<unsigned long long>(st.state.base),
                static_cast<unsigned long long>(st.state.prefix));
    std::fflush(stdout);
  };
  absl::StatusOr<std::unique_ptr<Workload>> workload =
      Workload::Start(guest->get(), options);
  if (!workload.ok()) {
    std::fprintf(stderr, "vgpu-emu-workload: %s\n",
                 workload.status().ToString().c_str());
    return 1;
  }
  const WorkloadLayout& layout = (*workload)->layout();
  std::printf("start: %u counter pages from page %u; base %u prefix %u\n",
              static_cast<unsigned>(layout.page_count),
              static_cast<unsigned>(layout.first_page),
              static_cast<unsigned>((*workload)->stats().state.base),
              static_cast<unsigned>((*workload)->stats().state.prefix));
  std::fflush(stdout);

  absl::Status s = (*workload)->Run(&g_stop);
  const WorkloadStats& st = (*workload)->stats();
  std::printf("end: pages %llu frames %llu base %llu prefix %llu\n",
              static_cast<unsigned long long>(st.pages_written),
              static_cast<unsigned long long>(st.frames),
              static_cast<unsigned long long>(st.state.base),
              static_cast<unsigned long long>(st.state.prefix));
  if (!s.ok()) {
    std::fprintf(stderr, "vgpu-emu-workload: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
