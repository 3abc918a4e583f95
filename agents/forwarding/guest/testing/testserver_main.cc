// vgpu-cl-testserver --listen ADDRESS [--memory-limit BYTES]: the guest
// tests' backend as a process, for the ICD loader and clinfo by hand:
//   vgpu-cl-testserver --listen unix:/tmp/cl.sock &
//   VGPU_CL_BACKEND=unix:/tmp/cl.sock OCL_ICD_VENDORS=DIR clinfo
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/synchronization/notification.h"
#include "agents/forwarding/guest/testing/test_server.h"

int main(int argc, char** argv) {
  std::string listen;
  vgpu::forwarding::executor::ExecutorOptions o;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--listen") && i + 1 < argc) {
      listen = argv[++i];
    } else if (!std::strcmp(argv[i], "--memory-limit") && i + 1 < argc) {
      o.memory_limit_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s --listen ADDRESS [--memory-limit BYTES]\n",
                   argv[0]);
      return 2;
    }
  }
  if (listen.empty()) {
    std::fprintf(stderr, "usage: %s --listen ADDRESS\n", argv[0]);
    return 2;
  }
  auto e = vgpu::forwarding::executor::Executor::Create(o);
  if (!e.ok()) {
    std::fprintf(stderr, "vgpu-cl-testserver: %s\n", e.status().ToString().c_str());
    return 1;
  }
  auto session = std::make_shared<vgpu::forwarding::testing::TestSession>();
  session->executor = std::move(*e);
  auto s = vgpu::forwarding::testing::TestServer::Start(listen, session);
  if (!s.ok()) {
    std::fprintf(stderr, "vgpu-cl-testserver: %s\n", s.status().ToString().c_str());
    return 1;
  }
  std::printf("listening on %s\n", (*s)->address().c_str());
  std::fflush(stdout);
  absl::Notification forever;
  forever.WaitForNotification();
  return 0;
}
