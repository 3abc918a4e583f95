#include "agents/mediated/mediated_agent.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/base/internal/endian.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/mediated/internal/stream_format.h"
#include "agents/mediated/reference_device.h"

namespace vgpu::agents::mediated {
namespace {

using stream::RecordType;

constexpr char kDeviceSection[] = "mdev";
constexpr char kEndSection[] = "end";
constexpr char kVramSection[] = "vram";
constexpr char kContextPrefix[] = "ctx";
constexpr char kOpaquePrefix[] = "vfio.r";
constexpr char kRefVendor[] = "vgpu-migrate";
constexpr char kDeviceBlob[] = "ref-mdev-device";
constexpr char kEndBlob[] = "ref-mdev-end";
constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kRunPages = (1u << 20) / kPageBytes;
constexpr size_t kReadBytes = 1 << 20;
constexpr size_t kVramBatchBytes = 4 << 20;

std::string Str(capnp::Text::Reader t) { return std::string(t.cStr()); }

// The VFIO state that stands for a contract state.
MigState VfioFor(Role role, State s) {
  switch (s) {
    case State::kRunning:
      return MigState::kRunning;
    case State::kPreCopy:
      return MigState::kPreCopy;
    case State::kStopCopy:
      return MigState::kStopCopy;
    case State::kReleased:
    case State::kPrepared:
      return MigState::kStop;
    case State::kResuming:
      return MigState::kResuming;
    case State::kError:
      return MigState::kError;
  }
  return MigState::kError;
}

class MediatedAgent : public Agent {
 public:
  MediatedAgent(Role role, VfioDevice* device, MediatedInfo info,
                Descriptor desc, uint64_t flags)
      : Agent(role),
        device_(device),
        info_(std::move(info)),
        desc_(std::move(desc)),
        flags_(flags),
        reference_(info_.stream_format == kRefStreamFormat),
        pages_(info_.vram_bytes / kPageBytes) {}

  const Descriptor& descriptor() const override { return desc_; }

  absl::StatusOr<PendingBytes> Pending() override {
    PendingBytes p;
    if (state() == State::kStopCopy && at_end_) return p;
    auto size = device_->StopCopyBytes();
    // A driver that cannot say is taken to hold all its memory.
    const uint64_t whole =
        size.ok() ? *size
                  : info_.vram_bytes + uint64_t{info_.contexts} * (64 << 10);
    if (state() == State::kPreCopy && stream_ != nullptr) {
      auto info = stream_->GetPrecopyInfo();
      if (!info.ok()) return Named(info.status(), "precopy info");
      p.initial = info->initial_bytes;
      p.dirty = std::max(info->dirty_bytes,
                         whole > p.initial ? whole - p.initial : 0);
    } else {
      p.initial = whole;
    }
    if (p.total() == 0) p.initial = 1;  // something is always left to say
    return p;
  }

  absl::Status PrepareGroupTransition(State to) override {
    if (!(flags_ & kMigFlagP2p)) return absl::OkStatus();
    absl::Status s;
    if (role() == Role::kSource && to == State::kStopCopy) {
      // Stop peer-to-peer DMA while the other devices still run.
      const MigState p2p = state() == State::kPreCopy && stream_ != nullptr
                               ? MigState::kPreCopyP2p
                               : MigState::kRunningP2p;
      s = SetVfio(p2p).status();
    } else if (role() == Role::kDestination && to == State::kRunning &&
               state() == State::kResuming) {
      s = FlushEnd();
      if (s.ok()) s = SetVfio(MigState::kRunningP2p).status();
    } else {
      return absl::OkStatus();
    }
    if (s.ok()) return s;
    // As for a failed arc: bring the device to where the arc would fall
    // back (the source RUNNING, the destination reset to STOP); the
    // coordinator's abort then finds it there.
    const Transition* arc = FindTransition(role(), state(), to);
    if (arc != nullptr && arc->recovery != State::kError) {
      absl::Status r = Recover(VfioFor(role(), arc->recovery));
      if (!r.ok()) {
        return absl::Status(s.code(),
                            absl::StrCat(s.message(), "; ", r.message()));
      }
    }
    return s;
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    absl::Status s = Move(from, to);
    if (s.ok()) return s;
    const Transition* arc = FindTransition(role(), from, to);
    if (arc == nullptr || arc->recovery == State::kError) return s;
    absl::Status r = Recover(VfioFor(role(), arc->recovery));
    if (!r.ok()) {
      return absl::Status(s.code(), absl::StrCat(s.message(), "; ", r.message()));
    }
    return s;
  }

  absl::Status DoSave(codec::ImageWriter& w, uint32_t device,
                      uint32_t round) override {
    if (stream_ == nullptr) {
      // No PRE_COPY in this driver: everything goes in STOP_COPY.
      if (state() == State::kPreCopy) return absl::OkStatus();
      return absl::FailedPreconditionError(
          Where("no data session to read in STOP_COPY"));
    }
    writer_ = &w;
    batch_ = VramBatch();
    device_index_ = device;
    round_ = round;
    // In PRE_COPY take what the device has now, but no more than it
    // announced: a guest dirtying state as fast as it is read would
    // otherwise keep this round going forever.
    uint64_t budget = UINT64_MAX;
    if (state() == State::kPreCopy) {
      auto info = stream_->GetPrecopyInfo();
      if (!info.ok()) return Named(info.status(), "precopy info");
      budget = info->initial_bytes + info->dirty_bytes + kReadBytes;
    }
    opaque_open_ = false;
    buf_.resize(kReadBytes);
    uint64_t taken = 0;
    absl::Status result;
    while (taken < budget) {
      auto n = stream_->Read(absl::MakeSpan(buf_));
      if (!n.ok()) {
        if (ErrnoOf(n.status()) == ENOMSG && state() == State::kPreCopy) break;
        result = Named(n.status(), "reading the data session");
        break;
      }
      if (*n == 0) {
        at_end_ = true;
        break;
      }
      taken += *n;
      result = Consume(absl::MakeConstSpan(buf_.data(), *n));
      if (!result.ok()) break;
    }
    if (result.ok() && opaque_open_) result = w.EndSection();
    if (result.ok()) result = FlushVram();
    if (result.ok() && state() == State::kStopCopy) {
      if (!at_end_) {
        result = absl::DataLossError(Where("the data session did not end"));
      } else if (reference_ && parser_.partial_bytes() != 0) {
        result = absl::DataLossError(Where(absl::StrFormat(
            "the device's stream ends %d bytes into a record",
            parser_.partial_bytes())));
      }
    }
    writer_ = nullptr;
    return result;
  }

  absl::Status DoLoad(const codec::SectionHeader& header,
                      codec::ImageReader& reader) override {
    auto h = header.root();
    const std::string name = Str(h.getName());
    if (!reference_) {
      if (!absl::StartsWith(name, kOpaquePrefix) || !h.isVendorBlob()) {
        return absl::FailedPreconditionError(Where(absl::StrCat(
            "section '", name, "' is not part of an opaque VFIO stream")));
      }
      return reader.ReadChunks([&](uint64_t, uint64_t length,
                                   absl::Span<const uint8_t> data) {
        if (data.empty()) {
          std::vector<uint8_t> zeros(length, 0);
          return Write(zeros);
        }
        return Write(data);
      });
    }
    if (name == kVramSection && h.isMemoryRegion()) return LoadVram(h, reader);
    if (name == kDeviceSection && h.isVendorBlob()) {
      return LoadRecord(h, reader, RecordType::kDevice, 0);
    }
    if (name == kEndSection && h.isVendorBlob()) {
      return LoadRecord(h, reader, RecordType::kEnd, 0);
    }
    uint32_t ctx = 0;
    if (absl::StartsWith(name, kContextPrefix) && h.isContextImage() &&
        absl::SimpleAtoi(name.substr(3), &ctx)) {
      if (ctx != h.getContextImage().getContextId() || ctx >= info_.contexts) {
        return absl::FailedPreconditionError(Where(absl::StrFormat(
            "section '%s' names context %d; this vGPU has %d contexts", name,
            h.getContextImage().getContextId(), info_.contexts)));
      }
      return LoadRecord(h, reader, RecordType::kContext, ctx);
    }
    return absl::FailedPreconditionError(Where(absl::StrCat(
        "section '", name, "' is not a section of a reference mediated vGPU")));
  }

 private:
  std::string Where(absl::string_view what) const {
    return absl::StrCat("mediated vGPU ", device_->name(), ": ", what);
  }
  absl::Status Named(const absl::Status& s, absl::string_view what) const {
    return absl::Status(s.code(), Where(absl::StrCat(what, ": ", s.message())));
  }

  // One VFIO SET_STATE; keeps the session it opens.
  absl::StatusOr<bool> SetVfio(MigState target) {
    auto opened = device_->SetState(target);
    if (!opened.ok()) {
      return Named(opened.status(),
                   absl::StrCat("setting ", MigStateName(target)));
    }
    if (*opened != nullptr) {
      stream_ = std::move(*opened);
      parser_ = stream::RecordParser();
      at_end_ = false;
    }
    return *opened != nullptr;
  }

  absl::Status Move(State from, State to) {
    if (role() == Role::kSource) {
      switch (to) {
        case State::kPreCopy:
          if (!(flags_ & kMigFlagPreCopy)) return absl::OkStatus();
          return SetVfio(MigState::kPreCopy).status();
        case State::kStopCopy:
          return SetVfio(MigState::kStopCopy).status();
        case State::kRunning:
          stream_.reset();
          return SetVfio(MigState::kRunning).status();
        case State::kReleased:
          stream_.reset();
          return SetVfio(MigState::kStop).status();
        default:
          break;
      }
    } else {
      switch (to) {
        case State::kResuming:
          return SetVfio(MigState::kResuming).status();
        case State::kRunning: {
          if (auto s = FlushEnd(); !s.ok()) return s;
          absl::Status s = SetVfio(MigState::kRunning).status();
          stream_.reset();
          return s;
        }
        case State::kPrepared: {
          // A RESUMING session is aborted by resetting the device.
          stream_.reset();
          end_record_.clear();
          if (auto s = device_->Reset(); !s.ok()) return Named(s, "reset");
          return SetVfio(MigState::kStop).status();
        }
        default:
          break;
      }
    }
    return absl::InternalError(Where(absl::StrCat(
        "no device action for ", StateName(from), " -> ", StateName(to))));
  }

  // QEMU's recovery: the named state, else a reset.
  absl::Status Recover(MigState want) {
    if (role() == Role::kDestination && want == MigState::kStop) {
      stream_.reset();
      end_record_.clear();
      if (auto s = device_->Reset(); !s.ok()) return Named(s, "reset");
      return SetVfio(MigState::kStop).status();
    }
    auto now = device_->GetState();
    if (now.ok() && *now == want) return absl::OkStatus();
    if (now.ok() && *now != MigState::kError) {
      auto s = device_->SetState(want);
      if (s.ok()) {
        if (!InSavingGroup(want)) stream_.reset();
        return absl::OkStatus();
      }
    }
    stream_.reset();
    if (auto s = device_->Reset(); !s.ok()) {
      return Named(s, "recovery failed and so did the reset");
    }
    if (want != MigState::kRunning) {
      if (auto s = SetVfio(want); !s.ok()) return s.status();
    }
    return absl::DataLossError(Where(absl::StrCat(
        "recovered by resetting the device to ", MigStateName(want),
        ": its state was lost")));
  }

  absl::Status Write(absl::Span<const uint8_t> bytes) {
    if (stream_ == nullptr) {
      return absl::FailedPreconditionError(Where("no RESUMING session"));
    }
    if (auto s = stream_->Write(bytes); !s.ok()) {
      return Named(s, "writing the data session");
    }
    return absl::OkStatus();
  }

  // The end record goes last, whatever order the sections came in.
  absl::Status FlushEnd() {
    if (end_record_.empty()) return absl::OkStatus();
    std::vector<uint8_t> rec = std::move(end_record_);
    end_record_.clear();
    return Write(rec);
  }

  // --- saving: the device's stream into sections ---

  absl::Status Consume(absl::Span<const uint8_t> bytes) {
    if (!reference_) {
      if (!opaque_open_) {
        codec::SectionHeader h;
        auto r = h.mutable_root();
        r.setDevice(device_index_);
        r.setName(absl::StrCat(kOpaquePrefix, round_));
        r.setRound(round_);
        auto b = r.initVendorBlob();
        b.setVendor(info_.vendor);
        b.setBlobType("vfio-migration-v2");
        if (auto id = writer_->BeginSection(h); !id.ok()) return id.status();
        opaque_open_ = true;
      }
      return writer_->Write(bytes);
    }
    absl::Status emitted;  // the writer's error, passed on as it is
    absl::Status s = parser_.Feed(bytes, [&](const stream::RecordView& r) {
      emitted = Emit(r);
      return emitted;
    });
    if (!emitted.ok()) return emitted;
    if (!s.ok()) {
      return absl::DataLossError(Where(absl::StrCat(
          "the device's stream is damaged: ", s.message())));
    }
    return absl::OkStatus();
  }

  codec::SectionHeader Header(const std::string& name, uint64_t bytes) {
    codec::SectionHeader h;
    auto r = h.mutable_root();
    r.setDevice(device_index_);
    r.setName(name);
    r.setRound(round_);
    r.setDeclaredBytes(bytes);
    return h;
  }

  // VRAM records are gathered into one "vram" section of up to
  // kVramBatchBytes: a guest dirtying scattered pages would otherwise cost
  // a section (and a hand-off to the compressors) per 4 KiB page.
  absl::Status Emit(const stream::RecordView& rec) {
    const RecordType type = rec.header.type;
    if (type == RecordType::kVramPages || type == RecordType::kVramZero) {
      const uint64_t first = absl::little_endian::Load64(rec.payload.data());
      const bool zero = type == RecordType::kVramZero;
      const uint64_t count =
          zero ? absl::little_endian::Load64(rec.payload.data() + 8)
               : (rec.payload.size() - 8) / kPageBytes;
      // Ranges of a section are sorted and disjoint: a page the device
      // sends again (dirtied after its first pass) starts a new section.
      if (!batch_.present.empty() || !batch_.zero.empty()) {
        if (first < batch_.end ||
            batch_.bytes.size() + (zero ? 0 : count * kPageBytes) >
                kVramBatchBytes) {
          if (auto s = FlushVram(); !s.ok()) return s;
        }
      }
      (zero ? batch_.zero : batch_.present).push_back({first, count});
      if (!zero) {
        batch_.bytes.insert(batch_.bytes.end(), rec.payload.begin() + 8,
                            rec.payload.end());
      }
      batch_.end = first + count;
      return absl::OkStatus();
    }
    if (auto s = FlushVram(); !s.ok()) return s;
    // Context images, the device and end records travel whole, header
    // included, so the destination gets exactly the source's record.
    std::vector<uint8_t> whole;
    stream::AppendRecord(type, rec.header.index, rec.payload, &whole);
    codec::SectionHeader h;
    if (type == RecordType::kContext) {
      h = Header(absl::StrCat(kContextPrefix, rec.header.index), whole.size());
      auto c = h.mutable_root().initContextImage();
      c.setContextId(rec.header.index);
      c.setEngine("gfx");
      c.setImageFormat(stream::kRecordVersion);
    } else {
      const bool end = type == RecordType::kEnd;
      h = Header(end ? kEndSection : kDeviceSection, whole.size());
      auto b = h.mutable_root().initVendorBlob();
      b.setVendor(kRefVendor);
      b.setBlobType(end ? kEndBlob : kDeviceBlob);
    }
    return writer_->AddSection(h, whole).status();
  }

  absl::Status FlushVram() {
    if (batch_.present.empty() && batch_.zero.empty()) return absl::OkStatus();
    codec::SectionHeader h = Header(kVramSection, batch_.bytes.size());
    auto region = h.mutable_root().initMemoryRegion();
    region.setPageSize(kPageBytes);
    region.setTotalPages(pages_);
    auto set = [](auto list, const std::vector<std::pair<uint64_t, uint64_t>>& v) {
      for (size_t i = 0; i < v.size(); ++i) {
        list[static_cast<unsigned>(i)].setFirst(v[i].first);
        list[static_cast<unsigned>(i)].setCount(v[i].second);
      }
    };
    set(region.initPresentRanges(static_cast<unsigned>(batch_.present.size())),
        batch_.present);
    set(region.initZeroRanges(static_cast<unsigned>(batch_.zero.size())),
        batch_.zero);
    absl::Status s = writer_->AddSection(h, batch_.bytes).status();
    batch_.present.clear();
    batch_.zero.clear();
    batch_.bytes.clear();
    batch_.end = 0;
    return s;
  }

  // --- loading: sections back into records ---

  absl::Status LoadRecord(schema::SectionHeader::Reader h,
                          codec::ImageReader& reader, RecordType want,
                          uint32_t index) {
    auto data = reader.ReadSection(stream::kHeaderBytes + stream::kMaxPayload);
    if (!data.ok()) return data.status();
    auto rh = stream::DecodeHeader(*data);
    if (!rh.ok()) {
      return absl::Status(rh.status().code(),
                          Where(absl::StrCat("section '", Str(h.getName()),
                                             "': ", rh.status().message())));
    }
    if (rh->type != want || rh->index != index ||
        data->size() != stream::kHeaderBytes + rh->length) {
      return absl::DataLossError(Where(absl::StrFormat(
          "section '%s' holds a %s record %d of %d bytes in %d bytes",
          Str(h.getName()), stream::RecordTypeName(rh->type), rh->index,
          rh->length, data->size())));
    }
    if (want == RecordType::kEnd) {
      end_record_ = std::move(*data);
      return absl::OkStatus();
    }
    return Write(*data);
  }

  absl::Status LoadVram(schema::SectionHeader::Reader h,
                        codec::ImageReader& reader) {
    auto region = h.getMemoryRegion();
    if (region.getPageSize() != kPageBytes ||
        region.getTotalPages() != pages_) {
      return absl::FailedPreconditionError(Where(absl::StrFormat(
          "section 'vram' is %d pages of %d bytes; this vGPU's VRAM share is "
          "%d pages of %d bytes",
          region.getTotalPages(), region.getPageSize(), pages_, kPageBytes)));
    }
    std::vector<std::pair<uint64_t, uint64_t>> present;
    for (auto r : region.getPresentRanges()) {
      if (r.getFirst() > pages_ || r.getCount() > pages_ - r.getFirst()) {
        return absl::DataLossError(Where("section 'vram': range outside it"));
      }
      present.push_back({r.getFirst(), r.getCount()});
    }
    for (auto z : region.getZeroRanges()) {
      if (z.getFirst() > pages_ || z.getCount() > pages_ - z.getFirst()) {
        return absl::DataLossError(Where("section 'vram': range outside it"));
      }
      for (uint64_t done = 0; done < z.getCount();) {
        const uint64_t n = std::min<uint64_t>(z.getCount() - done, 1u << 20);
        uint8_t payload[16];
        absl::little_endian::Store64(payload, z.getFirst() + done);
        absl::little_endian::Store64(payload + 8, n);
        std::vector<uint8_t> rec;
        stream::AppendRecord(RecordType::kVramZero, 0,
                             absl::MakeConstSpan(payload, 16), &rec);
        if (auto s = Write(rec); !s.ok()) return s;
        done += n;
      }
    }
    // Section data is the present pages in range order; regroup it into
    // records of at most kRunPages whole pages of one range, built in
    // place (header, first page, then the bytes as chunks arrive).
    size_t range = 0;
    uint64_t in_range = 0;  // pages of `range` already framed
    std::vector<uint8_t> rec;
    size_t begin = 0;
    uint64_t have = 0;  // page bytes in `rec`
    auto start = [&] {
      rec.clear();
      begin = stream::BeginRecord(&rec);
      uint8_t first[8];
      absl::little_endian::Store64(first, present[range].first + in_range);
      rec.insert(rec.end(), first, first + 8);
      have = 0;
    };
    auto target = [&] {
      return std::min(kRunPages, present[range].second - in_range) *
             kPageBytes;
    };
    auto flush = [&]() -> absl::Status {
      stream::FinishRecord(RecordType::kVramPages, 0, begin, &rec);
      in_range += have / kPageBytes;
      if (in_range == present[range].second) {
        ++range;
        in_range = 0;
      }
      have = 0;
      return Write(rec);
    };
    if (!present.empty()) start();
    absl::Status s = reader.ReadChunks([&](uint64_t, uint64_t length,
                                           absl::Span<const uint8_t> data) {
      uint64_t off = 0;
      while (off < length) {
        if (range >= present.size()) {
          return absl::DataLossError(Where("section 'vram' has extra bytes"));
        }
        const uint64_t n = std::min(target() - have, length - off);
        if (data.empty()) {
          rec.insert(rec.end(), n, 0);
        } else {
          rec.insert(rec.end(), data.begin() + off, data.begin() + off + n);
        }
        off += n;
        have += n;
        if (have == target()) {
          if (auto st = flush(); !st.ok()) return st;
          if (range < present.size()) start();
        }
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    if (have != 0 || range != present.size()) {
      return absl::DataLossError(Where("section 'vram' ends short of its pages"));
    }
    return absl::OkStatus();
  }

  VfioDevice* device_;
  MediatedInfo info_;
  Descriptor desc_;
  uint64_t flags_;
  bool reference_;
  uint64_t pages_;
  std::unique_ptr<DataStream> stream_;
  stream::RecordParser parser_;
  bool at_end_ = false;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> end_record_;
  // During DoSave.
  codec::ImageWriter* writer_ = nullptr;
  uint32_t device_index_ = 0;
  uint32_t round_ = 0;
  bool opaque_open_ = false;
  struct VramBatch {
    std::vector<std::pair<uint64_t, uint64_t>> present, zero;
    std::vector<uint8_t> bytes;
    uint64_t end = 0;  // one past the last page of the last range
  } batch_;
};

absl::StatusOr<uint64_t> CheckedFlags(VfioDevice& device) {
  auto flags = device.MigrationFlags();
  if (!flags.ok()) {
    if (ErrnoOf(flags.status()) == ENOTTY) {
      return absl::FailedPreconditionError(absl::StrCat(
          "mediated vGPU ", device.name(),
          ": its driver offers no VFIO migration (ENOTTY)"));
    }
    return flags.status();
  }
  if (!(*flags & kMigFlagStopCopy)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mediated vGPU ", device.name(), ": migration flags ",
        MigFlagsString(*flags), " lack STOP_COPY"));
  }
  return *flags;
}

}  // namespace

MediatedInfo RefInfo(const RefVgpuConfig& config) {
  MediatedInfo i;
  i.vendor = kRefVendor;
  i.pci_vendor_id = 0x1b36;  // Red Hat's id, used by QEMU's test devices
  i.pci_device_id = 0x0100 + (config.contexts & 0xff);
  i.architecture = "reference";
  i.type = config.type;
  i.driver_major = 1;
  i.vram_bytes = config.vram_bytes;
  i.contexts = config.contexts;
  i.stream_format = kRefStreamFormat;
  return i;
}

absl::StatusOr<Descriptor> DescribeMediated(VfioDevice& device,
                                            const MediatedInfo& info) {
  auto flags = CheckedFlags(device);
  if (!flags.ok()) return flags.status();
  Descriptor d;
  auto r = d.mutable_root();
  r.setStrategy(schema::Strategy::MEDIATED);
  r.setInstanceId(device.name());
  r.setVendor(info.vendor);
  r.setPciVendorId(info.pci_vendor_id);
  r.setPciDeviceId(info.pci_device_id);
  r.setArchitecture(info.architecture);
  r.setBoardType(info.type);
  auto v = r.initDriverVersion();
  v.setMajor(info.driver_major);
  v.setMinor(info.driver_minor);
  v.setPatch(info.driver_patch);
  r.setWrapperName(info.stream_format.empty() ? "vfio-opaque"
                                              : info.stream_format);
  r.initWrapperAbi().setMajor(stream::kRecordVersion);
  std::vector<std::string> features = {"vfio-migration-v2"};
  if (*flags & kMigFlagP2p) features.push_back("p2p");
  if (*flags & kMigFlagPreCopy) features.push_back("pre-copy");
  auto f = r.initFeatures(static_cast<unsigned>(features.size()));
  for (size_t i = 0; i < features.size(); ++i) {
    f.set(static_cast<unsigned>(i), features[i]);
  }
  r.setVramBytes(info.vram_bytes);
  r.setContextCount(info.contexts);
  r.setEccEnabled(info.ecc);
  r.setMigrationCapable(true);
  return d;
}

absl::StatusOr<std::unique_ptr<Agent>> NewMediatedSource(
    VfioDevice* device, const MediatedInfo& info) {
  auto flags = CheckedFlags(*device);
  if (!flags.ok()) return flags.status();
  auto state = device->GetState();
  if (!state.ok()) return state.status();
  if (*state != MigState::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mediated vGPU ", device->name(), " is ", MigStateName(*state),
        ", not RUNNING: another migration may hold it"));
  }
  auto desc = DescribeMediated(*device, info);
  if (!desc.ok()) return desc.status();
  return std::unique_ptr<Agent>(new MediatedAgent(
      Role::kSource, device, info, std::move(*desc), *flags));
}

absl::StatusOr<std::unique_ptr<Agent>> NewMediatedDestination(
    VfioDevice* device, const MediatedInfo& info, const Descriptor& source) {
  auto flags = CheckedFlags(*device);
  if (!flags.ok()) return flags.status();
  auto s = source.root();
  if (s.getStrategy() != schema::Strategy::MEDIATED ||
      Str(s.getBoardType()) != info.type ||
      s.getVramBytes() != info.vram_bytes ||
      s.getContextCount() != info.contexts ||
      Str(s.getWrapperName()) !=
          (info.stream_format.empty() ? "vfio-opaque" : info.stream_format)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "mediated vGPU %s (%s, %d contexts, %d bytes of VRAM) cannot take a "
        "%s vGPU with %d contexts and %d bytes of VRAM",
        device->name(), info.type, info.contexts, info.vram_bytes,
        Str(s.getBoardType()), s.getContextCount(), s.getVramBytes()));
  }
  auto state = device->GetState();
  if (!state.ok()) return state.status();
  if (*state != MigState::kRunning && *state != MigState::kStop) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mediated vGPU ", device->name(), " is ", MigStateName(*state),
        "; a destination must be a fresh device"));
  }
  if (auto st = device->SetState(MigState::kStop); !st.ok()) {
    return st.status();
  }
  auto desc = DescribeMediated(*device, info);
  if (!desc.ok()) return desc.status();
  return std::unique_ptr<Agent>(new MediatedAgent(
      Role::kDestination, device, info, std::move(*desc), *flags));
}

}  // namespace vgpu::agents::mediated
