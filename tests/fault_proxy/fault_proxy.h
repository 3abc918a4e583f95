// FaultProxy: a userspace TCP proxy that injects link faults (delay, a
// bandwidth cap, silent drop, reset mid-stream, bit flips, refused
// connections) between a migration source and its destination, because the
// test hosts have no netem. Used by end-to-end tests (RELIABILITY.md,
// scenario 13) in-process or through the vgpu-fault-proxy binary.
//
// Threading: one accept thread, plus one poll() loop thread per proxied
// connection that owns both of its sockets. Every public method is
// thread-safe and may be called from any thread while traffic flows; fault
// changes reach live connections within one loop turn. Stop() (also run by
// the destructor) must not be called from the optional log callback.
#ifndef VGPU_TESTS_FAULT_PROXY_FAULT_PROXY_H_
#define VGPU_TESTS_FAULT_PROXY_FAULT_PROXY_H_

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace vgpu::fault_proxy {

// Which way bytes travel. Faults are configured per direction; setters take
// kBoth to change the two at once.
enum class Direction { kClientToUpstream, kUpstreamToClient, kBoth };

// "client->upstream", "upstream->client" or "both", for logs and replies.
absl::string_view DirectionName(Direction direction);

// The faults of one direction. Zero values mean "no fault".
struct LinkFaults {
  // Every chunk read is held this long before it is forwarded (order kept):
  // a long or congested path.
  absl::Duration delay = absl::ZeroDuration();
  // Forwarding rate cap in bytes per second, per connection; 0: unlimited.
  // A thin link; the sender is slowed by TCP backpressure.
  uint64_t bandwidth_bytes_per_s = 0;
  // Read and silently discard (FIN included): a cut link where packets
  // vanish. The connection stays open, so only the peers' timeouts notice.
  bool drop = false;
  // After this many bytes were forwarded in this direction on a connection
  // (counted from its start), both sockets are closed with RST; 0: never.
  uint64_t reset_after_bytes = 0;
  // Flip one bit of every N-th byte of the stream (offsets N-1, 2N-1, ...);
  // 0: never. Corruption that TCP checksums missed.
  uint64_t flip_every_bytes = 0;
  // Flip one bit of the byte at this stream offset of each connection.
  std::optional<uint64_t> flip_at_offset;
};

struct FaultProxyOptions {
  // "ADDR:PORT" to listen on ("[v6]:PORT" for IPv6); port 0 picks one, see
  // FaultProxy::port().
  std::string listen = "127.0.0.1:0";
  // "ADDR:PORT" each accepted connection is forwarded to.
  std::string upstream;
  // Chooses which bit of a byte is flipped; runs are repeatable per seed.
  uint64_t seed = 1;
  LinkFaults client_to_upstream;
  LinkFaults upstream_to_client;
  // New connections are accepted and closed at once with RST.
  bool refuse = false;
  // How long connecting to the upstream may take before the client is reset.
  absl::Duration connect_timeout = absl::Seconds(5);
  // One line per connection event; called from proxy threads, so it must be
  // thread-safe. Empty: silent.
  std::function<void(absl::string_view)> log;
};

struct DirectionStats {
  uint64_t bytes_read = 0;       // from the sending peer
  uint64_t bytes_forwarded = 0;  // written to the receiving peer
  uint64_t bytes_dropped = 0;    // discarded while `drop` was on
  uint64_t flips = 0;            // bits flipped
};

struct FaultProxyStats {
  uint64_t connections_accepted = 0;  // refused ones included
  uint64_t connections_refused = 0;
  uint64_t connections_live = 0;
  uint64_t upstream_connect_failures = 0;
  uint64_t resets = 0;  // connections closed with RST by a fault or request
  DirectionStats client_to_upstream;
  DirectionStats upstream_to_client;
};

class FaultProxy {
 public:
  // Resolves both addresses, binds and listens, and starts accepting.
  // Errors: INVALID_ARGUMENT for a malformed address, UNAVAILABLE when the
  // listen address cannot be bound.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(
      FaultProxyOptions options);

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;
  ~FaultProxy();  // Stop()

  // The bound port, and "ADDR:PORT" as bound (numeric).
  uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }

  // Fault setters: take effect on live connections at once and on every
  // later one. flip_at defaults to client->upstream, the rest to both.
  void SetDelay(absl::Duration delay, Direction direction = Direction::kBoth);
  void SetBandwidth(uint64_t bytes_per_s,
                    Direction direction = Direction::kBoth);
  void SetDrop(bool drop, Direction direction = Direction::kBoth);
  void SetResetAfterBytes(uint64_t bytes,
                          Direction direction = Direction::kBoth);
  void SetFlipEveryBytes(uint64_t every,
                         Direction direction = Direction::kBoth);
  void SetFlipAtOffset(std::optional<uint64_t> offset,
                       Direction direction = Direction::kClientToUpstream);
  void SetSeed(uint64_t seed);
  void SetRefuse(bool refuse);

  // The faults now in force for one direction (kBoth: client->upstream).
  LinkFaults faults(Direction direction) const;
  bool refuse() const;
  FaultProxyStats stats() const;

  // Closes every live connection with RST, as a middlebox would; returns how
  // many there were.
  int ResetAllConnections();

  // Closes the listener and every connection (plain close) and joins all
  // threads. Idempotent; returns within about one poll turn.
  void Stop();

 private:
  struct Connection;
  struct Counters;
  struct Snapshot;

  FaultProxy(FaultProxyOptions options, int listen_fd, int wake_fd,
             const sockaddr_storage& upstream, socklen_t upstream_len);
  void AcceptLoop();
  void Serve(Connection* connection);
  void Reap(bool all);
  void WakeAll();
  Snapshot Snap() const;
  void Log(absl::string_view line) const;
  template <typename F>
  void Update(Direction direction, F change);

  const FaultProxyOptions options_;
  const int listen_fd_;
  const int wake_fd_;  // eventfd: wakes the accept loop
  sockaddr_storage upstream_addr_;
  socklen_t upstream_len_;
  uint16_t port_ = 0;
  std::string address_;

  mutable absl::Mutex mu_;
  std::array<LinkFaults, 2> faults_ ABSL_GUARDED_BY(mu_);
  uint64_t seed_ ABSL_GUARDED_BY(mu_);
  bool refuse_ ABSL_GUARDED_BY(mu_);
  std::list<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);

  std::unique_ptr<Counters> counters_;
  std::atomic<bool> stopping_{false};
  absl::Mutex stop_mu_;  // serializes Stop()
  std::thread accept_thread_;
};

}  // namespace vgpu::fault_proxy

#endif  // VGPU_TESTS_FAULT_PROXY_FAULT_PROXY_H_
