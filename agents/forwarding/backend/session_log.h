// SessionLog: the calls that built a session's live OpenCL objects, kept
// compacted so that its size follows the live state, not the history.
//
// Recorded (after they succeeded): every create (contexts, queues, buffers,
// sub-buffers, images, samplers, programs from sources, binaries or built-in
// kernels, linked programs, kernels), the configuring calls (builds and
// compiles of a program, kernel arguments: the last one per index), and
// retains/releases as reference counts. Not recorded: queries, enqueued
// commands, waits. Events are not logged either: a checkpoint asks the
// executor for the live ones (Executor::LiveEvents), whose commands have
// all completed once the queues drained.
//
// Compaction: an object whose count reaches 0 is dead; its create entry
// stays only while a live entry still refers to it (a kernel to its program,
// a sub-buffer to its parent, a kernel argument to a buffer). Once nothing
// refers to it, the entry and its configuring entries go. A replay creates
// the kept dead objects and releases them after everything that needs them
// exists, so the replayed session holds what the original held.
#ifndef VGPU_AGENTS_FORWARDING_BACKEND_SESSION_LOG_H_
#define VGPU_AGENTS_FORWARDING_BACKEND_SESSION_LOG_H_

#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "agents/forwarding/protocol.capnp.h"
#include "state-codecs/message.h"

namespace vgpu::forwarding::backend {

using RequestMessage = codec::Message<proto::Request>;

// One call of a replay: a request and the payload bytes it carried (the
// replay feeds that many zero bytes; contents are restored separately).
struct ReplayCall {
  std::vector<uint8_t> request;  // encoded proto::Request (seq 0)
  uint64_t payload_bytes = 0;
};

class SessionLog {
 public:
  // Records `request` (which succeeded; `payload_bytes` is what it carried).
  // Requests that are not logged are ignored. Retain and release of ids the
  // log does not know (platforms, devices, events) are ignored too.
  void Record(proto::Request::Reader request, uint64_t payload_bytes);

  // The calls that rebuild the live objects, in order: creates and their
  // configuring calls in the order they happened, then retains for counts
  // above 1, then releases of objects kept only for others.
  std::vector<ReplayCall> Replay() const;

  // Encodes Replay() as one blob (the apiSessionLog section) and back.
  // Decoding is bounded: every request goes through DecodeMessage and must
  // be a kind the log records, within `max_calls`.
  static std::vector<uint8_t> Encode(const std::vector<ReplayCall>& calls);
  static absl::StatusOr<std::vector<ReplayCall>> Decode(
      absl::Span<const uint8_t> blob, size_t max_calls = 1 << 20);

  // Buffers and images a kernel's current arguments name (for dirty
  // tracking: a launch may write any of them).
  std::vector<uint64_t> KernelMemArgs(uint64_t kernel) const;
  // The id whose storage a memory object uses (itself for a plain buffer or
  // image; the parent for a sub-buffer; the buffer of an image1d_buffer).
  uint64_t StorageOf(uint64_t mem) const;
  // Whether `mem` was created CL_MEM_READ_ONLY (kernels cannot write it).
  bool IsReadOnly(uint64_t mem) const;

  // Whether a live program came from a binary: such a session can only be
  // replayed on a device that accepts that binary.
  bool HasBinaryPrograms() const;

  size_t entry_count() const { return entries_.size(); }
  uint64_t encoded_bytes() const;
  size_t live_objects() const;

 private:
  struct Entry {
    uint64_t order = 0;
    std::vector<uint8_t> request;   // encoded, seq cleared
    uint64_t payload_bytes = 0;
    std::vector<uint64_t> creates;  // ids this entry creates
    std::set<uint64_t> refers;      // ids it needs to exist first
  };
  struct Object {
    proto::ObjKind kind = proto::ObjKind::CONTEXT;
    uint64_t create_entry = 0;       // key in entries_
    int64_t count = 1;               // the application's references
    std::vector<uint64_t> configs;   // entries that configure it
    std::map<uint32_t, uint64_t> args;  // kernels: arg index -> entry
    std::map<uint32_t, uint64_t> arg_mems;  // kernels: arg index -> mem id
    uint64_t storage = 0;            // mems: the id holding the storage
    bool read_only = false;
  };

  uint64_t Add(proto::Request::Reader request, uint64_t payload_bytes,
               std::vector<uint64_t> creates, std::set<uint64_t> refers);
  void DropEntry(uint64_t key);
  // Removes dead objects nothing refers to, until none is left.
  void Collect();
  bool Referenced(uint64_t id) const;

  uint64_t next_order_ = 1;
  std::map<uint64_t, Entry> entries_;  // by order
  std::map<uint64_t, Object> objects_;
  // How many entries refer to each id (configuring entries do not count
  // the object they configure).
  std::map<uint64_t, int64_t> referrers_;
};

}  // namespace vgpu::forwarding::backend

#endif  // VGPU_AGENTS_FORWARDING_BACKEND_SESSION_LOG_H_
