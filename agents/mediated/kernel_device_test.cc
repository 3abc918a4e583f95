// Tests of the kernel VfioDevice that need no VFIO hardware: how opening
// fails on hosts and sysfs trees without the device, that every ioctl
// reaches the kernel (a file without VFIO ioctls answers ENOTTY), and that
// the DataStream really moves bytes over an fd. Single-threaded except for
// the reader thread of the large-write test.
#include "agents/mediated/kernel_device.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vgpu::agents::mediated {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string TmpDir(const std::string& leaf) {
  const char* t = std::getenv("TEST_TMPDIR");
  fs::path p = fs::path(t != nullptr ? t : "/tmp") / leaf;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

TEST(OpenVfioDeviceTest, DevRootWithoutVfioIsFailedPrecondition) {
  const std::string dev = TmpDir("dev-novfio");
  const std::string sys = TmpDir("sys-empty");
  auto d = OpenVfioDevice("0000:3b:00.0", dev, sys);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr(dev + "/vfio"));
  EXPECT_THAT(d.status().message(), HasSubstr("vfio kernel modules"));
}

TEST(OpenVfioDeviceTest, ThisHostWithoutDevVfio) {
  if (fs::exists("/dev/vfio")) {
    std::printf("found /dev/vfio on this host: skipping the no-vfio check\n");
    GTEST_SKIP() << "this host has /dev/vfio, so opening through /dev does "
                    "not fail the way a host without VFIO does";
  }
  auto d = OpenVfioDevice("0000:00:00.0");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("/dev/vfio"));
}

TEST(OpenVfioDeviceTest, DeviceMissingFromSysfsIsNotFound) {
  const std::string dev = TmpDir("dev-vfio");
  fs::create_directories(dev + "/vfio");
  const std::string sys = TmpDir("sys-other");
  fs::create_directories(sys + "/bus/pci/devices/0000:00:02.0");
  auto d = OpenVfioDevice("0000:3b:00.0", dev, sys);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(d.status().message(),
              HasSubstr(sys + "/bus/pci/devices/0000:3b:00.0"));
}

TEST(OpenVfioDeviceTest, DeviceWithoutVfioGroupIsNotBound) {
  const std::string dev = TmpDir("dev-vfio2");
  fs::create_directories(dev + "/vfio");
  const std::string sys = TmpDir("sys-nvidia");
  fs::create_directories(sys + "/kernel/iommu_groups/42");
  fs::create_directories(sys + "/devices/pci0000:3a/0000:3b:00.0");
  fs::create_directory_symlink("../../../kernel/iommu_groups/42",
                               sys + "/devices/pci0000:3a/0000:3b:00.0/"
                                     "iommu_group");
  fs::create_directories(sys + "/bus/pci/devices");
  fs::create_directory_symlink("../../../devices/pci0000:3a/0000:3b:00.0",
                               sys + "/bus/pci/devices/0000:3b:00.0");
  auto d = OpenVfioDevice("0000:3b:00.0", dev, sys);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("not bound to a VFIO driver"));
  EXPECT_THAT(d.status().message(), HasSubstr(dev + "/vfio/42"));
}

TEST(OpenVfioDeviceTest, NameThatIsAPathIsRefused) {
  auto d = OpenVfioDevice("../../etc", TmpDir("dev-x"), TmpDir("sys-x"));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

class NotVfioFdTest : public ::testing::TestWithParam<bool> {};

TEST_P(NotVfioFdTest, EveryIoctlReachesTheKernel) {
  int fd;
  int extra = -1;
  if (GetParam()) {
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  } else {
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
    fd = p[0];
    extra = p[1];
  }
  ASSERT_GE(fd, 0);
  auto dev = NewKernelVfioDevice(fd, "0000:3b:00.0");
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ((*dev)->name(), "0000:3b:00.0");

  auto flags = (*dev)->MigrationFlags();
  ASSERT_FALSE(flags.ok());
  EXPECT_EQ(ErrnoOf(flags.status()), ENOTTY) << flags.status();
  EXPECT_THAT(flags.status().message(), HasSubstr("0000:3b:00.0"));
  EXPECT_THAT(flags.status().message(),
              HasSubstr("VFIO_DEVICE_FEATURE_MIGRATION"));

  EXPECT_EQ(ErrnoOf((*dev)->GetState().status()), ENOTTY);
  EXPECT_EQ(ErrnoOf((*dev)->SetState(MigState::kStop).status()), ENOTTY);
  EXPECT_EQ(ErrnoOf((*dev)->StopCopyBytes().status()), ENOTTY);
  EXPECT_EQ(ErrnoOf((*dev)->Reset()), ENOTTY);
  const DmaRange range{0, 1 << 20};
  EXPECT_EQ(ErrnoOf((*dev)->DmaLoggingStart({&range, 1}, 4096).status()),
            ENOTTY);
  EXPECT_EQ(ErrnoOf((*dev)->DmaLoggingStop()), ENOTTY);
  std::vector<uint64_t> bitmap(4);
  EXPECT_EQ(ErrnoOf((*dev)->DmaLoggingReport(0, 1 << 20, 4096,
                                             absl::MakeSpan(bitmap))),
            ENOTTY);
  // Checked before the ioctl: the kernel would write past a short bitmap.
  EXPECT_EQ(ErrnoOf((*dev)->DmaLoggingReport(0, 1 << 20, 4096,
                                             absl::MakeSpan(bitmap).subspan(
                                                 0, 3))),
            EINVAL);
  if (extra >= 0) close(extra);
}

INSTANTIATE_TEST_SUITE_P(DevNullAndPipe, NotVfioFdTest, ::testing::Bool());

TEST(NewKernelVfioDeviceTest, RefusesFdsThatAreNotOpen) {
  EXPECT_EQ(NewKernelVfioDevice(-1, "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  close(p[0]);
  close(p[1]);
  auto d = NewKernelVfioDevice(p[0], "0000:3b:00.0");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(ErrnoOf(d.status()), EBADF);
}

TEST(KernelDataStreamTest, MovesBytesBothWays) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto a = NewKernelDataStream(sv[0], "src");
  auto b = NewKernelDataStream(sv[1], "dst");

  const std::vector<uint8_t> hello = {'h', 'e', 'l', 'l', 'o'};
  ASSERT_TRUE(a->Write(hello).ok());
  std::vector<uint8_t> buf(16);
  auto n = b->Read(absl::MakeSpan(buf));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(std::vector<uint8_t>(buf.begin(), buf.begin() + *n), hello);

  const std::vector<uint8_t> back = {1, 2, 3};
  ASSERT_TRUE(b->Write(back).ok());
  n = a->Read(absl::MakeSpan(buf));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(std::vector<uint8_t>(buf.begin(), buf.begin() + *n), back);

  auto info = a->GetPrecopyInfo();
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(ErrnoOf(info.status()), ENOTTY) << info.status();
  EXPECT_THAT(info.status().message(), HasSubstr("src"));

  // The end of the stream reads as 0.
  b.reset();
  n = a->Read(absl::MakeSpan(buf));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
}

TEST(KernelDataStreamTest, WriteDeliversEveryByteOfALargeBuffer) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto a = NewKernelDataStream(sv[0], "src");
  auto b = NewKernelDataStream(sv[1], "dst");
  std::vector<uint8_t> big(8 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7);
  std::vector<uint8_t> got;
  std::thread reader([&] {
    std::vector<uint8_t> buf(1 << 16);
    while (true) {
      auto n = b->Read(absl::MakeSpan(buf));
      if (!n.ok() || *n == 0) return;
      got.insert(got.end(), buf.begin(), buf.begin() + *n);
    }
  });
  EXPECT_TRUE(a->Write(big).ok());
  a.reset();  // EOF for the reader
  reader.join();
  EXPECT_EQ(got, big);
}

TEST(KernelDataStreamTest, WriteToAClosedPeerSaysWhere) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  close(sv[1]);
  // Without this the write's SIGPIPE would end the test binary.
  signal(SIGPIPE, SIG_IGN);
  auto a = NewKernelDataStream(sv[0], "0000:3b:00.0");
  absl::Status s = a->Write(std::vector<uint8_t>(10, 1));
  EXPECT_EQ(ErrnoOf(s), EPIPE);
  EXPECT_THAT(s.message(), HasSubstr("0000:3b:00.0"));
}

}  // namespace
}  // namespace vgpu::agents::mediated
