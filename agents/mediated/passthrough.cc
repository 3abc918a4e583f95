// Reads PCI functions and mdev instances out of sysfs (see passthrough.h).
// Only the files the kernel documents in Documentation/ABI/testing/
// sysfs-bus-pci and sysfs-bus-vfio-mdev are read. No shared state: every
// call works on its own paths.
#include "agents/mediated/passthrough.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "agents/mediated/kernel_device.h"
#include "agents/mediated/vfio.h"

namespace vgpu::agents::mediated {
namespace {

namespace fs = std::filesystem;

// Variant drivers whose VFIO migration v2 support we know of (mainline
// Linux), by module name with '-' read as '_'. Anything not listed is
// taken as not migratable: saying "yes" wrongly would let a migration
// start that the kernel then refuses with the VM already paused.
struct KnownDriver {
  const char* driver;
  bool migrates;
  const char* why;
};
constexpr KnownDriver kKnownDrivers[] = {
    {"mlx5_vfio_pci", true, "implements VFIO migration v2 (Linux 5.18+)"},
    {"hisi_acc_vfio_pci", true, "implements VFIO migration v2 (Linux 6.0+)"},
    {"pds_vfio_pci", true, "implements VFIO migration v2 (Linux 6.5+)"},
    {"qat_vfio_pci", true, "implements VFIO migration v2 (Linux 6.10+)"},
    {"virtio_vfio_pci", false,
     "migrates only on Linux 6.13+ and only devices with the virtio admin "
     "migration commands, so it is counted as not capable"},
    {"nvgrace_gpu_vfio_pci", false, "implements no VFIO migration"},
};

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  int fd;
  do {
    fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("open ", path));
  char buf[256];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  close(fd);
  if (n < 0) return ErrnoError(err, absl::StrCat("read ", path));
  return std::string(buf, static_cast<size_t>(n));
}

// sysfs id files hold "0x10de\n": "0x", hex digits, one newline. Anything
// else means the tree is not what we think it is, so say so.
absl::StatusOr<uint32_t> ReadHexFile(const std::string& path, int max_digits) {
  auto text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  absl::string_view s = *text;
  if (absl::EndsWith(s, "\n")) s.remove_suffix(1);
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": want a hex id like 0x10de (at most ", max_digits,
        " digits), got \"", absl::CEscape(*text), "\""));
  };
  if (!absl::StartsWith(s, "0x")) return bad();
  s.remove_prefix(2);
  if (s.empty() || s.size() > static_cast<size_t>(max_digits)) return bad();
  uint32_t v = 0;
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return bad();
    const int d = absl::ascii_isdigit(static_cast<unsigned char>(c))
                      ? c - '0'
                      : absl::ascii_tolower(static_cast<unsigned char>(c)) -
                            'a' + 10;
    v = v * 16 + static_cast<uint32_t>(d);
  }
  return v;
}

// The last path component a sysfs symlink points at ("vfio-pci" for
// driver -> ../../../bus/pci/drivers/vfio-pci); "" when there is no link.
absl::StatusOr<std::string> LinkBasename(const std::string& link) {
  std::error_code ec;
  fs::path target = fs::read_symlink(link, ec);
  if (ec) {
    if (ec.value() == ENOENT) return std::string();
    return ErrnoError(ec.value(), absl::StrCat("readlink ", link));
  }
  return target.filename().string();
}

bool ValidName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         !absl::StrContains(name, '/');
}

// Fills migration_capable and migration_note. Plain vfio-pci and
// non-VFIO drivers are decided by the driver alone; a variant driver's
// device is asked when it can be opened, because the driver's support
// still depends on the device (firmware, VF type).
void DecideMigration(PciFunction& f, const std::string& sys_root,
                     const std::string& dev_root) {
  f.migration_capable = false;
  if (f.driver.empty()) {
    f.migration_note = "no driver bound: not passed through";
    return;
  }
  if (!f.vfio_bound) {
    f.migration_note = absl::StrCat(
        "driver ", f.driver,
        " is not a VFIO driver: bind vfio-pci or a variant driver to pass "
        "the device through");
    return;
  }
  if (f.driver == "vfio-pci") {
    f.migration_note = "driver vfio-pci offers no migration";
    return;
  }
  std::string not_probed;
  const std::string vfio_dir = dev_root + "/vfio";
  std::error_code ec;
  if (!fs::exists(vfio_dir, ec)) {
    not_probed = absl::StrCat(vfio_dir, " missing");
  } else {
    auto dev = OpenVfioDevice(f.address, dev_root, sys_root);
    if (!dev.ok()) {
      not_probed = ErrnoOf(dev.status()) == EBUSY
                       ? "IOMMU group busy, held by a VM"
                       : std::string(dev.status().message());
    } else {
      auto flags = (*dev)->MigrationFlags();
      if (flags.ok()) {
        f.migration_capable = (*flags & kMigFlagStopCopy) != 0;
        f.migration_note =
            absl::StrCat("asked the device: flags ", MigFlagsString(*flags));
        return;
      }
      if (ErrnoOf(flags.status()) == ENOTTY) {
        f.migration_note =
            "asked the device: no migration (VFIO_DEVICE_FEATURE_MIGRATION "
            "gives ENOTTY)";
        return;
      }
      not_probed = std::string(flags.status().message());
    }
  }
  const std::string key = absl::StrReplaceAll(f.driver, {{"-", "_"}});
  for (const KnownDriver& k : kKnownDrivers) {
    if (key == k.driver) {
      f.migration_capable = k.migrates;
      f.migration_note = absl::StrCat("driver ", f.driver, " ", k.why,
                                      " (not probed: ", not_probed, ")");
      return;
    }
  }
  f.migration_note =
      absl::StrCat("driver ", f.driver,
                   " is not known to implement VFIO migration (not probed: ",
                   not_probed, ")");
}

}  // namespace

bool IsVfioDriver(const std::string& driver) {
  return driver == "vfio-pci" || absl::EndsWith(driver, "_vfio_pci") ||
         absl::EndsWith(driver, "-vfio-pci");
}

std::string VendorName(uint32_t pci_vendor_id) {
  switch (pci_vendor_id) {
    case 0x10de:
      return "nvidia";
    case 0x1002:
      return "amd";
    case 0x8086:
      return "intel";
  }
  return absl::StrFormat("pci-%04x", pci_vendor_id);
}

absl::StatusOr<PciFunction> ReadPciFunction(const std::string& address,
                                            const std::string& sys_root,
                                            const std::string& dev_root) {
  if (!ValidName(address)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", address, "\" is not a PCI address like 0000:3b:00.0"));
  }
  const std::string dir = sys_root + "/bus/pci/devices/" + address;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("no PCI function ", address, ": ", dir,
                     " does not exist"));
  }
  PciFunction f;
  f.address = address;
  auto vendor = ReadHexFile(dir + "/vendor", 4);
  if (!vendor.ok()) return vendor.status();
  auto device = ReadHexFile(dir + "/device", 4);
  if (!device.ok()) return device.status();
  auto cls = ReadHexFile(dir + "/class", 6);
  if (!cls.ok()) return cls.status();
  auto driver = LinkBasename(dir + "/driver");
  if (!driver.ok()) return driver.status();
  auto group = LinkBasename(dir + "/iommu_group");
  if (!group.ok()) return group.status();
  f.vendor_id = *vendor;
  f.device_id = *device;
  f.class_code = *cls;
  f.driver = *driver;
  f.iommu_group = *group;
  f.vfio_bound = IsVfioDriver(f.driver);
  DecideMigration(f, sys_root, dev_root);
  return f;
}

absl::StatusOr<std::vector<PciFunction>> ScanPci(const std::string& sys_root,
                                                 const std::string& dev_root) {
  const std::string dir = sys_root + "/bus/pci/devices";
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    return ErrnoError(ec.value(),
                      absl::StrCat("list ", dir, " (is sysfs mounted at ",
                                   sys_root, "?)"));
  }
  std::vector<std::string> names;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return ErrnoError(ec.value(), absl::StrCat("list ", dir));
  std::sort(names.begin(), names.end());
  std::vector<PciFunction> out;
  for (const std::string& name : names) {
    auto f = ReadPciFunction(name, sys_root, dev_root);
    if (!f.ok()) return f.status();
    out.push_back(std::move(*f));
  }
  return out;
}

absl::StatusOr<std::vector<MdevInstance>> ScanMdevs(
    const std::string& sys_root) {
  const std::string dir = sys_root + "/bus/mdev/devices";
  std::error_code ec;
  // No mdev bus (mdev module not loaded): no instances.
  if (!fs::exists(dir, ec)) return std::vector<MdevInstance>();
  fs::directory_iterator it(dir, ec);
  if (ec) return ErrnoError(ec.value(), absl::StrCat("list ", dir));
  std::vector<std::string> uuids;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    uuids.push_back(it->path().filename().string());
  }
  if (ec) return ErrnoError(ec.value(), absl::StrCat("list ", dir));
  std::sort(uuids.begin(), uuids.end());

  std::vector<MdevInstance> out;
  for (const std::string& uuid : uuids) {
    const std::string path = dir + "/" + uuid;
    MdevInstance m;
    m.uuid = uuid;
    // mdev_type -> .../<parent>/mdev_supported_types/<type_id>
    const std::string type_link = path + "/mdev_type";
    fs::path type_target = fs::read_symlink(type_link, ec);
    if (ec) {
      return ErrnoError(ec.value(), absl::StrCat("readlink ", type_link,
                                                 " (mdev ", uuid, ")"));
    }
    m.type_id = type_target.filename().string();
    // The name file is optional in the mdev ABI.
    if (auto name = ReadSmallFile(type_link + "/name"); name.ok()) {
      m.type_name = std::string(absl::StripTrailingAsciiWhitespace(*name));
    }
    // bus/mdev/devices/<uuid> -> ../../../devices/.../<parent>/<uuid>
    fs::path real = fs::canonical(path, ec);
    if (!ec) {
      m.parent = real.parent_path().filename().string();
    } else {
      m.parent = type_target.parent_path().parent_path().filename().string();
    }
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<codec::Message<schema::DeviceDescriptor>> DescribePassthrough(
    const PciFunction& f) {
  if (f.address.empty()) {
    return absl::InvalidArgumentError(
        "cannot describe a PCI function without an address");
  }
  codec::Message<schema::DeviceDescriptor> d;
  auto r = d.mutable_root();
  r.setStrategy(schema::Strategy::DIRECT_PASSTHROUGH);
  r.setInstanceId(f.address);
  r.setVendor(VendorName(f.vendor_id));
  r.setPciVendorId(f.vendor_id);
  r.setPciDeviceId(f.device_id);
  r.setBoardType(
      absl::StrFormat("pci-%04x-%04x", f.vendor_id, f.device_id));
  r.setMigrationCapable(f.migration_capable);
  return d;
}

}  // namespace vgpu::agents::mediated
