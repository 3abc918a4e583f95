// libvgpu-opencl: an OpenCL implementation that forwards every call to the
// backend (protocol.capnp) through the Client. It is an ICD (the loader
// finds it through vgpu.icd and clIcdGetPlatformIDsKHR) and also exports
// the plain API, so it works linked directly or as libOpenCL.so.1.
//
// The process-wide state (Library) is the one singleton here: the ICD model
// gives entry points nothing but handles, so the client and the handle
// tables must be found from anywhere. It is created lazily on the first
// call, and the client inside it connects lazily too (env VGPU_CL_BACKEND,
// VGPU_VM, VGPU_CL_RECONNECT_MS). Both are leaked at exit on purpose: an
// application may still call OpenCL from its own static destructors.
//
// Handles: every cl_* object is a struct whose first member is the ICD
// dispatch pointer, then the 64-bit id the backend knows it by. Ids of
// created objects come from a counter starting at kFirstGuestId; platforms
// and devices use the backend's ids and are kept forever. Handles never
// change for the life of the process, even when the session moves.
//
// Argument checks are left to the backend's real call wherever it can see
// the problem (so codes are the native ones); the library checks only what
// it must decide itself (pointers it dereferences, sizes of its answers).
#include <CL/cl_icd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agents/forwarding/guest/client.h"
#include "agents/forwarding/agreed.h"
#include "agents/forwarding/protocol.capnp.h"

namespace vgpu::forwarding::guest {

using proto::InfoKind;
using proto::ObjKind;

inline constexpr uint64_t kFirstGuestId = 0x10000;
inline constexpr uint64_t kPlatformIdBase = 0x100;
inline constexpr uint64_t kDeviceIdBase = 0x200;

cl_icd_dispatch* Dispatch();

// The common head of every handle (no virtual functions: the dispatch
// pointer must be at offset 0).
struct Handle {
  cl_icd_dispatch* dispatch;
  uint64_t id;
  ObjKind kind;
  // The application's retains minus releases; at 0 the handle leaves the
  // live tables. `holds` keeps the struct alive for the library itself
  // (an event whose callbacks are still to run).
  std::atomic<int64_t> refs;
  std::atomic<int64_t> holds;
};

}  // namespace vgpu::forwarding::guest

using vgpu::forwarding::guest::Handle;

struct _cl_platform_id : Handle {};
struct _cl_device_id : Handle {};
struct _cl_context : Handle {
  std::mutex mu;
  std::vector<std::pair<void(CL_CALLBACK*)(cl_context, void*), void*>> dtors;
};
struct _cl_command_queue : Handle {
  cl_context context = nullptr;
};
struct _cl_mem : Handle {
  cl_context context = nullptr;
  cl_mem_flags flags = 0;
  size_t size = 0;
  void* host_ptr = nullptr;  // CL_MEM_USE_HOST_PTR: the application's
  cl_mem_object_type type = CL_MEM_OBJECT_BUFFER;
  size_t elem = 0;  // images: bytes per pixel
  struct Mapping {
    size_t offset = 0;  // buffers
    size_t size = 0;
    size_t origin[3] = {0, 0, 0};  // images
    size_t region[3] = {0, 0, 0};
    size_t row_pitch = 0, slice_pitch = 0;
    cl_map_flags flags = 0;
    bool owned = false;
  };
  std::mutex mu;
  std::map<void*, Mapping> maps;
  std::vector<std::pair<void(CL_CALLBACK*)(cl_mem, void*), void*>> dtors;
};
struct _cl_sampler : Handle {
  cl_context context = nullptr;
};
struct _cl_program : Handle {
  cl_context context = nullptr;
};
struct _cl_kernel : Handle {
  cl_program program = nullptr;
};
struct _cl_event : Handle {
  cl_context context = nullptr;
  cl_command_queue queue = nullptr;
};

namespace vgpu::forwarding::guest {
namespace {

// Handle has no virtual functions and is the first base of every handle
// struct, so the dispatch pointer sits at offset 0 as the ICD loader reads
// it (checked at run time in the guest test).

struct EventCallback {
  void(CL_CALLBACK* fn)(cl_event, cl_int, void*);
  cl_event event;
  void* user;
};

class Library {
 public:
  static Library& Get() {
    static Library* lib = new Library;  // leaked: see the file comment
    return *lib;
  }

  // The client, connected on first use; nullptr when there is no backend
  // (the reason was printed once).
  Client* client() {
    std::call_once(connect_once_, [this] {
      ClientOptions o;
      if (const char* a = std::getenv("VGPU_CL_BACKEND"); a && *a) o.address = a;
      if (const char* v = std::getenv("VGPU_VM"); v && *v) {
        o.vm = v;
      } else {
        char host[256] = {};
        gethostname(host, sizeof(host) - 1);
        o.vm = host;
      }
      if (const char* ms = std::getenv("VGPU_CL_RECONNECT_MS"); ms && *ms) {
        o.reconnect_window = absl::Milliseconds(std::strtoll(ms, nullptr, 10));
      }
      absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
      if (!c.ok()) {
        std::fprintf(stderr, "libvgpu-opencl: %s\n",
                     std::string(c.status().message()).c_str());
        return;
      }
      client_ = c->release();  // leaked: see the file comment
      client_->SetCallbackHandler(
          [this](uint64_t cookie, int32_t status) { OnCallback(cookie, status); });
    });
    return client_;
  }

  uint64_t NewId() { return next_id_.fetch_add(1); }

  template <typename T>
  T* New(ObjKind kind) {
    T* h = new T;
    h->dispatch = Dispatch();
    h->id = NewId();
    h->kind = kind;
    h->refs = 1;
    h->holds = 0;
    return h;
  }

  void Add(Handle* h) {
    std::lock_guard<std::mutex> l(mu_);
    live_[h] = h;
    by_id_[h->id] = h;
  }

  // Drops a handle that was never given out.
  template <typename T>
  void Discard(T* h) {
    delete h;
  }

  // The live handle `p` of kind `k`, else nullptr.
  template <typename T>
  T* Live(const void* p, ObjKind k) {
    if (p == nullptr) return nullptr;
    std::lock_guard<std::mutex> l(mu_);
    auto it = live_.find(p);
    if (it == live_.end() || it->second->kind != k) return nullptr;
    return static_cast<T*>(it->second);
  }
  bool IsLive(const void* p, ObjKind k) { return Live<Handle>(p, k) != nullptr; }

  // The id of a live handle of any kind (the backend checks the kind and
  // answers a wrong one with the native code); 0 for anything else.
  uint64_t IdOf(const void* p) {
    if (p == nullptr) return 0;
    std::lock_guard<std::mutex> l(mu_);
    auto it = live_.find(p);
    return it == live_.end() ? 0 : it->second->id;
  }

  // The handle for an id in an info answer (platforms and devices are
  // created on first sight); nullptr for 0 or an id with no live handle.
  void* HandleOf(uint64_t id) {
    if (id == 0) return nullptr;
    std::lock_guard<std::mutex> l(mu_);
    auto it = by_id_.find(id);
    if (it != by_id_.end()) return it->second;
    if (id >= kFirstGuestId) return nullptr;
    Handle* h;
    if (id >= kDeviceIdBase) {
      h = new _cl_device_id;
      h->kind = ObjKind::DEVICE;
    } else {
      h = new _cl_platform_id;
      h->kind = ObjKind::PLATFORM;
    }
    h->dispatch = Dispatch();
    h->id = id;
    h->refs = 1;
    h->holds = 0;
    by_id_[id] = h;
    live_[h] = h;
    return h;
  }

  // One application release done by the backend: at 0 the handle leaves
  // the tables and, unless held, is freed (running destructor callbacks).
  void Unref(Handle* h) {
    if (--h->refs > 0) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      live_.erase(h);
      by_id_.erase(h->id);
    }
    if (h->holds.load() == 0) Free(h);
  }
  void Hold(Handle* h) { ++h->holds; }
  void Unhold(Handle* h) {
    if (--h->holds == 0 && h->refs.load() <= 0) Free(h);
  }

  uint64_t AddCallback(EventCallback cb) {
    std::lock_guard<std::mutex> l(mu_);
    const uint64_t cookie = ++next_cookie_;
    callbacks_[cookie] = cb;
    return cookie;
  }
  void DropCallback(uint64_t cookie) {
    std::lock_guard<std::mutex> l(mu_);
    callbacks_.erase(cookie);
  }

 private:
  Library() = default;

  void OnCallback(uint64_t cookie, int32_t status) {
    EventCallback cb;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = callbacks_.find(cookie);
      if (it == callbacks_.end()) return;
      cb = it->second;
      callbacks_.erase(it);
    }
    cb.fn(cb.event, status, cb.user);
    Unhold(cb.event);
  }

  void Free(Handle* h) {
    switch (h->kind) {
      case ObjKind::CONTEXT: {
        auto* c = static_cast<_cl_context*>(h);
        for (auto it = c->dtors.rbegin(); it != c->dtors.rend(); ++it) {
          it->first(c, it->second);
        }
        delete c;
        break;
      }
      case ObjKind::QUEUE: delete static_cast<_cl_command_queue*>(h); break;
      case ObjKind::MEM: {
        auto* m = static_cast<_cl_mem*>(h);
        for (auto it = m->dtors.rbegin(); it != m->dtors.rend(); ++it) {
          it->first(m, it->second);
        }
        for (auto& [p, map] : m->maps) {
          if (map.owned) std::free(p);
        }
        delete m;
        break;
      }
      case ObjKind::SAMPLER: delete static_cast<_cl_sampler*>(h); break;
      case ObjKind::PROGRAM: delete static_cast<_cl_program*>(h); break;
      case ObjKind::KERNEL: delete static_cast<_cl_kernel*>(h); break;
      case ObjKind::EVENT: delete static_cast<_cl_event*>(h); break;
      case ObjKind::PLATFORM:
      case ObjKind::DEVICE:
        break;  // kept forever
    }
  }

  std::once_flag connect_once_;
  Client* client_ = nullptr;
  std::atomic<uint64_t> next_id_{kFirstGuestId};
  std::mutex mu_;
  std::unordered_map<const void*, Handle*> live_;
  std::unordered_map<uint64_t, Handle*> by_id_;
  std::map<uint64_t, EventCallback> callbacks_;
  uint64_t next_cookie_ = 0;
};

Library& Lib() { return Library::Get(); }

// Runs a call; CL_OUT_OF_RESOURCES without a backend.
cl_int Do(Call& c) {
  Client* cl = Lib().client();
  if (cl == nullptr) return CL_OUT_OF_RESOURCES;
  return cl->Run(c);
}

template <typename T>
T Ret(T h, cl_int code, cl_int* errcode_ret) {
  if (errcode_ret) *errcode_ret = code;
  return h;
}

uint64_t Id(const void* h) { return Lib().IdOf(h); }

// The value of an info query under the caller's size rules.
cl_int Answer(const void* v, size_t n, size_t size, void* value, size_t* ret) {
  if (value != nullptr) {
    if (size < n) return CL_INVALID_VALUE;
    if (n) std::memcpy(value, v, n);
  }
  if (ret) *ret = n;
  return CL_SUCCESS;
}


// Asks the backend for the whole value (ids translated back to handles).
// `size_only`: the application passed no value buffer (a size query),
// which some platforms answer differently from the value query.
cl_int FetchInfo(InfoKind kind, uint64_t id, uint64_t aux, cl_uint param,
                 std::string* out, bool size_only = false) {
  Call c;
  auto g = c.request.initGetInfo();
  g.setKind(kind);
  g.setId(id);
  g.setAux(aux);
  g.setParam(param);
  g.setSizeOnly(size_only);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) return code;
  auto d = c.reply.root().getInfo();
  out->assign(reinterpret_cast<const char*>(d.begin()), d.size());
  if (IsHandleParam(kind, param)) {
    for (size_t off = 0; off + 8 <= out->size(); off += 8) {
      uint64_t v;
      std::memcpy(&v, out->data() + off, 8);
      void* h = Lib().HandleOf(v);
      std::memcpy(out->data() + off, &h, 8);
    }
  } else if (kind == InfoKind::CONTEXT && param == CL_CONTEXT_PROPERTIES) {
    for (size_t off = 0; off + 16 <= out->size(); off += 16) {
      uint64_t name, v;
      std::memcpy(&name, out->data() + off, 8);
      if (name == 0) break;
      if (name == CL_CONTEXT_PLATFORM) {
        std::memcpy(&v, out->data() + off + 8, 8);
        void* h = Lib().HandleOf(v);
        std::memcpy(out->data() + off + 8, &h, 8);
      }
    }
  }
  return CL_SUCCESS;
}

cl_int Info(InfoKind kind, const void* h, uint64_t aux, cl_uint param,
            size_t size, void* value, size_t* ret) {
  std::string v;
  const cl_int code =
      FetchInfo(kind, Id(h), aux, param, &v, /*size_only=*/value == nullptr);
  if (code != CL_SUCCESS) return code;
  return Answer(v.data(), v.size(), size, value, ret);
}

cl_int Simple(const std::function<void(proto::Request::Builder)>& fill) {
  Call c;
  fill(c.request);
  return Do(c);
}

cl_int RetainObj(ObjKind kind, void* h) {
  const cl_int code = Simple([&](proto::Request::Builder r) {
    auto g = r.initRetain();
    g.setKind(kind);
    g.setId(Id(h));
  });
  if (code == CL_SUCCESS) {
    if (Handle* x = Lib().Live<Handle>(h, kind)) ++x->refs;
  }
  return code;
}

cl_int ReleaseObj(ObjKind kind, void* h) {
  const cl_int code = Simple([&](proto::Request::Builder r) {
    auto g = r.initRelease();
    g.setKind(kind);
    g.setId(Id(h));
  });
  if (code == CL_SUCCESS) {
    if (Handle* x = Lib().Live<Handle>(h, kind)) Lib().Unref(x);
  }
  return code;
}

void SetList(capnp::List<uint64_t>::Builder l, const size_t* v, size_t n) {
  for (size_t i = 0; i < n; ++i) l.set(i, v ? v[i] : 0);
}

// --- Enqueue ------------------------------------------------------------

struct EnqueueArgs {
  cl_command_queue queue;
  cl_uint num_events;
  const cl_event* events;
  cl_event* event;
};

// Sends one command; the command's event, when wanted, gets a new handle.
cl_int Enqueue(const EnqueueArgs& a,
               const std::function<void(proto::Enqueue::Builder)>& fill,
               std::vector<iovec> payload = {}, void* recv = nullptr,
               uint64_t recv_size = 0, std::vector<uint8_t>* recv_bytes = nullptr) {
  Call c;
  auto e = c.request.initEnqueue();
  e.setQueue(Id(a.queue));
  if ((a.num_events > 0) != (a.events != nullptr)) {
    // An inconsistent list: an id no session has, which the backend refuses
    // as the native call would (after checking the queue).
    e.initWaitList(1).set(0, 0);
  } else {
    auto wl = e.initWaitList(a.num_events);
    for (cl_uint i = 0; i < a.num_events; ++i) wl.set(i, Id(a.events[i]));
  }
  _cl_event* ev = nullptr;
  if (a.event != nullptr) {
    ev = Lib().New<_cl_event>(ObjKind::EVENT);
    e.setEvent(ev->id);
  }
  fill(e);
  c.payload = std::move(payload);
  c.recv = recv;
  c.recv_size = recv_size;
  const cl_int code = Do(c);
  if (code == CL_SUCCESS && recv_bytes != nullptr) *recv_bytes = std::move(c.recv_bytes);
  if (ev != nullptr) {
    if (code == CL_SUCCESS) {
      auto* q = Lib().Live<_cl_command_queue>(a.queue, ObjKind::QUEUE);
      ev->queue = a.queue;
      ev->context = q ? q->context : nullptr;
      Lib().Add(ev);
      *a.event = ev;
    } else {
      Lib().Discard(ev);
    }
  }
  return code;
}

void Three(capnp::List<uint64_t>::Builder l, const size_t* v) {
  for (unsigned i = 0; i < 3; ++i) l.set(i, v ? v[i] : 0);
}

}  // namespace

// --- Platforms and devices ---------------------------------------------------

cl_int PlatformIds(cl_uint num_entries, cl_platform_id* platforms,
                   cl_uint* num_platforms) {
  if ((num_entries == 0 && platforms != nullptr) ||
      (platforms == nullptr && num_platforms == nullptr)) {
    return CL_INVALID_VALUE;
  }
  Client* cl = Lib().client();
  Call c;
  c.request.setGetPlatformIds();
  if (cl == nullptr || cl->Run(c) != CL_SUCCESS) {
    if (num_platforms) *num_platforms = 0;
    return CL_PLATFORM_NOT_FOUND_KHR;
  }
  auto ids = c.reply.root().getIds();
  if (ids.size() == 0) {
    if (num_platforms) *num_platforms = 0;
    return CL_PLATFORM_NOT_FOUND_KHR;
  }
  if (num_platforms) *num_platforms = ids.size();
  for (cl_uint i = 0; platforms && i < num_entries && i < ids.size(); ++i) {
    platforms[i] = static_cast<cl_platform_id>(Lib().HandleOf(ids[i]));
  }
  return CL_SUCCESS;
}

}  // namespace vgpu::forwarding::guest

using namespace vgpu::forwarding::guest;  // NOLINT: the C API below
namespace proto = vgpu::forwarding::proto;

namespace {
using vgpu::forwarding::guest::Call;
using vgpu::forwarding::ImageHostExtent;
using vgpu::forwarding::PixelBytes;
cl_platform_id FirstPlatform() {
  cl_platform_id p = nullptr;
  PlatformIds(1, &p, nullptr);
  return p;
}
}  // namespace

extern "C" {

CL_API_ENTRY cl_int CL_API_CALL clIcdGetPlatformIDsKHR(
    cl_uint num_entries, cl_platform_id* platforms, cl_uint* num_platforms) {
  return PlatformIds(num_entries, platforms, num_platforms);
}

}  // extern "C"

CL_API_ENTRY cl_int CL_API_CALL clGetPlatformIDs(cl_uint num_entries,
                                                 cl_platform_id* platforms,
                                                 cl_uint* num_platforms) {
  return PlatformIds(num_entries, platforms, num_platforms);
}

CL_API_ENTRY cl_int CL_API_CALL clGetPlatformInfo(cl_platform_id platform,
                                                  cl_platform_info param,
                                                  size_t size, void* value,
                                                  size_t* ret) {
  std::string v;
  const cl_int code = FetchInfo(InfoKind::PLATFORM, Id(platform), 0, param, &v,
                                /*size_only=*/value == nullptr &&
                                    param != CL_PLATFORM_NAME);
  if (code != CL_SUCCESS) return code;
  if (param == CL_PLATFORM_NAME) {
    // The one intended difference from the native platform.
    v = absl::StrCat("vgpu-opencl on ", v.c_str());
    v.push_back('\0');
  }
  return Answer(v.data(), v.size(), size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetDeviceIDs(cl_platform_id platform,
                                               cl_device_type type,
                                               cl_uint num_entries,
                                               cl_device_id* devices,
                                               cl_uint* num_devices) {
  if (platform == nullptr) platform = FirstPlatform();
  Call c;
  auto g = c.request.initGetDeviceIds();
  g.setPlatform(Id(platform));
  g.setDeviceType(type);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) return code;
  if ((num_entries == 0 && devices != nullptr) ||
      (devices == nullptr && num_devices == nullptr)) {
    return CL_INVALID_VALUE;
  }
  auto ids = c.reply.root().getIds();
  if (num_devices) *num_devices = ids.size();
  for (cl_uint i = 0; devices && i < num_entries && i < ids.size(); ++i) {
    devices[i] = static_cast<cl_device_id>(Lib().HandleOf(ids[i]));
  }
  return CL_SUCCESS;
}

CL_API_ENTRY cl_int CL_API_CALL clGetDeviceInfo(cl_device_id device,
                                                cl_device_info param,
                                                size_t size, void* value,
                                                size_t* ret) {
  return Info(InfoKind::DEVICE, device, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clCreateSubDevices(
    cl_device_id in_device, const cl_device_partition_property* properties,
    cl_uint num_devices, cl_device_id* out_devices, cl_uint* num_devices_ret) {
  // The protocol has no partitioning: refused as for an unsupported
  // partition scheme.
  if (!Lib().IsLive(in_device, ObjKind::DEVICE)) return CL_INVALID_DEVICE;
  return CL_INVALID_VALUE;
}

CL_API_ENTRY cl_int CL_API_CALL clRetainDevice(cl_device_id device) {
  return Lib().IsLive(device, ObjKind::DEVICE) ? CL_SUCCESS : CL_INVALID_DEVICE;
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseDevice(cl_device_id device) {
  return Lib().IsLive(device, ObjKind::DEVICE) ? CL_SUCCESS : CL_INVALID_DEVICE;
}

// --- Contexts ----------------------------------------------------------------

namespace {
size_t CountProps(const cl_context_properties* p) {
  size_t n = 0;
  while (p && p[2 * n] != 0) ++n;
  return n;
}

template <typename B>
void FillProps(B builder, const cl_context_properties* p) {
  const size_t n = CountProps(p);
  auto l = builder.initProperties(n);
  for (size_t i = 0; i < n; ++i) {
    l[i].setName(p[2 * i]);
    if (p[2 * i] == CL_CONTEXT_PLATFORM) {
      l[i].setValue(static_cast<int64_t>(Id(reinterpret_cast<void*>(p[2 * i + 1]))));
    } else {
      l[i].setValue(p[2 * i + 1]);
    }
  }
}
}  // namespace

CL_API_ENTRY cl_context CL_API_CALL clCreateContext(
    const cl_context_properties* properties, cl_uint num_devices,
    const cl_device_id* devices,
    void(CL_CALLBACK* pfn_notify)(const char*, const void*, size_t, void*),
    void* user_data, cl_int* errcode_ret) {
  if (pfn_notify == nullptr && user_data != nullptr) {
    return Ret<cl_context>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  auto* h = Lib().New<_cl_context>(ObjKind::CONTEXT);
  Call c;
  auto r = c.request.initCreateContext();
  r.setId(h->id);
  FillProps(r, properties);
  auto d = r.initDevices(devices ? num_devices : 0);
  for (cl_uint i = 0; devices && i < num_devices; ++i) d.set(i, Id(devices[i]));
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_context>(nullptr, code, errcode_ret);
  }
  Lib().Add(h);
  return Ret<cl_context>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_context CL_API_CALL clCreateContextFromType(
    const cl_context_properties* properties, cl_device_type device_type,
    void(CL_CALLBACK* pfn_notify)(const char*, const void*, size_t, void*),
    void* user_data, cl_int* errcode_ret) {
  if (pfn_notify == nullptr && user_data != nullptr) {
    return Ret<cl_context>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  auto* h = Lib().New<_cl_context>(ObjKind::CONTEXT);
  Call c;
  auto r = c.request.initCreateContextFromType();
  r.setId(h->id);
  FillProps(r, properties);
  r.setDeviceType(device_type);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_context>(nullptr, code, errcode_ret);
  }
  Lib().Add(h);
  return Ret<cl_context>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainContext(cl_context context) {
  return RetainObj(ObjKind::CONTEXT, context);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseContext(cl_context context) {
  return ReleaseObj(ObjKind::CONTEXT, context);
}

CL_API_ENTRY cl_int CL_API_CALL clGetContextInfo(cl_context context,
                                                 cl_context_info param,
                                                 size_t size, void* value,
                                                 size_t* ret) {
  return Info(InfoKind::CONTEXT, context, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clSetContextDestructorCallback(
    cl_context context, void(CL_CALLBACK* pfn_notify)(cl_context, void*),
    void* user_data) {
  auto* c = Lib().Live<_cl_context>(context, ObjKind::CONTEXT);
  if (c == nullptr) return CL_INVALID_CONTEXT;
  if (pfn_notify == nullptr) return CL_INVALID_VALUE;
  std::lock_guard<std::mutex> l(c->mu);
  c->dtors.emplace_back(pfn_notify, user_data);
  return CL_SUCCESS;
}

// --- Queues ------------------------------------------------------------------

namespace {
cl_command_queue CreateQueue(cl_context context, cl_device_id device,
                             const std::vector<uint64_t>& props,
                             bool with_properties, cl_int* errcode_ret) {
  auto* h = Lib().New<_cl_command_queue>(ObjKind::QUEUE);
  Call c;
  auto r = c.request.initCreateQueue();
  r.setId(h->id);
  r.setContext(Id(context));
  r.setDevice(Id(device));
  auto l = r.initProperties(props.size());
  for (size_t i = 0; i < props.size(); ++i) l.set(i, props[i]);
  r.setWithProperties(with_properties);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_command_queue>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  return Ret<cl_command_queue>(h, CL_SUCCESS, errcode_ret);
}
}  // namespace

CL_API_ENTRY cl_command_queue CL_API_CALL clCreateCommandQueue(
    cl_context context, cl_device_id device,
    cl_command_queue_properties properties, cl_int* errcode_ret) {
  return CreateQueue(context, device, {CL_QUEUE_PROPERTIES, properties}, false,
                     errcode_ret);
}

CL_API_ENTRY cl_command_queue CL_API_CALL clCreateCommandQueueWithProperties(
    cl_context context, cl_device_id device,
    const cl_queue_properties* properties, cl_int* errcode_ret) {
  std::vector<uint64_t> p;
  for (size_t i = 0; properties && properties[i] != 0; i += 2) {
    p.push_back(properties[i]);
    p.push_back(properties[i + 1]);
  }
  return CreateQueue(context, device, p, true, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainCommandQueue(cl_command_queue q) {
  return RetainObj(ObjKind::QUEUE, q);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseCommandQueue(cl_command_queue q) {
  return ReleaseObj(ObjKind::QUEUE, q);
}

CL_API_ENTRY cl_int CL_API_CALL clGetCommandQueueInfo(cl_command_queue q,
                                                      cl_command_queue_info param,
                                                      size_t size, void* value,
                                                      size_t* ret) {
  return Info(InfoKind::QUEUE, q, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clSetCommandQueueProperty(
    cl_command_queue q, cl_command_queue_properties properties, cl_bool enable,
    cl_command_queue_properties* old_properties) {
  if (!Lib().IsLive(q, ObjKind::QUEUE)) return CL_INVALID_COMMAND_QUEUE;
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clSetDefaultDeviceCommandQueue(
    cl_context context, cl_device_id device, cl_command_queue q) {
  return CL_INVALID_OPERATION;
}

// --- Memory objects --------------------------------------------------------------

CL_API_ENTRY cl_mem CL_API_CALL clCreateBuffer(cl_context context,
                                               cl_mem_flags flags, size_t size,
                                               void* host_ptr,
                                               cl_int* errcode_ret) {
  const bool host_flags = flags & (CL_MEM_USE_HOST_PTR | CL_MEM_COPY_HOST_PTR);
  if (host_ptr != nullptr && !host_flags &&
      Lib().IsLive(context, ObjKind::CONTEXT)) {
    return Ret<cl_mem>(nullptr, CL_INVALID_HOST_PTR, errcode_ret);
  }
  auto* h = Lib().New<_cl_mem>(ObjKind::MEM);
  Call c;
  auto r = c.request.initCreateBuffer();
  r.setId(h->id);
  r.setContext(Id(context));
  r.setFlags(flags);
  r.setSize(size);
  if (host_flags && host_ptr != nullptr && size > 0) {
    c.payload.push_back({host_ptr, size});
  }
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_mem>(nullptr, code, errcode_ret);
  }
  h->context = context;
  h->flags = flags;
  h->size = size;
  h->host_ptr = (flags & CL_MEM_USE_HOST_PTR) ? host_ptr : nullptr;
  Lib().Add(h);
  return Ret<cl_mem>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL clCreateBufferWithProperties(
    cl_context context, const cl_mem_properties* properties, cl_mem_flags flags,
    size_t size, void* host_ptr, cl_int* errcode_ret) {
  if (properties != nullptr && properties[0] != 0) {
    return Ret<cl_mem>(nullptr, CL_INVALID_PROPERTY, errcode_ret);
  }
  return clCreateBuffer(context, flags, size, host_ptr, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL clCreateSubBuffer(
    cl_mem buffer, cl_mem_flags flags, cl_buffer_create_type type,
    const void* info, cl_int* errcode_ret) {
  auto* parent = Lib().Live<_cl_mem>(buffer, ObjKind::MEM);
  if (parent == nullptr) return Ret<cl_mem>(nullptr, CL_INVALID_MEM_OBJECT, errcode_ret);
  if (type != CL_BUFFER_CREATE_TYPE_REGION || info == nullptr) {
    return Ret<cl_mem>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  const auto* region = static_cast<const cl_buffer_region*>(info);
  auto* h = Lib().New<_cl_mem>(ObjKind::MEM);
  Call c;
  auto r = c.request.initCreateSubBuffer();
  r.setId(h->id);
  r.setParent(parent->id);
  r.setFlags(flags);
  r.setOrigin(region->origin);
  r.setSize(region->size);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_mem>(nullptr, code, errcode_ret);
  }
  h->context = parent->context;
  h->flags = flags | (parent->flags & (CL_MEM_USE_HOST_PTR | CL_MEM_ALLOC_HOST_PTR |
                                       CL_MEM_COPY_HOST_PTR));
  h->size = region->size;
  h->host_ptr = parent->host_ptr
                    ? static_cast<char*>(parent->host_ptr) + region->origin
                    : nullptr;
  Lib().Add(h);
  return Ret<cl_mem>(h, CL_SUCCESS, errcode_ret);
}

namespace {
cl_mem CreateImage(cl_context context, cl_mem_flags flags,
                   const cl_image_format* format, const cl_image_desc* desc,
                   void* host_ptr, bool legacy, cl_int* errcode_ret) {
  if (format == nullptr) {
    return Ret<cl_mem>(nullptr, CL_INVALID_IMAGE_FORMAT_DESCRIPTOR, errcode_ret);
  }
  if (desc == nullptr) {
    return Ret<cl_mem>(nullptr, CL_INVALID_IMAGE_DESCRIPTOR, errcode_ret);
  }
  const bool host_flags = flags & (CL_MEM_USE_HOST_PTR | CL_MEM_COPY_HOST_PTR);
  if (host_ptr != nullptr && !host_flags &&
      Lib().IsLive(context, ObjKind::CONTEXT)) {
    return Ret<cl_mem>(nullptr, CL_INVALID_HOST_PTR, errcode_ret);
  }
  const size_t elem =
      PixelBytes(format->image_channel_order, format->image_channel_data_type);
  size_t region[3] = {desc->image_width, 1, 1};
  switch (desc->image_type) {
    case CL_MEM_OBJECT_IMAGE1D_ARRAY: region[1] = desc->image_array_size; break;
    case CL_MEM_OBJECT_IMAGE2D: region[1] = desc->image_height; break;
    case CL_MEM_OBJECT_IMAGE2D_ARRAY:
      region[1] = desc->image_height;
      region[2] = desc->image_array_size;
      break;
    case CL_MEM_OBJECT_IMAGE3D:
      region[1] = desc->image_height;
      region[2] = desc->image_depth;
      break;
    default: break;
  }
  auto* h = Lib().New<_cl_mem>(ObjKind::MEM);
  Call c;
  auto r = c.request.initCreateImage();
  r.setId(h->id);
  r.setContext(Id(context));
  r.setFlags(flags);
  r.initFormat().setChannelOrder(format->image_channel_order);
  r.getFormat().setChannelDataType(format->image_channel_data_type);
  auto d = r.initDesc();
  d.setType(desc->image_type);
  d.setWidth(desc->image_width);
  d.setHeight(desc->image_height);
  d.setDepth(desc->image_depth);
  d.setArraySize(desc->image_array_size);
  d.setRowPitch(desc->image_row_pitch);
  d.setSlicePitch(desc->image_slice_pitch);
  d.setNumMipLevels(desc->num_mip_levels);
  d.setNumSamples(desc->num_samples);
  d.setBuffer(Id(desc->buffer));
  r.setLegacy(legacy);
  const uint64_t extent = ImageHostExtent(desc->image_type, elem, region,
                                          desc->image_row_pitch,
                                          desc->image_slice_pitch);
  if (host_flags && host_ptr != nullptr && extent > 0) {
    c.payload.push_back({host_ptr, extent});
  }
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_mem>(nullptr, code, errcode_ret);
  }
  h->context = context;
  h->flags = flags;
  h->type = desc->image_type;
  h->elem = elem;
  h->size = extent;
  h->host_ptr = (flags & CL_MEM_USE_HOST_PTR) ? host_ptr : nullptr;
  Lib().Add(h);
  return Ret<cl_mem>(h, CL_SUCCESS, errcode_ret);
}
}  // namespace

CL_API_ENTRY cl_mem CL_API_CALL clCreateImage(cl_context context,
                                              cl_mem_flags flags,
                                              const cl_image_format* format,
                                              const cl_image_desc* desc,
                                              void* host_ptr,
                                              cl_int* errcode_ret) {
  return CreateImage(context, flags, format, desc, host_ptr, false, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL clCreateImageWithProperties(
    cl_context context, const cl_mem_properties* properties, cl_mem_flags flags,
    const cl_image_format* format, const cl_image_desc* desc, void* host_ptr,
    cl_int* errcode_ret) {
  if (properties != nullptr && properties[0] != 0) {
    return Ret<cl_mem>(nullptr, CL_INVALID_PROPERTY, errcode_ret);
  }
  return CreateImage(context, flags, format, desc, host_ptr, false, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL clCreateImage2D(
    cl_context context, cl_mem_flags flags, const cl_image_format* format,
    size_t width, size_t height, size_t row_pitch, void* host_ptr,
    cl_int* errcode_ret) {
  cl_image_desc d{};
  d.image_type = CL_MEM_OBJECT_IMAGE2D;
  d.image_width = width;
  d.image_height = height;
  d.image_row_pitch = row_pitch;
  return CreateImage(context, flags, format, &d, host_ptr, true, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL clCreateImage3D(
    cl_context context, cl_mem_flags flags, const cl_image_format* format,
    size_t width, size_t height, size_t depth, size_t row_pitch,
    size_t slice_pitch, void* host_ptr, cl_int* errcode_ret) {
  cl_image_desc d{};
  d.image_type = CL_MEM_OBJECT_IMAGE3D;
  d.image_width = width;
  d.image_height = height;
  d.image_depth = depth;
  d.image_row_pitch = row_pitch;
  d.image_slice_pitch = slice_pitch;
  return CreateImage(context, flags, format, &d, host_ptr, true, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainMemObject(cl_mem m) {
  return RetainObj(ObjKind::MEM, m);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseMemObject(cl_mem m) {
  return ReleaseObj(ObjKind::MEM, m);
}

CL_API_ENTRY cl_int CL_API_CALL clGetSupportedImageFormats(
    cl_context context, cl_mem_flags flags, cl_mem_object_type type,
    cl_uint num_entries, cl_image_format* formats, cl_uint* num_formats) {
  Call c;
  auto r = c.request.initGetSupportedImageFormats();
  r.setContext(Id(context));
  r.setFlags(flags);
  r.setImageType(type);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) return code;
  if (num_entries == 0 && formats != nullptr) return CL_INVALID_VALUE;
  auto l = c.reply.root().getImageFormats();
  if (num_formats) *num_formats = l.size();
  for (cl_uint i = 0; formats && i < num_entries && i < l.size(); ++i) {
    formats[i].image_channel_order = l[i].getChannelOrder();
    formats[i].image_channel_data_type = l[i].getChannelDataType();
  }
  return CL_SUCCESS;
}

CL_API_ENTRY cl_int CL_API_CALL clGetMemObjectInfo(cl_mem m, cl_mem_info param,
                                                   size_t size, void* value,
                                                   size_t* ret) {
  if (auto* h = Lib().Live<_cl_mem>(m, ObjKind::MEM)) {
    if (param == CL_MEM_HOST_PTR) {
      return Answer(&h->host_ptr, sizeof(void*), size, value, ret);
    }
    if (param == CL_MEM_MAP_COUNT) {
      std::lock_guard<std::mutex> l(h->mu);
      const cl_uint n = h->maps.size();
      return Answer(&n, sizeof(n), size, value, ret);
    }
  }
  return Info(InfoKind::MEM, m, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetImageInfo(cl_mem m, cl_image_info param,
                                               size_t size, void* value,
                                               size_t* ret) {
  return Info(InfoKind::IMAGE, m, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clSetMemObjectDestructorCallback(
    cl_mem m, void(CL_CALLBACK* pfn_notify)(cl_mem, void*), void* user_data) {
  auto* h = Lib().Live<_cl_mem>(m, ObjKind::MEM);
  if (h == nullptr) return CL_INVALID_MEM_OBJECT;
  if (pfn_notify == nullptr) return CL_INVALID_VALUE;
  std::lock_guard<std::mutex> l(h->mu);
  h->dtors.emplace_back(pfn_notify, user_data);
  return CL_SUCCESS;
}

CL_API_ENTRY cl_mem CL_API_CALL clCreatePipe(cl_context, cl_mem_flags, cl_uint,
                                             cl_uint, const cl_pipe_properties*,
                                             cl_int* errcode_ret) {
  return Ret<cl_mem>(nullptr, CL_INVALID_OPERATION, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetPipeInfo(cl_mem, cl_pipe_info, size_t,
                                              void*, size_t*) {
  return CL_INVALID_MEM_OBJECT;
}

CL_API_ENTRY void* CL_API_CALL clSVMAlloc(cl_context, cl_svm_mem_flags, size_t,
                                          cl_uint) {
  return nullptr;
}

CL_API_ENTRY void CL_API_CALL clSVMFree(cl_context, void*) {}

// --- Samplers ----------------------------------------------------------------

CL_API_ENTRY cl_sampler CL_API_CALL clCreateSampler(
    cl_context context, cl_bool normalized, cl_addressing_mode addressing,
    cl_filter_mode filter, cl_int* errcode_ret) {
  auto* h = Lib().New<_cl_sampler>(ObjKind::SAMPLER);
  Call c;
  auto r = c.request.initCreateSampler();
  r.setId(h->id);
  r.setContext(Id(context));
  r.setNormalizedCoords(normalized);
  r.setAddressingMode(addressing);
  r.setFilterMode(filter);
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_sampler>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  return Ret<cl_sampler>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_sampler CL_API_CALL clCreateSamplerWithProperties(
    cl_context context, const cl_sampler_properties* props, cl_int* errcode_ret) {
  cl_bool normalized = CL_TRUE;
  cl_addressing_mode addressing = CL_ADDRESS_CLAMP;
  cl_filter_mode filter = CL_FILTER_NEAREST;
  for (size_t i = 0; props && props[i] != 0; i += 2) {
    switch (props[i]) {
      case CL_SAMPLER_NORMALIZED_COORDS:
        normalized = static_cast<cl_bool>(props[i + 1]);
        break;
      case CL_SAMPLER_ADDRESSING_MODE:
        addressing = static_cast<cl_addressing_mode>(props[i + 1]);
        break;
      case CL_SAMPLER_FILTER_MODE:
        filter = static_cast<cl_filter_mode>(props[i + 1]);
        break;
      default:
        return Ret<cl_sampler>(nullptr, CL_INVALID_VALUE, errcode_ret);
    }
  }
  return clCreateSampler(context, normalized, addressing, filter, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainSampler(cl_sampler s) {
  return RetainObj(ObjKind::SAMPLER, s);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseSampler(cl_sampler s) {
  return ReleaseObj(ObjKind::SAMPLER, s);
}

CL_API_ENTRY cl_int CL_API_CALL clGetSamplerInfo(cl_sampler s,
                                                 cl_sampler_info param,
                                                 size_t size, void* value,
                                                 size_t* ret) {
  return Info(InfoKind::SAMPLER, s, 0, param, size, value, ret);
}

// --- Programs ----------------------------------------------------------------

namespace {
cl_program NewProgram(_cl_program* h, Call& c, cl_context context,
                      cl_int* errcode_ret) {
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_program>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  return Ret<cl_program>(h, CL_SUCCESS, errcode_ret);
}

void SetDevices(capnp::List<uint64_t>::Builder l, const cl_device_id* d,
                cl_uint n) {
  for (cl_uint i = 0; d && i < n; ++i) l.set(i, Id(d[i]));
}
}  // namespace

CL_API_ENTRY cl_program CL_API_CALL clCreateProgramWithSource(
    cl_context context, cl_uint count, const char** strings,
    const size_t* lengths, cl_int* errcode_ret) {
  if (count == 0 || strings == nullptr) {
    return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  for (cl_uint i = 0; i < count; ++i) {
    if (strings[i] == nullptr) {
      return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
    }
  }
  auto* h = Lib().New<_cl_program>(ObjKind::PROGRAM);
  Call c;
  auto r = c.request.initCreateProgramWithSource();
  r.setId(h->id);
  r.setContext(Id(context));
  auto l = r.initSources(count);
  for (cl_uint i = 0; i < count; ++i) {
    const size_t n = (lengths && lengths[i]) ? lengths[i] : std::strlen(strings[i]);
    l.set(i, capnp::Text::Reader(strings[i], n));
  }
  return NewProgram(h, c, context, errcode_ret);
}

CL_API_ENTRY cl_program CL_API_CALL clCreateProgramWithBinary(
    cl_context context, cl_uint num_devices, const cl_device_id* devices,
    const size_t* lengths, const unsigned char** binaries,
    cl_int* binary_status, cl_int* errcode_ret) {
  if (devices == nullptr || num_devices == 0 || lengths == nullptr ||
      binaries == nullptr) {
    return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  for (cl_uint i = 0; i < num_devices; ++i) {
    if (lengths[i] == 0 || binaries[i] == nullptr) {
      if (binary_status) binary_status[i] = CL_INVALID_VALUE;
      return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
    }
  }
  auto* h = Lib().New<_cl_program>(ObjKind::PROGRAM);
  Call c;
  auto r = c.request.initCreateProgramWithBinary();
  r.setId(h->id);
  r.setContext(Id(context));
  SetDevices(r.initDevices(num_devices), devices, num_devices);
  auto b = r.initBinaries(num_devices);
  for (cl_uint i = 0; i < num_devices; ++i) {
    b.set(i, kj::arrayPtr(binaries[i], lengths[i]));
  }
  const cl_int code = Do(c);
  if (binary_status && c.reply.root().isStatuses()) {
    auto st = c.reply.root().getStatuses();
    for (cl_uint i = 0; i < num_devices && i < st.size(); ++i) binary_status[i] = st[i];
  }
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_program>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  return Ret<cl_program>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_program CL_API_CALL clCreateProgramWithBuiltInKernels(
    cl_context context, cl_uint num_devices, const cl_device_id* devices,
    const char* kernel_names, cl_int* errcode_ret) {
  if (devices == nullptr || num_devices == 0 || kernel_names == nullptr) {
    return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  auto* h = Lib().New<_cl_program>(ObjKind::PROGRAM);
  Call c;
  auto r = c.request.initCreateProgramWithBuiltInKernels();
  r.setId(h->id);
  r.setContext(Id(context));
  SetDevices(r.initDevices(num_devices), devices, num_devices);
  r.setKernelNames(kernel_names);
  return NewProgram(h, c, context, errcode_ret);
}

CL_API_ENTRY cl_program CL_API_CALL clCreateProgramWithIL(cl_context, const void*,
                                                          size_t,
                                                          cl_int* errcode_ret) {
  return Ret<cl_program>(nullptr, CL_INVALID_OPERATION, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainProgram(cl_program p) {
  return RetainObj(ObjKind::PROGRAM, p);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseProgram(cl_program p) {
  return ReleaseObj(ObjKind::PROGRAM, p);
}

CL_API_ENTRY cl_int CL_API_CALL clBuildProgram(
    cl_program program, cl_uint num_devices, const cl_device_id* devices,
    const char* options, void(CL_CALLBACK* pfn_notify)(cl_program, void*),
    void* user_data) {
  if ((devices == nullptr) != (num_devices == 0)) return CL_INVALID_VALUE;
  if (pfn_notify == nullptr && user_data != nullptr) return CL_INVALID_VALUE;
  Call c;
  auto r = c.request.initBuildProgram();
  r.setProgram(Id(program));
  SetDevices(r.initDevices(devices ? num_devices : 0), devices, num_devices);
  r.setOptions(options ? options : "");
  const cl_int code = Do(c);
  // The build is over by the time the reply is in.
  if (pfn_notify != nullptr &&
      (code == CL_SUCCESS || code == CL_BUILD_PROGRAM_FAILURE)) {
    pfn_notify(program, user_data);
  }
  return code;
}

CL_API_ENTRY cl_int CL_API_CALL clCompileProgram(
    cl_program program, cl_uint num_devices, const cl_device_id* devices,
    const char* options, cl_uint num_headers, const cl_program* headers,
    const char** header_names, void(CL_CALLBACK* pfn_notify)(cl_program, void*),
    void* user_data) {
  if ((devices == nullptr) != (num_devices == 0)) return CL_INVALID_VALUE;
  if (pfn_notify == nullptr && user_data != nullptr) return CL_INVALID_VALUE;
  if (num_headers > 0 && (headers == nullptr || header_names == nullptr)) {
    return CL_INVALID_VALUE;
  }
  if (num_headers == 0 && (headers != nullptr || header_names != nullptr)) {
    return CL_INVALID_VALUE;
  }
  Call c;
  auto r = c.request.initCompileProgram();
  r.setProgram(Id(program));
  SetDevices(r.initDevices(devices ? num_devices : 0), devices, num_devices);
  r.setOptions(options ? options : "");
  auto hl = r.initHeaders(num_headers);
  auto hn = r.initHeaderNames(num_headers);
  for (cl_uint i = 0; i < num_headers; ++i) {
    hl.set(i, Id(headers[i]));
    hn.set(i, header_names[i] ? header_names[i] : "");
  }
  const cl_int code = Do(c);
  if (pfn_notify != nullptr &&
      (code == CL_SUCCESS || code == CL_COMPILE_PROGRAM_FAILURE)) {
    pfn_notify(program, user_data);
  }
  return code;
}

CL_API_ENTRY cl_program CL_API_CALL clLinkProgram(
    cl_context context, cl_uint num_devices, const cl_device_id* devices,
    const char* options, cl_uint num_inputs, const cl_program* inputs,
    void(CL_CALLBACK* pfn_notify)(cl_program, void*), void* user_data,
    cl_int* errcode_ret) {
  if ((devices == nullptr) != (num_devices == 0) ||
      (pfn_notify == nullptr && user_data != nullptr) || num_inputs == 0 ||
      inputs == nullptr) {
    return Ret<cl_program>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  auto* h = Lib().New<_cl_program>(ObjKind::PROGRAM);
  Call c;
  auto r = c.request.initLinkProgram();
  r.setId(h->id);
  r.setContext(Id(context));
  SetDevices(r.initDevices(devices ? num_devices : 0), devices, num_devices);
  r.setOptions(options ? options : "");
  auto in = r.initInputs(num_inputs);
  for (cl_uint i = 0; i < num_inputs; ++i) in.set(i, Id(inputs[i]));
  const cl_int code = Do(c);
  bool exists = code == CL_SUCCESS;
  if (!exists && code == CL_LINK_PROGRAM_FAILURE) {
    // A failed link may still have made a program (for its log).
    std::string v;
    exists = FetchInfo(InfoKind::PROGRAM, h->id, 0, CL_PROGRAM_REFERENCE_COUNT,
                       &v) == CL_SUCCESS;
  }
  if (!exists) {
    Lib().Discard(h);
    return Ret<cl_program>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  if (pfn_notify != nullptr) pfn_notify(h, user_data);
  return Ret<cl_program>(h, code, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clUnloadPlatformCompiler(cl_platform_id platform) {
  return Simple([&](proto::Request::Builder r) {
    r.setUnloadPlatformCompiler(Id(platform));
  });
}

CL_API_ENTRY cl_int CL_API_CALL clUnloadCompiler(void) { return CL_SUCCESS; }

CL_API_ENTRY cl_int CL_API_CALL clGetProgramInfo(cl_program program,
                                                 cl_program_info param,
                                                 size_t size, void* value,
                                                 size_t* ret) {
  if (param != CL_PROGRAM_BINARIES) {
    return Info(InfoKind::PROGRAM, program, 0, param, size, value, ret);
  }
  // The reply concatenates the binaries; the caller gave one pointer per
  // device, each with room for its CL_PROGRAM_BINARY_SIZES entry.
  std::string sizes, all;
  cl_int code = FetchInfo(InfoKind::PROGRAM, Id(program), 0,
                          CL_PROGRAM_BINARY_SIZES, &sizes);
  if (code != CL_SUCCESS) return code;
  const size_t n = sizes.size() / sizeof(size_t);
  if (value != nullptr && size < n * sizeof(unsigned char*)) return CL_INVALID_VALUE;
  if (ret) *ret = n * sizeof(unsigned char*);
  if (value == nullptr) return CL_SUCCESS;
  code = FetchInfo(InfoKind::PROGRAM, Id(program), 0, CL_PROGRAM_BINARIES, &all);
  if (code != CL_SUCCESS) return code;
  auto** out = static_cast<unsigned char**>(value);
  size_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    size_t len;
    std::memcpy(&len, sizes.data() + i * sizeof(size_t), sizeof(size_t));
    if (out[i] != nullptr && off + len <= all.size()) {
      std::memcpy(out[i], all.data() + off, len);
    }
    off += len;
  }
  return CL_SUCCESS;
}

CL_API_ENTRY cl_int CL_API_CALL clGetProgramBuildInfo(
    cl_program program, cl_device_id device, cl_program_build_info param,
    size_t size, void* value, size_t* ret) {
  return Info(InfoKind::PROGRAM_BUILD, program, Id(device), param, size, value,
              ret);
}

CL_API_ENTRY cl_int CL_API_CALL clSetProgramReleaseCallback(
    cl_program, void(CL_CALLBACK*)(cl_program, void*), void*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clSetProgramSpecializationConstant(
    cl_program, cl_uint, size_t, const void*) {
  return CL_INVALID_OPERATION;
}

// --- Kernels -----------------------------------------------------------------

CL_API_ENTRY cl_kernel CL_API_CALL clCreateKernel(cl_program program,
                                                  const char* name,
                                                  cl_int* errcode_ret) {
  if (name == nullptr && Lib().IsLive(program, ObjKind::PROGRAM)) {
    return Ret<cl_kernel>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  auto* h = Lib().New<_cl_kernel>(ObjKind::KERNEL);
  Call c;
  auto r = c.request.initCreateKernel();
  r.setId(h->id);
  r.setProgram(Id(program));
  r.setName(name ? name : "");
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_kernel>(nullptr, code, errcode_ret);
  }
  h->program = program;
  Lib().Add(h);
  return Ret<cl_kernel>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clCreateKernelsInProgram(
    cl_program program, cl_uint num_kernels, cl_kernel* kernels,
    cl_uint* num_kernels_ret) {
  std::vector<_cl_kernel*> hs;
  Call c;
  auto r = c.request.initCreateKernelsInProgram();
  r.setProgram(Id(program));
  if (kernels != nullptr) {
    auto ids = r.initIds(num_kernels);
    for (cl_uint i = 0; i < num_kernels; ++i) {
      hs.push_back(Lib().New<_cl_kernel>(ObjKind::KERNEL));
      ids.set(i, hs.back()->id);
    }
  }
  const cl_int code = Do(c);
  const cl_uint n = code == CL_SUCCESS ? c.reply.root().getCount() : 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    if (i < n) {
      hs[i]->program = program;
      Lib().Add(hs[i]);
      kernels[i] = hs[i];
    } else {
      Lib().Discard(hs[i]);
    }
  }
  if (code != CL_SUCCESS) return code;
  if (num_kernels_ret) *num_kernels_ret = n;
  return CL_SUCCESS;
}

CL_API_ENTRY cl_kernel CL_API_CALL clCloneKernel(cl_kernel, cl_int* errcode_ret) {
  return Ret<cl_kernel>(nullptr, CL_INVALID_OPERATION, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainKernel(cl_kernel k) {
  return RetainObj(ObjKind::KERNEL, k);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseKernel(cl_kernel k) {
  return ReleaseObj(ObjKind::KERNEL, k);
}

CL_API_ENTRY cl_int CL_API_CALL clSetKernelArg(cl_kernel kernel, cl_uint index,
                                               size_t size, const void* value) {
  Call c;
  auto r = c.request.initSetKernelArg();
  r.setKernel(Id(kernel));
  r.setIndex(index);
  r.setSize(size);
  if (value == nullptr) {
    r.setLocal();
  } else {
    bool done = false;
    if (size == sizeof(cl_mem)) {
      void* p;
      std::memcpy(&p, value, sizeof(p));
      if (p == nullptr) {
        r.setMem(0);
        done = true;
      } else if (Lib().IsLive(p, ObjKind::MEM)) {
        r.setMem(Id(p));
        done = true;
      } else if (Lib().IsLive(p, ObjKind::SAMPLER)) {
        r.setSampler(Id(p));
        done = true;
      }
    }
    if (!done) r.setValue(kj::arrayPtr(static_cast<const capnp::byte*>(value), size));
  }
  return Do(c);
}

CL_API_ENTRY cl_int CL_API_CALL clGetKernelInfo(cl_kernel k, cl_kernel_info param,
                                                size_t size, void* value,
                                                size_t* ret) {
  return Info(InfoKind::KERNEL, k, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetKernelArgInfo(cl_kernel k, cl_uint index,
                                                   cl_kernel_arg_info param,
                                                   size_t size, void* value,
                                                   size_t* ret) {
  return Info(InfoKind::KERNEL_ARG, k, index, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetKernelWorkGroupInfo(
    cl_kernel k, cl_device_id device, cl_kernel_work_group_info param,
    size_t size, void* value, size_t* ret) {
  return Info(InfoKind::KERNEL_WORK_GROUP, k, Id(device), param, size, value,
              ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetKernelSubGroupInfo(
    cl_kernel, cl_device_id, cl_kernel_sub_group_info, size_t, const void*,
    size_t, void*, size_t*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clSetKernelArgSVMPointer(cl_kernel, cl_uint,
                                                         const void*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clSetKernelExecInfo(cl_kernel,
                                                    cl_kernel_exec_info, size_t,
                                                    const void*) {
  return CL_INVALID_OPERATION;
}

// --- Events ------------------------------------------------------------------

CL_API_ENTRY cl_int CL_API_CALL clWaitForEvents(cl_uint num_events,
                                                const cl_event* events) {
  if (num_events == 0 || events == nullptr) return CL_INVALID_VALUE;
  Call c;
  auto l = c.request.initWaitForEvents(num_events);
  for (cl_uint i = 0; i < num_events; ++i) l.set(i, Id(events[i]));
  return Do(c);
}

CL_API_ENTRY cl_int CL_API_CALL clGetEventInfo(cl_event e, cl_event_info param,
                                               size_t size, void* value,
                                               size_t* ret) {
  return Info(InfoKind::EVENT, e, 0, param, size, value, ret);
}

CL_API_ENTRY cl_int CL_API_CALL clGetEventProfilingInfo(cl_event e,
                                                        cl_profiling_info param,
                                                        size_t size, void* value,
                                                        size_t* ret) {
  return Info(InfoKind::EVENT_PROFILING, e, 0, param, size, value, ret);
}

CL_API_ENTRY cl_event CL_API_CALL clCreateUserEvent(cl_context context,
                                                    cl_int* errcode_ret) {
  auto* h = Lib().New<_cl_event>(ObjKind::EVENT);
  Call c;
  auto r = c.request.initCreateUserEvent();
  r.setId(h->id);
  r.setContext(Id(context));
  const cl_int code = Do(c);
  if (code != CL_SUCCESS) {
    Lib().Discard(h);
    return Ret<cl_event>(nullptr, code, errcode_ret);
  }
  h->context = context;
  Lib().Add(h);
  return Ret<cl_event>(h, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clRetainEvent(cl_event e) {
  return RetainObj(ObjKind::EVENT, e);
}

CL_API_ENTRY cl_int CL_API_CALL clReleaseEvent(cl_event e) {
  return ReleaseObj(ObjKind::EVENT, e);
}

CL_API_ENTRY cl_int CL_API_CALL clSetUserEventStatus(cl_event e, cl_int status) {
  return Simple([&](proto::Request::Builder r) {
    auto s = r.initSetUserEventStatus();
    s.setEvent(Id(e));
    s.setStatus(status);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clSetEventCallback(
    cl_event event, cl_int type,
    void(CL_CALLBACK* pfn_notify)(cl_event, cl_int, void*), void* user_data) {
  auto* h = Lib().Live<_cl_event>(event, ObjKind::EVENT);
  if (h == nullptr) return CL_INVALID_EVENT;
  if (pfn_notify == nullptr ||
      (type != CL_SUBMITTED && type != CL_RUNNING && type != CL_COMPLETE)) {
    return CL_INVALID_VALUE;
  }
  // The handle outlives the application's release until the callback ran.
  Lib().Hold(h);
  const uint64_t cookie = Lib().AddCallback({pfn_notify, h, user_data});
  const cl_int code = Simple([&](proto::Request::Builder r) {
    auto s = r.initSetEventCallback();
    s.setEvent(h->id);
    s.setStatus(type);
    s.setCookie(cookie);
  });
  if (code != CL_SUCCESS) {
    Lib().DropCallback(cookie);
    Lib().Unhold(h);
  }
  return code;
}

// --- Flush and finish --------------------------------------------------------

CL_API_ENTRY cl_int CL_API_CALL clFlush(cl_command_queue q) {
  return Simple([&](proto::Request::Builder r) { r.setFlush(Id(q)); });
}

CL_API_ENTRY cl_int CL_API_CALL clFinish(cl_command_queue q) {
  return Simple([&](proto::Request::Builder r) { r.setFinish(Id(q)); });
}

// --- Enqueued commands -------------------------------------------------------

namespace {
// The checks the library must make before it touches host memory: the
// queue and memory object first (native order), then the pointer.
cl_int HostPtrCheck(cl_command_queue q, cl_mem m, const void* ptr) {
  if (!Lib().IsLive(q, ObjKind::QUEUE)) return CL_INVALID_COMMAND_QUEUE;
  if (!Lib().IsLive(m, ObjKind::MEM)) return CL_INVALID_MEM_OBJECT;
  if (ptr == nullptr) return CL_INVALID_VALUE;
  return CL_SUCCESS;
}
}  // namespace

CL_API_ENTRY cl_int CL_API_CALL clEnqueueReadBuffer(
    cl_command_queue q, cl_mem buffer, cl_bool blocking, size_t offset,
    size_t size, void* ptr, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  if (cl_int e = HostPtrCheck(q, buffer, ptr); e != CL_SUCCESS) return e;
  // Every read completes before the call returns (the spec allows treating
  // a non-blocking read as blocking).
  return Enqueue(
      {q, num_events, events, event},
      [&](proto::Enqueue::Builder e) {
        auto io = e.initReadBuffer();
        io.setMem(Id(buffer));
        io.setOffset(offset);
        io.setSize(size);
        io.setBlocking(blocking);
      },
      {}, ptr, size);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueWriteBuffer(
    cl_command_queue q, cl_mem buffer, cl_bool blocking, size_t offset,
    size_t size, const void* ptr, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  if (cl_int e = HostPtrCheck(q, buffer, ptr); e != CL_SUCCESS) return e;
  std::vector<iovec> payload;
  if (size) payload.push_back({const_cast<void*>(ptr), size});
  return Enqueue({q, num_events, events, event},
                 [&](proto::Enqueue::Builder e) {
                   auto io = e.initWriteBuffer();
                   io.setMem(Id(buffer));
                   io.setOffset(offset);
                   io.setSize(size);
                   io.setBlocking(blocking);
                 },
                 std::move(payload));
}

namespace {
struct HostRect {
  size_t origin[3];
  size_t region[3];
  size_t row, slice;
  size_t Offset(size_t y, size_t z) const {
    return (origin[2] + z) * slice + (origin[1] + y) * row + origin[0];
  }
};

HostRect MakeHostRect(const size_t* host_origin, const size_t* region,
                      size_t row, size_t slice) {
  HostRect h;
  for (int i = 0; i < 3; ++i) {
    h.origin[i] = host_origin ? host_origin[i] : 0;
    h.region[i] = region ? region[i] : 0;
  }
  h.row = row ? row : h.region[0];
  h.slice = slice ? slice : h.region[1] * h.row;
  return h;
}

void FillRect(proto::BufferRectIo::Builder io, cl_mem buffer,
              const size_t* buffer_origin, const size_t* host_origin,
              const size_t* region, size_t brow, size_t bslice, size_t hrow,
              size_t hslice, cl_bool blocking) {
  io.setMem(Id(buffer));
  Three(io.initBufferOrigin(3), buffer_origin);
  Three(io.initHostOrigin(3), host_origin);
  Three(io.initRegion(3), region);
  io.setBufferRowPitch(brow);
  io.setBufferSlicePitch(bslice);
  io.setHostRowPitch(hrow);
  io.setHostSlicePitch(hslice);
  io.setBlocking(blocking);
}
}  // namespace

CL_API_ENTRY cl_int CL_API_CALL clEnqueueReadBufferRect(
    cl_command_queue q, cl_mem buffer, cl_bool blocking,
    const size_t* buffer_origin, const size_t* host_origin,
    const size_t* region, size_t buffer_row_pitch, size_t buffer_slice_pitch,
    size_t host_row_pitch, size_t host_slice_pitch, void* ptr,
    cl_uint num_events, const cl_event* events, cl_event* event) {
  if (cl_int e = HostPtrCheck(q, buffer, ptr); e != CL_SUCCESS) return e;
  if (buffer_origin == nullptr || host_origin == nullptr || region == nullptr) {
    return CL_INVALID_VALUE;
  }
  std::vector<uint8_t> packed;
  const cl_int code = Enqueue(
      {q, num_events, events, event},
      [&](proto::Enqueue::Builder e) {
        FillRect(e.initReadBufferRect(), buffer, buffer_origin, host_origin,
                 region, buffer_row_pitch, buffer_slice_pitch, host_row_pitch,
                 host_slice_pitch, blocking);
      },
      {}, nullptr, 0, &packed);
  if (code != CL_SUCCESS) return code;
  const HostRect h = MakeHostRect(host_origin, region, host_row_pitch,
                                  host_slice_pitch);
  const size_t w = h.region[0];
  if (packed.size() < w * h.region[1] * h.region[2]) return CL_OUT_OF_RESOURCES;
  for (size_t z = 0; z < h.region[2]; ++z) {
    for (size_t y = 0; y < h.region[1]; ++y) {
      std::memcpy(static_cast<char*>(ptr) + h.Offset(y, z),
                  packed.data() + (z * h.region[1] + y) * w, w);
    }
  }
  return CL_SUCCESS;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueWriteBufferRect(
    cl_command_queue q, cl_mem buffer, cl_bool blocking,
    const size_t* buffer_origin, const size_t* host_origin,
    const size_t* region, size_t buffer_row_pitch, size_t buffer_slice_pitch,
    size_t host_row_pitch, size_t host_slice_pitch, const void* ptr,
    cl_uint num_events, const cl_event* events, cl_event* event) {
  if (cl_int e = HostPtrCheck(q, buffer, ptr); e != CL_SUCCESS) return e;
  if (buffer_origin == nullptr || host_origin == nullptr || region == nullptr) {
    return CL_INVALID_VALUE;
  }
  const HostRect h = MakeHostRect(host_origin, region, host_row_pitch,
                                  host_slice_pitch);
  const size_t w = h.region[0];
  // One iovec per row, straight from the application's memory.
  std::vector<iovec> payload;
  for (size_t z = 0; z < h.region[2]; ++z) {
    for (size_t y = 0; y < h.region[1]; ++y) {
      if (w) {
        payload.push_back(
            {const_cast<char*>(static_cast<const char*>(ptr)) + h.Offset(y, z), w});
      }
    }
  }
  return Enqueue({q, num_events, events, event},
                 [&](proto::Enqueue::Builder e) {
                   FillRect(e.initWriteBufferRect(), buffer, buffer_origin,
                            host_origin, region, buffer_row_pitch,
                            buffer_slice_pitch, host_row_pitch,
                            host_slice_pitch, blocking);
                 },
                 std::move(payload));
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueCopyBuffer(
    cl_command_queue q, cl_mem src, cl_mem dst, size_t src_offset,
    size_t dst_offset, size_t size, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto c = e.initCopyBuffer();
    c.setSrc(Id(src));
    c.setDst(Id(dst));
    c.setSrcOffset(src_offset);
    c.setDstOffset(dst_offset);
    c.setSize(size);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueCopyBufferRect(
    cl_command_queue q, cl_mem src, cl_mem dst, const size_t* src_origin,
    const size_t* dst_origin, const size_t* region, size_t src_row_pitch,
    size_t src_slice_pitch, size_t dst_row_pitch, size_t dst_slice_pitch,
    cl_uint num_events, const cl_event* events, cl_event* event) {
  if (src_origin == nullptr || dst_origin == nullptr || region == nullptr) {
    return CL_INVALID_VALUE;
  }
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto c = e.initCopyBufferRect();
    c.setSrc(Id(src));
    c.setDst(Id(dst));
    Three(c.initSrcOrigin(3), src_origin);
    Three(c.initDstOrigin(3), dst_origin);
    Three(c.initRegion(3), region);
    c.setSrcRowPitch(src_row_pitch);
    c.setSrcSlicePitch(src_slice_pitch);
    c.setDstRowPitch(dst_row_pitch);
    c.setDstSlicePitch(dst_slice_pitch);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueFillBuffer(
    cl_command_queue q, cl_mem buffer, const void* pattern, size_t pattern_size,
    size_t offset, size_t size, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto f = e.initFillBuffer();
    f.setMem(Id(buffer));
    if (pattern != nullptr) {
      f.setPattern(kj::arrayPtr(static_cast<const capnp::byte*>(pattern),
                                pattern_size));
    }
    f.setOffset(offset);
    f.setSize(size);
  });
}

namespace {
uint64_t ImageExtentOf(cl_mem image, const size_t* region, size_t row,
                       size_t slice) {
  auto* m = Lib().Live<_cl_mem>(image, ObjKind::MEM);
  if (m == nullptr || region == nullptr) return 0;
  return ImageHostExtent(m->type, m->elem, region, row, slice);
}

void FillImageIo(proto::ImageIo::Builder io, cl_mem image, const size_t* origin,
                 const size_t* region, size_t row, size_t slice,
                 cl_bool blocking) {
  io.setMem(Id(image));
  Three(io.initOrigin(3), origin);
  Three(io.initRegion(3), region);
  io.setRowPitch(row);
  io.setSlicePitch(slice);
  io.setBlocking(blocking);
}
}  // namespace

CL_API_ENTRY cl_int CL_API_CALL clEnqueueReadImage(
    cl_command_queue q, cl_mem image, cl_bool blocking, const size_t* origin,
    const size_t* region, size_t row_pitch, size_t slice_pitch, void* ptr,
    cl_uint num_events, const cl_event* events, cl_event* event) {
  if (cl_int e = HostPtrCheck(q, image, ptr); e != CL_SUCCESS) return e;
  if (origin == nullptr || region == nullptr) return CL_INVALID_VALUE;
  const uint64_t extent = ImageExtentOf(image, region, row_pitch, slice_pitch);
  return Enqueue(
      {q, num_events, events, event},
      [&](proto::Enqueue::Builder e) {
        FillImageIo(e.initReadImage(), image, origin, region, row_pitch,
                    slice_pitch, blocking);
      },
      {}, ptr, extent);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueWriteImage(
    cl_command_queue q, cl_mem image, cl_bool blocking, const size_t* origin,
    const size_t* region, size_t row_pitch, size_t slice_pitch,
    const void* ptr, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  if (cl_int e = HostPtrCheck(q, image, ptr); e != CL_SUCCESS) return e;
  if (origin == nullptr || region == nullptr) return CL_INVALID_VALUE;
  const uint64_t extent = ImageExtentOf(image, region, row_pitch, slice_pitch);
  std::vector<iovec> payload;
  if (extent) payload.push_back({const_cast<void*>(ptr), extent});
  return Enqueue({q, num_events, events, event},
                 [&](proto::Enqueue::Builder e) {
                   FillImageIo(e.initWriteImage(), image, origin, region,
                               row_pitch, slice_pitch, blocking);
                 },
                 std::move(payload));
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueCopyImage(
    cl_command_queue q, cl_mem src, cl_mem dst, const size_t* src_origin,
    const size_t* dst_origin, const size_t* region, cl_uint num_events,
    const cl_event* events, cl_event* event) {
  if (src_origin == nullptr || dst_origin == nullptr || region == nullptr) {
    return CL_INVALID_VALUE;
  }
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto c = e.initCopyImage();
    c.setSrc(Id(src));
    c.setDst(Id(dst));
    Three(c.initSrcOrigin(3), src_origin);
    Three(c.initDstOrigin(3), dst_origin);
    Three(c.initRegion(3), region);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueFillImage(
    cl_command_queue q, cl_mem image, const void* fill_color,
    const size_t* origin, const size_t* region, cl_uint num_events,
    const cl_event* events, cl_event* event) {
  if (fill_color == nullptr || origin == nullptr || region == nullptr) {
    return CL_INVALID_VALUE;
  }
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto f = e.initFillImage();
    f.setMem(Id(image));
    f.setFillColor(kj::arrayPtr(static_cast<const capnp::byte*>(fill_color), 16));
    Three(f.initOrigin(3), origin);
    Three(f.initRegion(3), region);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueCopyImageToBuffer(
    cl_command_queue q, cl_mem src_image, cl_mem dst_buffer,
    const size_t* src_origin, const size_t* region, size_t dst_offset,
    cl_uint num_events, const cl_event* events, cl_event* event) {
  if (src_origin == nullptr || region == nullptr) return CL_INVALID_VALUE;
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto c = e.initCopyImageToBuffer();
    c.setImage(Id(src_image));
    c.setBuffer(Id(dst_buffer));
    Three(c.initOrigin(3), src_origin);
    Three(c.initRegion(3), region);
    c.setBufferOffset(dst_offset);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueCopyBufferToImage(
    cl_command_queue q, cl_mem src_buffer, cl_mem dst_image, size_t src_offset,
    const size_t* dst_origin, const size_t* region, cl_uint num_events,
    const cl_event* events, cl_event* event) {
  if (dst_origin == nullptr || region == nullptr) return CL_INVALID_VALUE;
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto c = e.initCopyBufferToImage();
    c.setImage(Id(dst_image));
    c.setBuffer(Id(src_buffer));
    Three(c.initOrigin(3), dst_origin);
    Three(c.initRegion(3), region);
    c.setBufferOffset(src_offset);
  });
}

// Maps live in the library: a map reads the region into host memory (the
// USE_HOST_PTR memory, or an allocation), an unmap writes it back when it
// was mapped for writing. Both are complete when they return.
CL_API_ENTRY void* CL_API_CALL clEnqueueMapBuffer(
    cl_command_queue q, cl_mem buffer, cl_bool blocking, cl_map_flags flags,
    size_t offset, size_t size, cl_uint num_events, const cl_event* events,
    cl_event* event, cl_int* errcode_ret) {
  auto* m = Lib().Live<_cl_mem>(buffer, ObjKind::MEM);
  if (!Lib().IsLive(q, ObjKind::QUEUE)) {
    return Ret<void*>(nullptr, CL_INVALID_COMMAND_QUEUE, errcode_ret);
  }
  if (m == nullptr) return Ret<void*>(nullptr, CL_INVALID_MEM_OBJECT, errcode_ret);
  if (size == 0 || offset + size > m->size || offset + size < offset) {
    return Ret<void*>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  const bool owned = m->host_ptr == nullptr;
  void* p = owned ? std::malloc(size) : static_cast<char*>(m->host_ptr) + offset;
  if (p == nullptr) return Ret<void*>(nullptr, CL_OUT_OF_HOST_MEMORY, errcode_ret);
  cl_int code;
  if (flags & CL_MAP_WRITE_INVALIDATE_REGION) {
    code = Enqueue({q, num_events, events, event},
                   [](proto::Enqueue::Builder e) { e.setMarker(); });
  } else {
    code = Enqueue(
        {q, num_events, events, event},
        [&](proto::Enqueue::Builder e) {
          auto io = e.initReadBuffer();
          io.setMem(m->id);
          io.setOffset(offset);
          io.setSize(size);
          io.setBlocking(true);
        },
        {}, p, size);
  }
  if (code != CL_SUCCESS) {
    if (owned) std::free(p);
    return Ret<void*>(nullptr, code, errcode_ret);
  }
  _cl_mem::Mapping map;
  map.offset = offset;
  map.size = size;
  map.flags = flags;
  map.owned = owned;
  std::lock_guard<std::mutex> l(m->mu);
  m->maps[p] = map;
  return Ret<void*>(p, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY void* CL_API_CALL clEnqueueMapImage(
    cl_command_queue q, cl_mem image, cl_bool blocking, cl_map_flags flags,
    const size_t* origin, const size_t* region, size_t* row_pitch,
    size_t* slice_pitch, cl_uint num_events, const cl_event* events,
    cl_event* event, cl_int* errcode_ret) {
  auto* m = Lib().Live<_cl_mem>(image, ObjKind::MEM);
  if (!Lib().IsLive(q, ObjKind::QUEUE)) {
    return Ret<void*>(nullptr, CL_INVALID_COMMAND_QUEUE, errcode_ret);
  }
  if (m == nullptr || m->type == CL_MEM_OBJECT_BUFFER) {
    return Ret<void*>(nullptr, CL_INVALID_MEM_OBJECT, errcode_ret);
  }
  if (origin == nullptr || region == nullptr || row_pitch == nullptr) {
    return Ret<void*>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  const size_t row = m->elem * region[0];
  const bool layered = m->type == CL_MEM_OBJECT_IMAGE3D ||
                       m->type == CL_MEM_OBJECT_IMAGE2D_ARRAY ||
                       m->type == CL_MEM_OBJECT_IMAGE1D_ARRAY;
  if (layered && slice_pitch == nullptr) {
    return Ret<void*>(nullptr, CL_INVALID_VALUE, errcode_ret);
  }
  const size_t slice = m->type == CL_MEM_OBJECT_IMAGE1D_ARRAY ? row : row * region[1];
  const uint64_t extent = ImageHostExtent(m->type, m->elem, region, row, slice);
  if (extent == 0) return Ret<void*>(nullptr, CL_INVALID_VALUE, errcode_ret);
  void* p = std::malloc(extent);
  if (p == nullptr) return Ret<void*>(nullptr, CL_OUT_OF_HOST_MEMORY, errcode_ret);
  cl_int code;
  if (flags & CL_MAP_WRITE_INVALIDATE_REGION) {
    code = Enqueue({q, num_events, events, event},
                   [](proto::Enqueue::Builder e) { e.setMarker(); });
  } else {
    code = Enqueue(
        {q, num_events, events, event},
        [&](proto::Enqueue::Builder e) {
          FillImageIo(e.initReadImage(), image, origin, region, row,
                      layered ? slice : 0, true);
        },
        {}, p, extent);
  }
  if (code != CL_SUCCESS) {
    std::free(p);
    return Ret<void*>(nullptr, code, errcode_ret);
  }
  *row_pitch = row;
  if (slice_pitch) *slice_pitch = layered ? slice : 0;
  _cl_mem::Mapping map;
  for (int i = 0; i < 3; ++i) {
    map.origin[i] = origin[i];
    map.region[i] = region[i];
  }
  map.row_pitch = row;
  map.slice_pitch = layered ? slice : 0;
  map.size = extent;
  map.flags = flags;
  map.owned = true;
  std::lock_guard<std::mutex> l(m->mu);
  m->maps[p] = map;
  return Ret<void*>(p, CL_SUCCESS, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueUnmapMemObject(
    cl_command_queue q, cl_mem memobj, void* mapped_ptr, cl_uint num_events,
    const cl_event* events, cl_event* event) {
  auto* m = Lib().Live<_cl_mem>(memobj, ObjKind::MEM);
  if (!Lib().IsLive(q, ObjKind::QUEUE)) return CL_INVALID_COMMAND_QUEUE;
  if (m == nullptr) return CL_INVALID_MEM_OBJECT;
  _cl_mem::Mapping map;
  {
    std::lock_guard<std::mutex> l(m->mu);
    auto it = m->maps.find(mapped_ptr);
    if (it == m->maps.end()) return CL_INVALID_VALUE;
    map = it->second;
    m->maps.erase(it);
  }
  cl_int code;
  const bool write = map.flags & (CL_MAP_WRITE | CL_MAP_WRITE_INVALIDATE_REGION);
  if (!write) {
    code = Enqueue({q, num_events, events, event},
                   [](proto::Enqueue::Builder e) { e.setMarker(); });
  } else if (m->type == CL_MEM_OBJECT_BUFFER) {
    code = Enqueue({q, num_events, events, event},
                   [&](proto::Enqueue::Builder e) {
                     auto io = e.initWriteBuffer();
                     io.setMem(m->id);
                     io.setOffset(map.offset);
                     io.setSize(map.size);
                     io.setBlocking(true);
                   },
                   {{mapped_ptr, map.size}});
  } else {
    code = Enqueue({q, num_events, events, event},
                   [&](proto::Enqueue::Builder e) {
                     FillImageIo(e.initWriteImage(), memobj, map.origin,
                                 map.region, map.row_pitch, map.slice_pitch,
                                 true);
                   },
                   {{mapped_ptr, map.size}});
  }
  if (map.owned) std::free(mapped_ptr);
  return code;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueMigrateMemObjects(
    cl_command_queue q, cl_uint num_mem_objects, const cl_mem* mem_objects,
    cl_mem_migration_flags flags, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  if (num_mem_objects == 0 || mem_objects == nullptr) return CL_INVALID_VALUE;
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto mm = e.initMigrateMemObjects();
    auto l = mm.initMems(num_mem_objects);
    for (cl_uint i = 0; i < num_mem_objects; ++i) l.set(i, Id(mem_objects[i]));
    mm.setFlags(flags);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueNDRangeKernel(
    cl_command_queue q, cl_kernel kernel, cl_uint work_dim,
    const size_t* global_offset, const size_t* global_size,
    const size_t* local_size, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  const bool dim_ok = work_dim >= 1 && work_dim <= 3;
  if (dim_ok && global_size == nullptr && Lib().IsLive(q, ObjKind::QUEUE) &&
      Lib().IsLive(kernel, ObjKind::KERNEL)) {
    return CL_INVALID_VALUE;
  }
  return Enqueue({q, num_events, events, event}, [&](proto::Enqueue::Builder e) {
    auto n = e.initNdRange();
    n.setKernel(Id(kernel));
    // An invalid work_dim goes as none, which the real call refuses the
    // same way.
    const cl_uint dim = dim_ok && global_size ? work_dim : 0;
    if (global_offset) SetList(n.initGlobalOffset(dim), global_offset, dim);
    SetList(n.initGlobalSize(dim), global_size, dim);
    if (local_size) SetList(n.initLocalSize(dim), local_size, dim);
  });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueTask(cl_command_queue q,
                                              cl_kernel kernel,
                                              cl_uint num_events,
                                              const cl_event* events,
                                              cl_event* event) {
  return Enqueue({q, num_events, events, event},
                 [&](proto::Enqueue::Builder e) { e.setTask(Id(kernel)); });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueNativeKernel(
    cl_command_queue q, void(CL_CALLBACK*)(void*), void*, size_t, cl_uint,
    const cl_mem*, const void**, cl_uint, const cl_event*, cl_event*) {
  // Host function pointers cannot cross to the backend.
  if (!Lib().IsLive(q, ObjKind::QUEUE)) return CL_INVALID_COMMAND_QUEUE;
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueMarkerWithWaitList(
    cl_command_queue q, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  return Enqueue({q, num_events, events, event},
                 [](proto::Enqueue::Builder e) { e.setMarker(); });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueBarrierWithWaitList(
    cl_command_queue q, cl_uint num_events, const cl_event* events,
    cl_event* event) {
  return Enqueue({q, num_events, events, event},
                 [](proto::Enqueue::Builder e) { e.setBarrier(); });
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueMarker(cl_command_queue q,
                                                cl_event* event) {
  if (event == nullptr && Lib().IsLive(q, ObjKind::QUEUE)) return CL_INVALID_VALUE;
  return clEnqueueMarkerWithWaitList(q, 0, nullptr, event);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueWaitForEvents(cl_command_queue q,
                                                       cl_uint num_events,
                                                       const cl_event* events) {
  if ((num_events == 0 || events == nullptr) && Lib().IsLive(q, ObjKind::QUEUE)) {
    return CL_INVALID_VALUE;
  }
  return clEnqueueBarrierWithWaitList(q, num_events, events, nullptr);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueBarrier(cl_command_queue q) {
  return clEnqueueBarrierWithWaitList(q, 0, nullptr, nullptr);
}

// --- SVM and timers: a 1.2 device has none --------------------------------

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMFree(
    cl_command_queue, cl_uint, void*[],
    void(CL_CALLBACK*)(cl_command_queue, cl_uint, void*[], void*), void*,
    cl_uint, const cl_event*, cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMMemcpy(cl_command_queue, cl_bool,
                                                   void*, const void*, size_t,
                                                   cl_uint, const cl_event*,
                                                   cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMMemFill(cl_command_queue, void*,
                                                    const void*, size_t, size_t,
                                                    cl_uint, const cl_event*,
                                                    cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMMap(cl_command_queue, cl_bool,
                                                cl_map_flags, void*, size_t,
                                                cl_uint, const cl_event*,
                                                cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMUnmap(cl_command_queue, void*,
                                                  cl_uint, const cl_event*,
                                                  cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueSVMMigrateMem(
    cl_command_queue, cl_uint, const void**, const size_t*,
    cl_mem_migration_flags, cl_uint, const cl_event*, cl_event*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clGetDeviceAndHostTimer(cl_device_id, cl_ulong*,
                                                        cl_ulong*) {
  return CL_INVALID_OPERATION;
}

CL_API_ENTRY cl_int CL_API_CALL clGetHostTimer(cl_device_id, cl_ulong*) {
  return CL_INVALID_OPERATION;
}

// --- Extensions ----------------------------------------------------------------

CL_API_ENTRY void* CL_API_CALL clGetExtensionFunctionAddress(const char* name) {
  if (name != nullptr && std::strcmp(name, "clIcdGetPlatformIDsKHR") == 0) {
    return reinterpret_cast<void*>(&clIcdGetPlatformIDsKHR);
  }
  return nullptr;
}

CL_API_ENTRY void* CL_API_CALL clGetExtensionFunctionAddressForPlatform(
    cl_platform_id, const char* name) {
  return clGetExtensionFunctionAddress(name);
}

// --- The dispatch table ----------------------------------------------------------

namespace vgpu::forwarding::guest {

cl_icd_dispatch* Dispatch() {
  static cl_icd_dispatch* table = [] {
    auto* d = new cl_icd_dispatch;
    std::memset(d, 0, sizeof(*d));
#define VGPU_SLOT(name) d->name = &::name
    VGPU_SLOT(clGetPlatformIDs);
    VGPU_SLOT(clGetPlatformInfo);
    VGPU_SLOT(clGetDeviceIDs);
    VGPU_SLOT(clGetDeviceInfo);
    VGPU_SLOT(clCreateContext);
    VGPU_SLOT(clCreateContextFromType);
    VGPU_SLOT(clRetainContext);
    VGPU_SLOT(clReleaseContext);
    VGPU_SLOT(clGetContextInfo);
    VGPU_SLOT(clCreateCommandQueue);
    VGPU_SLOT(clRetainCommandQueue);
    VGPU_SLOT(clReleaseCommandQueue);
    VGPU_SLOT(clGetCommandQueueInfo);
    VGPU_SLOT(clSetCommandQueueProperty);
    VGPU_SLOT(clCreateBuffer);
    VGPU_SLOT(clCreateImage2D);
    VGPU_SLOT(clCreateImage3D);
    VGPU_SLOT(clRetainMemObject);
    VGPU_SLOT(clReleaseMemObject);
    VGPU_SLOT(clGetSupportedImageFormats);
    VGPU_SLOT(clGetMemObjectInfo);
    VGPU_SLOT(clGetImageInfo);
    VGPU_SLOT(clCreateSampler);
    VGPU_SLOT(clRetainSampler);
    VGPU_SLOT(clReleaseSampler);
    VGPU_SLOT(clGetSamplerInfo);
    VGPU_SLOT(clCreateProgramWithSource);
    VGPU_SLOT(clCreateProgramWithBinary);
    VGPU_SLOT(clRetainProgram);
    VGPU_SLOT(clReleaseProgram);
    VGPU_SLOT(clBuildProgram);
    VGPU_SLOT(clUnloadCompiler);
    VGPU_SLOT(clGetProgramInfo);
    VGPU_SLOT(clGetProgramBuildInfo);
    VGPU_SLOT(clCreateKernel);
    VGPU_SLOT(clCreateKernelsInProgram);
    VGPU_SLOT(clRetainKernel);
    VGPU_SLOT(clReleaseKernel);
    VGPU_SLOT(clSetKernelArg);
    VGPU_SLOT(clGetKernelInfo);
    VGPU_SLOT(clGetKernelWorkGroupInfo);
    VGPU_SLOT(clWaitForEvents);
    VGPU_SLOT(clGetEventInfo);
    VGPU_SLOT(clRetainEvent);
    VGPU_SLOT(clReleaseEvent);
    VGPU_SLOT(clGetEventProfilingInfo);
    VGPU_SLOT(clFlush);
    VGPU_SLOT(clFinish);
    VGPU_SLOT(clEnqueueReadBuffer);
    VGPU_SLOT(clEnqueueWriteBuffer);
    VGPU_SLOT(clEnqueueCopyBuffer);
    VGPU_SLOT(clEnqueueReadImage);
    VGPU_SLOT(clEnqueueWriteImage);
    VGPU_SLOT(clEnqueueCopyImage);
    VGPU_SLOT(clEnqueueCopyImageToBuffer);
    VGPU_SLOT(clEnqueueCopyBufferToImage);
    VGPU_SLOT(clEnqueueMapBuffer);
    VGPU_SLOT(clEnqueueMapImage);
    VGPU_SLOT(clEnqueueUnmapMemObject);
    VGPU_SLOT(clEnqueueNDRangeKernel);
    VGPU_SLOT(clEnqueueTask);
    VGPU_SLOT(clEnqueueNativeKernel);
    VGPU_SLOT(clEnqueueMarker);
    VGPU_SLOT(clEnqueueWaitForEvents);
    VGPU_SLOT(clEnqueueBarrier);
    VGPU_SLOT(clGetExtensionFunctionAddress);
    VGPU_SLOT(clSetEventCallback);
    VGPU_SLOT(clCreateSubBuffer);
    VGPU_SLOT(clSetMemObjectDestructorCallback);
    VGPU_SLOT(clCreateUserEvent);
    VGPU_SLOT(clSetUserEventStatus);
    VGPU_SLOT(clEnqueueReadBufferRect);
    VGPU_SLOT(clEnqueueWriteBufferRect);
    VGPU_SLOT(clEnqueueCopyBufferRect);
    VGPU_SLOT(clCreateSubDevices);
    VGPU_SLOT(clRetainDevice);
    VGPU_SLOT(clReleaseDevice);
    VGPU_SLOT(clCreateImage);
    VGPU_SLOT(clCreateProgramWithBuiltInKernels);
    VGPU_SLOT(clCompileProgram);
    VGPU_SLOT(clLinkProgram);
    VGPU_SLOT(clUnloadPlatformCompiler);
    VGPU_SLOT(clGetKernelArgInfo);
    VGPU_SLOT(clEnqueueFillBuffer);
    VGPU_SLOT(clEnqueueFillImage);
    VGPU_SLOT(clEnqueueMigrateMemObjects);
    VGPU_SLOT(clEnqueueMarkerWithWaitList);
    VGPU_SLOT(clEnqueueBarrierWithWaitList);
    VGPU_SLOT(clGetExtensionFunctionAddressForPlatform);
    VGPU_SLOT(clCreateCommandQueueWithProperties);
    VGPU_SLOT(clCreatePipe);
    VGPU_SLOT(clGetPipeInfo);
    VGPU_SLOT(clSVMAlloc);
    VGPU_SLOT(clSVMFree);
    VGPU_SLOT(clEnqueueSVMFree);
    VGPU_SLOT(clEnqueueSVMMemcpy);
    VGPU_SLOT(clEnqueueSVMMemFill);
    VGPU_SLOT(clEnqueueSVMMap);
    VGPU_SLOT(clEnqueueSVMUnmap);
    VGPU_SLOT(clCreateSamplerWithProperties);
    VGPU_SLOT(clSetKernelArgSVMPointer);
    VGPU_SLOT(clSetKernelExecInfo);
    VGPU_SLOT(clCloneKernel);
    VGPU_SLOT(clCreateProgramWithIL);
    VGPU_SLOT(clEnqueueSVMMigrateMem);
    VGPU_SLOT(clGetDeviceAndHostTimer);
    VGPU_SLOT(clGetHostTimer);
    VGPU_SLOT(clGetKernelSubGroupInfo);
    VGPU_SLOT(clSetDefaultDeviceCommandQueue);
    // Deprecated since 2.2; the slot is filled all the same.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    VGPU_SLOT(clSetProgramReleaseCallback);
#pragma GCC diagnostic pop
    VGPU_SLOT(clSetProgramSpecializationConstant);
    VGPU_SLOT(clCreateBufferWithProperties);
    VGPU_SLOT(clCreateImageWithProperties);
    VGPU_SLOT(clSetContextDestructorCallback);
#undef VGPU_SLOT
    return d;
  }();
  return table;
}

}  // namespace vgpu::forwarding::guest
