// Cluster: several vgpud "hosts" on this machine for end-to-end tests. As
// root, each host is a network namespace wired to a private bridge (so a
// link can be cut with iptables inside one namespace, as on a real
// network); otherwise every host listens on loopback and Mode() says so.
// Each host has its own store, run directory and control socket, and peer
// TLS certificates from one demo CA. The cluster also starts emulated
// vGPU device processes and talks to each vgpud through its control API.
// Test-only; used from the test's main thread. Processes it starts die
// with the test (PR_SET_PDEATHSIG).
#ifndef VGPU_TESTS_E2E_CLUSTER_H_
#define VGPU_TESTS_E2E_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace vgpu::e2e {

struct ClusterOptions {
  int hosts = 2;
  uint32_t peer_timeout_ms = 3000;
  // Extra JSON config per host index (0-based), merged at top level, e.g.
  // {"emulation": {"max_vram": "32M"}}.
  std::map<int, std::string> extra_config;
  // Largest emulated VRAM a host accepts ("32M"), per host index.
  std::map<int, std::string> max_vram;
  // Hosts whose certificates come from a second, unrelated CA.
  std::vector<int> foreign_ca;
  // Every host's vgpud is configured for a vgpu-cl-backend (started with
  // StartClBackend) at ClControl(i).
  bool cl_backends = false;
};

inline ClusterOptions Hosts(int n) {
  ClusterOptions o;
  o.hosts = n;
  return o;
}

// A job's status as the control API reports it.
struct JobView {
  std::string id, kind, vm, phase, state, error, snapshot;
  int error_code = 0;
  bool source_resumed = false;
  double downtime_ms = 0;
  uint64_t raw_bytes = 0, wire_bytes = 0;
  uint32_t rounds = 0;
  std::vector<std::string> refused_rules;  // compat rows that failed
};

struct VmView {
  std::string name;
  std::vector<std::string> endpoints;
  std::vector<std::string> strategies;
  std::vector<std::string> health;    // the backend's word per device
  std::vector<std::string> problems;  // why a device could not be described
  std::string job;
};

struct MigrateOpts {
  uint32_t downtime_ms = 0;
  uint64_t bandwidth = 0;
  std::string pause_at;
  bool compress = true;
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Create(
      const ClusterOptions& options);
  ~Cluster();

  // "netns" or "loopback (not root: ...)".
  const std::string& Mode() const { return mode_; }
  bool netns() const { return netns_; }
  int size() const { return static_cast<int>(hosts_.size()); }
  std::string Name(int i) const { return hosts_[i].name; }
  const std::string& Control(int i) const { return hosts_[i].control; }
  const std::string& Dir() const { return dir_; }

  absl::Status StartHost(int i);
  // Signals vgpud of host i and reaps it (SIGKILL: no cleanup at all).
  // Returns its wait status (-1 if it was not running).
  int StopHost(int i, int sig);
  bool HostRunning(int i);
  // Cuts / heals host i's network link (iptables DROP both ways inside its
  // namespace). UNIMPLEMENTED in loopback mode.
  absl::Status CutLink(int i);
  absl::Status HealLink(int i);
  // Points host `from`'s peer entry for host `to` at `addr` (e.g. a fault
  // proxy); takes effect when `from` restarts.
  void OverridePeer(int from, int to, const std::string& addr);
  // Address ("ADDR:PORT") of host i's peer port, as other hosts reach it.
  std::string PeerAddress(int i) const;
  // The address ("ADDR", no port) a fault proxy in this process listens
  // on so that every host can reach it: the bridge's own address in netns
  // mode, 127.0.0.1 otherwise.
  std::string ProxyListenAddress() const;

  // Starts a vgpu-emu-device (in no namespace: Unix sockets are shared).
  absl::StatusOr<std::string> StartDevice(const std::string& name,
                                          const std::string& vram);
  // Starts vgpu-cl-backend on host i, in its namespace, and waits until it
  // answers; returns the address guests use (tcp on the host's address in
  // netns mode, a unix socket otherwise).
  absl::StatusOr<std::string> StartClBackend(int i);
  // The backend's control address ("unix:...").
  std::string ClControl(int i) const;
  // Runs `argv` in host i's namespace with `env` ("NAME=VALUE") added,
  // stdout and stderr to `log`. Dies with the test.
  absl::StatusOr<pid_t> SpawnOnHost(int i, const std::vector<std::string>& argv,
                                    const std::vector<std::string>& env,
                                    const std::string& log);
  // Starts vgpu-emu-workload on a device; Kill it with KillProcess.
  absl::StatusOr<pid_t> StartWorkload(const std::string& socket,
                                      uint32_t pages_per_second);
  static void KillProcess(pid_t pid);

  // Control API, each call on a fresh connection.
  absl::Status Register(int host, const std::string& vm,
                        const std::vector<std::string>& device_sockets);
  // Devices as "STRATEGY:ENDPOINT" ("mediated:UUID").
  absl::Status RegisterDevices(int host, const std::string& vm,
                               const std::vector<std::string>& devices);
  absl::StatusOr<std::vector<VmView>> List(int host);
  absl::StatusOr<std::string> Migrate(int host, const std::string& vm, int to,
                                      const MigrateOpts& opts = {});
  absl::StatusOr<std::string> Snapshot(int host, const std::string& vm,
                                       const std::string& tag);
  absl::StatusOr<std::string> Restore(int host, const std::string& snapshot,
                                      const std::string& as);
  absl::StatusOr<std::vector<std::string>> Snapshots(int host,
                                                     const std::string& vm);
  absl::Status Cancel(int host, const std::string& job);
  absl::Status Continue(int host, const std::string& job);
  absl::StatusOr<JobView> Job(int host, const std::string& job);
  // Waits for the job to end (or reach `phase` and pause there, when given).
  absl::StatusOr<JobView> WaitJob(int host, const std::string& job,
                                  absl::Duration timeout,
                                  const std::string& phase = "");
  // The compatibility check, as `vgpu-migrate --check` runs it.
  absl::StatusOr<JobView> Check(int host, const std::string& vm, int to);
  // Runs a migration to its end.
  absl::StatusOr<JobView> MigrateAndWait(int host, const std::string& vm,
                                         int to, const MigrateOpts& opts = {});

  // Path of a binary in the test's runfiles ("migrator/vgpud").
  static std::string Runfile(const std::string& path);

  // Device model processes whose command line names `needle`.
  static int CountProcesses(const std::string& needle);

 private:
  struct Host {
    std::string name;
    std::string ns;       // namespace name (netns mode)
    std::string addr;     // peer address
    uint16_t port = 0;
    std::string control;  // control socket
    std::string dir;
    pid_t pid = -1;
    std::map<int, std::string> peer_override;
  };
  Cluster() = default;
  absl::Status Setup(const ClusterOptions& options);
  absl::Status WriteConfig(int i);
  absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                              const std::string& log, const std::string& ns);

  ClusterOptions options_;
  std::string mode_;
  bool netns_ = false;
  std::string dir_;
  std::string bridge_;
  std::vector<Host> hosts_;
  std::vector<pid_t> children_;
};

}  // namespace vgpu::e2e

#endif  // VGPU_TESTS_E2E_CLUSTER_H_
