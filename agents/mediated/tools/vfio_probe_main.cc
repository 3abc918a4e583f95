// vgpu-vfio-probe: what this host offers for pass-through (GPUs and
// vfio-bound functions with driver, IOMMU group and migration capability;
// mdevs; whether /dev/vfio exists). Single-threaded; read-only except that
// asking an idle variant-bound device for its flags opens (resets) it.
// Exit status: 0 scanned (even if nothing found), 1 scan failed, else usage.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "agents/mediated/passthrough.h"
#include "nlohmann/json.hpp"

namespace {

using vgpu::agents::mediated::MdevInstance;
using vgpu::agents::mediated::PciFunction;
using json = nlohmann::json;

// Display controllers (VGA, 3D, other) are PCI base class 0x03.
bool Interesting(const PciFunction& f) {
  return (f.class_code >> 16) == 0x03 || f.vfio_bound;
}

std::string Hex(uint32_t v, int digits) {
  return absl::StrFormat("0x%0*x", digits, v);
}

json ToJson(const PciFunction& f) {
  return {{"address", f.address},
          {"vendor", vgpu::agents::mediated::VendorName(f.vendor_id)},
          {"vendor_id", Hex(f.vendor_id, 4)},
          {"device_id", Hex(f.device_id, 4)},
          {"class", Hex(f.class_code, 6)},
          {"driver", f.driver},
          {"iommu_group", f.iommu_group},
          {"vfio_bound", f.vfio_bound},
          {"migration_capable", f.migration_capable},
          {"migration_note", f.migration_note}};
}

json ToJson(const MdevInstance& m) {
  return {{"uuid", m.uuid},
          {"type_id", m.type_id},
          {"type_name", m.type_name},
          {"parent", m.parent}};
}

void PrintText(const std::string& vfio_dir, bool has_vfio,
               const std::string& no_vfio_note, size_t scanned,
               const std::vector<PciFunction>& fns,
               const std::vector<MdevInstance>& mdevs) {
  if (has_vfio) {
    std::printf("%s: present\n", vfio_dir.c_str());
  } else {
    std::printf("%s\n", no_vfio_note.c_str());
  }
  std::printf(
      "\nPCI functions: %zu scanned, %zu display controllers or vfio-bound\n",
      scanned, fns.size());
  for (const PciFunction& f : fns) {
    std::printf(
        "  %s  %04x:%04x  class %06x  %s\n"
        "      driver %s, IOMMU group %s, vfio-bound %s, migration %s\n"
        "      %s\n",
        f.address.c_str(), f.vendor_id, f.device_id, f.class_code,
        vgpu::agents::mediated::VendorName(f.vendor_id).c_str(),
        f.driver.empty() ? "(none)" : f.driver.c_str(),
        f.iommu_group.empty() ? "(none)" : f.iommu_group.c_str(),
        f.vfio_bound ? "yes" : "no", f.migration_capable ? "yes" : "no",
        f.migration_note.c_str());
  }
  std::printf("\nmdev instances: %zu\n", mdevs.size());
  for (const MdevInstance& m : mdevs) {
    std::printf("  %s  type %s (%s)  parent %s\n", m.uuid.c_str(),
                m.type_id.c_str(),
                m.type_name.empty() ? "no name" : m.type_name.c_str(),
                m.parent.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-vfio-probe: show what this host offers for GPU pass-through.\n"
      "Lists PCI display controllers (class 0x03xxxx) and every function "
      "bound to vfio-pci or a vfio-pci variant driver, with driver, IOMMU "
      "group and whether the device can be live-migrated through VFIO "
      "migration v2 (asked of the device when it can be opened, else judged "
      "from its driver), then the mdev instances, and says whether "
      "/dev/vfio exists.\n"
      "Exit status: 0 scanned (even if nothing was found), 1 scan failed."};
  bool as_json = false;
  std::string sys_root = "/sys";
  std::string dev_root = "/dev";
  app.add_flag("--json", as_json, "Print the same as one JSON object");
  app.add_option("--sys-root", sys_root, "Where sysfs is mounted")
      ->capture_default_str();
  app.add_option("--dev-root", dev_root,
                 "Where the device nodes are (vfio/, iommu)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string vfio_dir = dev_root + "/vfio";
  std::error_code ec;
  const bool has_vfio = std::filesystem::exists(vfio_dir, ec);
  const std::string no_vfio_note = absl::StrFormat(
      "this host has no %s (vfio modules not loaded): no VFIO device can be "
      "opened here; the mediated agent runs against the reference device "
      "only",
      vfio_dir);

  auto all = vgpu::agents::mediated::ScanPci(sys_root, dev_root);
  absl::StatusOr<std::vector<MdevInstance>> mdevs =
      all.ok() ? vgpu::agents::mediated::ScanMdevs(sys_root) : all.status();
  if (!mdevs.ok()) {
    const std::string msg(mdevs.status().message());
    if (as_json) std::cout << json{{"error", msg}}.dump(2) << "\n";
    std::fprintf(stderr, "vgpu-vfio-probe: %s\n", msg.c_str());
    return 1;
  }
  std::vector<PciFunction> fns;
  for (PciFunction& f : *all) {
    if (Interesting(f)) fns.push_back(std::move(f));
  }

  if (as_json) {
    json j = {{"sys_root", sys_root},
              {"dev_root", dev_root},
              {"vfio", {{"path", vfio_dir}, {"present", has_vfio}}},
              {"pci_functions_scanned", all->size()},
              {"pci_functions", json::array()},
              {"mdevs", json::array()}};
    if (!has_vfio) j["vfio"]["note"] = no_vfio_note;
    for (const PciFunction& f : fns) j["pci_functions"].push_back(ToJson(f));
    for (const MdevInstance& m : *mdevs) j["mdevs"].push_back(ToJson(m));
    std::cout << j.dump(2) << "\n";
  } else {
    PrintText(vfio_dir, has_vfio, no_vfio_note, all->size(), fns, *mdevs);
  }
  return 0;
}
