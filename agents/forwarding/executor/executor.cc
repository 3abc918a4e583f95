// Executor over the host's real OpenCL platform: see executor.h.
//
// One table maps the session's ids to real cl_* objects (with the kind, so
// an id of the wrong kind is refused like a bad handle), and a reverse map
// turns real handles inside info values back into ids. The table lock is
// taken only to look objects up and to register or drop them; every OpenCL
// call runs outside it, so a clWaitForEvents on one thread never blocks a
// clSetUserEventStatus on another.
#include "agents/forwarding/executor/executor.h"
#include "agents/forwarding/agreed.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace vgpu::forwarding::executor {
namespace {

using proto::InfoKind;
using proto::ObjKind;

// The code the native call gives for a handle that is not an object of
// `kind`.
cl_int InvalidCode(ObjKind kind) {
  switch (kind) {
    case ObjKind::PLATFORM: return CL_INVALID_PLATFORM;
    case ObjKind::DEVICE: return CL_INVALID_DEVICE;
    case ObjKind::CONTEXT: return CL_INVALID_CONTEXT;
    case ObjKind::QUEUE: return CL_INVALID_COMMAND_QUEUE;
    case ObjKind::MEM: return CL_INVALID_MEM_OBJECT;
    case ObjKind::SAMPLER: return CL_INVALID_SAMPLER;
    case ObjKind::PROGRAM: return CL_INVALID_PROGRAM;
    case ObjKind::KERNEL: return CL_INVALID_KERNEL;
    case ObjKind::EVENT: return CL_INVALID_EVENT;
  }
  return CL_INVALID_VALUE;
}

const char* KindName(ObjKind kind) {
  switch (kind) {
    case ObjKind::PLATFORM: return "platform";
    case ObjKind::DEVICE: return "device";
    case ObjKind::CONTEXT: return "context";
    case ObjKind::QUEUE: return "command queue";
    case ObjKind::MEM: return "memory object";
    case ObjKind::SAMPLER: return "sampler";
    case ObjKind::PROGRAM: return "program";
    case ObjKind::KERNEL: return "kernel";
    case ObjKind::EVENT: return "event";
  }
  return "object";
}

// A user event some command waits on (directly or through other events),
// held so that Drain can tell whether the command can ever run even after
// the guest released the user event.
struct UserEventRef {
  UserEventRef(uint64_t id, cl_event ev) : id(id), event(ev) {
    clRetainEvent(ev);
  }
  ~UserEventRef() { clReleaseEvent(event); }
  UserEventRef(const UserEventRef&) = delete;
  UserEventRef& operator=(const UserEventRef&) = delete;
  uint64_t id;
  cl_event event;
  bool IsSet() const {
    cl_int st = CL_SUBMITTED;
    clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st,
                   nullptr);
    return st <= CL_COMPLETE;
  }
};
using Blockers = std::vector<std::shared_ptr<UserEventRef>>;

void PruneSet(Blockers& b) {
  b.erase(std::remove_if(b.begin(), b.end(),
                         [](const std::shared_ptr<UserEventRef>& r) {
                           return r->IsSet();
                         }),
          b.end());
}

struct Entry {
  ObjKind kind = ObjKind::CONTEXT;
  void* handle = nullptr;
  int64_t refs = 1;
  uint64_t context = 0;  // the owning context's id (context: itself)
  // Queues: the device; events: the queue (0: user event).
  uint64_t queue = 0;
  cl_device_id device = nullptr;
  // Memory objects.
  uint64_t counted_bytes = 0;  // toward the limit
  MemInfo mem;
  size_t elem = 0;
  // Events.
  bool user_event = false;
  bool restored = false;
  cl_command_type command_type = 0;
  cl_int restored_status = 0;
  // Events and queues: unset user events their commands wait on.
  Blockers blockers;
};

// Holds the owner's notifier so a callback that fires after the executor
// is gone finds an empty function instead of a dangling pointer.
struct NotifierBox {
  absl::Mutex mu;
  std::function<void(uint64_t, cl_int)> fn ABSL_GUARDED_BY(mu);
};

struct CallbackData {
  std::shared_ptr<NotifierBox> box;
  uint64_t cookie;
};

void CL_CALLBACK OnEvent(cl_event, cl_int status, void* user) {
  std::unique_ptr<CallbackData> data(static_cast<CallbackData*>(user));
  std::function<void(uint64_t, cl_int)> fn;
  {
    absl::MutexLock l(&data->box->mu);
    fn = data->box->fn;
  }
  if (fn) fn(data->cookie, status);
}

// Takes exactly the request's payload bytes: what a handler did not read is
// skipped at the end, so the stream stays in step whatever happened.
class CountingSource {
 public:
  explicit CountingSource(PayloadSource& src) : src_(src) {}
  uint64_t size() const { return src_.size(); }
  uint64_t left() const { return src_.size() - used_; }
  absl::Status ReadInto(void* dst, size_t n) {
    if (n > left()) {
      return absl::InvalidArgumentError("payload read past its end");
    }
    used_ += n;
    return src_.ReadInto(dst, n);
  }
  absl::Status SkipRest() {
    char scratch[64 * 1024];
    while (left() > 0) {
      const size_t n = std::min<uint64_t>(left(), sizeof(scratch));
      absl::Status s = ReadInto(scratch, n);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  PayloadSource& src_;
  uint64_t used_ = 0;
};

// A CL outcome: the code and, for refusals the backend makes itself, why.
struct Outcome {
  cl_int code = CL_SUCCESS;
  std::string message;
  bool ok() const { return code == CL_SUCCESS; }
};

Outcome Fail(cl_int code, std::string message) {
  return Outcome{code, std::move(message)};
}

std::vector<size_t> Sizes(capnp::List<uint64_t>::Reader l) {
  std::vector<size_t> v;
  for (uint64_t x : l) v.push_back(static_cast<size_t>(x));
  return v;
}

// Three entries, missing ones filled with `fill`.
void Three(capnp::List<uint64_t>::Reader l, size_t out[3], size_t fill) {
  for (unsigned i = 0; i < 3; ++i) {
    out[i] = i < l.size() ? static_cast<size_t>(l[i]) : fill;
  }
}

class ExecutorImpl : public Executor {
 public:
  explicit ExecutorImpl(const ExecutorOptions& o)
      : options_(o), notifier_(std::make_shared<NotifierBox>()) {}
  ~ExecutorImpl() override;

  absl::Status Init();
  absl::Status Execute(proto::Request::Reader request, PayloadSource& payload,
                       proto::Reply::Builder reply,
                       capnp::MessageBuilder& reply_message,
                       const PayloadSink& sink, bool replay) override;
  absl::Status Drain() override;
  std::vector<MemInfo> LiveMems() override;
  std::vector<EventInfo> LiveEvents() override;
  absl::Status ReadMem(uint64_t id, void* dst, uint64_t offset,
                       uint64_t bytes) override;
  absl::Status WriteMem(uint64_t id, const void* src, uint64_t offset,
                        uint64_t bytes) override;
  uint64_t memory_bytes() const override {
    absl::MutexLock l(&mu_);
    return used_bytes_;
  }
  std::string platform_name() const override { return platform_name_; }
  std::string device_name() const override { return device_name_; }
  void SetNotifier(std::function<void(uint64_t, cl_int)> fn) override {
    absl::MutexLock l(&notifier_->mu);
    notifier_->fn = std::move(fn);
  }

 private:
  // --- The table -----------------------------------------------------
  // The real handle of `id` when it names an object of `kind`, else the
  // native bad-handle code (or `code` when given) with a message.
  template <typename T>
  Outcome Find(uint64_t id, ObjKind kind, T* out, cl_int code = 0);
  Outcome Wait(capnp::List<uint64_t>::Reader ids, std::vector<cl_event>* out,
               Blockers* blockers);
  Outcome CheckNewId(uint64_t id);
  // Registers a created object; on an id taken meanwhile releases it.
  Outcome Register(uint64_t id, Entry e);
  cl_int ReleaseReal(ObjKind kind, void* h);
  uint64_t IdOf(void* handle);  // 0: not this session's
  uint64_t ContextOf(uint64_t id);  // the owning context's id, 0: none
  Outcome Reserve(uint64_t bytes);
  void Unreserve(uint64_t bytes);
  // The context's queue for ReadMem/WriteMem (created on first use).
  absl::StatusOr<cl_command_queue> InternalQueue(uint64_t context);
  // ReadMem and WriteMem: a byte range of a memory object's (packed)
  // contents, moved through the internal queue.
  absl::Status TransferMem(uint64_t id, uint64_t offset, uint64_t bytes,
                           void* data, bool write);

  // --- Handlers --------------------------------------------------------
  Outcome GetInfo(proto::Request::GetInfo::Reader r, proto::Reply::Builder out);
  Outcome Retain(ObjKind kind, uint64_t id);
  Outcome Release(ObjKind kind, uint64_t id);
  Outcome ContextProps(capnp::List<proto::ContextProperty>::Reader in,
                       std::vector<cl_context_properties>* out);
  Outcome CreateContext(proto::Request::CreateContext::Reader r);
  Outcome CreateContextFromType(proto::Request::CreateContextFromType::Reader r);
  Outcome CreateQueue(proto::Request::CreateQueue::Reader r);
  Outcome CreateBuffer(proto::Request::CreateBuffer::Reader r,
                       CountingSource& payload, absl::Status* io);
  Outcome CreateSubBuffer(proto::Request::CreateSubBuffer::Reader r);
  Outcome CreateImage(proto::Request::CreateImage::Reader r,
                      CountingSource& payload, absl::Status* io);
  Outcome SupportedFormats(proto::Request::GetSupportedImageFormats::Reader r,
                           proto::Reply::Builder out);
  Outcome CreateSampler(proto::Request::CreateSampler::Reader r);
  Outcome ProgramFromSource(proto::Request::CreateProgramWithSource::Reader r);
  Outcome ProgramFromBinary(proto::Request::CreateProgramWithBinary::Reader r,
                            proto::Reply::Builder out);
  Outcome ProgramBuiltIn(
      proto::Request::CreateProgramWithBuiltInKernels::Reader r);
  Outcome Devices(capnp::List<uint64_t>::Reader ids,
                  std::vector<cl_device_id>* out);
  Outcome Build(proto::Request::BuildProgram::Reader r);
  Outcome Compile(proto::Request::CompileProgram::Reader r);
  Outcome Link(proto::Request::LinkProgram::Reader r);
  Outcome CreateKernel(proto::Request::CreateKernel::Reader r);
  Outcome KernelsInProgram(proto::Request::CreateKernelsInProgram::Reader r,
                           proto::Reply::Builder out);
  Outcome SetKernelArg(proto::Request::SetKernelArg::Reader r);
  Outcome Enqueue(proto::Enqueue::Reader r, CountingSource& payload,
                  proto::Reply::Builder reply,
                  capnp::MessageBuilder& reply_message,
                  const PayloadSink& sink, absl::Status* io, bool* sent);
  Outcome WaitForEvents(capnp::List<uint64_t>::Reader ids);
  Outcome CreateUserEvent(proto::Request::CreateUserEvent::Reader r);
  Outcome SetUserEventStatus(proto::Request::SetUserEventStatus::Reader r);
  Outcome SetEventCallback(proto::Request::SetEventCallback::Reader r);
  Outcome RestoreEvent(proto::Request::RestoreEvent::Reader r);

  const ExecutorOptions options_;
  std::shared_ptr<NotifierBox> notifier_;
  cl_platform_id platform_ = nullptr;
  std::vector<cl_device_id> devices_;
  std::string platform_name_;
  std::string device_name_;

  mutable absl::Mutex mu_;
  std::map<uint64_t, Entry> objects_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<void*, uint64_t> ids_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, cl_command_queue> internal_queues_ ABSL_GUARDED_BY(mu_);
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

std::string InfoString(cl_int (*fn)(void*, cl_uint, size_t, void*, size_t*),
                       void* h, cl_uint param) {
  size_t n = 0;
  if (fn(h, param, 0, nullptr, &n) != CL_SUCCESS || n == 0) return "";
  std::string s(n, '\0');
  if (fn(h, param, n, s.data(), nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

absl::Status ExecutorImpl::Init() {
  cl_uint n = 0;
  cl_int err = clGetPlatformIDs(0, nullptr, &n);
  if (err != CL_SUCCESS || n == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no OpenCL platform on this host (clGetPlatformIDs: ", err, ")"));
  }
  if (options_.platform_index >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("platform index ", options_.platform_index,
                     " is out of range: the host has ", n, " platform(s)"));
  }
  std::vector<cl_platform_id> ps(n);
  clGetPlatformIDs(n, ps.data(), nullptr);
  platform_ = ps[options_.platform_index];
  cl_uint nd = 0;
  clGetDeviceIDs(platform_, CL_DEVICE_TYPE_ALL, 0, nullptr, &nd);
  devices_.resize(nd);
  if (nd > 0) {
    clGetDeviceIDs(platform_, CL_DEVICE_TYPE_ALL, nd, devices_.data(), nullptr);
  }
  platform_name_ = InfoString(
      reinterpret_cast<cl_int (*)(void*, cl_uint, size_t, void*, size_t*)>(
          &clGetPlatformInfo),
      platform_, CL_PLATFORM_NAME);
  if (!devices_.empty()) {
    device_name_ = InfoString(
        reinterpret_cast<cl_int (*)(void*, cl_uint, size_t, void*, size_t*)>(
            &clGetDeviceInfo),
        devices_[0], CL_DEVICE_NAME);
  }
  absl::MutexLock l(&mu_);
  ids_[platform_] = kPlatformIdBase + options_.platform_index;
  for (size_t i = 0; i < devices_.size(); ++i) {
    ids_[devices_[i]] = kDeviceIdBase + i;
  }
  return absl::OkStatus();
}

ExecutorImpl::~ExecutorImpl() {
  SetNotifier(nullptr);
  absl::MutexLock l(&mu_);
  for (auto& [ctx, q] : internal_queues_) clReleaseCommandQueue(q);
  // Release in reverse creation order of kinds, so that dependent objects
  // go before what they depend on (the real refcounts keep it safe anyway).
  static const ObjKind kOrder[] = {ObjKind::EVENT,   ObjKind::KERNEL,
                                   ObjKind::PROGRAM, ObjKind::SAMPLER,
                                   ObjKind::MEM,     ObjKind::QUEUE,
                                   ObjKind::CONTEXT};
  for (ObjKind k : kOrder) {
    for (auto& [id, e] : objects_) {
      if (e.kind != k) continue;
      for (int64_t i = 0; i < e.refs; ++i) ReleaseReal(k, e.handle);
      e.blockers.clear();
    }
  }
}

template <typename T>
Outcome ExecutorImpl::Find(uint64_t id, ObjKind kind, T* out, cl_int code) {
  const cl_int bad = code ? code : InvalidCode(kind);
  if (kind == ObjKind::PLATFORM) {
    if (id == kPlatformIdBase + options_.platform_index) {
      *out = reinterpret_cast<T>(platform_);
      return {};
    }
    return Fail(bad, absl::StrCat("platform id ", id, " is not served here"));
  }
  if (kind == ObjKind::DEVICE) {
    if (id >= kDeviceIdBase && id - kDeviceIdBase < devices_.size()) {
      *out = reinterpret_cast<T>(devices_[id - kDeviceIdBase]);
      return {};
    }
    return Fail(bad, absl::StrCat("device id ", id, " is not served here"));
  }
  absl::MutexLock l(&mu_);
  auto it = objects_.find(id);
  if (it == objects_.end()) {
    return Fail(bad, absl::StrCat("no ", KindName(kind), " with id ", id,
                                  " in this session"));
  }
  if (it->second.kind != kind) {
    return Fail(bad, absl::StrCat("id ", id, " is a ",
                                  KindName(it->second.kind), ", not a ",
                                  KindName(kind)));
  }
  *out = reinterpret_cast<T>(it->second.handle);
  return {};
}

Outcome ExecutorImpl::Wait(capnp::List<uint64_t>::Reader ids,
                           std::vector<cl_event>* out, Blockers* blockers) {
  absl::MutexLock l(&mu_);
  for (uint64_t id : ids) {
    auto it = objects_.find(id);
    if (it == objects_.end() || it->second.kind != ObjKind::EVENT) {
      return Fail(CL_INVALID_EVENT_WAIT_LIST,
                  absl::StrCat("wait list: no event with id ", id,
                               " in this session"));
    }
    out->push_back(static_cast<cl_event>(it->second.handle));
    if (blockers == nullptr) continue;
    const Entry& e = it->second;
    if (e.user_event) {
      auto ref = std::make_shared<UserEventRef>(
          id, static_cast<cl_event>(e.handle));
      if (!ref->IsSet()) blockers->push_back(std::move(ref));
    }
    for (const auto& b : e.blockers) blockers->push_back(b);
  }
  return {};
}

Outcome ExecutorImpl::CheckNewId(uint64_t id) {
  if (id < kFirstGuestId) {
    return Fail(CL_INVALID_VALUE,
                absl::StrCat("id ", id, " is below the guest range (",
                             kFirstGuestId, ")"));
  }
  absl::MutexLock l(&mu_);
  if (objects_.count(id)) {
    return Fail(CL_INVALID_VALUE, absl::StrCat("id ", id, " is already in use"));
  }
  return {};
}

Outcome ExecutorImpl::Register(uint64_t id, Entry e) {
  absl::MutexLock l(&mu_);
  if (objects_.count(id)) {
    ReleaseReal(e.kind, e.handle);
    used_bytes_ -= e.counted_bytes;
    return Fail(CL_INVALID_VALUE, absl::StrCat("id ", id, " is already in use"));
  }
  ids_[e.handle] = id;
  if (e.kind == ObjKind::MEM) e.mem.id = id;
  objects_.emplace(id, std::move(e));
  return {};
}

cl_int ExecutorImpl::ReleaseReal(ObjKind kind, void* h) {
  switch (kind) {
    case ObjKind::CONTEXT: return clReleaseContext(static_cast<cl_context>(h));
    case ObjKind::QUEUE:
      return clReleaseCommandQueue(static_cast<cl_command_queue>(h));
    case ObjKind::MEM: return clReleaseMemObject(static_cast<cl_mem>(h));
    case ObjKind::SAMPLER: return clReleaseSampler(static_cast<cl_sampler>(h));
    case ObjKind::PROGRAM: return clReleaseProgram(static_cast<cl_program>(h));
    case ObjKind::KERNEL: return clReleaseKernel(static_cast<cl_kernel>(h));
    case ObjKind::EVENT: return clReleaseEvent(static_cast<cl_event>(h));
    case ObjKind::DEVICE:
      return clReleaseDevice(static_cast<cl_device_id>(h));
    case ObjKind::PLATFORM: return CL_INVALID_VALUE;
  }
  return CL_INVALID_VALUE;
}

uint64_t ExecutorImpl::IdOf(void* handle) {
  if (handle == nullptr) return 0;
  absl::MutexLock l(&mu_);
  auto it = ids_.find(handle);
  return it == ids_.end() ? 0 : it->second;
}

uint64_t ExecutorImpl::ContextOf(uint64_t id) {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(id);
  return it == objects_.end() ? 0 : it->second.context;
}

Outcome ExecutorImpl::Reserve(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  const uint64_t limit = options_.memory_limit_bytes;
  if (limit != 0 && (bytes > limit || used_bytes_ > limit - bytes)) {
    return Fail(CL_MEM_OBJECT_ALLOCATION_FAILURE,
                absl::StrCat("session memory limit of ", limit,
                             " bytes: ", used_bytes_, " in use, ", bytes,
                             " more asked"));
  }
  used_bytes_ += bytes;
  return {};
}

void ExecutorImpl::Unreserve(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  used_bytes_ -= bytes;
}

// --- Info ---------------------------------------------------------------

ObjKind KindOfInfo(InfoKind k) {
  switch (k) {
    case InfoKind::PLATFORM: return ObjKind::PLATFORM;
    case InfoKind::DEVICE: return ObjKind::DEVICE;
    case InfoKind::CONTEXT: return ObjKind::CONTEXT;
    case InfoKind::QUEUE: return ObjKind::QUEUE;
    case InfoKind::MEM: case InfoKind::IMAGE: return ObjKind::MEM;
    case InfoKind::SAMPLER: return ObjKind::SAMPLER;
    case InfoKind::PROGRAM: case InfoKind::PROGRAM_BUILD:
      return ObjKind::PROGRAM;
    case InfoKind::KERNEL: case InfoKind::KERNEL_WORK_GROUP:
    case InfoKind::KERNEL_ARG:
      return ObjKind::KERNEL;
    case InfoKind::EVENT: case InfoKind::EVENT_PROFILING:
      return ObjKind::EVENT;
  }
  return ObjKind::CONTEXT;
}


cl_int NativeInfo(InfoKind k, void* h, void* dev, cl_uint arg, cl_uint p,
                  size_t size, void* value, size_t* ret) {
  switch (k) {
    case InfoKind::PLATFORM:
      return clGetPlatformInfo(static_cast<cl_platform_id>(h), p, size, value,
                               ret);
    case InfoKind::DEVICE:
      return clGetDeviceInfo(static_cast<cl_device_id>(h), p, size, value, ret);
    case InfoKind::CONTEXT:
      return clGetContextInfo(static_cast<cl_context>(h), p, size, value, ret);
    case InfoKind::QUEUE:
      return clGetCommandQueueInfo(static_cast<cl_command_queue>(h), p, size,
                                   value, ret);
    case InfoKind::MEM:
      return clGetMemObjectInfo(static_cast<cl_mem>(h), p, size, value, ret);
    case InfoKind::IMAGE:
      return clGetImageInfo(static_cast<cl_mem>(h), p, size, value, ret);
    case InfoKind::SAMPLER:
      return clGetSamplerInfo(static_cast<cl_sampler>(h), p, size, value, ret);
    case InfoKind::PROGRAM:
      return clGetProgramInfo(static_cast<cl_program>(h), p, size, value, ret);
    case InfoKind::PROGRAM_BUILD:
      return clGetProgramBuildInfo(static_cast<cl_program>(h),
                                   static_cast<cl_device_id>(dev), p, size,
                                   value, ret);
    case InfoKind::KERNEL:
      return clGetKernelInfo(static_cast<cl_kernel>(h), p, size, value, ret);
    case InfoKind::KERNEL_WORK_GROUP:
      return clGetKernelWorkGroupInfo(static_cast<cl_kernel>(h),
                                      static_cast<cl_device_id>(dev), p, size,
                                      value, ret);
    case InfoKind::KERNEL_ARG:
      return clGetKernelArgInfo(static_cast<cl_kernel>(h), arg, p, size, value,
                                ret);
    case InfoKind::EVENT:
      return clGetEventInfo(static_cast<cl_event>(h), p, size, value, ret);
    case InfoKind::EVENT_PROFILING:
      return clGetEventProfilingInfo(static_cast<cl_event>(h), p, size, value,
                                     ret);
  }
  return CL_INVALID_VALUE;
}

Outcome ExecutorImpl::GetInfo(proto::Request::GetInfo::Reader r,
                              proto::Reply::Builder out) {
  const InfoKind k = r.getKind();
  const cl_uint p = r.getParam();
  void* h = nullptr;
  Outcome o = Find(r.getId(), KindOfInfo(k), &h);
  if (!o.ok()) return o;
  void* dev = nullptr;
  if ((k == InfoKind::PROGRAM_BUILD || k == InfoKind::KERNEL_WORK_GROUP) &&
      r.getAux() != 0) {
    o = Find(r.getAux(), ObjKind::DEVICE, &dev);
    if (!o.ok()) return o;
  }
  const cl_uint arg = static_cast<cl_uint>(r.getAux());

  if (k == InfoKind::MEM && p == CL_MEM_HOST_PTR) {
    // The guest owns host pointers and answers this itself.
    out.initInfo(sizeof(void*));
    return {};
  }
  if (k == InfoKind::EVENT) {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(r.getId());
    if (it != objects_.end() && it->second.restored) {
      const Entry& e = it->second;
      uint64_t v = 0;
      size_t n = 0;
      switch (p) {
        case CL_EVENT_COMMAND_TYPE:
          v = e.command_type; n = sizeof(cl_command_type); break;
        case CL_EVENT_COMMAND_QUEUE: v = e.queue; n = 8; break;
        case CL_EVENT_CONTEXT: v = e.context; n = 8; break;
        case CL_EVENT_COMMAND_EXECUTION_STATUS:
          // A user event restored unset goes on living: ask the real one.
          if (e.restored_status != CL_SUBMITTED) {
            v = static_cast<uint32_t>(e.restored_status);
            n = sizeof(cl_int);
          }
          break;
        default: break;
      }
      if (n != 0) {
        std::memcpy(out.initInfo(n).begin(), &v, n);
        return {};
      }
    }
  }
  if (k == InfoKind::PROGRAM && p == CL_PROGRAM_BINARIES) {
    cl_program prog = static_cast<cl_program>(h);
    size_t n = 0;
    cl_int err = clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, 0, nullptr, &n);
    if (err != CL_SUCCESS) return Fail(err, "");
    std::vector<size_t> sizes(n / sizeof(size_t));
    err = clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, n, sizes.data(),
                           nullptr);
    if (err != CL_SUCCESS) return Fail(err, "");
    size_t total = 0;
    for (size_t s : sizes) total += s;
    auto data = out.initInfo(total);
    std::vector<unsigned char*> ptrs;
    size_t off = 0;
    for (size_t s : sizes) {
      ptrs.push_back(s ? data.begin() + off : nullptr);
      off += s;
    }
    err = clGetProgramInfo(prog, CL_PROGRAM_BINARIES,
                           ptrs.size() * sizeof(unsigned char*), ptrs.data(),
                           nullptr);
    if (err != CL_SUCCESS) {
      out.initInfo(0);
      return Fail(err, "");
    }
    return {};
  }

  size_t n = 0;
  cl_int err = NativeInfo(k, h, dev, arg, p, 0, nullptr, &n);
  if (err != CL_SUCCESS) return Fail(err, "");
  if (r.getSizeOnly()) {
    out.initInfo(n);
    return {};
  }
  std::vector<unsigned char> v(n);
  // The value is fetched even when it is empty: NVIDIA's platform answers
  // the size of a parameter it does not support (0) and refuses the value
  // (CL_INVALID_VALUE), which is what the application sees natively.
  unsigned char none[8];
  err = NativeInfo(k, h, dev, arg, p, n, n > 0 ? v.data() : none, nullptr);
  if (err != CL_SUCCESS) return Fail(err, "");
  if (IsHandleParam(k, p)) {
    for (size_t off = 0; off + 8 <= v.size(); off += 8) {
      void* real;
      std::memcpy(&real, v.data() + off, 8);
      const uint64_t id = IdOf(real);
      std::memcpy(v.data() + off, &id, 8);
    }
  } else if (k == InfoKind::CONTEXT && p == CL_CONTEXT_PROPERTIES) {
    for (size_t off = 0; off + 16 <= v.size(); off += 16) {
      cl_context_properties name;
      std::memcpy(&name, v.data() + off, 8);
      if (name == 0) break;
      if (name == CL_CONTEXT_PLATFORM) {
        void* real;
        std::memcpy(&real, v.data() + off + 8, 8);
        const uint64_t id = IdOf(real);
        std::memcpy(v.data() + off + 8, &id, 8);
      }
    }
  }
  auto data = out.initInfo(v.size());
  if (!v.empty()) std::memcpy(data.begin(), v.data(), v.size());
  return {};
}

// --- Reference counts ---------------------------------------------------

cl_int RetainReal(ObjKind kind, void* h) {
  switch (kind) {
    case ObjKind::CONTEXT: return clRetainContext(static_cast<cl_context>(h));
    case ObjKind::QUEUE:
      return clRetainCommandQueue(static_cast<cl_command_queue>(h));
    case ObjKind::MEM: return clRetainMemObject(static_cast<cl_mem>(h));
    case ObjKind::SAMPLER: return clRetainSampler(static_cast<cl_sampler>(h));
    case ObjKind::PROGRAM: return clRetainProgram(static_cast<cl_program>(h));
    case ObjKind::KERNEL: return clRetainKernel(static_cast<cl_kernel>(h));
    case ObjKind::EVENT: return clRetainEvent(static_cast<cl_event>(h));
    case ObjKind::DEVICE: return clRetainDevice(static_cast<cl_device_id>(h));
    case ObjKind::PLATFORM: return CL_INVALID_VALUE;
  }
  return CL_INVALID_VALUE;
}

Outcome ExecutorImpl::Retain(ObjKind kind, uint64_t id) {
  void* h = nullptr;
  Outcome o = Find(id, kind, &h);
  if (!o.ok()) return o;
  const cl_int err = RetainReal(kind, h);
  if (err != CL_SUCCESS) return Fail(err, "");
  if (kind == ObjKind::DEVICE || kind == ObjKind::PLATFORM) return {};
  absl::MutexLock l(&mu_);
  auto it = objects_.find(id);
  if (it != objects_.end()) ++it->second.refs;
  return {};
}

Outcome ExecutorImpl::Release(ObjKind kind, uint64_t id) {
  void* h = nullptr;
  Outcome o = Find(id, kind, &h);
  if (!o.ok()) return o;
  if (kind == ObjKind::DEVICE || kind == ObjKind::PLATFORM) {
    const cl_int err = ReleaseReal(kind, h);
    return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
  }
  cl_command_queue internal = nullptr;
  Blockers dropped;
  {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(id);
    if (it == objects_.end() || it->second.kind != kind) {
      return Fail(InvalidCode(kind), absl::StrCat("no ", KindName(kind),
                                                  " with id ", id));
    }
    if (--it->second.refs == 0) {
      used_bytes_ -= it->second.counted_bytes;
      dropped = std::move(it->second.blockers);
      ids_.erase(h);
      objects_.erase(it);
      if (kind == ObjKind::CONTEXT) {
        auto q = internal_queues_.find(id);
        if (q != internal_queues_.end()) {
          internal = q->second;
          internal_queues_.erase(q);
        }
      }
    }
  }
  if (internal != nullptr) clReleaseCommandQueue(internal);
  dropped.clear();
  const cl_int err = ReleaseReal(kind, h);
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

// --- Staged writes ----------------------------------------------------
// A non-blocking write returns at once, as it does natively, even when its
// wait list holds it back (an unset user event the application sets after
// the call returns): the bytes wait in a staging buffer that the command's
// completion frees.
namespace {
struct Staging {
  std::vector<unsigned char> bytes;
};
void CL_CALLBACK FreeStaging(cl_event, cl_int, void* p) {
  delete static_cast<Staging*>(p);
}
// After the enqueue that reads `st` (with its event in `done`): hands the
// event to the caller's `evp` when it wants one.
cl_int AfterStaged(cl_int err, Staging* st, cl_event done, cl_event* evp) {
  if (err != CL_SUCCESS) {
    delete st;
    return err;
  }
  if (clSetEventCallback(done, CL_COMPLETE, FreeStaging, st) != CL_SUCCESS) {
    clWaitForEvents(1, &done);
    delete st;
  }
  if (evp != nullptr) {
    *evp = done;
  } else {
    clReleaseEvent(done);
  }
  return CL_SUCCESS;
}
}  // namespace

// --- Contexts and queues ----------------------------------------------

Outcome ExecutorImpl::ContextProps(
    capnp::List<proto::ContextProperty>::Reader in,
    std::vector<cl_context_properties>* out) {
  for (auto p : in) {
    out->push_back(static_cast<cl_context_properties>(p.getName()));
    if (p.getName() == CL_CONTEXT_PLATFORM) {
      cl_platform_id pl = nullptr;
      Outcome o = Find(static_cast<uint64_t>(p.getValue()), ObjKind::PLATFORM,
                       &pl);
      if (!o.ok()) return o;
      out->push_back(reinterpret_cast<cl_context_properties>(pl));
    } else {
      out->push_back(static_cast<cl_context_properties>(p.getValue()));
    }
  }
  if (!out->empty()) out->push_back(0);
  return {};
}

Outcome ExecutorImpl::Devices(capnp::List<uint64_t>::Reader ids,
                              std::vector<cl_device_id>* out) {
  for (uint64_t id : ids) {
    cl_device_id d = nullptr;
    Outcome o = Find(id, ObjKind::DEVICE, &d);
    if (!o.ok()) return o;
    out->push_back(d);
  }
  return {};
}

Outcome ExecutorImpl::CreateContext(proto::Request::CreateContext::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  std::vector<cl_context_properties> props;
  o = ContextProps(r.getProperties(), &props);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_context c = clCreateContext(props.empty() ? nullptr : props.data(),
                                 static_cast<cl_uint>(devs.size()),
                                 devs.empty() ? nullptr : devs.data(), nullptr,
                                 nullptr, &err);
  // PoCL can hand back a context together with an error (no device of the
  // type): the error is what the application sees natively.
  if (err != CL_SUCCESS || c == nullptr) {
    if (c != nullptr) clReleaseContext(c);
    return Fail(err == CL_SUCCESS ? CL_OUT_OF_HOST_MEMORY : err, "");
  }
  Entry e;
  e.kind = ObjKind::CONTEXT;
  e.handle = c;
  e.context = r.getId();
  e.device = devs.empty() ? nullptr : devs[0];
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::CreateContextFromType(
    proto::Request::CreateContextFromType::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  std::vector<cl_context_properties> props;
  o = ContextProps(r.getProperties(), &props);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_context c = clCreateContextFromType(
      props.empty() ? nullptr : props.data(), r.getDeviceType(), nullptr,
      nullptr, &err);
  if (err != CL_SUCCESS || c == nullptr) {
    if (c != nullptr) clReleaseContext(c);
    return Fail(err == CL_SUCCESS ? CL_OUT_OF_HOST_MEMORY : err, "");
  }
  Entry e;
  e.kind = ObjKind::CONTEXT;
  e.handle = c;
  e.context = r.getId();
  clGetContextInfo(c, CL_CONTEXT_DEVICES, sizeof(e.device), &e.device,
                   nullptr);
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::CreateQueue(proto::Request::CreateQueue::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  cl_device_id d = nullptr;
  o = Find(r.getDevice(), ObjKind::DEVICE, &d);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_command_queue q = nullptr;
  auto props = r.getProperties();
  if (r.getWithProperties()) {
    std::vector<cl_queue_properties> p;
    for (uint64_t v : props) p.push_back(v);
    if (!p.empty()) p.push_back(0);
    q = clCreateCommandQueueWithProperties(c, d, p.empty() ? nullptr : p.data(),
                                           &err);
  } else {
    cl_command_queue_properties flags = 0;
    for (unsigned i = 0; i + 1 < props.size(); i += 2) {
      if (props[i] == CL_QUEUE_PROPERTIES) flags = props[i + 1];
    }
    q = clCreateCommandQueue(c, d, flags, &err);
  }
  if (q == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::QUEUE;
  e.handle = q;
  e.context = r.getContext();
  e.device = d;
  return Register(r.getId(), std::move(e));
}

// --- Memory objects -----------------------------------------------------

constexpr cl_mem_flags kHostPtrFlags = CL_MEM_COPY_HOST_PTR | CL_MEM_USE_HOST_PTR;

Outcome ExecutorImpl::CreateBuffer(proto::Request::CreateBuffer::Reader r,
                                   CountingSource& payload, absl::Status* io) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  cl_mem_flags flags = r.getFlags();
  const size_t size = r.getSize();
  std::vector<unsigned char> init;
  if ((flags & kHostPtrFlags) && payload.size() > 0) {
    if (payload.size() != size) {
      return Fail(CL_INVALID_HOST_PTR,
                  absl::StrCat("initial contents of ", payload.size(),
                               " bytes for a buffer of ", size));
    }
    // The guest owns the host pointer: here the buffer is a device
    // allocation initialised from the payload.
    init.resize(size);
    *io = payload.ReadInto(init.data(), size);
    if (!io->ok()) return {};
    flags = (flags & ~CL_MEM_USE_HOST_PTR) | CL_MEM_COPY_HOST_PTR;
  }
  // Without a payload a host-pointer flag reaches the real call with a NULL
  // pointer, which gives the native refusal.
  o = Reserve(size);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_mem m = clCreateBuffer(c, flags, size, init.empty() ? nullptr : init.data(),
                            &err);
  if (m == nullptr) {
    Unreserve(size);
    return Fail(err, "");
  }
  Entry e;
  e.kind = ObjKind::MEM;
  e.handle = m;
  e.context = r.getContext();
  e.counted_bytes = size;
  e.mem.mem = m;
  e.mem.context = r.getContext();
  e.mem.type = CL_MEM_OBJECT_BUFFER;
  e.mem.bytes = size;
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::CreateSubBuffer(
    proto::Request::CreateSubBuffer::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_mem parent = nullptr;
  o = Find(r.getParent(), ObjKind::MEM, &parent);
  if (!o.ok()) return o;
  cl_buffer_region region{static_cast<size_t>(r.getOrigin()),
                          static_cast<size_t>(r.getSize())};
  cl_int err = CL_SUCCESS;
  cl_mem m = clCreateSubBuffer(parent, r.getFlags(),
                               CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
  if (m == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::MEM;
  e.handle = m;
  e.context = ContextOf(r.getParent());
  e.mem.mem = m;
  e.mem.context = e.context;
  e.mem.type = CL_MEM_OBJECT_BUFFER;
  e.mem.bytes = r.getSize();
  e.mem.parent = r.getParent();
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::CreateImage(proto::Request::CreateImage::Reader r,
                                  CountingSource& payload, absl::Status* io) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  auto d = r.getDesc();
  cl_image_format fmt{r.getFormat().getChannelOrder(),
                      r.getFormat().getChannelDataType()};
  cl_image_desc desc{};
  desc.image_type = d.getType();
  desc.image_width = d.getWidth();
  desc.image_height = d.getHeight();
  desc.image_depth = d.getDepth();
  desc.image_array_size = d.getArraySize();
  desc.image_row_pitch = d.getRowPitch();
  desc.image_slice_pitch = d.getSlicePitch();
  desc.num_mip_levels = d.getNumMipLevels();
  desc.num_samples = d.getNumSamples();
  cl_mem buffer = nullptr;
  if (d.getBuffer() != 0) {
    o = Find(d.getBuffer(), ObjKind::MEM, &buffer,
             CL_INVALID_IMAGE_DESCRIPTOR);
    if (!o.ok()) return o;
    desc.buffer = buffer;
  }
  cl_mem_flags flags = r.getFlags();
  std::vector<unsigned char> init;
  if ((flags & kHostPtrFlags) && payload.size() > 0) {
    init.resize(payload.size());
    *io = payload.ReadInto(init.data(), init.size());
    if (!io->ok()) return {};
    flags = (flags & ~CL_MEM_USE_HOST_PTR) | CL_MEM_COPY_HOST_PTR;
  }
  // Packed size toward the limit; an image over a buffer shares its storage.
  const size_t px = PixelBytes(fmt.image_channel_order,
                               fmt.image_channel_data_type);
  uint64_t bytes = 0;
  if (buffer == nullptr) {
    uint64_t h = 1, layers = 1;
    switch (desc.image_type) {
      case CL_MEM_OBJECT_IMAGE1D_ARRAY: layers = desc.image_array_size; break;
      case CL_MEM_OBJECT_IMAGE2D: h = desc.image_height; break;
      case CL_MEM_OBJECT_IMAGE2D_ARRAY:
        h = desc.image_height; layers = desc.image_array_size; break;
      case CL_MEM_OBJECT_IMAGE3D:
        h = desc.image_height; layers = desc.image_depth; break;
      default: break;
    }
    bytes = px * desc.image_width * h * layers;
  }
  o = Reserve(bytes);
  if (!o.ok()) return o;
  void* host = init.empty() ? nullptr : init.data();
  cl_int err = CL_SUCCESS;
  cl_mem m = nullptr;
  if (r.getLegacy()) {
    if (desc.image_type == CL_MEM_OBJECT_IMAGE3D) {
      m = clCreateImage3D(c, flags, &fmt, desc.image_width, desc.image_height,
                          desc.image_depth, desc.image_row_pitch,
                          desc.image_slice_pitch, host, &err);
    } else {
      m = clCreateImage2D(c, flags, &fmt, desc.image_width, desc.image_height,
                          desc.image_row_pitch, host, &err);
    }
  } else {
    m = clCreateImage(c, flags, &fmt, &desc, host, &err);
  }
  if (m == nullptr) {
    Unreserve(bytes);
    return Fail(err, "");
  }
  Entry e;
  e.kind = ObjKind::MEM;
  e.handle = m;
  e.context = r.getContext();
  e.counted_bytes = bytes;
  e.mem.mem = m;
  e.mem.context = r.getContext();
  clGetMemObjectInfo(m, CL_MEM_TYPE, sizeof(e.mem.type), &e.mem.type, nullptr);
  size_t w = 0, h = 0, dep = 0, arr = 0;
  clGetImageInfo(m, CL_IMAGE_ELEMENT_SIZE, sizeof(e.elem), &e.elem, nullptr);
  clGetImageInfo(m, CL_IMAGE_WIDTH, sizeof(w), &w, nullptr);
  clGetImageInfo(m, CL_IMAGE_HEIGHT, sizeof(h), &h, nullptr);
  clGetImageInfo(m, CL_IMAGE_DEPTH, sizeof(dep), &dep, nullptr);
  clGetImageInfo(m, CL_IMAGE_ARRAY_SIZE, sizeof(arr), &arr, nullptr);
  e.mem.region[0] = w;
  e.mem.region[1] = std::max<size_t>(h, 1);
  e.mem.region[2] = e.mem.type == CL_MEM_OBJECT_IMAGE3D
                        ? std::max<size_t>(dep, 1)
                        : std::max<size_t>(arr, 1);
  e.mem.row_pitch = e.elem * w;
  e.mem.slice_pitch = e.mem.row_pitch * e.mem.region[1];
  e.mem.bytes = e.mem.slice_pitch * e.mem.region[2];
  e.mem.parent = d.getBuffer();
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::SupportedFormats(
    proto::Request::GetSupportedImageFormats::Reader r,
    proto::Reply::Builder out) {
  cl_context c = nullptr;
  Outcome o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  cl_uint n = 0;
  cl_int err =
      clGetSupportedImageFormats(c, r.getFlags(), r.getImageType(), 0, nullptr, &n);
  if (err != CL_SUCCESS) return Fail(err, "");
  std::vector<cl_image_format> f(n);
  if (n > 0) {
    err = clGetSupportedImageFormats(c, r.getFlags(), r.getImageType(), n,
                                     f.data(), nullptr);
    if (err != CL_SUCCESS) return Fail(err, "");
  }
  auto l = out.initImageFormats(n);
  for (cl_uint i = 0; i < n; ++i) {
    l[i].setChannelOrder(f[i].image_channel_order);
    l[i].setChannelDataType(f[i].image_channel_data_type);
  }
  return {};
}

Outcome ExecutorImpl::CreateSampler(proto::Request::CreateSampler::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_sampler s = clCreateSampler(c, r.getNormalizedCoords(),
                                 r.getAddressingMode(), r.getFilterMode(), &err);
  if (s == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::SAMPLER;
  e.handle = s;
  e.context = r.getContext();
  return Register(r.getId(), std::move(e));
}

// --- Programs and kernels ---------------------------------------------

Outcome ExecutorImpl::ProgramFromSource(
    proto::Request::CreateProgramWithSource::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  std::vector<const char*> strs;
  std::vector<size_t> lens;
  for (auto s : r.getSources()) {
    strs.push_back(s.cStr());
    lens.push_back(s.size());
  }
  cl_int err = CL_SUCCESS;
  cl_program p = clCreateProgramWithSource(
      c, static_cast<cl_uint>(strs.size()), strs.empty() ? nullptr : strs.data(),
      lens.empty() ? nullptr : lens.data(), &err);
  if (p == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::PROGRAM;
  e.handle = p;
  e.context = r.getContext();
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::ProgramFromBinary(
    proto::Request::CreateProgramWithBinary::Reader r,
    proto::Reply::Builder out) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  std::vector<const unsigned char*> bins;
  std::vector<size_t> lens;
  for (auto b : r.getBinaries()) {
    bins.push_back(b.size() ? b.begin() : nullptr);
    lens.push_back(b.size());
  }
  // The native call checks the counts against num_devices.
  bins.resize(devs.size(), nullptr);
  lens.resize(devs.size(), 0);
  std::vector<cl_int> st(devs.size(), CL_SUCCESS);
  cl_int err = CL_SUCCESS;
  cl_program p = clCreateProgramWithBinary(
      c, static_cast<cl_uint>(devs.size()), devs.empty() ? nullptr : devs.data(),
      lens.empty() ? nullptr : lens.data(), bins.empty() ? nullptr : bins.data(),
      st.empty() ? nullptr : st.data(), &err);
  auto l = out.initStatuses(static_cast<unsigned>(st.size()));
  for (size_t i = 0; i < st.size(); ++i) l.set(i, st[i]);
  if (p == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::PROGRAM;
  e.handle = p;
  e.context = r.getContext();
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::ProgramBuiltIn(
    proto::Request::CreateProgramWithBuiltInKernels::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_program p = clCreateProgramWithBuiltInKernels(
      c, static_cast<cl_uint>(devs.size()), devs.empty() ? nullptr : devs.data(),
      r.getKernelNames().cStr(), &err);
  if (p == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::PROGRAM;
  e.handle = p;
  e.context = r.getContext();
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::Build(proto::Request::BuildProgram::Reader r) {
  cl_program p = nullptr;
  Outcome o = Find(r.getProgram(), ObjKind::PROGRAM, &p);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  const cl_int err = clBuildProgram(p, static_cast<cl_uint>(devs.size()),
                                    devs.empty() ? nullptr : devs.data(),
                                    r.getOptions().cStr(), nullptr, nullptr);
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

Outcome ExecutorImpl::Compile(proto::Request::CompileProgram::Reader r) {
  cl_program p = nullptr;
  Outcome o = Find(r.getProgram(), ObjKind::PROGRAM, &p);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  std::vector<cl_program> headers;
  for (uint64_t id : r.getHeaders()) {
    cl_program h = nullptr;
    o = Find(id, ObjKind::PROGRAM, &h);
    if (!o.ok()) return o;
    headers.push_back(h);
  }
  std::vector<const char*> names;
  for (auto n : r.getHeaderNames()) names.push_back(n.cStr());
  const cl_int err = clCompileProgram(
      p, static_cast<cl_uint>(devs.size()), devs.empty() ? nullptr : devs.data(),
      r.getOptions().cStr(), static_cast<cl_uint>(headers.size()),
      headers.empty() ? nullptr : headers.data(),
      names.empty() ? nullptr : names.data(), nullptr, nullptr);
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

Outcome ExecutorImpl::Link(proto::Request::LinkProgram::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  std::vector<cl_device_id> devs;
  o = Devices(r.getDevices(), &devs);
  if (!o.ok()) return o;
  std::vector<cl_program> inputs;
  for (uint64_t id : r.getInputs()) {
    cl_program h = nullptr;
    o = Find(id, ObjKind::PROGRAM, &h);
    if (!o.ok()) return o;
    inputs.push_back(h);
  }
  cl_int err = CL_SUCCESS;
  cl_program p = clLinkProgram(
      c, static_cast<cl_uint>(devs.size()), devs.empty() ? nullptr : devs.data(),
      r.getOptions().cStr(), static_cast<cl_uint>(inputs.size()),
      inputs.empty() ? nullptr : inputs.data(), nullptr, nullptr, &err);
  // A failed link still returns a program (to read its log from).
  if (p != nullptr) {
    Entry e;
    e.kind = ObjKind::PROGRAM;
    e.handle = p;
    e.context = r.getContext();
    o = Register(r.getId(), std::move(e));
    if (!o.ok()) return o;
  }
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

Outcome ExecutorImpl::CreateKernel(proto::Request::CreateKernel::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_program p = nullptr;
  o = Find(r.getProgram(), ObjKind::PROGRAM, &p);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_kernel k = clCreateKernel(p, r.getName().cStr(), &err);
  if (k == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::KERNEL;
  e.handle = k;
  e.context = ContextOf(r.getProgram());
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::KernelsInProgram(
    proto::Request::CreateKernelsInProgram::Reader r,
    proto::Reply::Builder out) {
  cl_program p = nullptr;
  Outcome o = Find(r.getProgram(), ObjKind::PROGRAM, &p);
  if (!o.ok()) return o;
  auto ids = r.getIds();
  for (uint64_t id : ids) {
    o = CheckNewId(id);
    if (!o.ok()) return o;
  }
  cl_uint n = 0;
  std::vector<cl_kernel> ks(ids.size());
  const cl_int err =
      clCreateKernelsInProgram(p, static_cast<cl_uint>(ks.size()),
                               ks.empty() ? nullptr : ks.data(), &n);
  if (err != CL_SUCCESS) return Fail(err, "");
  out.setCount(n);
  const uint64_t ctx = ContextOf(r.getProgram());
  for (size_t i = 0; i < ks.size() && i < n; ++i) {
    Entry e;
    e.kind = ObjKind::KERNEL;
    e.handle = ks[i];
    e.context = ctx;
    o = Register(ids[i], std::move(e));
    if (!o.ok()) return o;
  }
  return {};
}

Outcome ExecutorImpl::SetKernelArg(proto::Request::SetKernelArg::Reader r) {
  cl_kernel k = nullptr;
  Outcome o = Find(r.getKernel(), ObjKind::KERNEL, &k);
  if (!o.ok()) return o;
  const cl_uint idx = r.getIndex();
  const size_t size = r.getSize();
  cl_int err = CL_SUCCESS;
  switch (r.which()) {
    case proto::Request::SetKernelArg::VALUE: {
      auto v = r.getValue();
      err = clSetKernelArg(k, idx, v.size(), v.size() ? v.begin() : nullptr);
      break;
    }
    case proto::Request::SetKernelArg::MEM: {
      cl_mem m = nullptr;
      if (r.getMem() != 0) {
        o = Find(r.getMem(), ObjKind::MEM, &m, CL_INVALID_MEM_OBJECT);
        if (!o.ok()) return o;
      }
      err = clSetKernelArg(k, idx, size, &m);
      break;
    }
    case proto::Request::SetKernelArg::SAMPLER: {
      cl_sampler s = nullptr;
      o = Find(r.getSampler(), ObjKind::SAMPLER, &s);
      if (!o.ok()) return o;
      err = clSetKernelArg(k, idx, size, &s);
      break;
    }
    case proto::Request::SetKernelArg::LOCAL:
      err = clSetKernelArg(k, idx, size, nullptr);
      break;
  }
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

// --- Enqueue --------------------------------------------------------------

Outcome ExecutorImpl::Enqueue(proto::Enqueue::Reader r, CountingSource& payload,
                              proto::Reply::Builder reply,
                              capnp::MessageBuilder& reply_message,
                              const PayloadSink& sink, absl::Status* io,
                              bool* sent) {
  cl_command_queue q = nullptr;
  Outcome o = Find(r.getQueue(), ObjKind::QUEUE, &q);
  if (!o.ok()) return o;
  std::vector<cl_event> wait;
  Blockers blockers;
  o = Wait(r.getWaitList(), &wait, &blockers);
  if (!o.ok()) return o;
  const uint64_t event_id = r.getEvent();
  if (event_id != 0) {
    o = CheckNewId(event_id);
    if (!o.ok()) return o;
  }
  const cl_uint nw = static_cast<cl_uint>(wait.size());
  const cl_event* wl = wait.empty() ? nullptr : wait.data();
  cl_event ev = nullptr;
  cl_event* evp = event_id ? &ev : nullptr;
  cl_int err = CL_SUCCESS;

  auto mem = [&](uint64_t id, cl_mem* m) { return Find(id, ObjKind::MEM, m); };
  // The command's event takes the id the guest chose; registered before a
  // read's reply leaves, so the guest may use it at once.
  auto register_event = [&]() -> Outcome {
    Entry e;
    e.kind = ObjKind::EVENT;
    e.handle = ev;
    e.queue = r.getQueue();
    e.blockers = blockers;
    {
      absl::MutexLock l(&mu_);
      auto it = objects_.find(r.getQueue());
      if (it != objects_.end()) e.context = it->second.context;
    }
    return Register(event_id, std::move(e));
  };

  switch (r.which()) {
    case proto::Enqueue::ND_RANGE: {
      auto n = r.getNdRange();
      cl_kernel k = nullptr;
      o = Find(n.getKernel(), ObjKind::KERNEL, &k);
      if (!o.ok()) return o;
      std::vector<size_t> off = Sizes(n.getGlobalOffset());
      std::vector<size_t> gs = Sizes(n.getGlobalSize());
      std::vector<size_t> ls = Sizes(n.getLocalSize());
      err = clEnqueueNDRangeKernel(
          q, k, static_cast<cl_uint>(gs.size()), off.empty() ? nullptr : off.data(),
          gs.empty() ? nullptr : gs.data(), ls.empty() ? nullptr : ls.data(), nw,
          wl, evp);
      break;
    }
    case proto::Enqueue::TASK: {
      cl_kernel k = nullptr;
      o = Find(r.getTask(), ObjKind::KERNEL, &k);
      if (!o.ok()) return o;
      err = clEnqueueTask(q, k, nw, wl, evp);
      break;
    }
    case proto::Enqueue::READ_BUFFER: {
      auto b = r.getReadBuffer();
      cl_mem m = nullptr;
      if (!(o = mem(b.getMem(), &m)).ok()) return o;
      const size_t size = b.getSize();
      // Without an event to name, a map sends device memory straight to the
      // socket; a wanted event must be a read's (CL_COMMAND_READ_BUFFER).
      if (evp == nullptr && size >= (1u << 20)) {
        void* p = clEnqueueMapBuffer(q, m, CL_TRUE, CL_MAP_READ, b.getOffset(),
                                     size, nw, wl, nullptr, &err);
        if (p != nullptr) {
          reply.setCode(CL_SUCCESS);
          reply.setNone();
          *io = sink(reply_message, {iovec{p, size}});
          *sent = true;
          clEnqueueUnmapMemObject(q, m, p, 0, nullptr, nullptr);
          return {};
        }
      }
      std::vector<unsigned char> buf(size);
      err = clEnqueueReadBuffer(q, m, CL_TRUE, b.getOffset(), size,
                                size ? buf.data() : nullptr, nw, wl, evp);
      if (err != CL_SUCCESS) break;
      // Register the event before the reply leaves.
      if (evp) {
        o = register_event();
        if (!o.ok()) return o;
      }
      reply.setCode(CL_SUCCESS);
      reply.setNone();
      *io = sink(reply_message, {iovec{buf.data(), size}});
      *sent = true;
      return {};
    }
    case proto::Enqueue::WRITE_BUFFER: {
      auto b = r.getWriteBuffer();
      cl_mem m = nullptr;
      if (!(o = mem(b.getMem(), &m)).ok()) return o;
      const size_t size = b.getSize();
      if (payload.size() != size) {
        return Fail(CL_INVALID_VALUE,
                    absl::StrCat("write of ", size, " bytes carries ",
                                 payload.size()));
      }
      if (evp == nullptr && nw == 0 && size >= (1u << 20)) {
        void* p = clEnqueueMapBuffer(q, m, CL_TRUE, CL_MAP_WRITE_INVALIDATE_REGION,
                                     b.getOffset(), size, nw, wl, nullptr, &err);
        if (p != nullptr) {
          *io = payload.ReadInto(p, size);
          err = clEnqueueUnmapMemObject(q, m, p, 0, nullptr, nullptr);
          if (err == CL_SUCCESS) err = clFinish(q);
          break;
        }
      }
      if (!b.getBlocking()) {
        auto* st = new Staging{std::vector<unsigned char>(size)};
        if (size) {
          *io = payload.ReadInto(st->bytes.data(), size);
          if (!io->ok()) {
            delete st;
            return {};
          }
        }
        cl_event done = nullptr;
        err = clEnqueueWriteBuffer(q, m, CL_FALSE, b.getOffset(), size,
                                   size ? st->bytes.data() : nullptr, nw, wl,
                                   &done);
        err = AfterStaged(err, st, done, evp);
        break;
      }
      std::vector<unsigned char> buf(size);
      if (size) {
        *io = payload.ReadInto(buf.data(), size);
        if (!io->ok()) return {};
      }
      err = clEnqueueWriteBuffer(q, m, CL_TRUE, b.getOffset(), size,
                                 size ? buf.data() : nullptr, nw, wl, evp);
      break;
    }
    case proto::Enqueue::READ_BUFFER_RECT:
    case proto::Enqueue::WRITE_BUFFER_RECT: {
      const bool read = r.which() == proto::Enqueue::READ_BUFFER_RECT;
      auto b = read ? r.getReadBufferRect() : r.getWriteBufferRect();
      cl_mem m = nullptr;
      if (!(o = mem(b.getMem(), &m)).ok()) return o;
      size_t bo[3], ho[3] = {0, 0, 0}, rg[3];
      Three(b.getBufferOrigin(), bo, 0);
      Three(b.getRegion(), rg, 1);
      // The guest packs the host region; its own pitches are checked here
      // as the native call would check them.
      const size_t hr = b.getHostRowPitch(), hs = b.getHostSlicePitch();
      if ((hr != 0 && hr < rg[0]) ||
          (hs != 0 && (hs < rg[1] * (hr ? hr : rg[0]) ||
                       (hr != 0 && hs % hr != 0)))) {
        return Fail(CL_INVALID_VALUE, "");
      }
      const size_t bytes = rg[0] * rg[1] * rg[2];
      std::vector<unsigned char> buf(bytes);
      if (!read) {
        if (payload.size() != bytes) {
          return Fail(CL_INVALID_VALUE,
                      absl::StrCat("rect write of ", bytes, " bytes carries ",
                                   payload.size()));
        }
        *io = payload.ReadInto(buf.data(), bytes);
        if (!io->ok()) return {};
        if (!b.getBlocking()) {
          auto* st = new Staging{std::move(buf)};
          cl_event done = nullptr;
          err = clEnqueueWriteBufferRect(q, m, CL_FALSE, bo, ho, rg,
                                         b.getBufferRowPitch(),
                                         b.getBufferSlicePitch(), rg[0],
                                         rg[0] * rg[1], st->bytes.data(), nw,
                                         wl, &done);
          err = AfterStaged(err, st, done, evp);
          break;
        }
        err = clEnqueueWriteBufferRect(q, m, CL_TRUE, bo, ho, rg,
                                       b.getBufferRowPitch(),
                                       b.getBufferSlicePitch(), rg[0],
                                       rg[0] * rg[1], buf.data(), nw, wl, evp);
        break;
      }
      err = clEnqueueReadBufferRect(q, m, CL_TRUE, bo, ho, rg,
                                    b.getBufferRowPitch(),
                                    b.getBufferSlicePitch(), rg[0],
                                    rg[0] * rg[1], buf.data(), nw, wl, evp);
      if (err != CL_SUCCESS) break;
      if (evp) {
        o = register_event();
        if (!o.ok()) return o;
      }
      reply.setCode(CL_SUCCESS);
      reply.setNone();
      *io = sink(reply_message, {iovec{buf.data(), bytes}});
      *sent = true;
      return {};
    }
    case proto::Enqueue::COPY_BUFFER: {
      auto c = r.getCopyBuffer();
      cl_mem s = nullptr, d = nullptr;
      if (!(o = mem(c.getSrc(), &s)).ok()) return o;
      if (!(o = mem(c.getDst(), &d)).ok()) return o;
      err = clEnqueueCopyBuffer(q, s, d, c.getSrcOffset(), c.getDstOffset(),
                                c.getSize(), nw, wl, evp);
      break;
    }
    case proto::Enqueue::COPY_BUFFER_RECT: {
      auto c = r.getCopyBufferRect();
      cl_mem s = nullptr, d = nullptr;
      if (!(o = mem(c.getSrc(), &s)).ok()) return o;
      if (!(o = mem(c.getDst(), &d)).ok()) return o;
      size_t so[3], dO[3], rg[3];
      Three(c.getSrcOrigin(), so, 0);
      Three(c.getDstOrigin(), dO, 0);
      Three(c.getRegion(), rg, 1);
      err = clEnqueueCopyBufferRect(q, s, d, so, dO, rg, c.getSrcRowPitch(),
                                    c.getSrcSlicePitch(), c.getDstRowPitch(),
                                    c.getDstSlicePitch(), nw, wl, evp);
      break;
    }
    case proto::Enqueue::FILL_BUFFER: {
      auto f = r.getFillBuffer();
      cl_mem m = nullptr;
      if (!(o = mem(f.getMem(), &m)).ok()) return o;
      auto pat = f.getPattern();
      err = clEnqueueFillBuffer(q, m, pat.size() ? pat.begin() : nullptr,
                                pat.size(), f.getOffset(), f.getSize(), nw, wl,
                                evp);
      break;
    }
    case proto::Enqueue::READ_IMAGE:
    case proto::Enqueue::WRITE_IMAGE: {
      const bool read = r.which() == proto::Enqueue::READ_IMAGE;
      auto im = read ? r.getReadImage() : r.getWriteImage();
      cl_mem m = nullptr;
      if (!(o = mem(im.getMem(), &m)).ok()) return o;
      size_t og[3], rg[3];
      Three(im.getOrigin(), og, 0);
      Three(im.getRegion(), rg, 1);
      cl_mem_object_type type = 0;
      size_t elem = 0;
      clGetMemObjectInfo(m, CL_MEM_TYPE, sizeof(type), &type, nullptr);
      clGetImageInfo(m, CL_IMAGE_ELEMENT_SIZE, sizeof(elem), &elem, nullptr);
      const uint64_t bytes = ImageHostExtent(type, elem, rg, im.getRowPitch(),
                                             im.getSlicePitch());
      std::vector<unsigned char> buf(bytes);
      if (!read) {
        if (payload.size() != bytes) {
          return Fail(CL_INVALID_VALUE,
                      absl::StrCat("image write of ", bytes, " bytes carries ",
                                   payload.size()));
        }
        if (bytes) {
          *io = payload.ReadInto(buf.data(), bytes);
          if (!io->ok()) return {};
        }
        if (!im.getBlocking()) {
          auto* st = new Staging{std::move(buf)};
          cl_event done = nullptr;
          err = clEnqueueWriteImage(q, m, CL_FALSE, og, rg, im.getRowPitch(),
                                    im.getSlicePitch(),
                                    bytes ? st->bytes.data() : nullptr, nw, wl,
                                    &done);
          err = AfterStaged(err, st, done, evp);
          break;
        }
        err = clEnqueueWriteImage(q, m, CL_TRUE, og, rg, im.getRowPitch(),
                                  im.getSlicePitch(),
                                  bytes ? buf.data() : nullptr, nw, wl, evp);
        break;
      }
      err = clEnqueueReadImage(q, m, CL_TRUE, og, rg, im.getRowPitch(),
                               im.getSlicePitch(), bytes ? buf.data() : nullptr,
                               nw, wl, evp);
      if (err != CL_SUCCESS) break;
      if (evp) {
        o = register_event();
        if (!o.ok()) return o;
      }
      reply.setCode(CL_SUCCESS);
      reply.setNone();
      *io = sink(reply_message, {iovec{buf.data(), bytes}});
      *sent = true;
      return {};
    }
    case proto::Enqueue::COPY_IMAGE: {
      auto c = r.getCopyImage();
      cl_mem s = nullptr, d = nullptr;
      if (!(o = mem(c.getSrc(), &s)).ok()) return o;
      if (!(o = mem(c.getDst(), &d)).ok()) return o;
      size_t so[3], dO[3], rg[3];
      Three(c.getSrcOrigin(), so, 0);
      Three(c.getDstOrigin(), dO, 0);
      Three(c.getRegion(), rg, 1);
      err = clEnqueueCopyImage(q, s, d, so, dO, rg, nw, wl, evp);
      break;
    }
    case proto::Enqueue::FILL_IMAGE: {
      auto f = r.getFillImage();
      cl_mem m = nullptr;
      if (!(o = mem(f.getMem(), &m)).ok()) return o;
      unsigned char color[16] = {};
      auto c = f.getFillColor();
      std::memcpy(color, c.begin(), std::min<size_t>(c.size(), 16));
      size_t og[3], rg[3];
      Three(f.getOrigin(), og, 0);
      Three(f.getRegion(), rg, 1);
      err = clEnqueueFillImage(q, m, color, og, rg, nw, wl, evp);
      break;
    }
    case proto::Enqueue::COPY_IMAGE_TO_BUFFER:
    case proto::Enqueue::COPY_BUFFER_TO_IMAGE: {
      const bool to_buffer = r.which() == proto::Enqueue::COPY_IMAGE_TO_BUFFER;
      auto c = to_buffer ? r.getCopyImageToBuffer() : r.getCopyBufferToImage();
      cl_mem im = nullptr, b = nullptr;
      if (to_buffer) {
        if (!(o = mem(c.getImage(), &im)).ok()) return o;
        if (!(o = mem(c.getBuffer(), &b)).ok()) return o;
      } else {
        if (!(o = mem(c.getBuffer(), &b)).ok()) return o;
        if (!(o = mem(c.getImage(), &im)).ok()) return o;
      }
      size_t og[3], rg[3];
      Three(c.getOrigin(), og, 0);
      Three(c.getRegion(), rg, 1);
      err = to_buffer ? clEnqueueCopyImageToBuffer(q, im, b, og, rg,
                                                   c.getBufferOffset(), nw, wl,
                                                   evp)
                      : clEnqueueCopyBufferToImage(q, b, im, c.getBufferOffset(),
                                                   og, rg, nw, wl, evp);
      break;
    }
    case proto::Enqueue::MARKER:
      err = clEnqueueMarkerWithWaitList(q, nw, wl, evp);
      break;
    case proto::Enqueue::BARRIER:
      err = clEnqueueBarrierWithWaitList(q, nw, wl, evp);
      break;
    case proto::Enqueue::MIGRATE_MEM_OBJECTS: {
      auto mm = r.getMigrateMemObjects();
      std::vector<cl_mem> ms;
      for (uint64_t id : mm.getMems()) {
        cl_mem m = nullptr;
        if (!(o = mem(id, &m)).ok()) return o;
        ms.push_back(m);
      }
      err = clEnqueueMigrateMemObjects(q, static_cast<cl_uint>(ms.size()),
                                       ms.empty() ? nullptr : ms.data(),
                                       mm.getFlags(), nw, wl, evp);
      break;
    }
  }
  if (err != CL_SUCCESS) return Fail(err, "");
  if (!blockers.empty()) {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(r.getQueue());
    if (it != objects_.end()) {
      Blockers& qb = it->second.blockers;
      PruneSet(qb);
      qb.insert(qb.end(), blockers.begin(), blockers.end());
    }
  }
  if (evp != nullptr) return register_event();
  return {};
}

// --- Events ---------------------------------------------------------------

Outcome ExecutorImpl::WaitForEvents(capnp::List<uint64_t>::Reader ids) {
  std::vector<cl_event> evs;
  for (uint64_t id : ids) {
    cl_event e = nullptr;
    Outcome o = Find(id, ObjKind::EVENT, &e);
    if (!o.ok()) return o;
    evs.push_back(e);
  }
  const cl_int err = clWaitForEvents(static_cast<cl_uint>(evs.size()),
                                     evs.empty() ? nullptr : evs.data());
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

Outcome ExecutorImpl::CreateUserEvent(
    proto::Request::CreateUserEvent::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  cl_int err = CL_SUCCESS;
  cl_event ev = clCreateUserEvent(c, &err);
  if (ev == nullptr) return Fail(err, "");
  Entry e;
  e.kind = ObjKind::EVENT;
  e.handle = ev;
  e.context = r.getContext();
  e.user_event = true;
  return Register(r.getId(), std::move(e));
}

Outcome ExecutorImpl::SetUserEventStatus(
    proto::Request::SetUserEventStatus::Reader r) {
  cl_event ev = nullptr;
  Outcome o = Find(r.getEvent(), ObjKind::EVENT, &ev);
  if (!o.ok()) return o;
  {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(r.getEvent());
    if (it != objects_.end() && it->second.restored &&
        it->second.command_type != CL_COMMAND_USER) {
      return Fail(CL_INVALID_EVENT, "not a user event");
    }
  }
  const cl_int err = clSetUserEventStatus(ev, r.getStatus());
  return err == CL_SUCCESS ? Outcome{} : Fail(err, "");
}

Outcome ExecutorImpl::SetEventCallback(
    proto::Request::SetEventCallback::Reader r) {
  cl_event ev = nullptr;
  Outcome o = Find(r.getEvent(), ObjKind::EVENT, &ev);
  if (!o.ok()) return o;
  auto* data = new CallbackData{notifier_, r.getCookie()};
  const cl_int err = clSetEventCallback(ev, r.getStatus(), &OnEvent, data);
  if (err != CL_SUCCESS) {
    delete data;
    return Fail(err, "");
  }
  return {};
}

Outcome ExecutorImpl::RestoreEvent(proto::Request::RestoreEvent::Reader r) {
  Outcome o = CheckNewId(r.getId());
  if (!o.ok()) return o;
  cl_context c = nullptr;
  o = Find(r.getContext(), ObjKind::CONTEXT, &c);
  if (!o.ok()) return o;
  if (r.getQueue() != 0) {
    cl_command_queue q = nullptr;
    o = Find(r.getQueue(), ObjKind::QUEUE, &q);
    if (!o.ok()) return o;
  }
  // A user event stands for it: complete (or failed) at once, or left unset
  // for the guest to set as it would have.
  cl_int err = CL_SUCCESS;
  cl_event ev = clCreateUserEvent(c, &err);
  if (ev == nullptr) return Fail(err, "");
  if (r.getStatus() != CL_SUBMITTED) {
    err = clSetUserEventStatus(ev, r.getStatus() > 0 ? CL_COMPLETE
                                                     : r.getStatus());
    if (err != CL_SUCCESS) {
      clReleaseEvent(ev);
      return Fail(err, "");
    }
  }
  Entry e;
  e.kind = ObjKind::EVENT;
  e.handle = ev;
  e.context = r.getContext();
  e.queue = r.getQueue();
  e.user_event = r.getStatus() == CL_SUBMITTED;
  e.restored = true;
  e.command_type = r.getCommandType();
  e.restored_status = r.getStatus();
  return Register(r.getId(), std::move(e));
}

// --- Execute ----------------------------------------------------------------

bool TakesPayload(const proto::Request::Reader& r) {
  switch (r.which()) {
    case proto::Request::CREATE_BUFFER:
    case proto::Request::CREATE_IMAGE:
      return true;
    case proto::Request::ENQUEUE:
      return r.getEnqueue().isWriteBuffer() ||
             r.getEnqueue().isWriteBufferRect() ||
             r.getEnqueue().isWriteImage();
    default:
      return false;
  }
}

absl::Status ExecutorImpl::Execute(proto::Request::Reader request,
                                   PayloadSource& payload_in,
                                   proto::Reply::Builder reply,
                                   capnp::MessageBuilder& reply_message,
                                   const PayloadSink& sink, bool replay) {
  CountingSource payload(payload_in);
  absl::Status io;
  if (!TakesPayload(request)) {
    io = payload.SkipRest();
    if (!io.ok()) return io;
  }
  bool sent = false;
  Outcome o;
  reply.setNone();
  switch (request.which()) {
    case proto::Request::HELLO:
      o = Fail(CL_INVALID_OPERATION, "hello is answered by the session");
      break;
    case proto::Request::GET_PLATFORM_IDS:
      reply.initIds(1).set(0, kPlatformIdBase + options_.platform_index);
      break;
    case proto::Request::GET_DEVICE_IDS: {
      auto g = request.getGetDeviceIds();
      cl_platform_id p = nullptr;
      o = Find(g.getPlatform(), ObjKind::PLATFORM, &p);
      if (!o.ok()) break;
      cl_uint n = 0;
      cl_int err = clGetDeviceIDs(p, g.getDeviceType(), 0, nullptr, &n);
      if (err != CL_SUCCESS) {
        o = Fail(err, "");
        break;
      }
      std::vector<cl_device_id> ds(n);
      err = clGetDeviceIDs(p, g.getDeviceType(), n, ds.data(), nullptr);
      if (err != CL_SUCCESS) {
        o = Fail(err, "");
        break;
      }
      auto l = reply.initIds(n);
      for (cl_uint i = 0; i < n; ++i) l.set(i, IdOf(ds[i]));
      break;
    }
    case proto::Request::GET_INFO:
      o = GetInfo(request.getGetInfo(), reply);
      break;
    case proto::Request::RETAIN:
      o = Retain(request.getRetain().getKind(), request.getRetain().getId());
      break;
    case proto::Request::RELEASE:
      o = Release(request.getRelease().getKind(), request.getRelease().getId());
      break;
    case proto::Request::CREATE_CONTEXT:
      o = CreateContext(request.getCreateContext());
      break;
    case proto::Request::CREATE_CONTEXT_FROM_TYPE:
      o = CreateContextFromType(request.getCreateContextFromType());
      break;
    case proto::Request::CREATE_QUEUE:
      o = CreateQueue(request.getCreateQueue());
      break;
    case proto::Request::CREATE_BUFFER:
      o = CreateBuffer(request.getCreateBuffer(), payload, &io);
      break;
    case proto::Request::CREATE_SUB_BUFFER:
      o = CreateSubBuffer(request.getCreateSubBuffer());
      break;
    case proto::Request::CREATE_IMAGE:
      o = CreateImage(request.getCreateImage(), payload, &io);
      break;
    case proto::Request::GET_SUPPORTED_IMAGE_FORMATS:
      o = SupportedFormats(request.getGetSupportedImageFormats(), reply);
      break;
    case proto::Request::CREATE_SAMPLER:
      o = CreateSampler(request.getCreateSampler());
      break;
    case proto::Request::CREATE_PROGRAM_WITH_SOURCE:
      o = ProgramFromSource(request.getCreateProgramWithSource());
      break;
    case proto::Request::CREATE_PROGRAM_WITH_BINARY:
      o = ProgramFromBinary(request.getCreateProgramWithBinary(), reply);
      break;
    case proto::Request::CREATE_PROGRAM_WITH_BUILT_IN_KERNELS:
      o = ProgramBuiltIn(request.getCreateProgramWithBuiltInKernels());
      break;
    case proto::Request::BUILD_PROGRAM:
      o = Build(request.getBuildProgram());
      break;
    case proto::Request::COMPILE_PROGRAM:
      o = Compile(request.getCompileProgram());
      break;
    case proto::Request::LINK_PROGRAM:
      o = Link(request.getLinkProgram());
      break;
    case proto::Request::CREATE_KERNEL:
      o = CreateKernel(request.getCreateKernel());
      break;
    case proto::Request::CREATE_KERNELS_IN_PROGRAM:
      o = KernelsInProgram(request.getCreateKernelsInProgram(), reply);
      break;
    case proto::Request::SET_KERNEL_ARG:
      o = SetKernelArg(request.getSetKernelArg());
      break;
    case proto::Request::ENQUEUE:
      o = Enqueue(request.getEnqueue(), payload, reply, reply_message, sink,
                  &io, &sent);
      break;
    case proto::Request::WAIT_FOR_EVENTS:
      o = WaitForEvents(request.getWaitForEvents());
      break;
    case proto::Request::CREATE_USER_EVENT:
      o = CreateUserEvent(request.getCreateUserEvent());
      break;
    case proto::Request::SET_USER_EVENT_STATUS:
      o = SetUserEventStatus(request.getSetUserEventStatus());
      break;
    case proto::Request::SET_EVENT_CALLBACK:
      o = SetEventCallback(request.getSetEventCallback());
      break;
    case proto::Request::FLUSH: {
      cl_command_queue q = nullptr;
      o = Find(request.getFlush(), ObjKind::QUEUE, &q);
      if (o.ok()) {
        const cl_int err = clFlush(q);
        if (err != CL_SUCCESS) o = Fail(err, "");
      }
      break;
    }
    case proto::Request::FINISH: {
      cl_command_queue q = nullptr;
      o = Find(request.getFinish(), ObjKind::QUEUE, &q);
      if (o.ok()) {
        const cl_int err = clFinish(q);
        if (err != CL_SUCCESS) o = Fail(err, "");
      }
      break;
    }
    case proto::Request::UNLOAD_PLATFORM_COMPILER: {
      cl_platform_id p = nullptr;
      o = Find(request.getUnloadPlatformCompiler(), ObjKind::PLATFORM, &p);
      if (o.ok()) {
        const cl_int err = clUnloadPlatformCompiler(p);
        if (err != CL_SUCCESS) o = Fail(err, "");
      }
      break;
    }
    case proto::Request::PING:
      break;
    case proto::Request::RESTORE_EVENT:
      if (!replay) {
        o = Fail(CL_INVALID_OPERATION,
                 "restoreEvent is only accepted while a restore replays the "
                 "session log");
      } else {
        o = RestoreEvent(request.getRestoreEvent());
      }
      break;
    default:
      o = Fail(CL_INVALID_OPERATION, "request kind not known to this backend");
      break;
  }
  if (!io.ok()) return io;
  absl::Status rest = payload.SkipRest();
  if (!rest.ok()) return rest;
  if (sent) return absl::OkStatus();
  reply.setCode(o.code);
  if (!o.message.empty()) reply.setMessage(o.message);
  return absl::OkStatus();
}

// --- Inspection ---------------------------------------------------------------

absl::Status ExecutorImpl::Drain() {
  std::vector<cl_command_queue> queues;
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, e] : objects_) {
      if (e.kind != ObjKind::QUEUE) continue;
      PruneSet(e.blockers);
      if (!e.blockers.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "queue ", id, " cannot drain: a command waits on user event ",
            e.blockers.front()->id, ", which is not set"));
      }
      queues.push_back(static_cast<cl_command_queue>(e.handle));
    }
    for (auto& [id, e] : objects_) {
      if (e.kind != ObjKind::EVENT || e.user_event) continue;
      PruneSet(e.blockers);
      if (!e.blockers.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "event ", id, " waits on user event ", e.blockers.front()->id,
            ", which is not set"));
      }
    }
    for (auto& [ctx, q] : internal_queues_) queues.push_back(q);
  }
  for (cl_command_queue q : queues) {
    const cl_int err = clFinish(q);
    if (err != CL_SUCCESS) {
      return absl::InternalError(absl::StrCat("clFinish: ", err));
    }
  }
  return absl::OkStatus();
}

std::vector<MemInfo> ExecutorImpl::LiveMems() {
  absl::MutexLock l(&mu_);
  std::vector<MemInfo> out;
  for (auto& [id, e] : objects_) {
    if (e.kind == ObjKind::MEM) out.push_back(e.mem);
  }
  return out;
}

std::vector<EventInfo> ExecutorImpl::LiveEvents() {
  std::vector<EventInfo> out;
  std::vector<cl_event> handles;
  std::vector<bool> restored;
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, e] : objects_) {
      if (e.kind != ObjKind::EVENT) continue;
      EventInfo i;
      i.id = id;
      i.context = e.context;
      i.queue = e.queue;
      i.command_type = e.restored ? e.command_type : 0;
      i.status = e.restored_status;
      out.push_back(i);
      handles.push_back(static_cast<cl_event>(e.handle));
      restored.push_back(e.restored);
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (!restored[i]) {
      clGetEventInfo(handles[i], CL_EVENT_COMMAND_TYPE,
                     sizeof(out[i].command_type), &out[i].command_type,
                     nullptr);
    }
    if (!restored[i] || out[i].status == CL_SUBMITTED) {
      clGetEventInfo(handles[i], CL_EVENT_COMMAND_EXECUTION_STATUS,
                     sizeof(out[i].status), &out[i].status, nullptr);
    }
  }
  return out;
}

absl::StatusOr<cl_command_queue> ExecutorImpl::InternalQueue(uint64_t context) {
  cl_context c = nullptr;
  cl_device_id d = nullptr;
  {
    absl::MutexLock l(&mu_);
    auto q = internal_queues_.find(context);
    if (q != internal_queues_.end()) return q->second;
    auto it = objects_.find(context);
    if (it == objects_.end()) {
      return absl::NotFoundError(absl::StrCat("no context ", context));
    }
    c = static_cast<cl_context>(it->second.handle);
    d = it->second.device;
  }
  if (d == nullptr) {
    clGetContextInfo(c, CL_CONTEXT_DEVICES, sizeof(d), &d, nullptr);
  }
  cl_int err = CL_SUCCESS;
  cl_command_queue q = clCreateCommandQueue(c, d, 0, &err);
  if (q == nullptr) {
    return absl::InternalError(
        absl::StrCat("internal queue for context ", context, ": ", err));
  }
  absl::MutexLock l(&mu_);
  auto [it, fresh] = internal_queues_.emplace(context, q);
  if (!fresh) clReleaseCommandQueue(q);
  return it->second;
}

absl::Status ExecutorImpl::ReadMem(uint64_t id, void* dst, uint64_t offset,
                                   uint64_t bytes) {
  return TransferMem(id, offset, bytes, dst, /*write=*/false);
}

absl::Status ExecutorImpl::WriteMem(uint64_t id, const void* src,
                                    uint64_t offset, uint64_t bytes) {
  return TransferMem(id, offset, bytes, const_cast<void*>(src),
                     /*write=*/true);
}

// Rows [first, first + count) of an image's packed contents (rows of every
// slice or layer, one after the other), one rectangle per slice.
cl_int ImageRows(cl_command_queue q, const MemInfo& m, size_t first,
                 size_t count, unsigned char* data, bool write) {
  const size_t height = m.region[1];
  const bool layers_are_rows = m.type == CL_MEM_OBJECT_IMAGE1D_ARRAY;
  while (count > 0) {
    const size_t z = first / height, y = first % height;
    const size_t n = std::min(count, height - y);
    // A 1D array's layers are its rows: they sit in the y coordinate.
    const size_t origin[3] = {0, layers_are_rows ? z : y,
                              layers_are_rows ? 0 : z};
    const size_t region[3] = {m.region[0], n, 1};
    const cl_int err =
        write ? clEnqueueWriteImage(q, m.mem, CL_TRUE, origin, region, 0, 0,
                                    data, 0, nullptr, nullptr)
              : clEnqueueReadImage(q, m.mem, CL_TRUE, origin, region, 0, 0,
                                   data, 0, nullptr, nullptr);
    if (err != CL_SUCCESS) return err;
    data += n * m.row_pitch;
    first += n;
    count -= n;
  }
  return CL_SUCCESS;
}

absl::Status ExecutorImpl::TransferMem(uint64_t id, uint64_t offset,
                                       uint64_t bytes, void* data,
                                       bool write) {
  MemInfo m;
  {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(id);
    if (it == objects_.end() || it->second.kind != ObjKind::MEM) {
      return absl::NotFoundError(absl::StrCat("no memory object ", id));
    }
    m = it->second.mem;
  }
  if (offset > m.bytes || bytes > m.bytes - offset) {
    return absl::OutOfRangeError(absl::StrCat(
        "range ", offset, "+", bytes, " outside memory object ", id, " of ",
        m.bytes, " bytes"));
  }
  absl::StatusOr<cl_command_queue> q = InternalQueue(m.context);
  if (!q.ok()) return q.status();
  auto* p = static_cast<unsigned char*>(data);
  cl_int err = CL_SUCCESS;
  if (m.type == CL_MEM_OBJECT_BUFFER) {
    err = write ? clEnqueueWriteBuffer(*q, m.mem, CL_TRUE, offset, bytes, p, 0,
                                       nullptr, nullptr)
                : clEnqueueReadBuffer(*q, m.mem, CL_TRUE, offset, bytes, p, 0,
                                      nullptr, nullptr);
  } else if (bytes > 0) {
    // Only the rows the range touches move, so reading or writing an image
    // piece by piece costs the pieces, not the whole image each time.
    const size_t first = offset / m.row_pitch;
    const size_t end = (offset + bytes + m.row_pitch - 1) / m.row_pitch;
    const size_t skip = offset - first * m.row_pitch;
    if (skip == 0 && bytes == (end - first) * m.row_pitch) {
      err = ImageRows(*q, m, first, end - first, p, write);
    } else {
      std::vector<unsigned char> rows((end - first) * m.row_pitch);
      // A write of part of a row keeps the rest of that row: read first.
      err = ImageRows(*q, m, first, end - first, rows.data(), false);
      if (err == CL_SUCCESS && write) {
        std::memcpy(rows.data() + skip, p, bytes);
        err = ImageRows(*q, m, first, end - first, rows.data(), true);
      } else if (err == CL_SUCCESS) {
        std::memcpy(p, rows.data() + skip, bytes);
      }
    }
  }
  if (err != CL_SUCCESS) {
    return absl::InternalError(absl::StrCat(write ? "writing" : "reading",
                                            " memory object ", id,
                                            ": CL error ", err));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const ExecutorOptions& options) {
  auto e = std::make_unique<ExecutorImpl>(options);
  absl::Status s = e->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<Executor>(std::move(e));
}

}  // namespace vgpu::forwarding::executor
