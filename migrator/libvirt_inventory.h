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

// Whether a libvirt domain's vGPUs are dormant (VmEntry::dormant): it is
// shut off, or an incoming migration's domain still waiting for its state
// (its vGPUs arrive through vgpud, or not at all).
bool DomainIsDormant(bool active, int state, int reason);

// Where an InventoryWatcher learns VMs from: every VM it sees now.
class VmSource {
 public:
  virtual ~VmSource() = default;
  virtual absl::StatusOr<std::vector<VmEntry>> Scan() = 0;
};

// A libvirt connection, read-only unless asked otherwise. Used from one
// thread at a time.
class LibvirtSource : public VmSource {
 public:
  static absl::StatusOr<std::unique_ptr<LibvirtSource>> Open(
      const std::string& uri, bool read_only = true);
  ~LibvirtSource();
  // Every domain (running or not) that has vGPUs; shut-off ones dormant.
  absl::StatusOr<std::vector<VmEntry>> Scan() override;
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

// How a watcher names its source in log lines: "libvirt" and "domain", or
// "cl-backend" and "session".
struct WatcherWords {
  std::string source;
  std::string thing;
};

// Brings `inventory` in line with a VmSource every `interval`, on a thread
// of its own, until destroyed: VMs that appear are registered, VMs that
// change are updated, VMs that go are unregistered; VMs vgpud moved away
// are left alone while the source still shows them. `open` (re)opens the
// source, after a failed scan too. `accept` vets a VM's devices before it
// is registered (vgpud describes each through its backend); `log` gets one
// line per change.
class InventoryWatcher {
 public:
  using OpenFn = std::function<absl::StatusOr<std::unique_ptr<VmSource>>()>;
  using AcceptFn = std::function<absl::Status(const VmEntry&)>;
  using LogFn = std::function<void(const std::string&)>;
  InventoryWatcher(WatcherWords words, OpenFn open, absl::Duration interval,
                   Inventory* inventory, AcceptFn accept, LogFn log);
  virtual ~InventoryWatcher();
  // One pass now (also what the thread runs); returns the scan's status.
  absl::Status SyncOnce();
  // Drops the source; the next pass opens a new one (as after the source
  // restarted).
  void Reconnect();

 private:
  void Run();
  WatcherWords words_;
  OpenFn open_;
  absl::Duration interval_;
  Inventory* inventory_;
  AcceptFn accept_;
  LogFn log_;
  std::unique_ptr<VmSource> source_;
  std::mutex sync_mu_;  // one pass at a time
  std::set<std::string> ours_;  // VMs this watcher registered
  std::set<std::string> left_;  // moved away by vgpud; still at the source
  std::set<std::string> refused_;  // "vm:why" already logged
  std::string last_error_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// The watcher of libvirt's domains (read-only connection to `uri`).
class LibvirtWatcher : public InventoryWatcher {
 public:
  LibvirtWatcher(std::string uri, absl::Duration interval,
                 Inventory* inventory, AcceptFn accept, LogFn log);
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_LIBVIRT_INVENTORY_H_
