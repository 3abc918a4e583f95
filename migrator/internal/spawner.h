// Spawner: starts the child processes vgpud owns (device models for
// incoming vGPUs) from one long-lived thread. The children get
// PR_SET_PDEATHSIG(SIGKILL), which fires when the thread that forked them
// ends, so forking from short-lived job threads would kill them early;
// from this thread they die only with the daemon (kill -9 included), and a
// crashed destination leaves no device model behind.
#ifndef VGPU_MIGRATOR_INTERNAL_SPAWNER_H_
#define VGPU_MIGRATOR_INTERNAL_SPAWNER_H_

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace vgpu::migrator::internal {

class Spawner {
 public:
  Spawner();
  ~Spawner();  // stops the thread; children keep running until they exit
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  // Starts argv[0] with argv, stdin from /dev/null, stdout and stderr
  // appended to `log_path`, all signals unblocked. Returns its pid.
  absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                              const std::string& log_path);

  // SIGTERM, then SIGKILL after `grace_ms`; reaps it. Any thread.
  static void Stop(pid_t pid, int grace_ms);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> work_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace vgpu::migrator::internal

#endif  // VGPU_MIGRATOR_INTERNAL_SPAWNER_H_
