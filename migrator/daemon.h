// vgpud, the per-host daemon: owns the inventory, the job table, the
// checkpoint store and the strategy backends; serves the control API on a
// root-only Unix socket and the peer protocol on a TCP port (mutual TLS);
// runs every migration, snapshot and restore on a thread of its own.
// Built and stopped by vgpud's main() (or a test), which passes in the
// parsed config and the backends.
#ifndef VGPU_MIGRATOR_DAEMON_H_
#define VGPU_MIGRATOR_DAEMON_H_

#include <memory>

#include "absl/status/statusor.h"
#include "migrator/backend.h"
#include "migrator/config.h"
#include "migrator/coordinator.h"

namespace vgpu::migrator {

class Daemon {
 public:
  // Opens the store, registers the config's static VMs, binds both
  // sockets and starts serving. Refuses plaintext peers unless
  // `config.tls.insecure` and every address involved is loopback.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(
      Config config, BackendRegistry backends, LogFn log);
  virtual ~Daemon() = default;

  // Stops accepting, cancels running jobs (their sources resume), tears
  // down incoming migrations not yet confirmed, and waits for job threads.
  virtual void Shutdown() = 0;
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_DAEMON_H_
