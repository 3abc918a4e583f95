#include "migrator/inventory.h"

#include "absl/strings/str_cat.h"

namespace vgpu::migrator {

absl::Status CheckVmName(const std::string& name) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("VM name '", name, "' must be 1 to 64 characters"));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "VM name '", name, "' may hold only letters, digits, '.', '_', '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status Inventory::Register(VmEntry vm) {
  if (auto s = CheckVmName(vm.name); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(vm.name);
  if (it != vms_.end() && !it->second.job.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VM ", vm.name, " is held by job ", it->second.job));
  }
  vm.job.clear();
  vm.arriving = false;
  vms_[vm.name] = std::move(vm);
  return absl::OkStatus();
}

absl::Status Inventory::Unregister(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end()) {
    return absl::NotFoundError(absl::StrCat("no VM named ", name, " here"));
  }
  if (!it->second.job.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM ", name, " is held by job ", it->second.job));
  }
  vms_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<VmEntry> Inventory::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.arriving) {
    return absl::NotFoundError(absl::StrCat("no VM named ", name, " here"));
  }
  return it->second;
}

std::vector<VmEntry> Inventory::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<VmEntry> out;
  for (const auto& [name, vm] : vms_) out.push_back(vm);
  return out;
}

absl::Status Inventory::Acquire(const std::string& name,
                                const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.arriving) {
    return absl::NotFoundError(absl::StrCat("no VM named ", name, " here"));
  }
  if (!it->second.job.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VM ", name, " is busy with job ", it->second.job));
  }
  if (it->second.devices.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM ", name, " has no vGPUs registered"));
  }
  it->second.job = job;
  return absl::OkStatus();
}

void Inventory::Release(const std::string& name, const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it != vms_.end() && it->second.job == job) it->second.job.clear();
}

absl::Status Inventory::Reserve(const std::string& name,
                                const std::string& uuid,
                                const std::string& job) {
  if (auto s = CheckVmName(name); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it != vms_.end()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "VM ", name, it->second.arriving ? " is already arriving here"
                                         : " already exists here"));
  }
  VmEntry vm;
  vm.name = name;
  vm.uuid = uuid;
  vm.job = job;
  vm.arriving = true;
  vms_[name] = std::move(vm);
  return absl::OkStatus();
}

void Inventory::Commit(const std::string& name, const std::string& job,
                       std::vector<VmDevice> devices) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.job != job) return;
  it->second.devices = std::move(devices);
  it->second.arriving = false;
  it->second.job.clear();
}

void Inventory::CancelReservation(const std::string& name,
                                  const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it != vms_.end() && it->second.arriving && it->second.job == job) {
    vms_.erase(it);
  }
}

void Inventory::Remove(const std::string& name, const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(name);
  if (it != vms_.end() && it->second.job == job) vms_.erase(it);
}

}  // namespace vgpu::migrator
