// vgpud's view of libvirt: the VMs and vGPUs that libvirt domains carry,
// over a read-only connection (qemu:///system on a host; the test driver,
// test:///path/to/node.xml, in tests). A domain's vGPUs are the devices of
// the project's metadata element (emulated and API-forwarded vGPUs, and
// any other strategy by endpoint), its mdev host devices (mediated, by
// UUID) and its PCI host devices (whole devices passed through, by
// address). LibvirtWatcher keeps vgpud's inventory in step, polling: VMs
// that appear are registered, VMs whose devices change are updated, and
// VMs that disappear are dropped, never touching a VM some job holds or
// one that was registered by other means.
#ifndef VGPU_MIGRATOR_LIBVIRT_INVENTORY_H_
#define VGPU_MIGRATOR_LIBVIRT_INVENTORY_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "migrator/inventory.h"

namespace vgpu::migrator {

// The VM a domain's XML describes; nullopt-like empty devices when the
// domain has no vGPUs. INVALID_ARGUMENT for XML that does not read.
absl::StatusOr<VmEntry> VmFromDomainXml(const std::string& xml);

// A libvirt connection, read-only unless asked otherwise. Used from one
// thread at a time.
class LibvirtSource {
 public:
  static absl::StatusOr<std::unique_ptr<LibvirtSource>> Open(
      const std::string& uri, bool read_only = true);
  ~LibvirtSource();
  // Every domain (running or not) that has vGPUs.
  absl::StatusOr<std::vector<VmEntry>> Scan();
  // Sets a domain's vgpu-migrate metadata element (hook/domain_xml.h's
  // MetadataElement), live and in its persistent definition. Needs a
  // read-write connection; NOT_FOUND for an unknown domain.
  absl::Status SetVgpuMetadata(const std::string& domain,
                               const std::string& element);

 private:
  struct Impl;
  explicit LibvirtSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Brings `inventory` in line with libvirt every `interval`, on a thread of
// its own, until destroyed. `accept` vets a VM's devices before it is
// registered (vgpud describes each through its backend); `log` gets one
// line per change.
class LibvirtWatcher {
 public:
  using AcceptFn = std::function<absl::Status(const VmEntry&)>;
  using LogFn = std::function<void(const std::string&)>;
  LibvirtWatcher(std::string uri, absl::Duration interval,
                 Inventory* inventory, AcceptFn accept, LogFn log);
  ~LibvirtWatcher();
  // One pass now (also what the thread runs); returns the scan's status.
  absl::Status SyncOnce();
  // Drops the connection; the next pass opens a new one (as after libvirtd
  // restarted).
  void Reconnect();

 private:
  void Run();
  std::string uri_;
  absl::Duration interval_;
  Inventory* inventory_;
  AcceptFn accept_;
  LogFn log_;
  std::unique_ptr<LibvirtSource> source_;
  std::mutex sync_mu_;  // one pass at a time
  std::set<std::string> ours_;  // VMs this watcher registered
  std::set<std::string> left_;  // moved away by vgpud; domain still here
  std::set<std::string> refused_;  // "vm:why" already logged
  std::string last_error_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_LIBVIRT_INVENTORY_H_
