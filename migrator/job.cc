#include "migrator/job.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::migrator {

namespace {
constexpr const char* kPhaseNames[] = {"begin",  "prepare", "precopy",
                                       "stopcopy", "finish", "confirm",
                                       "done"};
}  // namespace

const char* PhaseName(Phase p) { return kPhaseNames[static_cast<int>(p)]; }

bool ParsePhase(const std::string& name, Phase* out) {
  for (int i = 0; i <= static_cast<int>(Phase::kDone); ++i) {
    if (name == kPhaseNames[i]) {
      *out = static_cast<Phase>(i);
      return true;
    }
  }
  return false;
}

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kRunning:
      return "running";
    case JobState::kDone:
      return "done";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "?";
}

Job::Job(std::string id, std::string kind, std::string vm, std::string peer)
    : id_(std::move(id)), start_(std::chrono::steady_clock::now()) {
  data_.id = id_;
  data_.kind = std::move(kind);
  data_.vm = std::move(vm);
  data_.peer = std::move(peer);
}

void Job::Update(const std::function<void(JobData&)>& change) {
  std::lock_guard<std::mutex> lock(mu_);
  change(data_);
  ++data_.seq;
  if (data_.state == JobState::kRunning) {
    data_.elapsed_seconds = std::chrono::duration<double>(
                                std::chrono::steady_clock::now() - start_)
                                .count();
  }
  changed_.notify_all();
}

JobData Job::Get() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_;
}

JobData Job::Watch(uint64_t after_seq, absl::Duration wait) const {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, absl::ToChronoMilliseconds(wait), [&] {
    return data_.seq > after_seq || data_.state != JobState::kRunning;
  });
  return data_;
}

bool Job::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_.state != JobState::kRunning;
}

absl::Status Job::RequestCancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (data_.state != JobState::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id_, " already ended (", JobStateName(data_.state), ")"));
  }
  if (committed_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id_,
        " is past the point of no return: the destination runs the vGPUs"));
  }
  cancel_ = true;
  changed_.notify_all();
  return absl::OkStatus();
}

bool Job::CommitOrCancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancel_) return false;
  committed_ = true;
  return true;
}

void Job::PauseAt(Phase p) {
  std::lock_guard<std::mutex> lock(mu_);
  has_pause_ = true;
  pause_at_ = p;
}

absl::Status Job::Checkpoint(Phase p) {
  std::unique_lock<std::mutex> lock(mu_);
  if (has_pause_ && pause_at_ == p) {
    paused_ = true;
    ++data_.seq;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !paused_ || cancel_; });
    paused_ = false;
    has_pause_ = false;
  }
  if (cancel_) {
    return absl::CancelledError(
        absl::StrCat("job ", id_, " cancelled in phase ", PhaseName(p)));
  }
  return absl::OkStatus();
}

absl::Status Job::Continue() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!paused_ && !has_pause_) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id_, " is not paused"));
  }
  // Also releases a pause the job has announced but not reached yet.
  has_pause_ = false;
  paused_ = false;
  changed_.notify_all();
  return absl::OkStatus();
}

std::shared_ptr<Job> JobTable::Create(const std::string& kind,
                                      const std::string& vm,
                                      const std::string& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  // Host-qualified so ids from two daemons never read alike in logs.
  std::string id = absl::StrFormat("%s-%s-%d", host_, kind, next_++);
  auto job = std::make_shared<Job>(id, kind, vm, peer);
  jobs_[id] = job;
  return job;
}

std::shared_ptr<Job> JobTable::Find(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Job>> JobTable::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Job>> out;
  for (const auto& [id, job] : jobs_) out.push_back(job);
  return out;
}

void JobTable::CancelAll() {
  for (auto& job : List()) (void)job->RequestCancel();
}

}  // namespace vgpu::migrator
