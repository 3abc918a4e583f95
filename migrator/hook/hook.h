// The libvirt qemu hook: libvirtd runs it synchronously as
// `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on
// stdin; a non-zero exit cancels what libvirt is doing (for the operations
// that can be cancelled), stderr goes to libvirt's log, and for `migrate`
// and `restore` whatever it prints on stdout replaces the domain XML (empty
// means unchanged). It must never call back into libvirt, and must not
// hang: every call to vgpud has a deadline inside one overall timeout.
//
// What each operation does is the table kOperations in hook.cc; domains
// without the project's metadata element are not ours and pass untouched.
// Called once per process, from main() (or a test) on one thread.
#ifndef VGPU_MIGRATOR_HOOK_HOOK_H_
#define VGPU_MIGRATOR_HOOK_HOOK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace vgpu::hook {

struct HookOptions {
  std::string socket = "/run/vgpud/control.sock";  // vgpud's control socket
  absl::Duration timeout = absl::Seconds(20);      // the whole invocation
  // Where the hook remembers, between `restore begin` and `prepare begin`
  // of the same domain, that the start is a restore.
  std::string state_dir = "/run/vgpud/libvirt-hook";
};

struct HookResult {
  int exit_code = 0;
  std::string out;  // stdout: a rewritten domain XML, or nothing
  std::string err;  // stderr: one line per thing worth libvirt's log
};

// `args` are the four arguments libvirt passes; `xml` is stdin.
HookResult RunHook(const std::vector<std::string>& args, const std::string& xml,
                   const HookOptions& options);

// Writes `hooks_dir/qemu.d/50-vgpu-migrate`, a script that runs `binary`
// with these options, and returns what to tell the user (including that
// libvirtd must be restarted when qemu.d did not exist before).
struct InstallResult {
  std::string path;
  bool restart_needed = false;
};
absl::StatusOr<InstallResult> Install(const std::string& hooks_dir,
                                      const std::string& binary,
                                      const HookOptions& options);

}  // namespace vgpu::hook

#endif  // VGPU_MIGRATOR_HOOK_HOOK_H_
