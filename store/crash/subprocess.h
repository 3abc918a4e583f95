// Runs a child process (the crash writer), reading its stdout lines as they
// come, and SIGKILLs it at a planned moment.
#ifndef VGPU_STORE_CRASH_SUBPROCESS_H_
#define VGPU_STORE_CRASH_SUBPROCESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vgpu::store::crash {

// When to kill the child: `ms` milliseconds after it prints the first line
// that starts with `after_line`, or, when `after_line` is empty, `ms` after
// the fork. The child is also killed if no such line has come `give_up_ms`
// after the fork. A child that exits first is not killed.
struct KillPlan {
  std::string after_line;
  double ms = 0;
  double give_up_ms = 60000;
};

struct ChildRun {
  std::vector<std::string> lines;  // complete lines only
  std::vector<double> line_ms;     // when each line was read, ms after fork
  bool killed = false;  // by us; otherwise it exited (status tells how)
  int status = 0;       // from waitpid
  double after_line_ms = -1;  // fork to the `after_line` line, when it came
  std::string stderr_text;    // when stderr_path was given
};

// Forks and execs args[0] with `args`. Its stderr goes to `stderr_path`
// (truncated; read back into ChildRun::stderr_text) or, when empty, to ours.
absl::StatusOr<ChildRun> RunChild(const std::vector<std::string>& args,
                                  const KillPlan& plan,
                                  const std::string& stderr_path = "");

// "exited with 1", "killed by SIGABRT (Aborted)", ...
std::string DescribeStatus(int status);

// Where a data dependency of this package lies in the test's runfiles.
std::string RunfilePath(const std::string& workspace_relative);

}  // namespace vgpu::store::crash

#endif  // VGPU_STORE_CRASH_SUBPROCESS_H_
