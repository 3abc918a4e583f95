#include "agents/forwarding/backend/session_log.h"

#include <CL/cl.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vgpu::forwarding::backend {
namespace {

using proto::Request;

// Ids below this are the backend's platforms and devices, which every
// backend has; they are never created by the log.
constexpr uint64_t kFirstGuestId = 0x10000;

std::vector<uint8_t> EncodeWithoutSeq(Request::Reader request) {
  capnp::MallocMessageBuilder b;
  b.setRoot(request);
  b.getRoot<Request>().setSeq(0);
  return codec::EncodeMessageBytes(b);
}

void Refer(std::set<uint64_t>* s, uint64_t id) {
  if (id >= kFirstGuestId) s->insert(id);
}

template <typename List>
void ReferAll(std::set<uint64_t>* s, List list) {
  for (uint64_t id : list) Refer(s, id);
}

void PutU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutU64(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t GetLE(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr uint32_t kLogMagic = 0x474c4356;  // "VCLG"
constexpr uint32_t kLogVersion = 1;

std::vector<uint8_t> RefCall(bool retain, proto::ObjKind kind, uint64_t id) {
  capnp::MallocMessageBuilder b;
  Request::Builder r = b.initRoot<Request>();
  if (retain) {
    auto g = r.initRetain();
    g.setKind(kind);
    g.setId(id);
  } else {
    auto g = r.initRelease();
    g.setKind(kind);
    g.setId(id);
  }
  return codec::EncodeMessageBytes(b);
}

bool Replayable(Request::Which w) {
  switch (w) {
    case Request::CREATE_CONTEXT:
    case Request::CREATE_CONTEXT_FROM_TYPE:
    case Request::CREATE_QUEUE:
    case Request::CREATE_BUFFER:
    case Request::CREATE_SUB_BUFFER:
    case Request::CREATE_IMAGE:
    case Request::CREATE_SAMPLER:
    case Request::CREATE_PROGRAM_WITH_SOURCE:
    case Request::CREATE_PROGRAM_WITH_BINARY:
    case Request::CREATE_PROGRAM_WITH_BUILT_IN_KERNELS:
    case Request::BUILD_PROGRAM:
    case Request::COMPILE_PROGRAM:
    case Request::LINK_PROGRAM:
    case Request::CREATE_KERNEL:
    case Request::CREATE_KERNELS_IN_PROGRAM:
    case Request::SET_KERNEL_ARG:
    case Request::RETAIN:
    case Request::RELEASE:
    case Request::RESTORE_EVENT:
      return true;
    default:
      return false;
  }
}

}  // namespace

uint64_t SessionLog::Add(Request::Reader request, uint64_t payload_bytes,
                         std::vector<uint64_t> creates,
                         std::set<uint64_t> refers) {
  const uint64_t key = next_order_++;
  Entry& e = entries_[key];
  e.order = key;
  e.request = EncodeWithoutSeq(request);
  e.payload_bytes = payload_bytes;
  e.creates = std::move(creates);
  e.refers = std::move(refers);
  for (uint64_t id : e.refers) ++referrers_[id];
  return key;
}

void SessionLog::DropEntry(uint64_t key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  for (uint64_t id : it->second.refers) {
    auto r = referrers_.find(id);
    if (r != referrers_.end() && --r->second == 0) referrers_.erase(r);
  }
  entries_.erase(it);
}

bool SessionLog::Referenced(uint64_t id) const {
  auto it = referrers_.find(id);
  return it != referrers_.end() && it->second > 0;
}

void SessionLog::Collect() {
  bool changed = true;
  while (changed) {
    changed = false;
    for (auto it = objects_.begin(); it != objects_.end();) {
      const uint64_t id = it->first;
      Object& o = it->second;
      if (o.count > 0 || Referenced(id)) {
        ++it;
        continue;
      }
      // An entry creating several ids (createKernelsInProgram) stays while
      // any of them is alive or needed.
      bool entry_needed = false;
      auto ce = entries_.find(o.create_entry);
      if (ce != entries_.end()) {
        for (uint64_t other : ce->second.creates) {
          if (other == id) continue;
          auto oo = objects_.find(other);
          if (oo != objects_.end() &&
              (oo->second.count > 0 || Referenced(other))) {
            entry_needed = true;
          }
        }
      }
      if (entry_needed) {
        // Kept (dead) until its siblings go, so a replay releases it.
        ++it;
        continue;
      }
      for (uint64_t c : o.configs) DropEntry(c);
      for (auto& [index, key] : o.args) DropEntry(key);
      DropEntry(o.create_entry);
      it = objects_.erase(it);
      changed = true;
    }
  }
}

void SessionLog::Record(Request::Reader r, uint64_t payload_bytes) {
  std::set<uint64_t> refers;
  auto created = [&](uint64_t id, proto::ObjKind kind,
                     std::set<uint64_t> refs) -> Object& {
    const uint64_t key = Add(r, payload_bytes, {id}, std::move(refs));
    Object& o = objects_[id];
    o = Object{};
    o.kind = kind;
    o.create_entry = key;
    o.storage = id;
    return o;
  };
  switch (r.which()) {
    case Request::CREATE_CONTEXT:
      created(r.getCreateContext().getId(), proto::ObjKind::CONTEXT, {});
      return;
    case Request::CREATE_CONTEXT_FROM_TYPE:
      created(r.getCreateContextFromType().getId(), proto::ObjKind::CONTEXT,
              {});
      return;
    case Request::CREATE_QUEUE: {
      auto q = r.getCreateQueue();
      Refer(&refers, q.getContext());
      created(q.getId(), proto::ObjKind::QUEUE, refers);
      return;
    }
    case Request::CREATE_BUFFER: {
      auto b = r.getCreateBuffer();
      Refer(&refers, b.getContext());
      Object& o = created(b.getId(), proto::ObjKind::MEM, refers);
      o.read_only = (b.getFlags() & CL_MEM_READ_ONLY) != 0;
      return;
    }
    case Request::CREATE_SUB_BUFFER: {
      auto b = r.getCreateSubBuffer();
      Refer(&refers, b.getParent());
      const uint64_t storage = StorageOf(b.getParent());
      Object& o = created(b.getId(), proto::ObjKind::MEM, refers);
      o.storage = storage;
      o.read_only = (b.getFlags() & CL_MEM_READ_ONLY) != 0;
      return;
    }
    case Request::CREATE_IMAGE: {
      auto im = r.getCreateImage();
      Refer(&refers, im.getContext());
      const uint64_t buffer = im.getDesc().getBuffer();
      Refer(&refers, buffer);
      const uint64_t storage = buffer != 0 ? StorageOf(buffer) : im.getId();
      Object& o = created(im.getId(), proto::ObjKind::MEM, refers);
      o.storage = storage;
      o.read_only = (im.getFlags() & CL_MEM_READ_ONLY) != 0;
      return;
    }
    case Request::CREATE_SAMPLER: {
      auto s = r.getCreateSampler();
      Refer(&refers, s.getContext());
      created(s.getId(), proto::ObjKind::SAMPLER, refers);
      return;
    }
    case Request::CREATE_PROGRAM_WITH_SOURCE:
      Refer(&refers, r.getCreateProgramWithSource().getContext());
      created(r.getCreateProgramWithSource().getId(), proto::ObjKind::PROGRAM,
              refers);
      return;
    case Request::CREATE_PROGRAM_WITH_BINARY:
      Refer(&refers, r.getCreateProgramWithBinary().getContext());
      created(r.getCreateProgramWithBinary().getId(), proto::ObjKind::PROGRAM,
              refers);
      return;
    case Request::CREATE_PROGRAM_WITH_BUILT_IN_KERNELS:
      Refer(&refers, r.getCreateProgramWithBuiltInKernels().getContext());
      created(r.getCreateProgramWithBuiltInKernels().getId(),
              proto::ObjKind::PROGRAM, refers);
      return;
    case Request::LINK_PROGRAM: {
      auto l = r.getLinkProgram();
      Refer(&refers, l.getContext());
      ReferAll(&refers, l.getInputs());
      created(l.getId(), proto::ObjKind::PROGRAM, refers);
      return;
    }
    case Request::BUILD_PROGRAM:
    case Request::COMPILE_PROGRAM: {
      const bool build = r.isBuildProgram();
      const uint64_t program = build ? r.getBuildProgram().getProgram()
                                     : r.getCompileProgram().getProgram();
      auto o = objects_.find(program);
      if (o == objects_.end()) return;
      if (!build) ReferAll(&refers, r.getCompileProgram().getHeaders());
      o->second.configs.push_back(Add(r, payload_bytes, {}, refers));
      return;
    }
    case Request::CREATE_KERNEL: {
      Refer(&refers, r.getCreateKernel().getProgram());
      created(r.getCreateKernel().getId(), proto::ObjKind::KERNEL, refers);
      return;
    }
    case Request::CREATE_KERNELS_IN_PROGRAM: {
      auto k = r.getCreateKernelsInProgram();
      if (k.getIds().size() == 0) return;
      Refer(&refers, k.getProgram());
      std::vector<uint64_t> ids;
      for (uint64_t id : k.getIds()) ids.push_back(id);
      const uint64_t key = Add(r, payload_bytes, ids, refers);
      for (uint64_t id : ids) {
        Object& o = objects_[id];
        o = Object{};
        o.kind = proto::ObjKind::KERNEL;
        o.create_entry = key;
        o.storage = id;
      }
      return;
    }
    case Request::SET_KERNEL_ARG: {
      auto a = r.getSetKernelArg();
      auto o = objects_.find(a.getKernel());
      if (o == objects_.end()) return;
      uint64_t mem = 0;
      if (a.isMem()) mem = a.getMem();
      if (a.isMem()) Refer(&refers, a.getMem());
      if (a.isSampler()) Refer(&refers, a.getSampler());
      // Only the last value per index matters for a replay.
      auto old = o->second.args.find(a.getIndex());
      const uint64_t key = Add(r, payload_bytes, {}, refers);
      if (old != o->second.args.end()) DropEntry(old->second);
      o->second.args[a.getIndex()] = key;
      if (mem >= kFirstGuestId) {
        o->second.arg_mems[a.getIndex()] = mem;
      } else {
        o->second.arg_mems.erase(a.getIndex());
      }
      Collect();  // the replaced argument may have held a dead buffer
      return;
    }
    case Request::RETAIN: {
      auto o = objects_.find(r.getRetain().getId());
      if (o != objects_.end()) ++o->second.count;
      return;
    }
    case Request::RELEASE: {
      auto o = objects_.find(r.getRelease().getId());
      if (o == objects_.end()) return;
      if (--o->second.count <= 0) Collect();
      return;
    }
    default:
      return;
  }
}

std::vector<ReplayCall> SessionLog::Replay() const {
  std::vector<ReplayCall> calls;
  calls.reserve(entries_.size());
  for (const auto& [key, e] : entries_) {
    calls.push_back({e.request, e.payload_bytes});
  }
  for (const auto& [id, o] : objects_) {
    for (int64_t i = 1; i < o.count; ++i) {
      calls.push_back({RefCall(true, o.kind, id), 0});
    }
  }
  // Dead objects kept for others: released once everything exists, newest
  // first.
  for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) {
    if (it->second.count <= 0) {
      calls.push_back({RefCall(false, it->second.kind, it->first), 0});
    }
  }
  return calls;
}

std::vector<uint8_t> SessionLog::Encode(const std::vector<ReplayCall>& calls) {
  std::vector<uint8_t> out;
  PutU32(&out, kLogMagic);
  PutU32(&out, kLogVersion);
  PutU64(&out, calls.size());
  for (const ReplayCall& c : calls) {
    PutU64(&out, c.payload_bytes);
    PutU32(&out, static_cast<uint32_t>(c.request.size()));
    PutU32(&out, 0);
    out.insert(out.end(), c.request.begin(), c.request.end());
  }
  return out;
}

absl::StatusOr<std::vector<ReplayCall>> SessionLog::Decode(
    absl::Span<const uint8_t> blob, size_t max_calls) {
  if (blob.size() < 16 || GetLE(blob.data(), 4) != kLogMagic) {
    return absl::DataLossError(
        "session log: missing the VCLG header (not a session log)");
  }
  if (GetLE(blob.data() + 4, 4) != kLogVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session log: version ", GetLE(blob.data() + 4, 4),
        " is not the version this backend reads (", kLogVersion, ")"));
  }
  const uint64_t count = GetLE(blob.data() + 8, 8);
  if (count > max_calls) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session log: ", count, " calls, more than the limit of ", max_calls));
  }
  codec::MessageLimits limits;
  limits.max_bytes = 64 << 20;
  std::vector<ReplayCall> calls;
  size_t off = 16;
  for (uint64_t i = 0; i < count; ++i) {
    if (blob.size() - off < 16) {
      return absl::DataLossError(absl::StrCat("session log: cut at call ", i,
                                              " of ", count, " (offset ", off,
                                              ")"));
    }
    ReplayCall c;
    c.payload_bytes = GetLE(blob.data() + off, 8);
    const uint64_t len = GetLE(blob.data() + off + 8, 4);
    if (GetLE(blob.data() + off + 12, 4) != 0) {
      return absl::DataLossError(absl::StrCat(
          "session log: call ", i, " at offset ", off,
          " has a non-zero reserved field"));
    }
    off += 16;
    if (len > blob.size() - off) {
      return absl::DataLossError(absl::StrCat(
          "session log: call ", i, " claims ", len, " bytes at offset ", off,
          " but ", blob.size() - off, " remain"));
    }
    auto msg = codec::DecodeMessage<Request>(blob.subspan(off, len), limits);
    if (!msg.ok()) {
      return absl::DataLossError(absl::StrCat("session log: call ", i,
                                              " at offset ", off, ": ",
                                              msg.status().message()));
    }
    if (!Replayable(msg->root().which())) {
      return absl::DataLossError(absl::StrCat(
          "session log: call ", i, " at offset ", off,
          " is a kind of request a log never holds (union tag ",
          static_cast<int>(msg->root().which()), ")"));
    }
    c.request.assign(blob.begin() + off, blob.begin() + off + len);
    off += len;
    calls.push_back(std::move(c));
  }
  if (off != blob.size()) {
    return absl::DataLossError(absl::StrCat("session log: ",
                                            blob.size() - off,
                                            " stray bytes after the last call"));
  }
  return calls;
}

std::vector<uint64_t> SessionLog::KernelMemArgs(uint64_t kernel) const {
  std::vector<uint64_t> out;
  auto o = objects_.find(kernel);
  if (o == objects_.end()) return out;
  for (const auto& [index, mem] : o->second.arg_mems) out.push_back(mem);
  return out;
}

uint64_t SessionLog::StorageOf(uint64_t mem) const {
  auto o = objects_.find(mem);
  return o == objects_.end() ? mem : o->second.storage;
}

bool SessionLog::IsReadOnly(uint64_t mem) const {
  auto o = objects_.find(mem);
  return o != objects_.end() && o->second.read_only;
}

bool SessionLog::HasBinaryPrograms() const {
  codec::MessageLimits limits;
  limits.max_bytes = 64 << 20;
  for (const auto& [key, e] : entries_) {
    auto m = codec::DecodeMessage<Request>(e.request, limits);
    if (m.ok() && m->root().isCreateProgramWithBinary()) return true;
  }
  return false;
}

uint64_t SessionLog::encoded_bytes() const {
  uint64_t n = 16;
  for (const auto& [key, e] : entries_) n += 16 + e.request.size();
  return n;
}

size_t SessionLog::live_objects() const {
  size_t n = 0;
  for (const auto& [id, o] : objects_) n += o.count > 0 ? 1 : 0;
  return n;
}

}  // namespace vgpu::forwarding::backend
