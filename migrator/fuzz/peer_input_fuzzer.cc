// Fuzzes what a destination vgpud computes from a peer's untrusted input
// before anything is created: DeviceDescriptor lists as the prepare call
// carries them (decoded under the codec's bounds), checked against a host
// profile, with the report rendered as a table and as JSON and read back;
// and, with the first byte set, the JSON parsers of config files and host
// profiles. Any outcome is fine except a crash, a hang or a report that
// does not survive its own JSON round trip.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "capnp/message.h"
#include "migrator/compat.h"
#include "migrator/config.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

namespace {

vgpu::migrator::HostProfile Profile() {
  vgpu::migrator::HostProfile p;
  p.host = "fuzz";
  p.emulation.available = true;
  p.emulation.max_vram_bytes = 1ull << 30;
  vgpu::migrator::ApiForwardingOffer api;
  api.wrapper_name = "vgpu-opencl";
  api.abi = {1, 2, 0};
  api.features = {"fp64", "images"};
  api.memory_bytes = 8ull << 30;
  p.api_forwarding.push_back(api);
  vgpu::migrator::GpuOffer gpu;
  gpu.vendor = "nvidia";
  gpu.architecture = "hopper";
  gpu.board_type = "H100-80GB-HBM3";
  gpu.driver = {550, 54, 14};
  gpu.vram_bytes = 80ull << 30;
  gpu.migration_capable = true;
  gpu.free_instances["H100-4C"] = 2;
  p.gpus.push_back(gpu);
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  absl::Span<const uint8_t> rest(data + 1, size - 1);
  if (mode == 'C') {
    (void)vgpu::migrator::ParseConfig(
        std::string(rest.begin(), rest.end()), "fuzz.json");
    return 0;
  }
  if (mode == 'P') {
    auto j = nlohmann::json::parse(rest.begin(), rest.end(), nullptr,
                                   /*allow_exceptions=*/false);
    vgpu::migrator::HostProfile p;
    (void)vgpu::migrator::ProfileFromJson(j, &p);
    return 0;
  }
  // A manifest's device list is the same DeviceDescriptor list a prepare
  // call carries, behind the codec's decoding bounds.
  vgpu::codec::MessageLimits limits;
  auto manifest =
      vgpu::codec::DecodeMessage<vgpu::schema::Manifest>(rest, limits);
  if (!manifest.ok()) return 0;
  std::vector<vgpu::schema::DeviceDescriptor::Reader> devices;
  for (auto d : manifest->root().getDevices()) {
    devices.push_back(d.getDescriptor());
  }
  vgpu::migrator::CompatReport report =
      vgpu::migrator::CheckCompatibility(devices, Profile());
  (void)vgpu::migrator::FormatReportTable(report);
  (void)report.ToStatus();
  vgpu::migrator::CompatReport back;
  if (!vgpu::migrator::ReportFromJson(vgpu::migrator::ReportToJson(report),
                                      &back)
           .ok() ||
      back.rows.size() != report.rows.size() || back.ok() != report.ok()) {
    __builtin_trap();
  }
  return 0;
}
