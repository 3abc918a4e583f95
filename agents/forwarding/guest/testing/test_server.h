// TestServer: the smallest backend the guest library's tests need. It
// accepts on one address, answers hello (new sessions and resumes of its
// one session), and runs every request through an Executor it shares with
// other TestServers, so that a second server can take the session over
// after a `moved`. The real backend (agents/forwarding/backend) replaces it;
// it has no session log and re-runs whatever a resume sends again.
#ifndef VGPU_AGENTS_FORWARDING_GUEST_TESTING_TEST_SERVER_H_
#define VGPU_AGENTS_FORWARDING_GUEST_TESTING_TEST_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agents/forwarding/executor/executor.h"
#include "agents/forwarding/transport.h"

namespace vgpu::forwarding::testing {

struct TestSession {
  std::shared_ptr<executor::Executor> executor;
  uint64_t id = 1;
  std::string token = std::string(32, 't');
};

class TestServer {
 public:
  static absl::StatusOr<std::unique_ptr<TestServer>> Start(
      const std::string& address, std::shared_ptr<TestSession> session);
  ~TestServer();

  // Before the next request is run: send `moved` naming `address`, then
  // close the connection (the request is left for the resumed session).
  void MoveOnNextRequest(const std::string& address);
  // The next request is never answered (the backend hangs mid-call).
  void StallOnNextRequest();
  // Stops listening and cuts every connection.
  void Kill();
  const std::string& address() const { return address_; }
  int requests() const { return requests_.load(); }
  int hellos() const { return hellos_.load(); }

 private:
  TestServer() = default;
  void AcceptLoop();
  void Serve(Stream* stream);

  std::string address_;
  std::shared_ptr<TestSession> session_;
  std::unique_ptr<Listener> listener_;
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::string move_to_ ABSL_GUARDED_BY(mu_);
  bool stall_ ABSL_GUARDED_BY(mu_) = false;
  bool killed_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> requests_{0};
  std::atomic<int> hellos_{0};
};

}  // namespace vgpu::forwarding::testing

#endif  // VGPU_AGENTS_FORWARDING_GUEST_TESTING_TEST_SERVER_H_
