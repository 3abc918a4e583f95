// vgpud's configuration: one JSON file (default /etc/vgpu/vgpud.json; every
// key optional, so a host with no file at all runs with the defaults
// below). Format and every key: docs/OPERATIONS.md. Parsed once by main()
// and passed down; nothing reads it behind the daemon's back.
#ifndef VGPU_MIGRATOR_CONFIG_H_
#define VGPU_MIGRATOR_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "migrator/compat.h"

namespace vgpu::migrator {

inline constexpr char kDefaultConfigPath[] = "/etc/vgpu/vgpud.json";
inline constexpr uint16_t kDefaultPeerPort = 7480;

struct TlsConfig {
  // PEM files: the cluster CA every peer's certificate must chain to, and
  // this host's certificate (its SAN names this host) and private key.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Plaintext between peers. Only for loopback demos; vgpud refuses it
  // unless every listen and peer address is a loopback address.
  bool insecure = false;
};

struct StaticDevice {
  std::string strategy;  // "emulation", "mediated", "directPassthrough"
  // emulation: the device model's control socket; mediated: the mdev
  // UUID; directPassthrough: the PCI address.
  std::string endpoint;
};

struct StaticVm {
  std::string name;
  std::string uuid;  // optional
  std::vector<StaticDevice> devices;
};

struct Config {
  std::string host;  // this host's name; default: gethostname()
  std::string control_socket = "/run/vgpud/control.sock";
  std::string listen = "0.0.0.0:7480";  // peer port, "ADDR:PORT"
  // Peer host name -> "ADDR[:PORT]" (port defaults to 7480). A name not
  // listed here is resolved as "NAME:7480".
  std::map<std::string, std::string> peers;
  std::string store_path = "/var/lib/vgpu";
  std::string run_dir = "/run/vgpud";  // sockets of devices vgpud creates
  uint32_t downtime_ms = 30;           // stop-copy budget
  uint32_t max_rounds = 30;            // pre-copy round limit
  uint64_t bandwidth_bytes_per_second = 0;  // 0: unlimited
  uint64_t window_bytes = 32ull << 20;      // bytes in flight to a peer
  // A peer that answers nothing for this long is dead: the link is cut
  // and the job fails (the source resumes).
  uint32_t peer_timeout_ms = 10000;
  bool compress = true;
  int threads = 0;  // compression threads; 0: one per core
  TlsConfig tls;
  // Emulation: the device model binary vgpud starts for incoming vGPUs
  // (empty: look beside the vgpud binary), and the largest VRAM it accepts.
  std::string emulated_device_binary;
  uint64_t emulated_max_vram_bytes = 4ull << 30;
  // Mediated: the reference mediated GPU vgpud hosts where no VFIO mdev
  // device exists (off by default).
  bool reference_gpu = false;
  std::string reference_type = "REF-4C";
  uint32_t reference_instances = 4;
  uint64_t reference_vram_bytes = 64ull << 20;
  uint32_t reference_contexts = 4;
  uint64_t reference_workload_bytes_per_second = 0;
  // Direct pass-through: where sysfs and /dev are (tests point elsewhere).
  std::string sys_root = "/sys";
  std::string dev_root = "/dev";
  // API forwarding: the local vgpu-cl-backend's control socket (empty: no
  // API forwarding here) and what its sessions run on, for peers' checks.
  std::string forwarding_control;
  std::string forwarding_vendor = "pocl";
  std::string forwarding_architecture = "cpu";
  uint64_t forwarding_memory_bytes = 0;
  std::string forwarding_device;  // CL_DEVICE_NAME of the backend's device
  uint32_t forwarding_poll_ms = 1000;  // how often sessions are looked at
  // libvirt: a read-only connection whose domains with vGPUs vgpud
  // registers, polled every libvirt_poll_ms (empty uri: off).
  std::string libvirt_uri;
  uint32_t libvirt_poll_ms = 2000;
  // What this host declares beyond what it detects (GPUs, API-forwarding
  // backends); merged into the HostProfile peers see.
  HostProfile declared;
  std::vector<StaticVm> vms;
};

// Parses the JSON text; INVALID_ARGUMENT names the key path and what is
// wrong ("peers.host2: port 99999 out of range"). Unknown keys are refused
// too, so a typo does not silently fall back to a default. Sizes accept
// numbers or strings with K/M/G/T binary suffixes ("4G"); bandwidth
// accepts the same ("100M" = 100 MiB/s).
absl::StatusOr<Config> ParseConfig(const std::string& json_text,
                                   const std::string& origin);
// Reads and parses `path`. A missing file at the default path gives the
// defaults; a missing file named explicitly is NOT_FOUND.
absl::StatusOr<Config> LoadConfig(const std::string& path, bool explicit_path);

// "ADDR[:PORT]" -> (addr, port), port defaulting to `default_port`.
absl::Status SplitHostPort(const std::string& text, uint16_t default_port,
                           std::string* addr, uint16_t* port);

// "64M", "1G", "4096", "1.5G" -> bytes. INVALID_ARGUMENT otherwise.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_CONFIG_H_
