#include "agents/forwarding/backend/control_client.h"

#include "absl/strings/str_cat.h"
#include "agents/forwarding/frame.h"

namespace vgpu::forwarding::backend {
namespace {

using control::ControlReply;
using control::ControlRequest;

// The largest log or single read a client accepts into a vector.
constexpr uint64_t kMaxGrowPayload = 1ull << 32;

}  // namespace

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(
    const std::string& address, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Stream>> s = Dial(address, timeout);
  if (!s.ok()) {
    return absl::Status(s.status().code(),
                        absl::StrCat("cl backend control ", address, ": ",
                                     s.status().message()));
  }
  return std::unique_ptr<ControlClient>(
      new ControlClient(address, std::move(*s)));
}

absl::StatusOr<codec::Message<ControlReply>> ControlClient::Call(
    capnp::MallocMessageBuilder& request, absl::Span<const uint8_t> payload,
    absl::Span<uint8_t> dst, std::vector<uint8_t>* grow) {
  iovec v{const_cast<uint8_t*>(payload.data()), payload.size()};
  absl::Status s = SendFrame(*stream_, request,
                             payload.empty() ? absl::Span<const iovec>()
                                             : absl::MakeConstSpan(&v, 1));
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cl backend control ", address_, ": ", s.message()));
  }
  uint64_t payload_bytes = 0;
  auto reply = RecvFrame<ControlReply>(*stream_, &payload_bytes);
  if (!reply.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "cl backend control ", address_, ": ", reply.status().message()));
  }
  if (payload_bytes > 0) {
    if (grow != nullptr && payload_bytes <= kMaxGrowPayload) {
      grow->resize(payload_bytes);
      s = stream_->ReadFull(grow->data(), grow->size());
    } else if (payload_bytes == dst.size()) {
      s = stream_->ReadFull(dst.data(), dst.size());
    } else {
      return absl::DataLossError(absl::StrCat(
          "cl backend control ", address_, ": reply carries ", payload_bytes,
          " bytes where ", dst.size(), " were asked for"));
    }
    if (!s.ok()) return s;
  }
  const int code = reply->root().getCode();
  if (code != 0) {
    return absl::Status(static_cast<absl::StatusCode>(code),
                        reply->root().getError().cStr());
  }
  return reply;
}

absl::StatusOr<SessionInfo> ControlClient::Describe() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setDescribe();
  auto r = Call(m);
  if (!r.ok()) return r.status();
  SessionInfo info;
  info.builder().setRoot(r->root().getSession());
  return info;
}

absl::Status ControlClient::Freeze() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setFreeze();
  return Call(m).status();
}

absl::Status ControlClient::Thaw() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setThaw();
  return Call(m).status();
}

absl::StatusOr<std::vector<uint8_t>> ControlClient::SaveLog() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setSaveLog();
  std::vector<uint8_t> out;
  auto r = Call(m, {}, {}, &out);
  if (!r.ok()) return r.status();
  return out;
}

absl::StatusOr<std::vector<MemEntry>> ControlClient::Mems(bool clear_dirty) {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setMems(clear_dirty);
  auto r = Call(m);
  if (!r.ok()) return r.status();
  std::vector<MemEntry> out;
  for (auto e : r->root().getMems()) {
    out.push_back({e.getId(), e.getType(), e.getBytes(), e.getDirty()});
  }
  return out;
}

absl::Status ControlClient::ReadMem(uint64_t id, uint64_t offset,
                                    absl::Span<uint8_t> dst) {
  capnp::MallocMessageBuilder m;
  auto g = m.initRoot<ControlRequest>().initReadMem();
  g.setId(id);
  g.setOffset(offset);
  g.setBytes(dst.size());
  return Call(m, {}, dst).status();
}

absl::Status ControlClient::Replay(absl::Span<const uint8_t> log) {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setReplay();
  return Call(m, log).status();
}

absl::Status ControlClient::WriteMem(uint64_t id, uint64_t offset,
                                     absl::Span<const uint8_t> data) {
  capnp::MallocMessageBuilder m;
  auto g = m.initRoot<ControlRequest>().initWriteMem();
  g.setId(id);
  g.setOffset(offset);
  return Call(m, data).status();
}

absl::Status ControlClient::Activate(control::GuestInfo::Reader guest,
                                     uint64_t session,
                                     const std::string& token) {
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<ControlRequest>().initActivate();
  a.setGuest(guest);
  a.setSession(session);
  a.setToken(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(token.data()),
                          token.size()));
  return Call(m).status();
}

absl::Status ControlClient::HandOff(const std::string& address) {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setHandOff(address);
  return Call(m).status();
}

absl::Status ControlClient::Quit() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setQuit();
  return Call(m).status();
}

absl::StatusOr<std::vector<SessionInfo>> ControlClient::ListSessions() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setListSessions();
  auto r = Call(m);
  if (!r.ok()) return r.status();
  std::vector<SessionInfo> out;
  for (auto s : r->root().getSessions()) {
    out.emplace_back();
    out.back().builder().setRoot(s);
  }
  return out;
}

absl::StatusOr<SessionInfo> ControlClient::CreateTarget() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ControlRequest>().setCreateTarget();
  auto r = Call(m);
  if (!r.ok()) return r.status();
  SessionInfo info;
  info.builder().setRoot(r->root().getSession());
  return info;
}

}  // namespace vgpu::forwarding::backend
