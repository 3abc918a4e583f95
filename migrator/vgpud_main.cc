// vgpud: the per-host vGPU migration daemon. See docs/OPERATIONS.md.
//
//   vgpud [--config /etc/vgpu/vgpud.json] [--host NAME] [--listen ADDR:PORT]
//         [--control PATH] [--store PATH] [--run-dir PATH]
//         [--peer NAME=ADDR[:PORT]]... [--tls-dir DIR | --insecure]
//
// Flags override the config file. SIGTERM or SIGINT: running jobs are
// cancelled (their sources resume), unconfirmed incoming migrations are
// torn down, then it exits 0.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "migrator/config.h"
#include "migrator/daemon.h"
#include "migrator/emulated_backend.h"
#include "migrator/forwarding_backend.h"
#include "migrator/mediated_backend.h"
#include "migrator/internal/spawner.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  using namespace vgpu::migrator;
  CLI::App app{
      "vgpud: the vGPU migration daemon (one per host). Serves the control "
      "API for vgpu-migrate, the libvirt hook and cloud control planes on a "
      "root-only Unix socket, and the peer protocol (mutual TLS) for other "
      "hosts' vgpud."};
  app.name("vgpud");
  app.footer("Config keys, TLS setup and troubleshooting: docs/OPERATIONS.md");
  std::string config_path = kDefaultConfigPath;
  std::string host, listen, control, store, run_dir, tls_dir, device_binary;
  std::vector<std::string> peers;
  bool insecure = false;
  uint32_t peer_timeout_ms = 0;
  auto* config_opt = app.add_option("--config", config_path,
                                    "JSON config file (optional at the default path)")
                         ->capture_default_str();
  app.add_option("--host", host, "this host's name (default: hostname)");
  app.add_option("--listen", listen, "peer port, ADDR:PORT (default 0.0.0.0:7480)");
  app.add_option("--control", control,
                 "control socket (default /run/vgpud/control.sock)");
  app.add_option("--store", store, "checkpoint store directory (default /var/lib/vgpu)");
  app.add_option("--run-dir", run_dir,
                 "where vgpud starts device models (default /run/vgpud)");
  app.add_option("--peer", peers, "another host: NAME=ADDR[:PORT] (repeatable)");
  app.add_option("--tls-dir", tls_dir,
                 "TLS material: DIR/ca.pem, DIR/HOST.pem, DIR/HOST.key "
                 "(as `vgpu-migrate certs DIR HOST...` writes them)");
  app.add_flag("--insecure", insecure,
               "plaintext between peers; refused unless every peer address "
               "is loopback");
  app.add_option("--device-binary", device_binary,
                 "vgpu-emu-device for incoming emulated vGPUs");
  app.add_option("--peer-timeout-ms", peer_timeout_ms,
                 "a peer silent this long is considered gone");
  CLI11_PARSE(app, argc, argv);

  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  spdlog::logger logger("vgpud", sink);
  logger.set_pattern("%Y-%m-%dT%H:%M:%S.%e vgpud %v");
  logger.flush_on(spdlog::level::info);
  LogFn log = [&logger](const std::string& line) { logger.info(line); };

  auto config = LoadConfig(config_path, config_opt->count() > 0);
  if (!config.ok()) {
    std::fprintf(stderr, "vgpud: %s\n", config.status().ToString().c_str());
    return 2;
  }
  Config& c = *config;
  if (!host.empty()) c.host = host;
  if (!listen.empty()) c.listen = listen;
  if (!control.empty()) c.control_socket = control;
  if (!store.empty()) c.store_path = store;
  if (!run_dir.empty()) c.run_dir = run_dir;
  if (!device_binary.empty()) c.emulated_device_binary = device_binary;
  if (peer_timeout_ms != 0) c.peer_timeout_ms = peer_timeout_ms;
  for (const std::string& p : peers) {
    size_t eq = p.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::fprintf(stderr, "vgpud: --peer %s: expected NAME=ADDR[:PORT]\n",
                   p.c_str());
      return 2;
    }
    c.peers[p.substr(0, eq)] = p.substr(eq + 1);
  }
  if (insecure) c.tls.insecure = true;
  if (!tls_dir.empty()) {
    c.tls.ca_file = tls_dir + "/ca.pem";
    c.tls.cert_file = absl::StrCat(tls_dir, "/", c.host, ".pem");
    c.tls.key_file = absl::StrCat(tls_dir, "/", c.host, ".key");
  }
  if (c.emulated_device_binary.empty()) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
      self[n] = 0;
      c.emulated_device_binary = FindEmulatedDeviceBinary(self);
    }
  }
  mkdir(c.run_dir.c_str(), 0755);

  // Signals are taken synchronously by this thread; every thread started
  // below inherits the blocked mask (children get it cleared).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  vgpu::migrator::internal::Spawner spawner;
  BackendRegistry backends;
  EmulatedBackendOptions eo;
  eo.device_binary = c.emulated_device_binary;
  eo.run_dir = c.run_dir;
  eo.max_vram_bytes = c.emulated_max_vram_bytes;
  auto emulated = NewEmulatedBackend(eo, &spawner);
  backends[emulated->name()] = std::move(emulated);
  ReferenceGpuOptions ro;
  ro.enabled = c.reference_gpu;
  ro.type = c.reference_type;
  ro.instances = c.reference_instances;
  ro.vram_bytes = c.reference_vram_bytes;
  ro.contexts = c.reference_contexts;
  ro.workload_bytes_per_second = c.reference_workload_bytes_per_second;
  auto mediated = NewMediatedBackend(ro, log);
  backends[mediated->name()] = std::move(mediated);
  PassthroughOptions po;
  po.sys_root = c.sys_root;
  po.dev_root = c.dev_root;
  auto passthrough = NewPassthroughBackend(po);
  backends[passthrough->name()] = std::move(passthrough);

  ForwardingOptions fo;
  fo.control = c.forwarding_control;
  fo.vendor = c.forwarding_vendor;
  fo.architecture = c.forwarding_architecture;
  fo.memory_bytes = c.forwarding_memory_bytes;
  fo.device = c.forwarding_device;
  auto forwarding = NewForwardingBackend(fo);
  backends[forwarding->name()] = std::move(forwarding);

  auto daemon = Daemon::Start(c, std::move(backends), log);
  if (!daemon.ok()) {
    std::fprintf(stderr, "vgpud: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&stop, &sig);
  log(absl::StrCat("host=", c.host, ": signal ", sig, ", stopping"));
  (*daemon)->Shutdown();
  // Connection threads are detached and may still hold the daemon: leave
  // without running destructors under them.
  std::fflush(nullptr);
  _exit(0);
}
