// Server: the Unix-socket front of vgpu-emu-device. It accepts clients,
// reads each one's hello (guest or agent), then serves its requests on a
// thread of its own, so that a guest blocked on a quiesced device never
// holds up the agent. At most one agent is attached at a time.
//
// Serve() runs on the caller's thread until its stop descriptor becomes
// readable, then shuts the device down, wakes and joins every client
// thread and removes the socket. The EmuGpu must outlive the Server.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_SERVER_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_SERVER_H_

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agents/emulated/internal/emu_gpu.h"
#include "agents/emulated/internal/wire.h"

namespace vgpu::agents::emulated::internal {

class Server {
 public:
  using Log = std::function<void(const std::string&)>;
  Server(EmuGpu* gpu, std::string socket_path, Log log);
  ~Server();

  // Binds the socket (mode 0600; a stale socket file is replaced).
  absl::Status Listen();
  absl::Status Serve(int stop_fd);

 private:
  struct Client {
    UniqueFd fd;
    uint64_t id = 0;  // for the log
    std::thread thread;
    std::atomic<bool> done{false};
  };
  enum class Role { kGuest, kAgent };

  void ServeClient(Client* client);
  // Fills `out` for `request` from a client of `role`; may set `*pass_fd`
  // to a descriptor to send with the response (owned by the caller).
  void Handle(Role role, proto::Request::Reader request,
              proto::Response::Builder out, UniqueFd* pass_fd);
  void HandleGuest(proto::Request::Reader request,
                   proto::Response::Builder out);
  void HandleAgent(proto::Request::Reader request, proto::Response::Builder out,
                   UniqueFd* pass_fd);
  void FillInfo(proto::Info::Builder info);
  void ReapFinished();

  EmuGpu* const gpu_;
  const std::string socket_path_;
  const Log log_;
  UniqueFd listen_fd_;
  std::list<std::unique_ptr<Client>> clients_;  // the Serve thread's
  absl::Mutex mu_;
  bool agent_attached_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_client_id_ = 1;  // the Serve thread's
};

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_SERVER_H_
