#include "migrator/internal/spawner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>

#include "absl/strings/str_cat.h"

namespace vgpu::migrator::internal {

Spawner::Spawner() : thread_([this] { Loop(); }) {}

Spawner::~Spawner() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Spawner::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !work_.empty(); });
    if (work_.empty()) return;
    auto fn = std::move(work_.front());
    work_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
}

absl::StatusOr<pid_t> Spawner::Spawn(const std::vector<std::string>& argv,
                                     const std::string& log_path) {
  if (argv.empty()) return absl::InvalidArgumentError("spawn: empty argv");
  std::promise<absl::StatusOr<pid_t>> result;
  auto future = result.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::CancelledError("spawn: daemon stopping");
    work_.push_back([&] {
      int log_fd = open(log_path.c_str(),
                        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (log_fd < 0) {
        result.set_value(absl::InternalError(
            absl::StrCat("open ", log_path, ": ", strerror(errno))));
        return;
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      const pid_t parent = getpid();
      pid_t pid = fork();
      if (pid == 0) {
        // Child: only async-signal-safe calls until exec.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);  // the daemon died already
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execv(args[0], args.data());
        _exit(127);
      }
      int err = errno;
      close(log_fd);
      if (pid < 0) {
        result.set_value(
            absl::InternalError(absl::StrCat("fork: ", strerror(err))));
      } else {
        result.set_value(pid);
      }
    });
  }
  cv_.notify_all();
  return future.get();
}

void Spawner::Stop(pid_t pid, int grace_ms) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int waited = 0; waited < grace_ms; waited += 10) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return;
    usleep(10 * 1000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

}  // namespace vgpu::migrator::internal
