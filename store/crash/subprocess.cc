#include "store/crash/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace vgpu::store::crash {
namespace {

using Clock = std::chrono::steady_clock;

Clock::duration FromMs(double ms) {
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(ms));
}

}  // namespace

std::string RunfilePath(const std::string& workspace_relative) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && workspace != nullptr) {
    std::string p = absl::StrCat(srcdir, "/", workspace, "/", workspace_relative);
    if (access(p.c_str(), F_OK) == 0) return p;
  }
  return workspace_relative;  // a test's working directory is the runfiles root
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* abbrev = sigabbrev_np(WTERMSIG(status));
    return absl::StrCat("killed by SIG", abbrev ? abbrev : "?", " (",
                        strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat("wait status ", status);
}

absl::StatusOr<ChildRun> RunChild(const std::vector<std::string>& args,
                                  const KillPlan& plan,
                                  const std::string& stderr_path) {
  ChildRun run;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  int err_fd = -1;
  if (!stderr_path.empty()) {
    err_fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0644);
    if (err_fd < 0) {
      close(fds[0]);
      close(fds[1]);
      return absl::InternalError(
          absl::StrCat("open ", stderr_path, ": ", std::strerror(errno)));
    }
  }
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const Clock::time_point start = Clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    dup2(fds[1], STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  if (err_fd >= 0) close(err_fd);
  if (pid < 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }

  std::string buffer;
  auto take_lines = [&] {
    size_t nl;
    while ((nl = buffer.find('\n')) != std::string::npos) {
      run.lines.push_back(buffer.substr(0, nl));
      run.line_ms.push_back(
          std::chrono::duration<double, std::milli>(Clock::now() - start)
              .count());
      buffer.erase(0, nl + 1);
      if (!plan.after_line.empty() && run.after_line_ms < 0 &&
          absl::StartsWith(run.lines.back(), plan.after_line)) {
        run.after_line_ms =
            std::chrono::duration<double, std::milli>(Clock::now() - start)
                .count();
      }
    }
  };
  Clock::time_point deadline =
      start + FromMs(plan.after_line.empty() ? plan.ms : plan.give_up_ms);
  bool eof = false;
  char chunk[4096];
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
        deadline - Clock::now());
    if (left.count() <= 0) break;
    struct timespec ts;
    ts.tv_sec = left.count() / 1000000000;
    ts.tv_nsec = left.count() % 1000000000;
    struct pollfd p = {fds[0], POLLIN, 0};
    int r = ppoll(&p, 1, &ts, nullptr);
    if (r <= 0) continue;  // timeout or EINTR: the loop condition decides
    ssize_t n = read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
      break;
    }
    const bool had_line = run.after_line_ms >= 0;
    buffer.append(chunk, static_cast<size_t>(n));
    take_lines();
    if (!had_line && run.after_line_ms >= 0) {
      deadline = Clock::now() + FromMs(plan.ms);
    }
  }
  if (!eof) {
    kill(pid, SIGKILL);
    run.killed = true;
  }
  for (;;) {  // whatever it wrote before it died
    ssize_t n = read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
  }
  take_lines();  // a partial last line is dropped
  close(fds[0]);
  while (waitpid(pid, &run.status, 0) < 0 && errno == EINTR) {
  }
  if (run.killed &&
      !(WIFSIGNALED(run.status) && WTERMSIG(run.status) == SIGKILL)) {
    run.killed = false;  // it had ended by itself just before the kill
  }
  if (!stderr_path.empty()) {
    std::ifstream in(stderr_path);
    std::stringstream ss;
    ss << in.rdbuf();
    run.stderr_text = ss.str();
  }
  return run;
}

}  // namespace vgpu::store::crash
