// What sysfs says about devices that could be handed to a VM whole (PCI
// functions bound to vfio-pci or a variant driver) or in slices (mdevs),
// and whether each can be live-migrated through VFIO. Stateless, safe from
// any thread; but a scan opens (and so resets) idle variant-bound devices
// to ask them for their migration flags.
#ifndef VGPU_AGENTS_MEDIATED_PASSTHROUGH_H_
#define VGPU_AGENTS_MEDIATED_PASSTHROUGH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/descriptor.capnp.h"

namespace vgpu::agents::mediated {

struct PciFunction {
  std::string address;  // "0000:3b:00.0"
  uint32_t vendor_id = 0;
  uint32_t device_id = 0;
  uint32_t class_code = 0;  // 24 bits: class, subclass, prog-if
  std::string driver;       // "" when no driver is bound
  std::string iommu_group;  // "" when the device has none (IOMMU off)
  // Bound to vfio-pci or a vfio-pci variant driver (mlx5_vfio_pci, ...).
  bool vfio_bound = false;
  // The device can do VFIO migration v2 (STOP_COPY), asked of the device
  // when it could be opened, else judged from its driver.
  bool migration_capable = false;
  // How migration_capable was decided, in words.
  std::string migration_note;
};

struct MdevInstance {
  std::string uuid;
  std::string type_id;    // "nvidia-63", "i915-GVTg_V5_4"
  std::string type_name;  // mdev_type/name: "GRID T4-2Q"; "" if absent
  std::string parent;     // the parent device's name, e.g. a PCI address
};

// Whether `driver` is vfio-pci or a vfio-pci variant driver (its name ends
// in "_vfio_pci" or "-vfio-pci").
bool IsVfioDriver(const std::string& driver);

// "nvidia", "amd", "intel", else "pci-<hex>".
std::string VendorName(uint32_t pci_vendor_id);

// Every function under <sys_root>/bus/pci/devices, sorted by address.
// NOT_FOUND when that directory is missing; INVALID_ARGUMENT naming the
// file when an id file is malformed. Variant-bound functions are probed
// through <dev_root>/vfio when it exists.
absl::StatusOr<std::vector<PciFunction>> ScanPci(
    const std::string& sys_root = "/sys", const std::string& dev_root = "/dev");

// One function; NOT_FOUND naming the sysfs path when it does not exist.
absl::StatusOr<PciFunction> ReadPciFunction(
    const std::string& address, const std::string& sys_root = "/sys",
    const std::string& dev_root = "/dev");

// Every mdev under <sys_root>/bus/mdev/devices, sorted by UUID; a host
// without the mdev bus has none (an empty list, not an error).
absl::StatusOr<std::vector<MdevInstance>> ScanMdevs(
    const std::string& sys_root = "/sys");

// The descriptor of `f` passed through whole: strategy DIRECT_PASSTHROUGH,
// instanceId = address, boardType "pci-<vendor>-<device>" in hex.
absl::StatusOr<codec::Message<schema::DeviceDescriptor>> DescribePassthrough(
    const PciFunction& f);

}  // namespace vgpu::agents::mediated

#endif  // VGPU_AGENTS_MEDIATED_PASSTHROUGH_H_
