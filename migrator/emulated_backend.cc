#include "migrator/emulated_backend.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <set>
#include <vector>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/emulated/device_control.h"
#include "agents/emulated/emulated_agent.h"

namespace vgpu::migrator {
namespace {

using agents::Agent;
using agents::Descriptor;
using agents::emulated::DeviceControl;

bool IsExecutable(const std::string& path) {
  return !path.empty() && access(path.c_str(), X_OK) == 0;
}

class EmulatedBackend;

class EmulatedTarget : public TargetDevice {
 public:
  EmulatedTarget(EmulatedBackend* backend, std::unique_ptr<Agent> agent,
                 std::string endpoint, pid_t pid)
      : backend_(backend),
        agent_(std::move(agent)),
        endpoint_(std::move(endpoint)),
        pid_(pid) {}
  ~EmulatedTarget() override;

  Agent& agent() override { return *agent_; }
  const std::string& endpoint() const override { return endpoint_; }
  void Keep() override;

 private:
  EmulatedBackend* backend_;
  std::unique_ptr<Agent> agent_;
  std::string endpoint_;
  pid_t pid_;
  bool kept_ = false;
};

class EmulatedBackend : public StrategyBackend {
 public:
  EmulatedBackend(const EmulatedBackendOptions& options,
                  internal::Spawner* spawner)
      : options_(options), spawner_(spawner) {}

  ~EmulatedBackend() override {
    for (auto& t : detachers_) t.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [endpoint, pid] : owned_) {
      internal::Spawner::Stop(pid, 2000);
      unlink(endpoint.c_str());
    }
  }

  const std::string& name() const override { return name_; }
  schema::Strategy strategy() const override {
    return schema::Strategy::EMULATION;
  }

  absl::StatusOr<Descriptor> Describe(const std::string& endpoint) override {
    AwaitDetached(endpoint);
    auto dc = DeviceControl::Connect(endpoint);
    if (!dc.ok()) return dc.status();
    return agents::emulated::DescribeDevice(**dc);
  }

  absl::StatusOr<std::unique_ptr<Agent>> OpenSource(
      const std::string& endpoint) override {
    AwaitDetached(endpoint);
    auto dc = DeviceControl::Connect(endpoint);
    if (!dc.ok()) return dc.status();
    return agents::emulated::NewEmulatedSource(std::move(*dc));
  }

  absl::StatusOr<std::unique_ptr<TargetDevice>> CreateTarget(
      const Descriptor& source, const std::string& vm,
      uint32_t index) override {
    if (!IsExecutable(options_.device_binary)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no emulated device model to start: '", options_.device_binary,
          "' is not an executable (set emulation.device_binary)"));
    }
    const uint64_t vram = source.root().getVramBytes();
    if (vram == 0 || vram > options_.max_vram_bytes) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "VRAM of %u bytes is outside what this host accepts (1..%u)", vram,
          options_.max_vram_bytes));
    }
    // A unique name per attempt, so a retry never meets a stale socket.
    const std::string base = absl::StrFormat(
        "%s/%s-gpu%u-%d-%u", options_.run_dir, vm, index, getpid(),
        counter_.fetch_add(1));
    const std::string endpoint = base + ".sock";
    std::vector<std::string> argv = {
        options_.device_binary,  "--socket", endpoint,
        "--vram",                absl::StrCat(vram),
        "--name",                absl::StrFormat("%s-gpu%u", vm, index),
        "--incoming"};
    auto pid = spawner_->Spawn(argv, base + ".log");
    if (!pid.ok()) return pid.status();

    // The device listens within milliseconds; allow a loaded machine 10 s.
    absl::StatusOr<std::unique_ptr<DeviceControl>> dc =
        absl::UnavailableError("device did not start");
    for (int i = 0; i < 1000; ++i) {
      struct stat st;
      if (stat(endpoint.c_str(), &st) == 0) {
        dc = DeviceControl::Connect(endpoint);
        if (dc.ok()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!dc.ok()) {
      internal::Spawner::Stop(*pid, 500);
      unlink(endpoint.c_str());
      return absl::UnavailableError(absl::StrCat(
          "device model for ", vm, " gpu", index, " did not come up at ",
          endpoint, " (log: ", base, ".log): ", dc.status().message()));
    }
    auto agent =
        agents::emulated::NewEmulatedDestination(std::move(*dc), source);
    if (!agent.ok()) {
      internal::Spawner::Stop(*pid, 500);
      unlink(endpoint.c_str());
      return agent.status();
    }
    return std::unique_ptr<TargetDevice>(
        new EmulatedTarget(this, std::move(*agent), endpoint, *pid));
  }

  void Destroy(const std::string& endpoint) override {
    pid_t pid = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = owned_.find(endpoint);
      if (it == owned_.end()) return;
      pid = it->second;
      owned_.erase(it);
    }
    internal::Spawner::Stop(pid, 2000);
    unlink(endpoint.c_str());
  }

  void Offer(HostProfile* profile) override {
    EmulationOffer& e = profile->emulation;
    e.available = IsExecutable(options_.device_binary);
    e.vendor = "vgpu-migrate";
    e.architecture = "bochs-dispi";
    e.device_abi = VersionTriple{1, 0, 0};
    e.max_vram_bytes = e.available ? options_.max_vram_bytes : 0;
  }

  // Called by EmulatedTarget::Keep on activation. The destination agent
  // detaches on a thread of its own: unmapping a VRAM it has written takes
  // milliseconds (page tables), which the guest should not wait for.
  // Attaching to the device again waits for that (AwaitDetached).
  void Adopt(const std::string& endpoint, pid_t pid,
             std::unique_ptr<Agent> agent) {
    std::lock_guard<std::mutex> lock(mu_);
    owned_[endpoint] = pid;
    detaching_.insert(endpoint);
    detachers_.emplace_back([this, endpoint, a = std::move(agent)]() mutable {
      a.reset();
      std::lock_guard<std::mutex> lock(mu_);
      detaching_.erase(endpoint);
      detached_.notify_all();
    });
  }

 private:
  const std::string name_ = "emulation";
  const EmulatedBackendOptions options_;
  internal::Spawner* spawner_;
  std::atomic<uint32_t> counter_{0};
  void AwaitDetached(const std::string& endpoint) {
    std::unique_lock<std::mutex> lock(mu_);
    detached_.wait(lock, [&] { return detaching_.count(endpoint) == 0; });
  }

  std::mutex mu_;
  std::condition_variable detached_;
  std::map<std::string, pid_t> owned_;  // endpoint -> device process
  std::set<std::string> detaching_;
  std::vector<std::thread> detachers_;
};

EmulatedTarget::~EmulatedTarget() {
  if (kept_) return;
  agent_.reset();  // detach before the device goes
  internal::Spawner::Stop(pid_, 1000);
  unlink(endpoint_.c_str());
}

void EmulatedTarget::Keep() {
  if (kept_) return;
  kept_ = true;
  backend_->Adopt(endpoint_, pid_, std::move(agent_));
}

}  // namespace

std::unique_ptr<StrategyBackend> NewEmulatedBackend(
    const EmulatedBackendOptions& options, internal::Spawner* spawner) {
  return std::make_unique<EmulatedBackend>(options, spawner);
}

std::string FindEmulatedDeviceBinary(const std::string& self) {
  std::string dir = self.substr(0, self.rfind('/'));
  for (const std::string& candidate :
       {dir + "/vgpu-emu-device",
        dir + "/../agents/emulated/vgpu-emu-device"}) {
    if (IsExecutable(candidate)) return candidate;
  }
  return "";
}

}  // namespace vgpu::migrator
