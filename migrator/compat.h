// The compatibility checker: may the vGPUs of one VM, described by their
// DeviceDescriptors on the source, move to a host that offers `HostProfile`?
// Every rule of every strategy yields one row with a reason a person
// understands, so that `vgpu-migrate --check` can print the whole report
// and a refusal names exactly what does not fit. Pure functions; called
// on the destination during Prepare (and by --check through it).
#ifndef VGPU_MIGRATOR_COMPAT_H_
#define VGPU_MIGRATOR_COMPAT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "state-codecs/schema/descriptor.capnp.h"

namespace vgpu::migrator {

struct VersionTriple {
  uint32_t major = 0;
  uint32_t minor = 0;
  uint32_t patch = 0;
};

// What a destination can host, per strategy.
struct EmulationOffer {
  bool available = false;
  std::string vendor = "vgpu-migrate";
  std::string architecture = "bochs-dispi";
  VersionTriple device_abi{1, 0, 0};  // state-blob ABI of its device model
  uint64_t max_vram_bytes = 0;        // 0: no emulated device may be created
};

struct ApiForwardingOffer {
  std::string wrapper_name;         // "vgpu-opencl", ...
  VersionTriple abi;                // the backend's wrapper-protocol ABI
  std::vector<std::string> features;
  std::string vendor;               // of the backend's device ("pocl", ...)
  std::string architecture;         // "pthread-cpu", "hopper", ...
  uint64_t memory_bytes = 0;        // device memory the backend can give
};

struct GpuOffer {
  std::string vendor;        // "nvidia"
  std::string architecture;  // "hopper"
  std::string board_type;    // "H100-80GB-HBM3"
  VersionTriple driver;      // host driver release (major = branch)
  bool ecc_enabled = false;
  uint64_t vram_bytes = 0;
  bool migration_capable = false;  // vfio-pci driver offers VFIO migration
  // vGPU type -> instances of that type still free on this GPU.
  std::map<std::string, uint32_t> free_instances;
};

struct HostProfile {
  std::string host;
  EmulationOffer emulation;
  std::vector<ApiForwardingOffer> api_forwarding;
  std::vector<GpuOffer> gpus;
};

struct CompatRow {
  int device = -1;          // index in the VM's device list; -1: whole VM
  std::string instance;     // the device's instanceId ("" for VM rows)
  std::string strategy;     // "emulation", "apiForwarding", ...
  std::string rule;         // short rule name: "vram", "driver-branch", ...
  bool ok = false;
  std::string detail;       // why, in words, with both sides' values
};

struct CompatReport {
  std::string destination;  // host name
  std::vector<CompatRow> rows;
  // Advice that is not a refusal, e.g. "the API-forwarding session on
  // device 1 can still be saved with `vgpu-migrate snapshot`".
  std::vector<std::string> notes;

  bool ok() const;
  // The first refused row as FAILED_PRECONDITION ("device 0 (emu0): vram:
  // ..."), or OK.
  absl::Status ToStatus() const;
};

// Checks every device of one VM against `host`. Devices that compete for
// the same resource (vGPU instances of a type, GPU memory) are counted
// together.
CompatReport CheckCompatibility(
    const std::vector<schema::DeviceDescriptor::Reader>& devices,
    const HostProfile& host);

// Rendering for the CLI: a fixed-width table (DEVICE RULE RESULT DETAIL,
// then notes, then a verdict line) and the JSON form of --json.
std::string FormatReportTable(const CompatReport& report);
nlohmann::json ReportToJson(const CompatReport& report);
// Inverse of ReportToJson (the report travels between daemons this way in
// tests and logs); INVALID_ARGUMENT names the field that is wrong.
absl::Status ReportFromJson(const nlohmann::json& j, CompatReport* out);

nlohmann::json ProfileToJson(const HostProfile& profile);
// INVALID_ARGUMENT names the field path that is wrong ("gpus[1].driver").
absl::Status ProfileFromJson(const nlohmann::json& j, HostProfile* out);

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_COMPAT_H_
