#include "migrator/forwarding_backend.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/backend/forwarding_agent.h"
#include "agents/forwarding/protocol.capnp.h"

namespace vgpu::migrator {
namespace {

using forwarding::backend::ControlClient;

class ForwardingTarget : public TargetDevice {
 public:
  ForwardingTarget(std::unique_ptr<agents::Agent> agent, std::string endpoint,
                   std::string hint)
      : agent_(std::move(agent)),
        endpoint_(std::move(endpoint)),
        hint_(std::move(hint)) {}
  ~ForwardingTarget() override {
    if (kept_) return;
    // Not kept: the migration failed; the empty worker goes.
    agent_.reset();
    if (auto c = ControlClient::Connect(endpoint_, absl::Seconds(2)); c.ok()) {
      (void)(*c)->Quit();
    }
  }
  agents::Agent& agent() override { return *agent_; }
  const std::string& endpoint() const override { return endpoint_; }
  void Keep() override { kept_ = true; }
  std::string hint() const override { return hint_; }

 private:
  std::unique_ptr<agents::Agent> agent_;
  std::string endpoint_;
  std::string hint_;
  bool kept_ = false;
};

class ForwardingBackend : public StrategyBackend {
 public:
  explicit ForwardingBackend(ForwardingOptions o) : o_(std::move(o)) {}

  const std::string& name() const override { return name_; }
  schema::Strategy strategy() const override {
    return schema::Strategy::API_FORWARDING;
  }

  absl::StatusOr<agents::Descriptor> Describe(
      const std::string& endpoint) override {
    auto c = ControlClient::Connect(endpoint, absl::Seconds(2));
    if (!c.ok()) return c.status();
    auto info = (*c)->Describe();
    if (!info.ok()) return info.status();
    return forwarding::backend::DescribeSession(info->root());
  }

  absl::StatusOr<std::unique_ptr<agents::Agent>> OpenSource(
      const std::string& endpoint) override {
    return forwarding::backend::OpenForwardingSource(endpoint);
  }

  absl::StatusOr<std::unique_ptr<TargetDevice>> CreateTarget(
      const agents::Descriptor& source, const std::string& vm,
      uint32_t index) override {
    if (o_.control.empty()) {
      return absl::FailedPreconditionError(
          "this host runs no vgpu-cl-backend (config forwarding.control is "
          "not set)");
    }
    auto c = ControlClient::Connect(o_.control, absl::Seconds(2));
    if (!c.ok()) return c.status();
    auto target = (*c)->CreateTarget();
    if (!target.ok()) return target.status();
    auto agent = forwarding::backend::OpenForwardingDestination(
        target->root(), source, vm);
    if (!agent.ok()) return agent.status();
    return std::unique_ptr<TargetDevice>(new ForwardingTarget(
        std::move(*agent), target->root().getControl(),
        forwarding::backend::HandoffHint(target->root())));
  }

  void Destroy(const std::string& endpoint) override {
    if (auto c = ControlClient::Connect(endpoint, absl::Seconds(2)); c.ok()) {
      (void)(*c)->Quit();
    }
  }

  void Offer(HostProfile* profile) override {
    if (o_.control.empty()) return;
    ApiForwardingOffer offer;
    offer.wrapper_name = forwarding::backend::kWrapperName;
    offer.abi = {forwarding::proto::ABI_MAJOR, forwarding::proto::ABI_MINOR, 0};
    offer.features = o_.features;
    if (!o_.device.empty()) offer.features.push_back("cl-binary:" + o_.device);
    offer.vendor = o_.vendor;
    offer.architecture = o_.architecture;
    offer.memory_bytes = o_.memory_bytes;
    profile->api_forwarding.push_back(std::move(offer));
  }

  std::string Health(const std::string& endpoint) override {
    auto c = ControlClient::Connect(endpoint, absl::Seconds(2));
    if (!c.ok()) return "backend unreachable";
    auto info = (*c)->Describe();
    if (!info.ok()) return std::string(info.status().message());
    auto r = info->root();
    return absl::StrCat(r.getAttached() ? "guest attached" : "no guest",
                        r.getFrozen() ? ", frozen" : "", "; ", r.getCalls(),
                        " calls; log ", r.getLogEntries(), " entries");
  }

 private:
  const ForwardingOptions o_;
  const std::string name_ = "apiForwarding";
};

// The supervisor's session list as VMs.
class SessionSource : public VmSource {
 public:
  explicit SessionSource(std::string control) : control_(std::move(control)) {}
  absl::StatusOr<std::vector<VmEntry>> Scan() override {
    auto c = ControlClient::Connect(control_, absl::Seconds(2));
    if (!c.ok()) return c.status();
    auto list = (*c)->ListSessions();
    if (!list.ok()) return list.status();
    std::map<std::string, VmEntry> vms;
    for (const auto& s : *list) {
      auto r = s.root();
      // A worker vgpud made for an arrival has no guest yet: the incoming
      // job registers it when it confirms.
      if (!r.getAttached() && r.getCalls() == 0 && r.getLogEntries() == 0) {
        continue;
      }
      const std::string vm = r.getGuest().getVm();
      if (vm.empty()) continue;
      VmEntry& e = vms[vm];
      e.name = vm;
      e.devices.push_back(VmDevice{"apiForwarding", r.getControl(), false});
    }
    std::vector<VmEntry> out;
    for (auto& [name, e] : vms) out.push_back(std::move(e));
    return out;
  }

 private:
  std::string control_;
};

}  // namespace

std::unique_ptr<InventoryWatcher> NewForwardingWatcher(
    const std::string& control, absl::Duration interval, Inventory* inventory,
    InventoryWatcher::AcceptFn accept, InventoryWatcher::LogFn log) {
  return std::make_unique<InventoryWatcher>(
      WatcherWords{"cl-backend", "session"},
      [control]() -> absl::StatusOr<std::unique_ptr<VmSource>> {
        return std::unique_ptr<VmSource>(new SessionSource(control));
      },
      interval, inventory, std::move(accept), std::move(log));
}

std::unique_ptr<StrategyBackend> NewForwardingBackend(
    const ForwardingOptions& options) {
  return std::make_unique<ForwardingBackend>(options);
}

}  // namespace vgpu::migrator
