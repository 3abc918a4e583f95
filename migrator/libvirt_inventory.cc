#include "migrator/libvirt_inventory.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "migrator/hook/domain_xml.h"

namespace vgpu::migrator {
namespace {

// libvirt prints every error on stderr unless told otherwise; vgpud
// reports the ones it acts on itself.
void Quiet(void*, virErrorPtr) {}

std::string LastError(const char* what) {
  const char* m = virGetLastErrorMessage();
  return absl::StrCat(what, ": ", m != nullptr ? m : "unknown libvirt error");
}

bool SameDevices(const std::vector<VmDevice>& a,
                 const std::vector<VmDevice>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].strategy != b[i].strategy || a[i].endpoint != b[i].endpoint) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool DomainIsDormant(bool active, int state, int reason) {
  if (!active) return true;
  return state == VIR_DOMAIN_PAUSED &&
         (reason == VIR_DOMAIN_PAUSED_MIGRATION ||
          reason == VIR_DOMAIN_PAUSED_STARTING_UP);
}

absl::StatusOr<VmEntry> VmFromDomainXml(const std::string& xml) {
  auto d = hook::ReadDomain(xml);
  if (!d.ok()) return d.status();
  VmEntry vm;
  vm.name = d->name;
  vm.uuid = d->uuid;
  if (d->vgpus.has_value()) {
    for (const hook::MetaDevice& m : *d->vgpus) {
      vm.devices.push_back(VmDevice{m.strategy, m.endpoint, false});
    }
  }
  auto listed = [&](const std::string& strategy, const std::string& ep) {
    return std::any_of(vm.devices.begin(), vm.devices.end(),
                       [&](const VmDevice& v) {
                         return v.strategy == strategy && v.endpoint == ep;
                       });
  };
  for (const std::string& uuid : d->mdevs) {
    if (!listed("mediated", uuid)) {
      vm.devices.push_back(VmDevice{"mediated", uuid, false});
    }
  }
  for (const std::string& addr : d->pci_hostdevs) {
    if (!listed("directPassthrough", addr)) {
      vm.devices.push_back(VmDevice{"directPassthrough", addr, false});
    }
  }
  return vm;
}

struct LibvirtSource::Impl {
  virConnectPtr conn = nullptr;
  std::string uri;
  ~Impl() {
    if (conn != nullptr) virConnectClose(conn);
  }
};

LibvirtSource::LibvirtSource(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
LibvirtSource::~LibvirtSource() = default;

absl::StatusOr<std::unique_ptr<LibvirtSource>> LibvirtSource::Open(
    const std::string& uri, bool read_only) {
  virSetErrorFunc(nullptr, Quiet);
  auto impl = std::make_unique<Impl>();
  impl->uri = uri;
  impl->conn = read_only ? virConnectOpenReadOnly(uri.c_str())
                         : virConnectOpen(uri.c_str());
  if (impl->conn == nullptr) {
    return absl::UnavailableError(LastError(
        absl::StrCat("libvirt ", uri, read_only ? " (read-only)" : "")
            .c_str()));
  }
  return std::unique_ptr<LibvirtSource>(new LibvirtSource(std::move(impl)));
}

absl::StatusOr<std::vector<VmEntry>> LibvirtSource::Scan() {
  virDomainPtr* doms = nullptr;
  const int n = virConnectListAllDomains(impl_->conn, &doms, 0);
  if (n < 0) {
    return absl::UnavailableError(
        LastError(absl::StrCat("listing the domains of ", impl_->uri).c_str()));
  }
  std::vector<VmEntry> out;
  absl::Status status;
  for (int i = 0; i < n; ++i) {
    char* xml = virDomainGetXMLDesc(doms[i], 0);
    if (xml == nullptr) {
      // The domain went away between the two calls: the next scan tells.
      virDomainFree(doms[i]);
      continue;
    }
    auto vm = VmFromDomainXml(xml);
    std::free(xml);
    if (!vm.ok() && status.ok()) {
      status = absl::Status(vm.status().code(),
                            absl::StrCat("domain ", virDomainGetName(doms[i]),
                                         ": ", vm.status().message()));
    }
    if (vm.ok() && !vm->devices.empty()) {
      // A shut-off domain's vGPUs run nowhere: registering them would make
      // instances for them (and stand in the way of `virsh restore`,
      // whose hook brings back their saved state).
      int state = VIR_DOMAIN_NOSTATE, reason = 0;
      virDomainGetState(doms[i], &state, &reason, 0);
      vm->dormant =
          DomainIsDormant(virDomainIsActive(doms[i]) == 1, state, reason);
      out.push_back(std::move(*vm));
    }
    virDomainFree(doms[i]);
  }
  std::free(doms);
  // One unreadable domain does not hide the others.
  if (!status.ok() && out.empty()) return status;
  return out;
}

absl::Status LibvirtSource::SetVgpuMetadata(const std::string& domain,
                                            const std::string& element) {
  virDomainPtr d = virDomainLookupByName(impl_->conn, domain.c_str());
  if (d == nullptr) {
    return absl::NotFoundError(LastError(
        absl::StrCat("domain ", domain, " on ", impl_->uri).c_str()));
  }
  unsigned int flags = VIR_DOMAIN_AFFECT_CURRENT;
  if (virDomainIsActive(d) == 1 && virDomainIsPersistent(d) == 1) {
    flags = VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG;
  }
  const int rc = virDomainSetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT,
                                      element.c_str(), "vgpu",
                                      hook::kNamespace, flags);
  absl::Status s;
  if (rc != 0) {
    s = absl::UnavailableError(LastError(
        absl::StrCat("setting the vgpu metadata of ", domain).c_str()));
  }
  virDomainFree(d);
  return s;
}

InventoryWatcher::InventoryWatcher(WatcherWords words, OpenFn open,
                                   absl::Duration interval,
                                   Inventory* inventory, AcceptFn accept,
                                   LogFn log)
    : words_(std::move(words)),
      open_(std::move(open)),
      interval_(interval),
      inventory_(inventory),
      accept_(std::move(accept)),
      log_(std::move(log)),
      thread_([this] { Run(); }) {}

InventoryWatcher::~InventoryWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void InventoryWatcher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    SyncOnce().IgnoreError();  // it logs what went wrong
    lock.lock();
    cv_.wait_for(lock, absl::ToChronoMilliseconds(interval_),
                 [this] { return stop_; });
  }
}

void InventoryWatcher::Reconnect() {
  std::lock_guard<std::mutex> guard(sync_mu_);
  source_.reset();
}

namespace {
InventoryWatcher::OpenFn LibvirtOpener(std::string uri,
                                       InventoryWatcher::LogFn log) {
  return [uri, log]() -> absl::StatusOr<std::unique_ptr<VmSource>> {
    auto opened = LibvirtSource::Open(uri);
    if (!opened.ok()) return opened.status();
    log(absl::StrCat("libvirt: watching the domains of ", uri));
    return std::unique_ptr<VmSource>(std::move(*opened));
  };
}
}  // namespace

// `log` is copied, not moved: the opener keeps a copy of its own.
LibvirtWatcher::LibvirtWatcher(std::string uri, absl::Duration interval,
                               Inventory* inventory, AcceptFn accept,
                               LogFn log)
    : InventoryWatcher({"libvirt", "domain"}, LibvirtOpener(uri, log),
                       interval, inventory, std::move(accept), log) {}

absl::Status InventoryWatcher::SyncOnce() {
  std::lock_guard<std::mutex> guard(sync_mu_);
  const std::string& src = words_.source;
  if (source_ == nullptr) {
    auto opened = open_();
    if (!opened.ok()) {
      const std::string why(opened.status().message());
      if (why != last_error_) log_(absl::StrCat(src, ": ", why));
      last_error_ = why;
      return opened.status();
    }
    source_ = std::move(*opened);
    last_error_.clear();
  }
  auto scan = source_->Scan();
  if (!scan.ok()) {
    log_(absl::StrCat(src, ": ", scan.status().message(),
                      "; reconnecting on the next pass"));
    source_.reset();  // the daemon may have restarted
    return scan.status();
  }
  std::set<std::string> seen;
  for (VmEntry& vm : *scan) {
    seen.insert(vm.name);
    if (left_.count(vm.name)) continue;  // moved away by vgpud
    if (vm.dormant) continue;  // kept if known, not registered
    auto existing = inventory_->Get(vm.name);
    if (existing.ok()) {
      if (!ours_.count(vm.name) || !existing->job.empty() ||
          existing->arriving || SameDevices(existing->devices, vm.devices)) {
        continue;
      }
    } else if (ours_.count(vm.name)) {
      // Registered by this watcher, gone from the inventory while libvirt
      // still has the domain: a migration took it; leave it alone until
      // libvirt lets go of the domain too.
      ours_.erase(vm.name);
      left_.insert(vm.name);
      continue;
    }
    if (absl::Status a = accept_(vm); !a.ok()) {
      const std::string key = absl::StrCat(vm.name, ":", a.message());
      if (!refused_.count(key)) {
        log_(absl::StrCat(src, ": ", words_.thing, " ", vm.name,
                          " not registered: ", a.message()));
        refused_.insert(key);
      }
      continue;
    }
    const std::string name = vm.name;
    const size_t count = vm.devices.size();
    const bool update = existing.ok();
    if (absl::Status r = inventory_->Register(std::move(vm)); !r.ok()) {
      continue;  // a job took it meanwhile; the next pass sees
    }
    ours_.insert(name);
    log_(absl::StrFormat("%s: vm=%s %s from its %s, %d vGPU(s)", src, name,
                         update ? "updated" : "registered", words_.thing,
                         count));
  }
  for (auto it = left_.begin(); it != left_.end();) {
    it = seen.count(*it) ? std::next(it) : left_.erase(it);
  }
  for (auto it = ours_.begin(); it != ours_.end();) {
    if (seen.count(*it)) {
      ++it;
      continue;
    }
    auto existing = inventory_->Get(*it);
    if (existing.ok() && !existing->job.empty()) {
      ++it;  // held by a job: decide once it ends
      continue;
    }
    if (existing.ok() && inventory_->Unregister(*it).ok()) {
      log_(absl::StrCat(src, ": vm=", *it, " unregistered: its ",
                        words_.thing, " is gone"));
    }
    it = ours_.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace vgpu::migrator
