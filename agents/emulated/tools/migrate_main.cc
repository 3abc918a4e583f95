// vgpu-emu-migrate: live-migrates an emulated vGPU between two device
// processes on this host (see local_migrate.h).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "agents/emulated/tools/local_migrate.h"
#include "state-codecs/tools/progress.h"

int main(int argc, char** argv) {
  using namespace vgpu::agents::emulated;
  CLI::App app{
      "vgpu-emu-migrate: live-migrate an emulated vGPU from one "
      "vgpu-emu-device to another (started with --incoming) on this host.\n"
      "Pre-copy rounds run while the guest keeps working, until what is "
      "left fits the downtime budget; then the source stops, the rest is "
      "copied, and the destination runs. On any failure the source resumes.\n"
      "Exit status: 0 migrated, 1 failed (source resumed), 2 usage error."};
  LocalMigrateOptions o;
  bool json = false;
  std::string budget = "4M";
  app.add_option("--from", o.from_socket, "Source device socket")->required();
  app.add_option("--to", o.to_socket, "Destination device socket")->required();
  app.add_option("--max-rounds", o.max_rounds, "Pre-copy round limit")
      ->capture_default_str();
  app.add_option("--downtime-bytes", budget,
                 "Stop pre-copy once this much is left (K/M/G)")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "Compression threads (0: one per core)");
  app.add_flag("--json", json, "Machine-readable result on stdout");
  CLI11_PARSE(app, argc, argv);
  uint64_t mult = 1;
  if (!budget.empty() && (budget.back() == 'K' || budget.back() == 'M' ||
                          budget.back() == 'G')) {
    mult = budget.back() == 'K' ? 1 << 10 : budget.back() == 'M' ? 1 << 20 : 1 << 30;
    budget.pop_back();
  }
  uint64_t n;
  if (!absl::SimpleAtoi(budget, &n)) {
    std::cerr << "vgpu-emu-migrate: --downtime-bytes wants a size like 4M\n";
    return 2;
  }
  o.downtime_bytes = n * mult;

  vgpu::tools::ProgressBar* bar = nullptr;
  std::unique_ptr<vgpu::tools::ProgressBar> holder;
  o.on_round = [&](uint32_t round, uint64_t sent, uint64_t pending) {
    if (holder == nullptr) {
      holder = std::make_unique<vgpu::tools::ProgressBar>("migrate",
                                                          sent + pending, !json);
      bar = holder.get();
    }
    bar->Update(sent, static_cast<int>(round));
    if (!json) {
      std::cerr << absl::StrFormat("%sround %u: %s sent, %s left\n",
                                   isatty(STDERR_FILENO) ? "\n" : "", round,
                                   vgpu::tools::HumanBytes(sent),
                                   vgpu::tools::HumanBytes(pending));
    }
  };
  auto r = MigrateLocally(o);
  if (bar != nullptr) bar->Done();
  if (!r.ok()) {
    if (json) {
      std::cout << nlohmann::json{{"ok", false},
                                  {"error", std::string(r.status().message())}}
                       .dump(2)
                << "\n";
    }
    std::cerr << "vgpu-emu-migrate: " << r.status().message() << "\n";
    return 1;
  }
  if (json) {
    std::cout << nlohmann::json{{"ok", true},
                                {"rounds", r->rounds},
                                {"pendingAfterRound", r->pending},
                                {"finalBytes", r->final_bytes},
                                {"stateBytes", r->raw_bytes},
                                {"streamBytes", r->stream_bytes},
                                {"seconds", r->total_seconds},
                                {"downtimeMs", r->downtime_seconds * 1000}}
                     .dump(2)
              << "\n";
  } else {
    std::cout << absl::StrFormat(
        "migrated in %.2f s: %u pre-copy rounds, %s of state (%s on the "
        "wire), %s in the final copy, downtime %.1f ms\n",
        r->total_seconds, r->rounds, vgpu::tools::HumanBytes(r->raw_bytes),
        vgpu::tools::HumanBytes(r->stream_bytes),
        vgpu::tools::HumanBytes(r->final_bytes), r->downtime_seconds * 1000);
  }
  return 0;
}
