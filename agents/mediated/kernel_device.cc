// VfioDevice over a real VFIO device fd: see kernel_device.h. Every
// failing syscall becomes ErrnoError(errno, "<device>: <what>") so callers
// see the kernel's errno (ErrnoOf) next to the device it came from. Not
// thread-safe: one thread at a time per device and per stream.
#include "agents/mediated/kernel_device.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

// Linux 6.2+ uapi (include/uapi/linux/vfio.h): PRE_COPY and the data-size
// feature. Debian 12's header is from 6.1, so they are spelled out here;
// the numbers are the kernel ABI and never change.
#ifndef VFIO_MIGRATION_PRE_COPY
#define VFIO_MIGRATION_PRE_COPY (1 << 2)
#endif
#ifndef VFIO_MIG_GET_PRECOPY_INFO
struct vfio_precopy_info {
  __u32 argsz;
  __u32 flags;
  __aligned_u64 initial_bytes;
  __aligned_u64 dirty_bytes;
};
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
#endif
#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
struct vfio_device_feature_mig_data_size {
  __aligned_u64 stop_copy_length;
};
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
#endif

// Linux 6.6+ uapi (include/uapi/linux/vfio.h, linux/iommufd.h): the VFIO
// device cdev and the iommufd it must be bound to before any other ioctl.
// Debian 12 ships no linux/iommufd.h at all.
#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
  __u32 argsz;
  __u32 flags;
  __s32 iommufd;
  __u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
struct vfio_device_attach_iommufd_pt {
  __u32 argsz;
  __u32 flags;
  __u32 pt_id;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#endif
#ifndef IOMMU_IOAS_ALLOC
struct iommu_ioas_alloc {
  __u32 size;
  __u32 flags;
  __u32 out_ioas_id;
};
#define IOMMU_IOAS_ALLOC _IO(';', 0x81)
#endif

namespace vgpu::agents::mediated {
namespace {

static_assert(sizeof(vfio_device_feature) == 8,
              "the feature payload starts right after argsz and flags");
static_assert(static_cast<uint64_t>(VFIO_MIGRATION_STOP_COPY) ==
                  kMigFlagStopCopy &&
              static_cast<uint64_t>(VFIO_MIGRATION_P2P) == kMigFlagP2p &&
              static_cast<uint64_t>(VFIO_MIGRATION_PRE_COPY) ==
                  kMigFlagPreCopy);
static_assert(static_cast<uint32_t>(MigState::kResuming) ==
                  VFIO_DEVICE_STATE_RESUMING &&
              static_cast<uint32_t>(MigState::kRunningP2p) ==
                  VFIO_DEVICE_STATE_RUNNING_P2P);

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }

 private:
  void Reset() {
    // close(2) is not retried on EINTR: Linux has released the fd anyway.
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

int IoctlRetry(int fd, unsigned long request, void* arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

absl::Status SysError(const std::string& name, absl::string_view what) {
  const int err = errno;  // before anything below can clobber it
  return ErrnoError(err, absl::StrCat(name, ": ", what));
}

absl::StatusOr<UniqueFd> OpenRw(const std::string& path,
                                const std::string& name) {
  int fd;
  do {
    fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return SysError(name, absl::StrCat("open ", path));
  return UniqueFd(fd);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

bool LinkOrFileExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

class KernelDataStream : public DataStream {
 public:
  KernelDataStream(UniqueFd fd, std::string name)
      : fd_(std::move(fd)), name_(std::move(name)) {}

  absl::StatusOr<size_t> Read(absl::Span<uint8_t> out) override {
    ssize_t n;
    do {
      n = read(fd_.get(), out.data(), out.size());
    } while (n < 0 && errno == EINTR);
    // ENOMSG (nothing pending in PRE_COPY) is an answer, not a failure:
    // it reaches the caller as ErrnoError(ENOMSG) like any other errno.
    if (n < 0) return SysError(name_, "read migration data");
    return static_cast<size_t>(n);
  }

  absl::Status Write(absl::Span<const uint8_t> data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = write(fd_.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        return SysError(name_, absl::StrCat("write migration data (", done,
                                            " of ", data.size(),
                                            " bytes written)"));
      }
      if (n == 0) {
        // write(2) of a non-empty buffer returning 0 would loop forever.
        return ErrnoError(EIO, absl::StrCat(name_,
                                            ": write migration data: the "
                                            "kernel took no bytes after ",
                                            done, " of ", data.size()));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<PrecopyInfo> GetPrecopyInfo() override {
    vfio_precopy_info info{};
    info.argsz = sizeof(info);
    if (IoctlRetry(fd_.get(), VFIO_MIG_GET_PRECOPY_INFO, &info) < 0) {
      return SysError(name_, "VFIO_MIG_GET_PRECOPY_INFO");
    }
    return PrecopyInfo{info.initial_bytes, info.dirty_bytes};
  }

 private:
  UniqueFd fd_;
  std::string name_;
};

class KernelVfioDevice : public VfioDevice {
 public:
  // `keep` holds the container/group or iommufd fds the device was opened
  // through; they are closed after the device fd.
  KernelVfioDevice(UniqueFd fd, std::string name, std::vector<UniqueFd> keep)
      : keep_(std::move(keep)), fd_(std::move(fd)), name_(std::move(name)) {}

  const std::string& name() const override { return name_; }

  absl::StatusOr<uint64_t> MigrationFlags() override {
    vfio_device_feature_migration mig{};
    if (absl::Status s =
            Feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
                    &mig, sizeof(mig), "VFIO_DEVICE_FEATURE_MIGRATION (GET)");
        !s.ok()) {
      return s;
    }
    return static_cast<uint64_t>(mig.flags);
  }

  absl::StatusOr<MigState> GetState() override {
    vfio_device_feature_mig_state st{};
    if (absl::Status s = Feature(
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            &st, sizeof(st), "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET)");
        !s.ok()) {
      return s;
    }
    if (st.device_state >= kMigStateCount) {
      return absl::InternalError(
          absl::StrCat(name_, ": the kernel reports device state ",
                       st.device_state, ", which VFIO migration v2 lacks"));
    }
    return static_cast<MigState>(st.device_state);
  }

  absl::StatusOr<std::unique_ptr<DataStream>> SetState(
      MigState target) override {
    vfio_device_feature_mig_state st{};
    st.device_state = static_cast<uint32_t>(target);
    st.data_fd = -1;
    if (absl::Status s = Feature(
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            &st, sizeof(st),
            absl::StrCat("VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (SET ",
                         MigStateName(target), ")"));
        !s.ok()) {
      return s;
    }
    // The kernel installs a data_fd only when the last arc opened a
    // session (STOP -> STOP_COPY/RESUMING, RUNNING(_P2P) -> PRE_COPY(_P2P)).
    if (st.data_fd < 0) return std::unique_ptr<DataStream>();
    return NewKernelDataStream(st.data_fd, name_);
  }

  absl::StatusOr<uint64_t> StopCopyBytes() override {
    vfio_device_feature_mig_data_size size{};
    if (absl::Status s = Feature(
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
            &size, sizeof(size), "VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (GET)");
        !s.ok()) {
      return s;
    }
    return static_cast<uint64_t>(size.stop_copy_length);
  }

  absl::Status Reset() override {
    if (IoctlRetry(fd_.get(), VFIO_DEVICE_RESET, nullptr) < 0) {
      return SysError(name_, "VFIO_DEVICE_RESET");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> DmaLoggingStart(absl::Span<const DmaRange> ranges,
                                           uint64_t page_size) override {
    std::vector<vfio_device_feature_dma_logging_range> kr(ranges.size());
    for (size_t i = 0; i < ranges.size(); ++i) {
      kr[i].iova = ranges[i].iova;
      kr[i].length = ranges[i].length;
    }
    vfio_device_feature_dma_logging_control ctl{};
    ctl.page_size = page_size;
    ctl.num_ranges = static_cast<__u32>(kr.size());
    ctl.ranges = reinterpret_cast<uintptr_t>(kr.data());
    if (absl::Status s = Feature(
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            &ctl, sizeof(ctl),
            absl::StrCat("VFIO_DEVICE_FEATURE_DMA_LOGGING_START (",
                         ranges.size(), " ranges, page size ", page_size,
                         ")"));
        !s.ok()) {
      return s;
    }
    // The driver may round the page size up to what its tracker supports
    // and writes its choice back.
    return static_cast<uint64_t>(ctl.page_size);
  }

  absl::Status DmaLoggingStop() override {
    return Feature(
        VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
        nullptr, 0, "VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP");
  }

  absl::Status DmaLoggingReport(uint64_t iova, uint64_t length,
                                uint64_t page_size,
                                absl::Span<uint64_t> bitmap) override {
    // The kernel writes ceil(length / page_size) bits through the user
    // pointer without knowing the buffer's size: check it here.
    if (page_size == 0 || (page_size & (page_size - 1)) != 0) {
      return ErrnoError(
          EINVAL, absl::StrCat(name_, ": DMA logging report: page size ",
                               page_size, " is not a power of two"));
    }
    const uint64_t pages = length / page_size + (length % page_size != 0);
    if (bitmap.size() < (pages + 63) / 64) {
      return ErrnoError(
          EINVAL,
          absl::StrCat(name_, ": DMA logging report of ", pages,
                       " pages needs ", (pages + 63) / 64,
                       " bitmap words, got ", bitmap.size()));
    }
    vfio_device_feature_dma_logging_report rep{};
    rep.iova = iova;
    rep.length = length;
    rep.page_size = page_size;
    rep.bitmap = reinterpret_cast<uintptr_t>(bitmap.data());
    return Feature(
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        &rep, sizeof(rep),
        absl::StrCat("VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT (iova 0x",
                     absl::Hex(iova), ", ", length, " bytes)"));
  }

 private:
  // VFIO_DEVICE_FEATURE with `payload` (len bytes) as the feature data;
  // what the kernel writes back is copied into `payload`.
  absl::Status Feature(uint32_t flags, void* payload, size_t len,
                       absl::string_view what) {
    // struct vfio_device_feature is variable length: argsz, flags, then
    // the payload, whose __aligned_u64 fields need 8-byte alignment. A
    // u64 buffer gives both in one piece.
    std::vector<uint64_t> buf(1 + (len + 7) / 8, 0);
    auto* hdr = reinterpret_cast<vfio_device_feature*>(buf.data());
    uint8_t* data = reinterpret_cast<uint8_t*>(buf.data()) + sizeof(*hdr);
    hdr->argsz = static_cast<__u32>(sizeof(*hdr) + len);
    hdr->flags = flags;
    if (len > 0) std::memcpy(data, payload, len);
    if (IoctlRetry(fd_.get(), VFIO_DEVICE_FEATURE, hdr) < 0) {
      return SysError(name_, what);
    }
    if (len > 0) std::memcpy(payload, data, len);
    return absl::OkStatus();
  }

  std::vector<UniqueFd> keep_;  // declared first: closed last
  UniqueFd fd_;
  std::string name_;
};

// The EBUSY on a group or cdev open, said in words: the usual cause is the
// VM itself.
absl::Status BusyError(const std::string& device, const std::string& path) {
  return ErrnoError(
      EBUSY,
      absl::StrCat(
          device, ": ", path,
          " is busy: another process, normally the VM's QEMU, holds this "
          "device; the agent then needs the device fd from the VMM "
          "(passed with SCM_RIGHTS, see NewKernelVfioDevice)"));
}

// Legacy VFIO: container + group, as QEMU does it without iommufd.
absl::StatusOr<std::unique_ptr<VfioDevice>> OpenThroughGroup(
    const std::string& device, const std::string& vfio_dir,
    const std::string& group_path, bool noiommu) {
  auto container = OpenRw(vfio_dir + "/vfio", device);
  if (!container.ok()) return container.status();
  if (IoctlRetry(container->get(), VFIO_GET_API_VERSION, nullptr) !=
      VFIO_API_VERSION) {
    return absl::FailedPreconditionError(absl::StrCat(
        device, ": ", vfio_dir, "/vfio speaks another VFIO API version"));
  }
  auto group = OpenRw(group_path, device);
  if (!group.ok()) {
    if (ErrnoOf(group.status()) == EBUSY) return BusyError(device, group_path);
    return group.status();
  }
  vfio_group_status gs{};
  gs.argsz = sizeof(gs);
  if (IoctlRetry(group->get(), VFIO_GROUP_GET_STATUS, &gs) < 0) {
    return SysError(device, absl::StrCat("VFIO_GROUP_GET_STATUS on ",
                                         group_path));
  }
  if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
    return absl::FailedPreconditionError(absl::StrCat(
        device, ": IOMMU group ", group_path,
        " is not viable: every device in the group must be bound to "
        "vfio-pci (or a variant) or to no driver"));
  }
  int cfd = container->get();
  if (IoctlRetry(group->get(), VFIO_GROUP_SET_CONTAINER, &cfd) < 0) {
    return SysError(device,
                    absl::StrCat("VFIO_GROUP_SET_CONTAINER for ", group_path));
  }
  const unsigned long iommu = noiommu ? VFIO_NOIOMMU_IOMMU
                                      : VFIO_TYPE1v2_IOMMU;
  int r;
  do {
    r = ioctl(container->get(), VFIO_SET_IOMMU, iommu);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    return SysError(device, absl::StrCat("VFIO_SET_IOMMU (",
                                         noiommu ? "NOIOMMU" : "TYPE1v2",
                                         ") on ", vfio_dir, "/vfio"));
  }
  int dfd;
  do {
    dfd = ioctl(group->get(), VFIO_GROUP_GET_DEVICE_FD, device.c_str());
  } while (dfd < 0 && errno == EINTR);
  if (dfd < 0) {
    if (errno == EBUSY) return BusyError(device, group_path);
    return SysError(device,
                    absl::StrCat("VFIO_GROUP_GET_DEVICE_FD in ", group_path));
  }
  std::vector<UniqueFd> keep;
  keep.push_back(std::move(*container));
  keep.push_back(std::move(*group));
  return std::unique_ptr<VfioDevice>(
      new KernelVfioDevice(UniqueFd(dfd), device, std::move(keep)));
}

// VFIO device cdev (kernels built without the group interface): the fd
// answers nothing until it is bound to an iommufd, and DMA logging wants
// an address space attached.
absl::StatusOr<std::unique_ptr<VfioDevice>> OpenThroughCdev(
    const std::string& device, const std::string& dev_root,
    const std::string& cdev_path) {
  auto dev = OpenRw(cdev_path, device);
  if (!dev.ok()) {
    if (ErrnoOf(dev.status()) == EBUSY) return BusyError(device, cdev_path);
    return dev.status();
  }
  const std::string iommu_path = dev_root + "/iommu";
  if (!Exists(iommu_path)) {
    return absl::FailedPreconditionError(absl::StrCat(
        device, ": ", cdev_path, " needs iommufd, but there is no ",
        iommu_path, " (modprobe iommufd)"));
  }
  auto iommufd = OpenRw(iommu_path, device);
  if (!iommufd.ok()) return iommufd.status();
  vfio_device_bind_iommufd bind{};
  bind.argsz = sizeof(bind);
  bind.iommufd = iommufd->get();
  if (IoctlRetry(dev->get(), VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0) {
    if (errno == EBUSY) return BusyError(device, cdev_path);
    return SysError(device, absl::StrCat("VFIO_DEVICE_BIND_IOMMUFD of ",
                                         cdev_path, " to ", iommu_path));
  }
  iommu_ioas_alloc ioas{};
  ioas.size = sizeof(ioas);
  if (IoctlRetry(iommufd->get(), IOMMU_IOAS_ALLOC, &ioas) < 0) {
    return SysError(device, absl::StrCat("IOMMU_IOAS_ALLOC on ", iommu_path));
  }
  vfio_device_attach_iommufd_pt attach{};
  attach.argsz = sizeof(attach);
  attach.pt_id = ioas.out_ioas_id;
  if (IoctlRetry(dev->get(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach) < 0) {
    return SysError(device, absl::StrCat("VFIO_DEVICE_ATTACH_IOMMUFD_PT of ",
                                         cdev_path));
  }
  std::vector<UniqueFd> keep;
  keep.push_back(std::move(*iommufd));
  return std::unique_ptr<VfioDevice>(
      new KernelVfioDevice(std::move(*dev), device, std::move(keep)));
}

}  // namespace

std::unique_ptr<DataStream> NewKernelDataStream(int data_fd,
                                                std::string name) {
  return std::make_unique<KernelDataStream>(UniqueFd(data_fd),
                                            std::move(name));
}

absl::StatusOr<std::unique_ptr<VfioDevice>> NewKernelVfioDevice(
    int device_fd, std::string name) {
  if (device_fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": no device fd (got ", device_fd, ")"));
  }
  // A number that is no open fd is not wrapped: closing it later could
  // close whatever another thread opened under that number meanwhile.
  if (fcntl(device_fd, F_GETFD) < 0) {
    return SysError(name, absl::StrCat("device fd ", device_fd));
  }
  return std::unique_ptr<VfioDevice>(
      new KernelVfioDevice(UniqueFd(device_fd), std::move(name), {}));
}

absl::StatusOr<std::unique_ptr<VfioDevice>> OpenVfioDevice(
    const std::string& device, const std::string& dev_root,
    const std::string& sys_root) {
  // The name becomes a path component under sys_root: keep it one.
  if (device.empty() || device == "." || device == ".." ||
      absl::StrContains(device, '/')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", device,
        "\" is not a device name: want a PCI address (0000:3b:00.0) or an "
        "mdev UUID"));
  }
  const std::string vfio_dir = dev_root + "/vfio";
  if (!Exists(vfio_dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        device, ": no ", vfio_dir,
        " on this host: the vfio kernel modules are not loaded, so no VFIO "
        "device can be opened (check with: ls ",
        vfio_dir, "; lsmod | grep vfio)"));
  }
  const std::string pci = sys_root + "/bus/pci/devices/" + device;
  const std::string mdev = sys_root + "/bus/mdev/devices/" + device;
  std::string sysdev;
  if (LinkOrFileExists(pci)) {
    sysdev = pci;
  } else if (LinkOrFileExists(mdev)) {
    sysdev = mdev;
  } else {
    return absl::NotFoundError(absl::StrCat(
        device, ": no such device in sysfs (looked at ", pci, " and ", mdev,
        ")"));
  }

  const std::string group_link = sysdev + "/iommu_group";
  char target[4096];
  ssize_t n = readlink(group_link.c_str(), target, sizeof(target) - 1);
  if (n < 0) {
    return ErrnoError(
        errno == ENOENT ? ENODEV : errno,
        absl::StrCat(device, ": cannot read ", group_link,
                     ": the device has no IOMMU group (is the IOMMU on? "
                     "intel_iommu=on / amd_iommu=on)"));
  }
  target[n] = '\0';
  const std::string group = Basename(target);

  const std::string group_path = vfio_dir + "/" + group;
  if (Exists(group_path)) {
    return OpenThroughGroup(device, vfio_dir, group_path, /*noiommu=*/false);
  }
  const std::string noiommu_path = vfio_dir + "/noiommu-" + group;
  if (Exists(noiommu_path)) {
    return OpenThroughGroup(device, vfio_dir, noiommu_path, /*noiommu=*/true);
  }
  // No group file: a kernel with only the device cdev names it in
  // <sysdev>/vfio-dev/vfioN.
  const std::string vfio_dev = sysdev + "/vfio-dev";
  if (DIR* d = opendir(vfio_dev.c_str()); d != nullptr) {
    std::string cdev;
    while (dirent* e = readdir(d)) {
      if (absl::StartsWith(e->d_name, "vfio")) cdev = e->d_name;
    }
    closedir(d);
    if (!cdev.empty()) {
      return OpenThroughCdev(device, dev_root,
                             vfio_dir + "/devices/" + cdev);
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      device, ": not bound to a VFIO driver: neither ", group_path,
      " (IOMMU group ", group, ") nor ", vfio_dev,
      " exists; bind it to vfio-pci first (driverctl set-override ", device,
      " vfio-pci)"));
}

}  // namespace vgpu::agents::mediated
