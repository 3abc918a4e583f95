// RPC connections with KJ, one event loop per thread. vgpud serves every
// accepted connection (control socket or peer port) on a thread of its own
// whose loop runs that connection alone, so handlers may block (a write
// that waits for the loader, a finish that waits for activation) without
// stalling anyone else. A job thread likewise owns the loop of its one
// outgoing peer connection and waits on it synchronously.
#ifndef VGPU_MIGRATOR_INTERNAL_RPC_LINK_H_
#define VGPU_MIGRATOR_INTERNAL_RPC_LINK_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "capnp/capability.h"
#include "capnp/rpc-twoparty.h"
#include "kj/async-io.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/tls.h"

namespace vgpu::migrator::internal {

// Socket options for peer links: big buffers for throughput, keepalive and
// TCP_USER_TIMEOUT so that a link that silently dies (a cut cable, a DROP
// rule) is noticed within `dead_after` on both sides.
void TunePeerSocket(int fd, absl::Duration dead_after);

// The client end of one RPC connection, owned by one thread.
class RpcClient {
 public:
  // TCP to addr:port. With `tls`, the handshake verifies that the server's
  // certificate names `expected_host`; without, plaintext.
  static absl::StatusOr<std::unique_ptr<RpcClient>> ConnectTcp(
      const std::string& addr, uint16_t port, const TlsFiles* tls,
      const std::string& expected_host, absl::Duration timeout,
      absl::Duration dead_after);
  static absl::StatusOr<std::unique_ptr<RpcClient>> ConnectUnix(
      const std::string& path);
  ~RpcClient();

  template <typename T>
  typename T::Client Bootstrap() {
    return client_->bootstrap().castAs<T>();
  }
  kj::WaitScope& wait_scope() { return io_.waitScope; }
  kj::Timer& timer() { return io_.provider->getTimer(); }

  // Waits for `promise` at most `timeout`: a KJ exception becomes
  // UNAVAILABLE ("<doing>: <why>"), the timeout DEADLINE_EXCEEDED.
  template <typename T>
  absl::StatusOr<T> Wait(kj::Promise<T>&& promise, absl::Duration timeout,
                         const std::string& doing) {
    absl::StatusOr<T> out = absl::InternalError("unset");
    auto timed = timer().timeoutAfter(
        absl::ToInt64Milliseconds(timeout) * kj::MILLISECONDS,
        kj::mv(promise));
    KJ_IF_MAYBE(e, kj::runCatchingExceptions(
                       [&] { out = timed.wait(io_.waitScope); })) {
      if (e->getType() == kj::Exception::Type::OVERLOADED &&
          e->getDescription().startsWith("operation timed out")) {
        return absl::DeadlineExceededError(absl::StrCat(
            doing, ": no answer within ", absl::FormatDuration(timeout)));
      }
      return FromKjException(*e, doing);
    }
    return out;
  }

  // Runs the loop for whatever is ready, without blocking.
  void Poll() { io_.waitScope.poll(); }

 private:
  RpcClient();
  kj::AsyncIoContext io_;
  std::unique_ptr<PeerTls> tls_;
  kj::Own<kj::AsyncIoStream> stream_;
  kj::Own<capnp::TwoPartyClient> client_;
};

// Whether the authenticated peer of a connection may call itself `host`:
// with TLS, its certificate must name that host; a plaintext (loopback
// demo) link accepts any name.
using PeerNameCheck = std::function<bool(const std::string& host)>;

// Serves one accepted connection on the calling thread until it
// disconnects. With `tls`, performs the server handshake first (bounded by
// `handshake_timeout`), requiring a client certificate from the cluster CA.
// `make_bootstrap` is called on this thread once the link is up, with the
// check of the peer's name. Failures are reported through `log` (the
// connection is then closed).
void ServeConnection(
    int fd, const TlsFiles* tls, absl::Duration handshake_timeout,
    const std::function<capnp::Capability::Client(PeerNameCheck)>&
        make_bootstrap,
    const std::function<void(const std::string&)>& log);

}  // namespace vgpu::migrator::internal

#endif  // VGPU_MIGRATOR_INTERNAL_RPC_LINK_H_
