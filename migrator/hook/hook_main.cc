// vgpu-libvirt-hook: libvirt's qemu hook for vgpu-migrate (hook.h), and
// its installer.
//
//   vgpu-libvirt-hook [OPTIONS] DOMAIN OPERATION SUB-OPERATION EXTRA < XML
//   vgpu-libvirt-hook install [--hooks-dir DIR] [OPTIONS]
//
// OPTIONS: --socket PATH (vgpud's control socket), --timeout SECONDS (the
// whole invocation), --state-dir DIR. Exit status: 0 to let libvirt go on,
// 1 to refuse (libvirt cancels the operation), 2 for a usage error.
#include <limits.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "migrator/hook/domain_xml.h"
#include "migrator/hook/hook.h"

namespace {

constexpr char kUsage[] =
    "usage: vgpu-libvirt-hook [OPTIONS] DOMAIN OPERATION SUB-OPERATION EXTRA\n"
    "       vgpu-libvirt-hook install [--hooks-dir DIR] [OPTIONS]\n"
    "\n"
    "libvirtd runs the hook with the domain XML on stdin. For domains that\n"
    "carry vgpu-migrate's metadata it refuses incoming migrations and\n"
    "restores this host cannot run (migrate/restore begin); on an incoming\n"
    "migration it has vgpud pull the vGPUs from the source, which moves\n"
    "them with the guest (they stop when libvirt pauses it and run here\n"
    "once it runs here), and names this host's devices in the domain XML.\n"
    "It registers the VM with vgpud or restores its vGPU state before QEMU\n"
    "starts (prepare begin), saves the vGPU state when the domain stops\n"
    "(stopped end) and lets vgpud forget it when libvirt releases it\n"
    "(release end). docs/LIBVIRT.md has the details.\n"
    "`install` writes HOOKS_DIR/qemu.d/50-vgpu-migrate (default HOOKS_DIR\n"
    "/etc/libvirt/hooks) to run this binary with the same options.\n"
    "\n"
    "options:\n"
    "  --socket PATH      vgpud's control socket (/run/vgpud/control.sock)\n"
    "  --timeout SECONDS  bound on one invocation (20)\n"
    "  --state-dir DIR    the hook's own state (/run/vgpud/libvirt-hook)\n"
    "  --hooks-dir DIR    install: libvirt's hooks directory\n";

std::string Self() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  vgpu::hook::HookOptions options;
  std::string hooks_dir = "/etc/libvirt/hooks";
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "vgpu-libvirt-hook: %s needs a value\n%s", flag,
                     kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--socket") {
      options.socket = value("--socket");
    } else if (a == "--state-dir") {
      options.state_dir = value("--state-dir");
    } else if (a == "--hooks-dir") {
      hooks_dir = value("--hooks-dir");
    } else if (a == "--timeout") {
      int secs = 0;
      if (!absl::SimpleAtoi(value("--timeout"), &secs) || secs < 1 ||
          secs > 600) {
        std::fprintf(stderr, "vgpu-libvirt-hook: --timeout takes 1..600\n");
        return 2;
      }
      options.timeout = absl::Seconds(secs);
    } else {
      args.push_back(a);
    }
  }
  if (args.size() == 1 && args[0] == "install") {
    auto r = vgpu::hook::Install(hooks_dir, Self(), options);
    if (!r.ok()) {
      std::fprintf(stderr, "vgpu-libvirt-hook install: %s\n",
                   std::string(r.status().message()).c_str());
      return 1;
    }
    std::printf("installed %s\n", r->path.c_str());
    if (r->restart_needed) {
      std::printf("libvirtd reads its hook directories when it starts: "
                  "restart it (systemctl restart libvirtd) before the hook "
                  "takes effect\n");
    }
    return 0;
  }
  if (args.size() != 4) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  // The domain XML, bounded: more than the hook will parse is an error the
  // parser reports.
  std::string xml;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) {
    xml.append(buf, n);
    if (xml.size() > vgpu::hook::kMaxXmlBytes) break;
  }
  vgpu::hook::HookResult r = vgpu::hook::RunHook(args, xml, options);
  std::fputs(r.out.c_str(), stdout);
  std::fputs(r.err.c_str(), stderr);
  return r.exit_code;
}
