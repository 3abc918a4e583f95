// Client: the guest library's connection to the backend (protocol.capnp).
//
// Calls are synchronous for the calling thread but many threads may call at
// once: each call gets the next seq, is sent under the write lock and waits
// for the reply that the reader thread matches to it by seq. The reply's
// payload (read data) is received by the reader straight into the memory
// the caller named, so a buffer read goes socket -> application memory.
//
// Sessions survive their connection: on a `moved` notification, or when the
// connection breaks, the reader dials again (the new address, or the same
// one until the reconnect window runs out, since a VM's channel may be
// re-plugged to a new host), resumes the session with its token and the
// last seq it got a reply for, and sends again, in seq order, every request
// still without a reply. Each such request's message and payload pointers
// stay valid until its reply: the caller is blocked on it. When the session
// cannot be resumed, every pending and later call fails with
// CL_OUT_OF_RESOURCES; no call ever waits forever on a dead backend.
//
// Notifications of event callbacks run the handler on a callback thread of
// the client's own, never on the reader (the handler may make calls) and
// never under a client lock.
#ifndef VGPU_AGENTS_FORWARDING_GUEST_CLIENT_H_
#define VGPU_AGENTS_FORWARDING_GUEST_CLIENT_H_

#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agents/forwarding/protocol.capnp.h"
#include "agents/forwarding/transport.h"
#include "state-codecs/message.h"

namespace vgpu::forwarding::guest {

// The code a call gets when the backend is gone for good.
inline constexpr int32_t kBackendLost = -5;  // CL_OUT_OF_RESOURCES

struct ClientOptions {
  std::string address = "unix:/run/vgpu/cl.sock";
  std::string vm;
  absl::Duration reconnect_window = absl::Seconds(10);
  std::string library = "libvgpu-opencl 1.0.0";
};

// One call: the request (the client sets its seq), the payload it carries,
// and where the reply's payload goes.
struct Call {
  Call() { request = message.initRoot<proto::Request>(); }
  capnp::MallocMessageBuilder message;
  proto::Request::Builder request = nullptr;
  std::vector<iovec> payload;
  // The reply payload goes to `recv` when it fits in recv_size bytes, else
  // into `recv_bytes`.
  void* recv = nullptr;
  uint64_t recv_size = 0;
  std::vector<uint8_t> recv_bytes;
  uint64_t received = 0;

  // Filled when the reply is in.
  codec::Message<proto::Reply> reply;
  bool done = false;
  bool lost = false;  // the backend is gone: code is kBackendLost
};

class Client {
 public:
  // Dials, says hello and starts the reader. An error says why (the backend
  // refused the hello, or could not be reached) for the library to print.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends `call` and blocks until its reply; returns the reply's code (or
  // kBackendLost).
  int32_t Run(Call& call);

  void SetCallbackHandler(std::function<void(uint64_t cookie, int32_t status)> fn);

  uint64_t session() const;
  std::string backend() const { return backend_; }
  // Connections made so far (1 + resumes), for tests.
  int connections() const;
  // True once calls can no longer succeed.
  bool lost() const;

 private:
  explicit Client(ClientOptions options) : options_(std::move(options)) {}
  // Dials `address` and says hello (a resume when session_ != 0). Returns
  // the stream ready for requests; FAILED_PRECONDITION when the backend
  // answered with a refusal (no point retrying).
  absl::StatusOr<std::unique_ptr<Stream>> Handshake(const std::string& address,
                                                    absl::Duration timeout);
  void ReaderLoop();
  void CallbackLoop();
  // Resumes at `address` within the window; false: give up.
  bool Reconnect(const std::string& address);
  void FailAll();
  void HandleNotification(proto::Reply::Reader r);

  const ClientOptions options_;
  std::string backend_;

  // Taken for every send, and by the reader while it swaps streams and
  // sends the pending requests again, so that a request goes out exactly
  // once per connection and in seq order.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::unique_ptr<Stream> stream_;  // written under write_mu_; read by reader
  bool connected_ ABSL_GUARDED_BY(write_mu_) = false;

  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_answered_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Call*> pending_ ABSL_GUARDED_BY(mu_);
  bool lost_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t session_ ABSL_GUARDED_BY(mu_) = 0;
  std::string token_ ABSL_GUARDED_BY(mu_);
  std::string address_ ABSL_GUARDED_BY(mu_);
  int connections_ ABSL_GUARDED_BY(mu_) = 0;
  // Set by a `moved` notification: where the reader resumes next.
  std::string moved_to_ ABSL_GUARDED_BY(mu_);

  absl::Mutex cb_mu_;
  std::deque<std::pair<uint64_t, int32_t>> cb_queue_ ABSL_GUARDED_BY(cb_mu_);
  std::function<void(uint64_t, int32_t)> cb_handler_ ABSL_GUARDED_BY(cb_mu_);
  bool cb_stop_ ABSL_GUARDED_BY(cb_mu_) = false;

  std::thread reader_;
  std::thread callbacks_;
};

}  // namespace vgpu::forwarding::guest

#endif  // VGPU_AGENTS_FORWARDING_GUEST_CLIENT_H_
