// The VfioDevice of vfio.h over the real kernel interface: each method is
// one VFIO ioctl on a device fd, and a session is the kernel's data_fd. The
// fd comes from a VMM (SCM_RIGHTS) or from OpenVfioDevice, which walks
// sysfs and /dev/vfio as QEMU does. Like every VfioDevice, a device and its
// DataStreams are used from one thread at a time.
#ifndef VGPU_AGENTS_MEDIATED_KERNEL_DEVICE_H_
#define VGPU_AGENTS_MEDIATED_KERNEL_DEVICE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agents/mediated/vfio.h"

namespace vgpu::agents::mediated {

// Takes ownership of `device_fd`, an open VFIO device fd; fails (EBADF)
// without touching it when it is not an open fd. `name` (PCI address or
// mdev UUID) goes into every error.
absl::StatusOr<std::unique_ptr<VfioDevice>> NewKernelVfioDevice(
    int device_fd, std::string name);

// Opens `device` (a PCI address such as "0000:3b:00.0" or an mdev UUID)
// itself: finds its IOMMU group under `sys_root`, then goes through the
// legacy group/container interface (<dev_root>/vfio/<group>) or, where the
// kernel offers only that, the device cdev (<dev_root>/vfio/devices/vfioN
// bound to <dev_root>/iommu). FAILED_PRECONDITION when the host has no
// <dev_root>/vfio or the device is not bound to a VFIO driver; NOT_FOUND
// when sysfs has no such device; EBUSY (ErrnoOf) when the VM's VMM
// already holds the group, in which case only the VMM can hand the fd over.
absl::StatusOr<std::unique_ptr<VfioDevice>> OpenVfioDevice(
    const std::string& device, const std::string& dev_root = "/dev",
    const std::string& sys_root = "/sys");

// A DataStream over `data_fd` (owned; closed with the stream): read(2),
// write(2) and VFIO_MIG_GET_PRECOPY_INFO. `name` goes into every error.
std::unique_ptr<DataStream> NewKernelDataStream(int data_fd, std::string name);

}  // namespace vgpu::agents::mediated

#endif  // VGPU_AGENTS_MEDIATED_KERNEL_DEVICE_H_
