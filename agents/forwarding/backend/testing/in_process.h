// An in-process backend session for tests: a Session on the real OpenCL
// platform, its control socket served on a thread (as a worker serves it),
// and guests attached over socketpairs (as the supervisor hands them over).
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_TESTING_IN_PROCESS_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_TESTING_IN_PROCESS_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "agents/forwarding/backend/session.h"
#include "agents/forwarding/backend/testing/raw_guest.h"
#include "agents/forwarding/backend/worker.h"
#include "agents/forwarding/transport.h"

namespace vgpu::forwarding::testing {

class InProcessSession {
 public:
  // `guest_address` is what describe reports as the backend's guest address.
  static absl::StatusOr<std::unique_ptr<InProcessSession>> Start(
      uint64_t id, uint64_t memory_limit = 0,
      const std::string& guest_address = "unix:/tmp/vgpu-test-guests");
  ~InProcessSession();

  // A guest attached through a socketpair: a new session's first hello, or
  // a resume with this session's id and token.
  absl::StatusOr<std::unique_ptr<RawGuest>> Connect(const std::string& vm,
                                                    bool resume = false);

  backend::Session& session() { return *session_; }
  const std::string& control_address() const { return options_.control_address; }
  const backend::WorkerOptions& options() const { return options_; }

 private:
  InProcessSession() = default;
  std::string dir_;
  backend::WorkerOptions options_;
  std::unique_ptr<backend::Session> session_;
  std::unique_ptr<Listener> control_;
  std::thread control_thread_;
};

}  // namespace vgpu::forwarding::testing

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_TESTING_IN_PROCESS_H_
