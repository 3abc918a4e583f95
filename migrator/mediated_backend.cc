#include "migrator/mediated_backend.h"

#include <map>
#include <mutex>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/mediated/kernel_device.h"
#include "agents/mediated/mediated_agent.h"
#include "agents/mediated/passthrough.h"
#include "agents/mediated/reference_device.h"

namespace vgpu::migrator {
namespace {

using agents::Agent;
using agents::Descriptor;
namespace med = agents::mediated;

bool IsMdevUuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !absl::ascii_isxdigit(s[i])) return false;
  }
  return true;
}

std::string NewUuid() {
  std::random_device rd;
  std::mt19937_64 rng((uint64_t{rd()} << 32) ^ rd());
  const uint64_t a = rng(), b = rng();
  return absl::StrFormat("%08x-%04x-4%03x-%04x-%012x", a >> 32,
                         (a >> 16) & 0xffff, a & 0xfff,
                         0x8000 | ((b >> 48) & 0x3fff), b & 0xffffffffffffull);
}

class MediatedBackend;

// An arriving vGPU: ends with its instance unless Keep() was called.
class MediatedTarget : public TargetDevice {
 public:
  MediatedTarget(MediatedBackend* backend, std::string uuid,
                 std::unique_ptr<Agent> agent)
      : backend_(backend), uuid_(std::move(uuid)), agent_(std::move(agent)) {}
  ~MediatedTarget() override;
  Agent& agent() override { return *agent_; }
  const std::string& endpoint() const override { return uuid_; }
  void Keep() override;

 private:
  MediatedBackend* backend_;
  std::string uuid_;
  std::unique_ptr<Agent> agent_;
  bool kept_ = false;
};

class MediatedBackend : public StrategyBackend {
 public:
  MediatedBackend(const ReferenceGpuOptions& options,
                  std::function<void(const std::string&)> log)
      : options_(options), log_(std::move(log)) {}

  ~MediatedBackend() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [uuid, inst] : instances_) inst.workload.reset();
  }

  const std::string& name() const override { return name_; }
  schema::Strategy strategy() const override {
    return schema::Strategy::MEDIATED;
  }

  absl::StatusOr<Descriptor> Describe(const std::string& uuid) override {
    auto dev = Find(uuid, /*create=*/true);
    if (!dev.ok()) return dev.status();
    return med::DescribeMediated(**dev, med::RefInfo((*dev)->config()));
  }

  absl::StatusOr<std::unique_ptr<Agent>> OpenSource(
      const std::string& uuid) override {
    auto dev = Find(uuid, /*create=*/false);
    if (!dev.ok()) return dev.status();
    return med::NewMediatedSource(*dev, med::RefInfo((*dev)->config()));
  }

  absl::StatusOr<std::unique_ptr<TargetDevice>> CreateTarget(
      const Descriptor& source, const std::string& vm,
      uint32_t index) override {
    if (!options_.enabled) return NoDevices("");
    auto s = source.root();
    if (std::string(s.getBoardType().cStr()) != options_.type) {
      return absl::FailedPreconditionError(absl::StrCat(
          "this host's mediated GPU offers vGPU type ", options_.type,
          ", not ", s.getBoardType().cStr()));
    }
    // The source's UUID when it is free here, as a real host would create
    // the mdev the domain names: a restore on the same host, or a move to a
    // host that does not use it, keeps the domain's XML true. Otherwise a
    // fresh one (libvirt's hook rewrites the domain to it).
    std::string uuid = s.getInstanceId();
    if (!IsMdevUuid(uuid)) uuid = NewUuid();
    auto dev = Create(uuid, /*workload=*/false);
    if (!dev.ok() && dev.status().code() == absl::StatusCode::kAlreadyExists) {
      uuid = NewUuid();
      dev = Create(uuid, /*workload=*/false);
    }
    if (!dev.ok()) return dev.status();
    auto agent = med::NewMediatedDestination(
        *dev, med::RefInfo((*dev)->config()), source);
    if (!agent.ok()) {
      Destroy(uuid);
      return agent.status();
    }
    log_(absl::StrFormat("vm=%s: device %d: mediated vGPU %s (%s) created for "
                         "the arrival",
                         vm, index, uuid, options_.type));
    return std::unique_ptr<TargetDevice>(
        new MediatedTarget(this, uuid, std::move(*agent)));
  }

  void Destroy(const std::string& uuid) override {
    std::unique_ptr<Instance> gone;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = instances_.find(uuid);
      if (it == instances_.end()) return;
      gone = std::make_unique<Instance>(std::move(it->second));
      instances_.erase(it);
    }
    gone->workload.reset();  // before its device
  }

  void Offer(HostProfile* profile) override {
    if (!options_.enabled) return;
    std::lock_guard<std::mutex> lock(mu_);
    GpuOffer g;
    const med::MediatedInfo info = med::RefInfo(Config(""));
    g.vendor = info.vendor;
    g.architecture = info.architecture;
    g.board_type = "REF-GPU";
    g.driver = VersionTriple{info.driver_major, info.driver_minor,
                             info.driver_patch};
    g.ecc_enabled = info.ecc;
    g.vram_bytes = options_.vram_bytes * options_.instances;
    g.migration_capable = true;
    g.free_instances[options_.type] =
        options_.instances - static_cast<uint32_t>(instances_.size());
    profile->gpus.push_back(std::move(g));
  }

  std::string Health(const std::string& uuid) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = instances_.find(uuid);
    if (it == instances_.end()) return "";
    med::RefVgpu& d = *it->second.device;
    absl::Status s = d.CheckStamps();
    std::string seq;
    for (uint32_t c = 0; c < d.config().contexts; ++c) {
      absl::StrAppend(&seq, c == 0 ? "" : "/", d.Register(c, 0));
    }
    auto state = d.GetState();
    return absl::StrFormat(
        "%s; %s; context sequences %s",
        state.ok() ? med::MigStateName(*state) : "?",
        s.ok() ? "stamps intact" : absl::StrCat("STAMPS BROKEN: ", s.message()),
        seq);
  }

  // MediatedTarget::Keep: the guest runs here now.
  void Adopt(const std::string& uuid) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = instances_.find(uuid);
    if (it == instances_.end()) return;
    it->second.owned = true;
    StartWorkloadLocked(it->second);
  }

 private:
  struct Instance {
    std::unique_ptr<med::RefVgpu> device;
    std::unique_ptr<med::RefWorkload> workload;
    bool owned = false;
  };

  med::RefVgpuConfig Config(const std::string& uuid) const {
    med::RefVgpuConfig c;
    c.name = uuid;
    c.type = options_.type;
    c.contexts = options_.contexts;
    c.vram_bytes = options_.vram_bytes;
    return c;
  }

  absl::Status NoDevices(const std::string& uuid) const {
    return absl::NotFoundError(absl::StrCat(
        uuid.empty() ? "no mediated vGPU can be created here"
                     : absl::StrCat("no mediated vGPU ", uuid, " on this host"),
        ": this host has no VFIO mdev devices vgpud can drive (see "
        "vgpu-vfio-probe) and its reference GPU is off (config key "
        "mediated.reference)"));
  }

  void StartWorkloadLocked(Instance& inst) {
    if (options_.workload_bytes_per_second == 0 || inst.workload) return;
    inst.workload = std::make_unique<med::RefWorkload>(
        inst.device.get(), options_.workload_bytes_per_second,
        std::hash<std::string>()(inst.device->name()));
  }

  absl::StatusOr<med::RefVgpu*> Create(const std::string& uuid,
                                       bool workload) {
    std::lock_guard<std::mutex> lock(mu_);
    if (instances_.count(uuid)) {
      return absl::AlreadyExistsError(
          absl::StrCat("mediated vGPU ", uuid, " exists on this host"));
    }
    if (instances_.size() >= options_.instances) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "all %d %s instances of this host's reference GPU are in use",
          options_.instances, options_.type));
    }
    auto dev = med::RefVgpu::Create(Config(uuid));
    if (!dev.ok()) return dev.status();
    Instance inst;
    inst.device = std::move(*dev);
    if (workload) StartWorkloadLocked(inst);
    med::RefVgpu* raw = inst.device.get();
    instances_.emplace(uuid, std::move(inst));
    return raw;
  }

  // The instance named `uuid`; registering an unused UUID creates it, as
  // writing it to the type's sysfs `create` file would.
  absl::StatusOr<med::RefVgpu*> Find(const std::string& uuid, bool create) {
    if (!IsMdevUuid(uuid)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", uuid, "' is not an mdev UUID (8-4-4-4-12 hex digits)"));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = instances_.find(uuid);
      if (it != instances_.end()) return it->second.device.get();
    }
    if (!options_.enabled) return NoDevices(uuid);
    if (!create) {
      return absl::NotFoundError(
          absl::StrCat("no mediated vGPU ", uuid, " on this host"));
    }
    auto dev = Create(uuid, /*workload=*/true);
    if (dev.ok()) {
      log_(absl::StrFormat("mediated vGPU %s (%s, %d contexts, %d MiB) "
                           "created on the reference GPU",
                           uuid, options_.type, options_.contexts,
                           options_.vram_bytes >> 20));
    }
    return dev;
  }

  const std::string name_ = "mediated";
  ReferenceGpuOptions options_;
  std::function<void(const std::string&)> log_;
  std::mutex mu_;
  std::map<std::string, Instance> instances_;
};

MediatedTarget::~MediatedTarget() {
  agent_.reset();  // the agent goes before its device
  if (!kept_) backend_->Destroy(uuid_);
}

void MediatedTarget::Keep() {
  kept_ = true;
  backend_->Adopt(uuid_);
}

// --- direct pass-through ---

med::MediatedInfo PassthroughInfo(const med::PciFunction& f) {
  med::MediatedInfo i;
  i.vendor = med::VendorName(f.vendor_id);
  i.pci_vendor_id = f.vendor_id;
  i.pci_device_id = f.device_id;
  i.type = absl::StrFormat("pci-%04x-%04x", f.vendor_id, f.device_id);
  return i;  // an opaque stream: the vendor's own format
}

class PassthroughTarget : public TargetDevice {
 public:
  PassthroughTarget(std::unique_ptr<med::VfioDevice> dev,
                    std::unique_ptr<Agent> agent)
      : dev_(std::move(dev)), agent_(std::move(agent)) {}
  ~PassthroughTarget() override { agent_.reset(); }
  Agent& agent() override { return *agent_; }
  const std::string& endpoint() const override { return dev_->name(); }
  void Keep() override {}

 private:
  std::unique_ptr<med::VfioDevice> dev_;
  std::unique_ptr<Agent> agent_;
};

class PassthroughBackend : public StrategyBackend {
 public:
  explicit PassthroughBackend(const PassthroughOptions& o) : o_(o) {}

  const std::string& name() const override { return name_; }
  schema::Strategy strategy() const override {
    return schema::Strategy::DIRECT_PASSTHROUGH;
  }

  absl::StatusOr<Descriptor> Describe(const std::string& address) override {
    auto f = Function(address);
    if (!f.ok()) return f.status();
    return med::DescribePassthrough(*f);
  }

  absl::StatusOr<std::unique_ptr<Agent>> OpenSource(
      const std::string& address) override {
    auto f = Function(address);
    if (!f.ok()) return f.status();
    if (!f->migration_capable) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", address, " cannot migrate: ",
                       f->migration_note));
    }
    // The device stays open while the backend lives (the agent borrows it).
    std::lock_guard<std::mutex> lock(mu_);
    auto& dev = open_[address];
    if (dev == nullptr) {
      auto opened = med::OpenVfioDevice(address, o_.dev_root, o_.sys_root);
      if (!opened.ok()) {
        open_.erase(address);
        return opened.status();
      }
      dev = std::move(*opened);
    }
    return med::NewMediatedSource(dev.get(), PassthroughInfo(*f));
  }

  absl::StatusOr<std::unique_ptr<TargetDevice>> CreateTarget(
      const Descriptor& source, const std::string& vm,
      uint32_t index) override {
    auto all = med::ScanPci(o_.sys_root, o_.dev_root);
    if (!all.ok()) return all.status();
    auto s = source.root();
    absl::Status last = absl::NotFoundError(absl::StrFormat(
        "no free vfio-bound %04x:%04x device with VFIO migration here",
        s.getPciVendorId(), s.getPciDeviceId()));
    for (const med::PciFunction& f : *all) {
      if (!f.vfio_bound || !f.migration_capable ||
          f.vendor_id != s.getPciVendorId() ||
          f.device_id != s.getPciDeviceId()) {
        continue;
      }
      auto dev = med::OpenVfioDevice(f.address, o_.dev_root, o_.sys_root);
      if (!dev.ok()) {
        last = dev.status();  // busy: another VM holds it
        continue;
      }
      auto agent =
          med::NewMediatedDestination(dev->get(), PassthroughInfo(f), source);
      if (!agent.ok()) return agent.status();
      return std::unique_ptr<TargetDevice>(
          new PassthroughTarget(std::move(*dev), std::move(*agent)));
    }
    return last;
  }

  void Destroy(const std::string& address) override {
    std::lock_guard<std::mutex> lock(mu_);
    open_.erase(address);
  }

  void Offer(HostProfile* profile) override {
    auto all = med::ScanPci(o_.sys_root, o_.dev_root);
    if (!all.ok()) return;
    for (const med::PciFunction& f : *all) {
      if (!f.vfio_bound || (f.class_code >> 16) != 0x03) continue;
      auto d = med::DescribePassthrough(f);
      if (!d.ok()) continue;
      GpuOffer g;
      g.vendor = d->root().getVendor();
      g.architecture = d->root().getArchitecture();
      g.board_type = d->root().getBoardType();
      g.migration_capable = f.migration_capable;
      profile->gpus.push_back(std::move(g));
    }
  }

 private:
  absl::StatusOr<med::PciFunction> Function(const std::string& address) {
    auto f = med::ReadPciFunction(address, o_.sys_root, o_.dev_root);
    if (!f.ok()) return f.status();
    if (!f->vfio_bound) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PCI device ", address, " is bound to ",
          f->driver.empty() ? "no driver" : f->driver,
          ", not to vfio-pci: it is not passed through to a VM"));
    }
    return f;
  }

  const std::string name_ = "directPassthrough";
  PassthroughOptions o_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<med::VfioDevice>> open_;
};

}  // namespace

std::unique_ptr<StrategyBackend> NewMediatedBackend(
    const ReferenceGpuOptions& reference,
    std::function<void(const std::string&)> log) {
  return std::make_unique<MediatedBackend>(reference, std::move(log));
}

std::unique_ptr<StrategyBackend> NewPassthroughBackend(
    const PassthroughOptions& options) {
  return std::make_unique<PassthroughBackend>(options);
}

}  // namespace vgpu::migrator
