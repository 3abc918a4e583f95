// Jobs: one migration, snapshot, restore or incoming migration in progress
// or finished. The thread running a job publishes its progress here; the
// control API reads it (watch blocks until the next change) and sets the
// cancel flag. A job table keeps every job of the daemon's life so that
// `vgpu-migrate status JOB` works after the end. Thread-safe.
#ifndef VGPU_MIGRATOR_JOB_H_
#define VGPU_MIGRATOR_JOB_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "migrator/compat.h"

namespace vgpu::migrator {

// Phases, in order. A job moves forward only; `state` says how it ended.
enum class Phase : uint8_t {
  kBegin,     // source: collect descriptors, attach agents
  kPrepare,   // destination checks compatibility, creates target devices
  kPreCopy,   // Perform: live rounds
  kStopCopy,  // Perform: source stopped, final copy
  kFinish,    // destination loads, verifies, activates
  kConfirm,   // source releases
  kDone,
};
const char* PhaseName(Phase p);
// Inverse of PhaseName; false if unknown.
bool ParsePhase(const std::string& name, Phase* out);

enum class JobState : uint8_t { kRunning, kDone, kFailed, kCancelled };
const char* JobStateName(JobState s);

struct JobData {
  std::string id;
  std::string kind;  // migrate | snapshot | restore | incoming
  std::string vm;
  std::string peer;
  Phase phase = Phase::kBegin;
  JobState state = JobState::kRunning;
  uint64_t seq = 0;
  uint32_t round = 0;
  uint64_t raw_bytes = 0;
  uint64_t wire_bytes = 0;
  uint64_t pending_bytes = 0;
  double rate = 0;  // state bytes per second
  double est_downtime_ms = 0;
  double eta_seconds = 0;
  double elapsed_seconds = 0;
  double downtime_ms = 0;
  double total_seconds = 0;
  absl::Status error;
  std::string snapshot;
  bool source_resumed = false;
  CompatReport report;  // when Prepare refused
  std::vector<uint64_t> rounds;  // pending after each round
  uint64_t round_bytes = 0;      // sent in the current round
  uint64_t round_total = 0;      // pending when the current round began
  std::string waiting;           // what the job waits for, if anything
  // Incoming and pull jobs: the endpoints of the devices created here, and
  // the other host's job.
  std::vector<std::string> endpoints;
  std::string remote_job;
};

class Job {
 public:
  Job(std::string id, std::string kind, std::string vm, std::string peer);

  const std::string& id() const { return id_; }

  // Applies `change` under the lock, bumps seq, refreshes elapsed time and
  // wakes watchers.
  void Update(const std::function<void(JobData&)>& change);
  JobData Get() const;
  // Returns once seq > after_seq, the job ended, or `wait` passed.
  JobData Watch(uint64_t after_seq, absl::Duration wait) const;
  bool finished() const;

  // Cancel: refused (FAILED_PRECONDITION) once the job is past the point
  // where the source can still resume (the destination runs the vGPUs).
  absl::Status RequestCancel();
  bool cancelled() const { return cancel_.load(); }
  // The job thread calls this when it passes the point of no return;
  // false if a cancel came first (then the job must abort).
  bool CommitOrCancelled();

  // Test seam (MigrateOptions.pauseAt): the job thread calls Checkpoint at
  // each phase start; it blocks there if paused at that phase, until
  // Continue or cancel. Returns CANCELLED if the job was cancelled.
  void PauseAt(Phase p);
  absl::Status Checkpoint(Phase p);
  absl::Status Continue();

 private:
  const std::string id_;
  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  JobData data_;
  std::atomic<bool> cancel_{false};
  bool committed_ = false;
  bool has_pause_ = false;
  Phase pause_at_ = Phase::kBegin;
  bool paused_ = false;
};

class JobTable {
 public:
  explicit JobTable(std::string host) : host_(std::move(host)) {}
  std::shared_ptr<Job> Create(const std::string& kind, const std::string& vm,
                              const std::string& peer);
  std::shared_ptr<Job> Find(const std::string& id) const;
  std::vector<std::shared_ptr<Job>> List() const;
  // Cancels every running job (daemon shutdown).
  void CancelAll();

 private:
  const std::string host_;
  mutable std::mutex mu_;
  uint64_t next_ = 1;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_JOB_H_
