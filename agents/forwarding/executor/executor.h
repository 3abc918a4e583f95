// Executor: runs one session's forwarded OpenCL calls on the host's real
// OpenCL platform (PoCL here, NVIDIA's on GPU hosts), through the ICD loader.
//
// It owns the session's id -> cl_* object table: the guest names every
// object by an id (protocol.capnp, "Handles"), the executor maps ids to real
// objects, translates handles in info values to ids and back, and refuses an
// id the session does not own with the CL error the native call would give
// for a bad handle (CL_INVALID_CONTEXT, CL_INVALID_MEM_OBJECT, ...), so a
// session can never reach another session's objects. It also enforces the
// session's memory limit (buffers and images, counted at creation).
//
// The executor knows nothing about sockets, logs or checkpoints: Session
// (session.h) feeds it requests and payloads and records what it returns;
// the checkpoint code uses the inspection methods at the end.
//
// Thread safety: Execute may be called from several threads at once (a
// blocking clWaitForEvents on one thread while another sets the user
// event's status); the executor locks its tables itself and never holds a
// lock across a blocking OpenCL call.
#ifndef VGPU_AGENTS_FORWARDING_EXECUTOR_EXECUTOR_H_
#define VGPU_AGENTS_FORWARDING_EXECUTOR_EXECUTOR_H_

#include <CL/cl.h>
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agents/forwarding/protocol.capnp.h"

namespace vgpu::forwarding::executor {

// Where a request's payload comes from: the guest's socket, or (in a
// restore replay) zeros, since contents are restored separately.
class PayloadSource {
 public:
  virtual ~PayloadSource() = default;
  // Bytes the request carries.
  virtual uint64_t size() const = 0;
  // Reads the next n bytes into dst (n in total never exceeds size()).
  virtual absl::Status ReadInto(void* dst, size_t n) = 0;
};

// Where a reply's payload goes. Execute calls Send at most once, with the
// whole payload as pieces that stay valid during the call (for example a
// mapped device buffer), after filling the reply message.
using PayloadSink = std::function<absl::Status(
    capnp::MessageBuilder& reply, const std::vector<iovec>& payload)>;

struct ExecutorOptions {
  uint64_t memory_limit_bytes = 0;  // 0: no limit
  // Which platform of the host is served; platforms and devices get ids
  // kPlatformIdBase + index and kDeviceIdBase + index.
  uint32_t platform_index = 0;
};

inline constexpr uint64_t kPlatformIdBase = 0x100;
inline constexpr uint64_t kDeviceIdBase = 0x200;
// Ids the guest assigns are at or above this (the library starts there).
inline constexpr uint64_t kFirstGuestId = 0x10000;

// A live memory object, for checkpoints.
struct MemInfo {
  uint64_t id = 0;
  cl_mem mem = nullptr;
  uint64_t context = 0;        // context id
  cl_mem_object_type type = 0; // CL_MEM_OBJECT_BUFFER, ..._IMAGE2D, ...
  uint64_t bytes = 0;          // buffer size; image: row pitch * height * depth (packed)
  uint64_t parent = 0;         // sub-buffer / image1d_buffer: the id holding the storage
  // Images: width, height, depth (1 for unused dimensions; array layers in
  // depth) and the packed row and slice pitch of their contents.
  size_t region[3] = {0, 0, 0};
  size_t row_pitch = 0;
  size_t slice_pitch = 0;
};

// A live event, for checkpoints (restored through Request.restoreEvent).
struct EventInfo {
  uint64_t id = 0;
  uint64_t context = 0;
  uint64_t queue = 0;          // 0: user event
  cl_command_type command_type = 0;
  cl_int status = 0;
};

class Executor {
 public:
  static absl::StatusOr<std::unique_ptr<Executor>> Create(
      const ExecutorOptions& options);
  virtual ~Executor() = default;

  // Runs `request` (anything but hello, which Session answers) and fills
  // `reply` (seq already set by the caller; code, message and the result
  // union by the executor). Takes exactly payload.size() bytes from
  // `payload`, whatever the outcome, so the stream stays in step. Sends the
  // reply through `sink` when it has a payload (reads); otherwise returns
  // with `reply` filled and the caller sends it. A non-OK status means the
  // session cannot go on (the payload could not be read): the caller ends
  // the connection. CL errors are not statuses: they go in reply.code.
  // `replay` is true while a restore replays the session log (enables
  // restoreEvent).
  virtual absl::Status Execute(proto::Request::Reader request,
                               PayloadSource& payload,
                               proto::Reply::Builder reply,
                               capnp::MessageBuilder& reply_message,
                               const PayloadSink& sink, bool replay) = 0;

  // Installs where event callbacks go: when an event given to
  // setEventCallback reaches its status, `notifier(cookie, status)` runs on
  // an OpenCL implementation thread (so it must not block for long nor call
  // back into the executor's Execute synchronously with a lock it needs).
  // Callbacks that fire with no notifier installed are dropped.
  virtual void SetNotifier(
      std::function<void(uint64_t cookie, cl_int status)> notifier) = 0;

  // --- For checkpoints and restores (the session is frozen) ------------
  // clFinish on every live queue. FAILED_PRECONDITION, naming the event,
  // when a command still waits on a user event that is not set (the queue
  // cannot drain).
  virtual absl::Status Drain() = 0;
  virtual std::vector<MemInfo> LiveMems() = 0;
  virtual std::vector<EventInfo> LiveEvents() = 0;
  // Reads or writes a memory object's whole contents (as MemInfo.bytes,
  // images packed) through an internal queue on the object's context.
  virtual absl::Status ReadMem(uint64_t id, void* dst, uint64_t offset,
                               uint64_t bytes) = 0;
  virtual absl::Status WriteMem(uint64_t id, const void* src, uint64_t offset,
                                uint64_t bytes) = 0;
  // Device memory the session's objects hold now.
  virtual uint64_t memory_bytes() const = 0;
  // What the backend runs on, for descriptors: platform name, device name,
  // vendor, device type string ("pthread-cpu", "hopper").
  virtual std::string platform_name() const = 0;
  virtual std::string device_name() const = 0;
};

}  // namespace vgpu::forwarding::executor

#endif  // VGPU_AGENTS_FORWARDING_EXECUTOR_EXECUTOR_H_
