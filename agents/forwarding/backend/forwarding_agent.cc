#include "agents/forwarding/backend/forwarding_agent.h"

#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agents/forwarding/protocol.capnp.h"

namespace vgpu::forwarding::backend {
namespace {

using agents::PendingBytes;
using agents::Role;
using agents::State;

constexpr uint32_t kPageBytes = 4096;
constexpr char kLogSection[] = "cllog";
// The session's identity (id and token), which the restored session takes
// over so the guest's resume finds it: u64 id (little-endian), 32 bytes.
constexpr char kIdentitySection[] = "clsession";
constexpr char kIdentityVendor[] = "vgpu-migrate";
constexpr char kIdentityBlob[] = "cl-session";
constexpr size_t kIdentityBytes = 40;
// Objects move through the control socket in pieces of this size.
constexpr uint64_t kPiece = 16ull << 20;
// The largest object and the largest log a destination stages.
constexpr uint64_t kMaxObjectBytes = 64ull << 30;
constexpr uint64_t kMaxLogBytes = 1ull << 30;

std::string MemSection(uint64_t id) { return absl::StrCat("mem", id); }

uint64_t Pages(uint64_t bytes) { return (bytes + kPageBytes - 1) / kPageBytes; }

class ForwardingAgent : public agents::Agent {
 public:
  ForwardingAgent(Role role, std::unique_ptr<ControlClient> control,
                  agents::Descriptor descriptor)
      : Agent(role),
        control_(std::move(control)),
        descriptor_(std::move(descriptor)) {}

  const agents::Descriptor& descriptor() const override { return descriptor_; }

  void SetDestinationHint(const std::string& hint) override { hint_ = hint; }

  void set_vm(std::string vm) { vm_ = std::move(vm); }
  void set_identity(uint64_t session, std::string token) {
    session_ = session;
    token_ = std::move(token);
  }

  absl::StatusOr<PendingBytes> Pending() override {
    auto mems = control_->Mems(/*clear_dirty=*/false);
    if (!mems.ok()) return mems.status();
    PendingBytes p;
    p.exact = true;
    for (const MemEntry& m : *mems) {
      if (sent_.count(m.id) == 0) {
        p.initial += Pages(m.bytes) * kPageBytes;
      } else if (m.dirty) {
        p.dirty += Pages(m.bytes) * kPageBytes;
      }
    }
    if (!log_sent_) p.initial += 4096;  // the log: small, never zero
    return p;
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    if (role() == Role::kSource) {
      if (to == State::kPreCopy) return absl::OkStatus();
      if (to == State::kStopCopy) return control_->Freeze();
      if (to == State::kRunning) {
        sent_.clear();
        log_sent_ = false;
        return control_->Thaw();
      }
      if (to == State::kReleased) return Release();
      return absl::OkStatus();
    }
    if (to == State::kResuming) return absl::OkStatus();
    if (to == State::kPrepared) {
      staged_.clear();
      log_.clear();
      session_ = 0;
      return absl::OkStatus();
    }
    if (to == State::kRunning) return Activate();
    return absl::OkStatus();
  }

  absl::Status DoSave(codec::ImageWriter& writer, uint32_t device,
                      uint32_t round) override {
    // Which objects go: all unsent ones, and those dirtied since they were
    // sent. Mems(true) takes the dirty set, so a command enqueued from now
    // on marks its objects again for the next round.
    auto mems = control_->Mems(/*clear_dirty=*/true);
    if (!mems.ok()) return mems.status();
    for (const MemEntry& m : *mems) {
      if (sent_.count(m.id) != 0 && !m.dirty) continue;
      absl::Status s = SaveMem(writer, device, round, m);
      if (!s.ok()) return s;
      sent_.insert(m.id);
    }
    if (state() != State::kStopCopy) return absl::OkStatus();
    auto log = control_->SaveLog();
    if (!log.ok()) return log.status();
    codec::SectionHeader h;
    auto r = h.mutable_root();
    r.setDevice(device);
    r.setName(kLogSection);
    r.setRound(round);
    r.setDeclaredBytes(log->size());
    auto l = r.initApiSessionLog();
    l.setApi(schema::SessionApi::OPENCL);
    l.initAbi().setMajor(proto::ABI_MAJOR);
    l.getAbi().setMinor(proto::ABI_MINOR);
    l.setEntryCount(0);
    auto added = writer.AddSection(h, *log);
    if (!added.ok()) return added.status();
    uint8_t identity[kIdentityBytes];
    for (int i = 0; i < 8; ++i) identity[i] = static_cast<uint8_t>(session_ >> (8 * i));
    std::memcpy(identity + 8, token_.data(), std::min<size_t>(32, token_.size()));
    codec::SectionHeader ih;
    auto ir = ih.mutable_root();
    ir.setDevice(device);
    ir.setName(kIdentitySection);
    ir.setRound(round);
    ir.setDeclaredBytes(kIdentityBytes);
    auto blob = ir.initVendorBlob();
    blob.setVendor(kIdentityVendor);
    blob.setBlobType(kIdentityBlob);
    added = writer.AddSection(ih, absl::MakeConstSpan(identity, kIdentityBytes));
    if (!added.ok()) return added.status();
    log_sent_ = true;
    return absl::OkStatus();
  }

  absl::Status DoLoad(const codec::SectionHeader& header,
                      codec::ImageReader& reader) override {
    auto h = header.root();
    const std::string name = h.getName();
    if (h.isApiSessionLog()) {
      if (name != kLogSection) {
        return absl::FailedPreconditionError(absl::StrCat(
            "section '", name, "': a session log must be named ", kLogSection));
      }
      auto l = h.getApiSessionLog();
      if (l.getApi() != schema::SessionApi::OPENCL ||
          l.getAbi().getMajor() != proto::ABI_MAJOR) {
        return absl::FailedPreconditionError(absl::StrCat(
            "section '", name, "': a session log of API ",
            static_cast<int>(l.getApi()), " ABI ", l.getAbi().getMajor(),
            ".x; this backend replays OpenCL ABI ", proto::ABI_MAJOR, ".x"));
      }
      auto data = reader.ReadSection(kMaxLogBytes);
      if (!data.ok()) return data.status();
      log_ = std::move(*data);
      return absl::OkStatus();
    }
    if (h.isVendorBlob() && name == kIdentitySection) {
      auto b = h.getVendorBlob();
      if (std::string(b.getVendor()) != kIdentityVendor ||
          std::string(b.getBlobType()) != kIdentityBlob) {
        return absl::FailedPreconditionError(absl::StrCat(
            "section '", name, "' is a ", b.getVendor().cStr(), "/",
            b.getBlobType().cStr(), " blob, not a session identity"));
      }
      auto data = reader.ReadSection(kIdentityBytes);
      if (!data.ok()) return data.status();
      if (data->size() != kIdentityBytes) {
        return absl::DataLossError(absl::StrCat(
            "section '", name, "': ", data->size(), " bytes where ",
            kIdentityBytes, " belong"));
      }
      uint64_t id = 0;
      for (int i = 7; i >= 0; --i) id = (id << 8) | (*data)[i];
      if (id == 0) {
        return absl::DataLossError(
            absl::StrCat("section '", name, "': session id 0"));
      }
      session_ = id;
      token_.assign(reinterpret_cast<const char*>(data->data()) + 8, 32);
      return absl::OkStatus();
    }
    uint64_t id = 0;
    if (!h.isMemoryRegion() || name.rfind("mem", 0) != 0 ||
        !absl::SimpleAtoi(absl::string_view(name).substr(3), &id) || id == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "section '", name, "' (", codec::SectionKindName(h.which()),
          ") is not part of a forwarded OpenCL session (expected cllog or "
          "mem<ID> memory regions)"));
    }
    auto region = h.getMemoryRegion();
    const uint64_t pages = region.getTotalPages();
    if (region.getPageSize() != kPageBytes || pages == 0 ||
        pages > kMaxObjectBytes / kPageBytes ||
        region.getPresentRanges().size() != 1 ||
        region.getPresentRanges()[0].getFirst() != 0 ||
        region.getPresentRanges()[0].getCount() != pages ||
        region.getZeroRanges().size() != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "section '", name, "': a memory object is one whole run of ",
          kPageBytes, "-byte pages (at most ", kMaxObjectBytes,
          " bytes); this one is not"));
    }
    // Uninitialised: every byte is about to be overwritten, and clearing
    // a large object first would double the work.
    Staged bytes{std::unique_ptr<uint8_t[]>(new uint8_t[pages * kPageBytes]),
                 pages * kPageBytes};
    auto got = reader.ReadSectionInto(absl::MakeSpan(bytes.data.get(), bytes.size));
    if (!got.ok()) return got.status();
    if (*got != bytes.size) {
      return absl::DataLossError(absl::StrCat("section '", name, "': ", *got,
                                              " bytes where ", bytes.size,
                                              " were declared"));
    }
    staged_[id] = std::move(bytes);  // a later round replaces an earlier one
    return absl::OkStatus();
  }

 private:
  absl::Status SaveMem(codec::ImageWriter& writer, uint32_t device,
                       uint32_t round, const MemEntry& m) {
    codec::SectionHeader h;
    auto r = h.mutable_root();
    r.setDevice(device);
    r.setName(MemSection(m.id));
    r.setRound(round);
    const uint64_t pages = Pages(m.bytes);
    r.setDeclaredBytes(pages * kPageBytes);
    auto region = r.initMemoryRegion();
    region.setPageSize(kPageBytes);
    region.setTotalPages(pages);
    auto present = region.initPresentRanges(1);
    present[0].setFirst(0);
    present[0].setCount(pages);
    auto id = writer.BeginSection(h);
    if (!id.ok()) return id.status();
    std::vector<uint8_t> piece;
    for (uint64_t off = 0; off < m.bytes; off += kPiece) {
      const uint64_t n = std::min(kPiece, m.bytes - off);
      piece.resize(n);
      absl::Status s = control_->ReadMem(m.id, off, absl::MakeSpan(piece));
      if (!s.ok()) return s;
      s = writer.Write(piece);
      if (!s.ok()) return s;
    }
    absl::Status s = writer.WriteZeros(pages * kPageBytes - m.bytes);
    if (!s.ok()) return s;
    return writer.EndSection();
  }

  absl::Status Release() {
    if (hint_.empty()) {
      return absl::FailedPreconditionError(
          "release of a forwarded session needs the destination backend's "
          "guest address (no hint came from the destination)");
    }
    return control_->HandOff(hint_);
  }

  absl::Status Activate() {
    if (log_.empty() || session_ == 0) {
      return absl::FailedPreconditionError(
          "no session log or identity arrived: the stream ended before the "
          "source's final copy");
    }
    absl::Status s = control_->Replay(log_);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("replaying the session log: ",
                                                 s.message()));
    }
    auto mems = control_->Mems(false);
    if (!mems.ok()) return mems.status();
    std::map<uint64_t, uint64_t> sizes;
    for (const MemEntry& m : *mems) sizes[m.id] = m.bytes;
    for (const auto& [id, bytes] : staged_) {
      auto it = sizes.find(id);
      if (it == sizes.end()) continue;  // released after it was sent
      if (Pages(it->second) * kPageBytes != bytes.size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "memory object ", id, " is ", it->second,
            " bytes after the replay but its section holds ", bytes.size));
      }
      for (uint64_t off = 0; off < it->second; off += kPiece) {
        const uint64_t n = std::min(kPiece, it->second - off);
        s = control_->WriteMem(id, off,
                               absl::MakeConstSpan(bytes.data.get() + off, n));
        if (!s.ok()) return s;
      }
    }
    for (const MemEntry& m : *mems) {
      if (staged_.count(m.id) == 0) {
        return absl::DataLossError(absl::StrCat(
            "memory object ", m.id, " of the replayed session has no contents "
            "in the stream"));
      }
    }
    capnp::MallocMessageBuilder g;
    auto guest = g.initRoot<control::GuestInfo>();
    auto d = descriptor_.root();
    guest.setVm(vm_);
    guest.setLibrary(d.getWrapperName());
    guest.initAbi().setMajor(d.getWrapperAbi().getMajor());
    guest.getAbi().setMinor(d.getWrapperAbi().getMinor());
    auto f = guest.initFeatures(d.getFeatures().size());
    for (unsigned i = 0; i < d.getFeatures().size(); ++i) f.set(i, d.getFeatures()[i]);
    staged_.clear();
    return control_->Activate(guest.asReader(), session_, token_);
  }

  std::unique_ptr<ControlClient> control_;
  agents::Descriptor descriptor_;
  std::string hint_;
  // The session's identity: the source's own (from describe); on the
  // destination, what the clsession section said.
  uint64_t session_ = 0;
  std::string token_;
  // source
  std::set<uint64_t> sent_;
  bool log_sent_ = false;
  // destination
  std::string vm_;
  struct Staged {
    std::unique_ptr<uint8_t[]> data;
    uint64_t size = 0;
  };
  std::map<uint64_t, Staged> staged_;
  std::vector<uint8_t> log_;
};

}  // namespace

agents::Descriptor DescribeSession(control::SessionInfo::Reader info) {
  agents::Descriptor d;
  auto r = d.mutable_root();
  r.setStrategy(schema::Strategy::API_FORWARDING);
  r.setInstanceId(absl::StrCat("cl-session-", info.getSession()));
  r.setVendor(info.getPlatform());
  r.setArchitecture(info.getDevice());
  r.setWrapperName(kWrapperName);
  r.initWrapperAbi().setMajor(info.getGuest().getAbi().getMajor());
  r.getWrapperAbi().setMinor(info.getGuest().getAbi().getMinor());
  auto gf = info.getGuest().getFeatures();
  auto f = r.initFeatures(gf.size());
  for (unsigned i = 0; i < gf.size(); ++i) f.set(i, gf[i]);
  auto rf = info.getRequiredFeatures();
  auto req = r.initRequiredFeatures(rf.size());
  for (unsigned i = 0; i < rf.size(); ++i) req.set(i, rf[i]);
  r.setVramBytes(info.getMemoryBytes());
  return d;
}

std::string HandoffHint(control::SessionInfo::Reader target) {
  return target.getGuestAddress();
}

absl::StatusOr<std::unique_ptr<agents::Agent>> OpenForwardingSource(
    const std::string& control) {
  auto c = ControlClient::Connect(control);
  if (!c.ok()) return c.status();
  auto info = (*c)->Describe();
  if (!info.ok()) return info.status();
  auto agent = std::make_unique<ForwardingAgent>(
      Role::kSource, std::move(*c), DescribeSession(info->root()));
  const auto t = info->root().getToken();
  agent->set_identity(info->root().getSession(),
                      std::string(reinterpret_cast<const char*>(t.begin()),
                                  t.size()));
  return std::unique_ptr<agents::Agent>(std::move(agent));
}

absl::StatusOr<std::unique_ptr<agents::Agent>> OpenForwardingDestination(
    control::SessionInfo::Reader target, const agents::Descriptor& source,
    const std::string& vm) {
  auto c = ControlClient::Connect(target.getControl());
  if (!c.ok()) return c.status();
  agents::Descriptor d;
  d.builder().setRoot(source.root());
  d.mutable_root().setInstanceId(
      absl::StrCat("cl-session-", target.getSession()));
  auto agent = std::make_unique<ForwardingAgent>(Role::kDestination,
                                                 std::move(*c), std::move(d));
  agent->set_vm(vm);
  return std::unique_ptr<agents::Agent>(std::move(agent));
}

}  // namespace vgpu::forwarding::backend
