// The two process roles of vgpu-cl-backend.
//
// The supervisor listens for guests and for control clients. It reads each
// guest's hello, checks the library's ABI, and hands the connection (the
// file descriptor itself, over a Unix socket) to the worker process that
// owns the session: a new worker for a new session, the existing one for a
// resume. Each session runs in its own worker process, so a session that
// crashes the OpenCL runtime (a kernel writing out of bounds on a CPU
// device), exhausts its memory or hangs in a kernel ends alone; the
// supervisor never touches OpenCL itself.
//
// A worker serves one Session: the guest connection(s) the supervisor hands
// it, and its own control socket (run_dir/s<ID>.ctl) for checkpoints and
// migration. It exits when its guest leaves, when the session is handed off
// to another backend, or on `quit`.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_WORKER_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_WORKER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace vgpu::forwarding {
class Stream;
}

namespace vgpu::forwarding::backend {

struct WorkerOptions {
  uint64_t session = 0;
  std::string token;            // raw 32 bytes
  std::string control_address;  // unix:<run_dir>/s<ID>.ctl
  std::string guest_address;    // the supervisor's, for describe
  int attach_fd = -1;           // from the supervisor: hellos + guest fds
  uint64_t memory_limit = 0;
  bool target = false;          // created empty, for a restore
  // A call (a kernel that never ends, a wait that never returns) running
  // longer than this ends the session; 0: no limit.
  uint64_t call_limit_ms = 0;
};

class Session;

// Serves one control connection (control.capnp) for `session` until it
// closes. Returns true when the client asked the worker to quit. Exposed
// for tests that run a session in-process.
bool ServeSessionControl(vgpu::forwarding::Stream& stream, Session& session,
                         const WorkerOptions& options);

// Runs a worker until its session ends; returns the process exit code.
int RunWorker(const WorkerOptions& options);

struct SupervisorOptions {
  std::string guest_address;    // unix:... or tcp:...
  std::string control_address;  // unix:...
  std::string run_dir;          // worker control sockets
  std::string self;             // this executable, to start workers
  uint64_t memory_limit = 0;    // per session
  uint32_t max_sessions = 64;
  uint64_t call_limit_ms = 0;   // per call, for every worker; 0: none
  bool quiet = false;
};

// Runs the supervisor until SIGINT/SIGTERM; returns the exit code.
int RunSupervisor(const SupervisorOptions& options);

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_WORKER_H_
