// Tests of the sysfs scan over fake trees laid out like the kernel's
// (real directories, id files and relative symlinks under TEST_TMPDIR),
// with dev roots that hold no VFIO nodes, so no device is ever opened.
#include "agents/mediated/passthrough.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vgpu::agents::mediated {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A sysfs tree: devices under devices/pci0000:00, reached through
// bus/pci/devices and bus/mdev/devices symlinks as on a real host.
class FakeSys {
 public:
  explicit FakeSys(const std::string& leaf) {
    const char* t = std::getenv("TEST_TMPDIR");
    root_ = (fs::path(t != nullptr ? t : "/tmp") / leaf).string();
    fs::remove_all(root_);
    fs::create_directories(root_ + "/bus/pci/devices");
  }
  const std::string& root() const { return root_; }

  void AddPci(const std::string& addr, const std::string& vendor,
              const std::string& device, const std::string& cls,
              const std::string& driver, const std::string& group) {
    const std::string dir = root_ + "/devices/pci0000:00/" + addr;
    fs::create_directories(dir);
    Write(dir + "/vendor", vendor);
    Write(dir + "/device", device);
    Write(dir + "/class", cls);
    if (!driver.empty()) {
      fs::create_directories(root_ + "/bus/pci/drivers/" + driver);
      fs::create_directory_symlink("../../../bus/pci/drivers/" + driver,
                                   dir + "/driver");
    }
    if (!group.empty()) {
      fs::create_directories(root_ + "/kernel/iommu_groups/" + group);
      fs::create_directory_symlink("../../../kernel/iommu_groups/" + group,
                                   dir + "/iommu_group");
    }
    fs::create_directory_symlink("../../../devices/pci0000:00/" + addr,
                                 root_ + "/bus/pci/devices/" + addr);
  }

  void AddMdev(const std::string& uuid, const std::string& parent,
               const std::string& type_id, const std::string& type_name) {
    const std::string pdir = root_ + "/devices/pci0000:00/" + parent;
    const std::string tdir = pdir + "/mdev_supported_types/" + type_id;
    fs::create_directories(tdir);
    Write(tdir + "/name", type_name + "\n");
    fs::create_directories(pdir + "/" + uuid);
    fs::create_directory_symlink("../mdev_supported_types/" + type_id,
                                 pdir + "/" + uuid + "/mdev_type");
    fs::create_directories(root_ + "/bus/mdev/devices");
    fs::create_directory_symlink(
        "../../../devices/pci0000:00/" + parent + "/" + uuid,
        root_ + "/bus/mdev/devices/" + uuid);
  }

  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }

 private:
  std::string root_;
};

std::string NoVfioDevRoot() {
  const char* t = std::getenv("TEST_TMPDIR");
  std::string dev = (fs::path(t != nullptr ? t : "/tmp") / "dev").string();
  fs::create_directories(dev);
  return dev;
}

TEST(ScanPciTest, ReadsDriversGroupsAndMigration) {
  FakeSys sys("sys-scan");
  const std::string dev = NoVfioDevRoot();
  sys.AddPci("0000:3b:00.0", "0x10de\n", "0x2330\n", "0x030200\n", "vfio-pci",
             "42");
  sys.AddPci("0000:5e:00.1", "0x15b3\n", "0x101e\n", "0x020000\n",
             "mlx5_vfio_pci", "43");
  sys.AddPci("0000:af:00.0", "0x10de\n", "0x20b5\n", "0x030200\n", "nvidia",
             "44");
  sys.AddPci("0000:00:1f.0", "0x8086\n", "0xa1c8\n", "0x060100\n", "", "");

  auto fns = ScanPci(sys.root(), dev);
  ASSERT_TRUE(fns.ok()) << fns.status();
  ASSERT_EQ(fns->size(), 4u);
  // Sorted by address.
  const PciFunction& none = (*fns)[0];
  const PciFunction& vfio = (*fns)[1];
  const PciFunction& mlx = (*fns)[2];
  const PciFunction& nv = (*fns)[3];

  EXPECT_EQ(vfio.address, "0000:3b:00.0");
  EXPECT_EQ(vfio.vendor_id, 0x10deu);
  EXPECT_EQ(vfio.device_id, 0x2330u);
  EXPECT_EQ(vfio.class_code, 0x030200u);
  EXPECT_EQ(vfio.driver, "vfio-pci");
  EXPECT_EQ(vfio.iommu_group, "42");
  EXPECT_TRUE(vfio.vfio_bound);
  EXPECT_FALSE(vfio.migration_capable);
  EXPECT_EQ(vfio.migration_note, "driver vfio-pci offers no migration");

  EXPECT_EQ(mlx.driver, "mlx5_vfio_pci");
  EXPECT_TRUE(mlx.vfio_bound);
  EXPECT_TRUE(mlx.migration_capable);
  EXPECT_THAT(mlx.migration_note, HasSubstr("mlx5_vfio_pci implements VFIO "
                                            "migration v2"));
  EXPECT_THAT(mlx.migration_note,
              HasSubstr("not probed: " + dev + "/vfio missing"));

  EXPECT_EQ(nv.driver, "nvidia");
  EXPECT_EQ(nv.iommu_group, "44");
  EXPECT_FALSE(nv.vfio_bound);
  EXPECT_FALSE(nv.migration_capable);
  EXPECT_THAT(nv.migration_note, HasSubstr("not a VFIO driver"));

  EXPECT_EQ(none.driver, "");
  EXPECT_EQ(none.iommu_group, "");
  EXPECT_FALSE(none.vfio_bound);
  EXPECT_THAT(none.migration_note, HasSubstr("no driver"));
}

TEST(ScanPciTest, UnknownAndConditionalVariantsAreNotCapable) {
  FakeSys sys("sys-variants");
  const std::string dev = NoVfioDevRoot();
  sys.AddPci("0000:01:00.0", "0x1af4\n", "0x1041\n", "0x020000\n",
             "virtio_vfio_pci", "1");
  sys.AddPci("0000:02:00.0", "0x10de\n", "0x2342\n", "0x030200\n",
             "nvgrace_gpu_vfio_pci", "2");
  sys.AddPci("0000:03:00.0", "0x1234\n", "0x5678\n", "0x030000\n",
             "acme-vfio-pci", "3");
  auto fns = ScanPci(sys.root(), dev);
  ASSERT_TRUE(fns.ok()) << fns.status();
  ASSERT_EQ(fns->size(), 3u);
  for (const PciFunction& f : *fns) {
    EXPECT_TRUE(f.vfio_bound) << f.address;
    EXPECT_FALSE(f.migration_capable) << f.address << ": " << f.migration_note;
  }
  EXPECT_THAT((*fns)[2].migration_note, HasSubstr("not known"));
}

TEST(ScanPciTest, UnopenableVariantDeviceFallsBackToItsDriver) {
  // /dev/vfio exists but has no group file for the device: opening fails,
  // and the note says why the device was not asked.
  FakeSys sys("sys-unopenable");
  const char* t = std::getenv("TEST_TMPDIR");
  const std::string dev =
      (fs::path(t != nullptr ? t : "/tmp") / "dev-with-vfio").string();
  fs::create_directories(dev + "/vfio");
  sys.AddPci("0000:5e:00.1", "0x15b3\n", "0x101e\n", "0x020000\n",
             "mlx5_vfio_pci", "43");
  auto f = ReadPciFunction("0000:5e:00.1", sys.root(), dev);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->migration_capable);
  EXPECT_THAT(f->migration_note, HasSubstr("not probed: 0000:5e:00.1"));
}

TEST(ReadPciFunctionTest, MalformedIdFileIsInvalidArgumentNamingIt) {
  const std::string dev = NoVfioDevRoot();
  for (const char* bad : {"10de\n", "0x10dg\n", "0x\n", "0x10de0\n",
                          "0x10de\n\n", ""}) {
    FakeSys sys("sys-bad");
    sys.AddPci("0000:3b:00.0", bad, "0x2330\n", "0x030200\n", "vfio-pci",
               "42");
    auto f = ReadPciFunction("0000:3b:00.0", sys.root(), dev);
    ASSERT_FALSE(f.ok()) << "accepted \"" << bad << "\"";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(f.status().message(), HasSubstr("0000:3b:00.0/vendor"));
  }
}

TEST(ReadPciFunctionTest, MissingDeviceIsNotFoundNamingThePath) {
  FakeSys sys("sys-missing");
  auto f = ReadPciFunction("0000:3b:00.0", sys.root(), NoVfioDevRoot());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(),
              HasSubstr(sys.root() + "/bus/pci/devices/0000:3b:00.0"));
}

TEST(ScanPciTest, MissingSysfsIsAnError) {
  auto fns = ScanPci("/nonexistent-sys", NoVfioDevRoot());
  ASSERT_FALSE(fns.ok());
  EXPECT_EQ(fns.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(fns.status().message(), HasSubstr("/nonexistent-sys/bus/pci"));
}

TEST(ScanMdevsTest, ReadsTypeNameAndParent) {
  FakeSys sys("sys-mdev");
  sys.AddPci("0000:3b:00.0", "0x10de\n", "0x1eb8\n", "0x030200\n", "nvidia",
             "42");
  sys.AddMdev("c0a8b5e6-0d5e-4a3f-9a4a-1d2d3e4f5a6b", "0000:3b:00.0",
              "nvidia-63", "GRID T4-2Q");
  auto mdevs = ScanMdevs(sys.root());
  ASSERT_TRUE(mdevs.ok()) << mdevs.status();
  ASSERT_EQ(mdevs->size(), 1u);
  const MdevInstance& m = (*mdevs)[0];
  EXPECT_EQ(m.uuid, "c0a8b5e6-0d5e-4a3f-9a4a-1d2d3e4f5a6b");
  EXPECT_EQ(m.type_id, "nvidia-63");
  EXPECT_EQ(m.type_name, "GRID T4-2Q");
  EXPECT_EQ(m.parent, "0000:3b:00.0");
}

TEST(ScanMdevsTest, NoMdevBusIsAnEmptyList) {
  FakeSys sys("sys-nomdev");
  auto mdevs = ScanMdevs(sys.root());
  ASSERT_TRUE(mdevs.ok()) << mdevs.status();
  EXPECT_TRUE(mdevs->empty());
}

TEST(IsVfioDriverTest, PlainAndVariants) {
  EXPECT_TRUE(IsVfioDriver("vfio-pci"));
  EXPECT_TRUE(IsVfioDriver("mlx5_vfio_pci"));
  EXPECT_TRUE(IsVfioDriver("pds-vfio-pci"));
  EXPECT_FALSE(IsVfioDriver("nvidia"));
  EXPECT_FALSE(IsVfioDriver("vfio_pci_core"));
  EXPECT_FALSE(IsVfioDriver(""));
}

TEST(DescribePassthroughTest, Fields) {
  PciFunction f;
  f.address = "0000:3b:00.0";
  f.vendor_id = 0x10de;
  f.device_id = 0x2330;
  f.driver = "mlx5_vfio_pci";
  f.vfio_bound = true;
  f.migration_capable = true;
  auto d = DescribePassthrough(f);
  ASSERT_TRUE(d.ok()) << d.status();
  auto r = d->root();
  EXPECT_EQ(r.getStrategy(), schema::Strategy::DIRECT_PASSTHROUGH);
  EXPECT_EQ(std::string(r.getInstanceId().cStr()), "0000:3b:00.0");
  EXPECT_EQ(std::string(r.getVendor().cStr()), "nvidia");
  EXPECT_EQ(r.getPciVendorId(), 0x10deu);
  EXPECT_EQ(r.getPciDeviceId(), 0x2330u);
  EXPECT_EQ(std::string(r.getBoardType().cStr()), "pci-10de-2330");
  EXPECT_TRUE(r.getMigrationCapable());

  f.vendor_id = 0x1af4;
  f.migration_capable = false;
  d = DescribePassthrough(f);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(std::string(d->root().getVendor().cStr()), "pci-1af4");
  EXPECT_FALSE(d->root().getMigrationCapable());

  EXPECT_EQ(DescribePassthrough(PciFunction{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vgpu::agents::mediated
