// Session: one guest's OpenCL session inside a backend worker process. It
// serves the guest's connection (requests through the Executor, replies and
// callback notifications back), keeps the session log and the dirty set of
// memory objects, and offers the operations a checkpoint or a migration
// needs: freeze (no guest call runs; queues drained), thaw, the compacted
// log and memory contents, replay into a fresh session, and hand-off (tell
// the guest where the session went, then let go).
//
// Threads: one reader thread per attached guest connection runs quick calls
// itself and gives calls that may block on the device or on another guest
// thread (waits, finish, reads) a thread of their own, so that a
// clWaitForEvents cannot hold up the clSetUserEventStatus that ends it.
// Replies go out under one send lock. Control operations come from another
// thread (the worker's control socket).
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_SESSION_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_SESSION_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agents/forwarding/backend/session_log.h"
#include "agents/forwarding/executor/executor.h"
#include "agents/forwarding/protocol.capnp.h"
#include "agents/forwarding/transport.h"

namespace vgpu::forwarding::backend {

struct SessionIdentity {
  uint64_t id = 0;
  std::string token;    // 32 random bytes; a resume must present them
  std::string backend;  // "vgpu-cl-backend 1.0.0 on <platform>"
};

// What the guest said in its first hello.
struct GuestInfo {
  std::string vm;
  std::string library;
  uint32_t abi_major = 0;
  uint32_t abi_minor = 0;
  std::vector<std::string> features;
};

struct MemState {
  executor::MemInfo info;
  bool dirty = false;
};

class Session {
 public:
  Session(SessionIdentity identity, std::unique_ptr<executor::Executor> exec);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Answers `hello` on `guest` and serves the connection on a reader thread
  // until it closes, a newer connection replaces it, or the session is
  // handed off. A resume must carry this session's id and token; a first
  // hello is accepted once. Refusals are answered (code + message) and the
  // connection is closed.
  // `hello_request` is the whole request, so the reply can echo its seq.
  absl::Status Attach(std::unique_ptr<Stream> guest,
                      proto::Request::Reader hello_request);
  // Blocks until no guest connection is attached and none is expected (the
  // guest closed, or the session was handed off). Used by the worker to
  // know when to exit.
  void WaitDetached();

  // --- checkpoint and migration -------------------------------------
  // Stops taking guest calls (the one in progress finishes and is answered)
  // and drains every queue. On failure (a command waits on an unset user
  // event) the session runs on and the error says why.
  absl::Status Freeze();
  void Thaw();
  bool frozen() const;

  // The compacted log plus the live events, as one replayable blob
  // (SessionLog::Encode). Frozen only.
  absl::StatusOr<std::vector<uint8_t>> SaveLog();
  // Memory objects that hold storage (no sub-buffers, no image1d_buffer
  // views). `clear_dirty`: a pre-copy round takes the dirty set.
  std::vector<MemState> Mems(bool clear_dirty);
  // Reads a range of a memory object's contents. While the session runs
  // (pre-copy), guest calls wait and the queues drain around the read, so
  // the bytes are consistent; a command enqueued later marks it dirty again.
  absl::Status ReadMem(uint64_t id, void* dst, uint64_t offset,
                       uint64_t bytes);

  // Restore into a fresh session (no guest attached yet): replays `log`,
  // then WriteMem the contents, then Activate.
  absl::Status Replay(absl::Span<const uint8_t> log);
  absl::Status WriteMem(uint64_t id, const void* src, uint64_t offset,
                        uint64_t bytes);
  // The restored session takes the identity its guest knows (the source's
  // session id and token) and may now be resumed. `guest` is what the
  // source knew of it (for describe). Only before any guest attached.
  absl::Status Activate(const GuestInfo& guest, uint64_t session,
                        const std::string& token);

  // Source, frozen: tells the guest to reconnect to `address` and resume
  // this session there (same id and token), then closes the connection.
  // The session ends (WaitDetached returns).
  absl::Status HandOff(const std::string& address);

  // Ends the session now: the guest connection closes, WaitDetached
  // returns. For a worker told to quit or orphaned by its supervisor.
  void End();

  SessionIdentity identity() const;
  GuestInfo guest() const;
  bool attached() const;
  uint64_t log_entries() const;
  uint64_t log_bytes() const;
  // What the session's state depends on, for descriptors: "cl-binary:<device>"
  // when a live program came from a binary.
  std::vector<std::string> required_features() const;
  uint64_t memory_bytes() const { return exec_->memory_bytes(); }
  uint64_t calls() const { return calls_.load(); }
  // How long the oldest call still running has been running (zero when
  // none is): the worker's watchdog ends a session whose call runs past
  // its limit (a kernel that never ends).
  absl::Duration LongestCall() const;
  executor::Executor& executor() { return *exec_; }

 private:
  struct Connection;
  void ReadLoop(std::shared_ptr<Connection> conn);
  // Runs one call with its payload, records it when it succeeded, replies,
  // and ends the call `token`.
  void RunCall(const std::shared_ptr<Connection>& conn,
               const codec::Message<proto::Request>& request,
               executor::PayloadSource& payload, uint64_t token);
  void MarkDirty(proto::Request::Reader r);
  void Notify(uint64_t cookie, int32_t status);
  // Waits until calls may run, then counts one in; 0 when the session is
  // over. The token ends the call in LeaveCall.
  uint64_t EnterCall();
  void SpawnLocked(std::function<void()> fn);
  void LeaveCall(uint64_t token);

  SessionIdentity identity_;  // guarded by mu_ (Activate adopts another)
  std::unique_ptr<executor::Executor> exec_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool frozen_ = false;
  bool handed_off_ = false;
  bool activated_ = false;  // a restored session waiting for its guest
  bool ever_attached_ = false;
  int in_flight_ = 0;
  uint64_t next_call_ = 1;
  std::map<uint64_t, absl::Time> started_;  // calls in flight, by token
  GuestInfo guest_;
  SessionLog log_;
  std::set<uint64_t> dirty_;  // storage ids
  std::shared_ptr<Connection> conn_;  // the attached connection
  int threads_live_ = 0;
  std::atomic<uint64_t> calls_{0};
};

// 32 random bytes from the kernel.
std::string RandomToken();

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_SESSION_H_
