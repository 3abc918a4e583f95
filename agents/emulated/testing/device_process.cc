#include "agents/emulated/testing/device_process.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace vgpu::agents::emulated::testing {
namespace {

std::atomic<int> g_counter{0};

bool CanConnect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // A bare connect is enough: the device logs nothing for a client that
  // never says hello and leaves at once.
  const bool ok =
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// Waits for `pid` up to `timeout`; returns the wait status or -1.
int WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    if (absl::Now() >= end) return -1;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

}  // namespace

std::string RunfilePath(const std::string& package_relative) {
  const std::string rel = absl::StrCat("agents/emulated/", package_relative);
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && workspace != nullptr) {
    std::string p = absl::StrCat(srcdir, "/", workspace, "/", rel);
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return rel;  // relative to the runfiles root (the test's cwd)
}

absl::StatusOr<std::unique_ptr<DeviceProcess>> DeviceProcess::Start(
    const DeviceProcessOptions& options) {
  std::unique_ptr<DeviceProcess> p(new DeviceProcess());
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string base = tmp != nullptr ? tmp : "/tmp";
  p->dir_ = absl::StrCat(base, "/dev-", getpid(), "-", g_counter++, "-",
                         options.name);
  if (mkdir(p->dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::InternalError(
        absl::StrCat("mkdir ", p->dir_, ": ", std::strerror(errno)));
  }
  p->socket_path_ = p->dir_ + "/control.sock";
  if (p->socket_path_.size() >= sizeof(sockaddr_un::sun_path)) {
    char link[] = "/tmp/vgpu-emu-XXXXXX";
    if (mkdtemp(link) == nullptr) {
      return absl::InternalError(
          absl::StrCat("mkdtemp: ", std::strerror(errno)));
    }
    // mkdtemp made a directory to reserve the name; swap it for the link.
    rmdir(link);
    if (symlink(p->dir_.c_str(), link) != 0) {
      return absl::InternalError(
          absl::StrCat("symlink: ", std::strerror(errno)));
    }
    p->link_ = link;
    p->socket_path_ = p->link_ + "/control.sock";
  }

  std::vector<std::string> args = {RunfilePath("vgpu-emu-device"),
                                   "--socket",
                                   p->socket_path_,
                                   "--vram",
                                   options.vram,
                                   "--name",
                                   options.name};
  if (options.incoming) args.push_back("--incoming");
  if (options.command_latency_us > 0) {
    args.push_back("--command-latency-us");
    args.push_back(absl::StrCat(options.command_latency_us));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    execv(argv[0], argv.data());
    _exit(127);
  }
  p->pid_ = pid;
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (!CanConnect(p->socket_path_)) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->pid_ = -1;
      return absl::InternalError(absl::StrCat(
          "vgpu-emu-device exited before listening (status ", status, ")"));
    }
    if (absl::Now() >= end) {
      return absl::DeadlineExceededError("vgpu-emu-device did not listen");
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return p;
}

int DeviceProcess::Stop() {
  if (pid_ < 0) return -1;
  kill(pid_, SIGTERM);
  int status = WaitFor(pid_, absl::Seconds(5));
  if (status == -1) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    status = -1;
  }
  pid_ = -1;
  return status;
}

DeviceProcess::~DeviceProcess() {
  Stop();
  if (!link_.empty()) unlink(link_.c_str());
}

}  // namespace vgpu::agents::emulated::testing
