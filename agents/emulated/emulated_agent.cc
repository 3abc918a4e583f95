#include "agents/emulated/emulated_agent.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace vgpu::agents::emulated {
namespace {

constexpr char kVramSection[] = "vram";
constexpr char kDispiSection[] = "dispi";
constexpr char kRingSection[] = "ring";
// Registers and ring are small next to VRAM; bound what a destination
// accepts for them.
constexpr uint64_t kMaxBlobBytes = 256ull << 20;
// What Pending() adds for registers and ring before they are read: a bound
// for their fixed parts, and per queued command beyond its payload.
constexpr uint64_t kBlobEstimate = 64 << 10;
constexpr uint64_t kPerCommandBytes = 256;

// Sorted runs [first, count) of set bits.
std::vector<std::pair<uint64_t, uint64_t>> Runs(
    const std::vector<uint64_t>& bits, uint64_t pages) {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (uint64_t w = 0; w < bits.size(); ++w) {
    uint64_t word = bits[w];
    while (word != 0) {
      uint64_t p = w * 64 + static_cast<uint64_t>(__builtin_ctzll(word));
      word &= word - 1;
      if (p >= pages) break;
      if (!runs.empty() && runs.back().first + runs.back().second == p) {
        ++runs.back().second;
      } else {
        runs.push_back({p, 1});
      }
    }
  }
  return runs;
}

uint64_t Popcount(const std::vector<uint64_t>& bits) {
  uint64_t n = 0;
  for (uint64_t w : bits) n += static_cast<uint64_t>(__builtin_popcountll(w));
  return n;
}

class EmulatedAgentBase : public Agent {
 public:
  EmulatedAgentBase(Role role, std::unique_ptr<DeviceControl> device,
                    Descriptor descriptor, DeviceInfo info)
      : Agent(role),
        device_(std::move(device)),
        descriptor_(std::move(descriptor)),
        info_(std::move(info)),
        pages_(info_.vram_bytes / kPageBytes) {}
  const Descriptor& descriptor() const override { return descriptor_; }
  DeviceControl& device() { return *device_; }

 protected:
  std::unique_ptr<DeviceControl> device_;
  Descriptor descriptor_;
  DeviceInfo info_;
  uint64_t pages_;
};

class EmulatedSource : public EmulatedAgentBase {
 public:
  using EmulatedAgentBase::EmulatedAgentBase;

  absl::StatusOr<PendingBytes> Pending() override {
    if (state() != State::kPreCopy && state() != State::kStopCopy) {
      return absl::FailedPreconditionError(
          "Pending needs PRE_COPY or STOP_COPY");
    }
    if (absl::Status s = Collect(); !s.ok()) return s;
    PendingBytes p;
    uint64_t dirty = Popcount(pending_) * kPageBytes;
    (sent_pages_ ? p.dirty : p.initial) = dirty;
    if (!blobs_sent_) {
      // Registers and ring go in the final copy; the ring carries every
      // queued command's payload, so count those (the device tells) on
      // top of a bound for the fixed parts.
      auto info = device_->Info();
      if (!info.ok()) return info.status();
      p.initial += kBlobEstimate + info->queued_command_bytes +
                   info->queued_commands * kPerCommandBytes;
    }
    p.exact = blobs_sent_;
    return p;
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    switch (to) {
      case State::kPreCopy: {
        Reset();
        absl::Status s = device_->StartDirtyTracking();
        tracking_ = s.ok();
        return s;
      }
      case State::kStopCopy:
        if (from == State::kRunning) {
          // No pre-copy: everything goes in the final copy.
          Reset();
          std::fill(pending_.begin(), pending_.end(), ~uint64_t{0});
        }
        return device_->Quiesce();
      case State::kRunning: {
        // Abort: the device runs on, untracked. Resume first, so that a
        // failure to stop tracking still leaves it running.
        absl::Status s =
            from == State::kStopCopy ? device_->Resume() : absl::OkStatus();
        absl::Status t = StopTracking();
        return s.ok() ? t : s;
      }
      case State::kReleased:
        // The destination owns the state now; the device stays quiesced
        // until whoever started it stops it.
        return StopTracking();
      default:
        return absl::InternalError("unexpected source transition");
    }
  }

  absl::Status DoSave(codec::ImageWriter& w, uint32_t device,
                      uint32_t round) override {
    if (absl::Status s = Collect(); !s.ok()) return s;
    std::vector<std::pair<uint64_t, uint64_t>> runs = Runs(pending_, pages_);
    if (!runs.empty()) {
      codec::SectionHeader h;
      auto r = h.mutable_root();
      r.setDevice(device);
      r.setName(kVramSection);
      r.setRound(round);
      uint64_t pages = 0;
      for (auto& run : runs) pages += run.second;
      r.setDeclaredBytes(pages * kPageBytes);
      auto region = r.initMemoryRegion();
      region.setPageSize(kPageBytes);
      region.setTotalPages(pages_);
      auto pr = region.initPresentRanges(static_cast<unsigned>(runs.size()));
      for (size_t i = 0; i < runs.size(); ++i) {
        pr[static_cast<unsigned>(i)].setFirst(runs[i].first);
        pr[static_cast<unsigned>(i)].setCount(runs[i].second);
      }
      // The bitmap was fetched before these reads: a page the guest writes
      // from now on is dirty again and goes in a later round.
      absl::Span<const uint8_t> vram = device_->vram();
      if (auto id = w.BeginSection(h); !id.ok()) return id.status();
      // While the device runs, its pages change under us. The writer reads
      // a chunk more than once (zero check, checksum, compression), so a
      // live page would reach the destination torn: checksummed in one
      // version, compressed in another, and refused as damage. Each piece
      // is copied once into a private buffer first; what the copy caught
      // mid-write is dirty again and is sent again. A quiesced device's
      // pages are stable and go straight from the mapping.
      const bool live = state() == State::kPreCopy;
      for (auto [first, count] : runs) {
        absl::Span<const uint8_t> run =
            vram.subspan(first * kPageBytes, count * kPageBytes);
        while (!run.empty()) {
          absl::Span<const uint8_t> piece =
              run.subspan(0, std::min<size_t>(run.size(), kStagingBytes));
          if (live) {
            staging_.resize(kStagingBytes);
            std::memcpy(staging_.data(), piece.data(), piece.size());
            piece = absl::MakeConstSpan(staging_.data(), piece.size());
          }
          if (absl::Status s = w.Write(piece); !s.ok()) return s;
          run.remove_prefix(piece.size());
        }
      }
      if (absl::Status s = w.EndSection(); !s.ok()) return s;
      std::fill(pending_.begin(), pending_.end(), 0);
      sent_pages_ = true;
    }
    if (state() == State::kStopCopy && !blobs_sent_) {
      auto regs = device_->SaveRegisters();
      if (!regs.ok()) return regs.status();
      auto ring = device_->SaveRing();
      if (!ring.ok()) return ring.status();
      codec::SectionHeader rh;
      auto r = rh.mutable_root();
      r.setDevice(device);
      r.setName(kDispiSection);
      r.setRound(round);
      r.setDeclaredBytes(regs->size());
      r.initRegisterBank().setRegisterWidth(1);
      r.getRegisterBank().setRegisterCount(static_cast<uint32_t>(regs->size()));
      if (auto s = w.AddSection(rh, *regs); !s.ok()) return s.status();
      codec::SectionHeader ch;
      auto c = ch.mutable_root();
      c.setDevice(device);
      c.setName(kRingSection);
      c.setRound(round);
      c.setDeclaredBytes(ring->size());
      auto ci = c.initContextImage();
      ci.setContextId(0);
      ci.setEngine("2d");
      ci.setImageFormat(info_.abi_major);
      if (auto s = w.AddSection(ch, *ring); !s.ok()) return s.status();
      blobs_sent_ = true;
    }
    return absl::OkStatus();
  }

  absl::Status DoLoad(const codec::SectionHeader&,
                      codec::ImageReader&) override {
    return absl::FailedPreconditionError("a source does not load");
  }

 private:
  void Reset() {
    pending_.assign((pages_ + 63) / 64, 0);
    sent_pages_ = false;
    blobs_sent_ = false;
  }
  absl::Status StopTracking() {
    if (!tracking_) return absl::OkStatus();
    absl::Status s = device_->StopDirtyTracking();
    if (s.ok()) tracking_ = false;
    return s;
  }
  // Folds the device's dirty bitmap into ours (the device clears its own).
  // Untracked (stop-copy straight from RUNNING) everything is pending.
  absl::Status Collect() {
    if (pending_.empty()) Reset();
    if (!tracking_) return absl::OkStatus();
    auto bits = device_->FetchDirtyBitmap();
    if (!bits.ok()) return bits.status();
    for (size_t i = 0; i < bits->size() && i < pending_.size(); ++i) {
      pending_[i] |= (*bits)[i];
    }
    return absl::OkStatus();
  }

  std::vector<uint64_t> pending_;  // pages to send
  bool tracking_ = false;
  bool sent_pages_ = false;
  // Pre-copy reads live pages through this, a piece at a time (DoSave).
  static constexpr size_t kStagingBytes = 4 << 20;
  std::vector<uint8_t> staging_;
  bool blobs_sent_ = false;
};

class EmulatedDestination : public EmulatedAgentBase {
 public:
  using EmulatedAgentBase::EmulatedAgentBase;

  absl::StatusOr<PendingBytes> Pending() override {
    return absl::FailedPreconditionError("a destination has nothing pending");
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    switch (to) {
      case State::kResuming:
        staged_regs_.clear();
        staged_ring_.clear();
        return absl::OkStatus();
      case State::kRunning: {
        if (staged_regs_.empty() || staged_ring_.empty()) {
          return absl::FailedPreconditionError(
              "the image ended without the register bank or the ring");
        }
        if (absl::Status s = device_->LoadRegisters(staged_regs_); !s.ok()) {
          return s;
        }
        if (absl::Status s = device_->LoadRing(staged_ring_); !s.ok()) return s;
        return device_->Resume();
      }
      case State::kPrepared: {
        // Abort or failed activation: back to a fresh, empty device.
        staged_regs_.clear();
        staged_ring_.clear();
        auto vram = device_->mutable_vram();
        if (!vram.ok()) return vram.status();
        std::memset(vram->data(), 0, vram->size());
        std::fill(written_.begin(), written_.end(), 0);
        return absl::OkStatus();
      }
      default:
        return absl::InternalError("unexpected destination transition");
    }
  }

  absl::Status DoSave(codec::ImageWriter&, uint32_t, uint32_t) override {
    return absl::FailedPreconditionError("a destination does not save");
  }

  absl::Status DoLoad(const codec::SectionHeader& header,
                      codec::ImageReader& reader) override {
    auto h = header.root();
    const std::string name = h.getName();
    if (name == kVramSection) {
      if (!h.isMemoryRegion() ||
          h.getMemoryRegion().getPageSize() != kPageBytes ||
          h.getMemoryRegion().getTotalPages() != pages_) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "section 'vram' describes another memory (%u pages of %u bytes); "
            "this device has %u pages of %u",
            h.isMemoryRegion() ? h.getMemoryRegion().getTotalPages() : 0,
            h.isMemoryRegion() ? h.getMemoryRegion().getPageSize() : 0, pages_,
            kPageBytes));
      }
      // Each chunk is verified before its bytes land; they land straight in
      // the incoming device's VRAM, which cannot run before activation and
      // is wiped if the load fails, so a cut stream never reaches a
      // running device. Copying as chunks arrive keeps the tail of the
      // transfer, and so the downtime, short.
      auto vram = device_->mutable_vram();
      if (!vram.ok()) return vram.status();
      std::vector<std::pair<uint64_t, uint64_t>> segments;  // data -> vram
      uint64_t data = 0;
      for (auto r : h.getMemoryRegion().getPresentRanges()) {
        segments.push_back({data, r.getFirst() * kPageBytes});
        data += r.getCount() * kPageBytes;
      }
      auto place = [&](uint64_t offset, uint64_t length,
                       const uint8_t* bytes) {
        size_t i = 0;
        while (i + 1 < segments.size() && segments[i + 1].first <= offset) ++i;
        while (length > 0) {
          uint64_t seg_end = i + 1 < segments.size() ? segments[i + 1].first
                                                     : data;
          uint64_t n = std::min(length, seg_end - offset);
          uint8_t* dst = vram->data() + segments[i].second +
                         (offset - segments[i].first);
          const uint64_t at = dst - vram->data();
          if (bytes != nullptr) {
            std::memcpy(dst, bytes, n);
            bytes += n;
            MarkWritten(at, n);
          } else {
            ZeroWritten(vram->data(), at, n);
          }
          offset += n;
          length -= n;
          ++i;
        }
      };
      absl::Status s = reader.ReadChunks(
          [&](uint64_t offset, uint64_t length,
              absl::Span<const uint8_t> bytes) {
            place(offset, length, bytes.empty() ? nullptr : bytes.data());
            return absl::OkStatus();
          });
      if (!s.ok()) return s;
      for (auto z : h.getMemoryRegion().getZeroRanges()) {
        ZeroWritten(vram->data(), z.getFirst() * kPageBytes,
                    z.getCount() * kPageBytes);
      }
      return absl::OkStatus();
    }
    if (name == kDispiSection && h.isRegisterBank()) {
      auto data = reader.ReadSection(kMaxBlobBytes);
      if (!data.ok()) return data.status();
      staged_regs_ = std::move(*data);
      return absl::OkStatus();
    }
    if (name == kRingSection && h.isContextImage()) {
      if (h.getContextImage().getImageFormat() != info_.abi_major) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "ring image format %u; this device reads %u",
            h.getContextImage().getImageFormat(), info_.abi_major));
      }
      auto data = reader.ReadSection(kMaxBlobBytes);
      if (!data.ok()) return data.status();
      staged_ring_ = std::move(*data);
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(
        absl::StrFormat("section '%s' (%s) does not belong to an emulated vGPU",
                        name, codec::SectionKindName(h.which())));
  }

 private:
  std::vector<uint8_t> staged_regs_, staged_ring_;
  // Pages this agent has written since the device was fresh (all zeros).
  // Zero runs need clearing only there: the initial pass of a mostly empty
  // VRAM then costs no memset (and no page faults) at the destination,
  // which keeps the loader from trailing the stream into the downtime.
  std::vector<uint64_t> written_ = std::vector<uint64_t>((pages_ + 63) / 64);

  void MarkWritten(uint64_t offset, uint64_t length) {
    for (uint64_t p = offset / kPageBytes; p * kPageBytes < offset + length;
         ++p) {
      written_[p / 64] |= uint64_t{1} << (p % 64);
    }
  }
  void ZeroWritten(uint8_t* vram, uint64_t offset, uint64_t length) {
    const uint64_t end = offset + length;
    for (uint64_t p = offset / kPageBytes; p * kPageBytes < end; ++p) {
      if ((written_[p / 64] >> (p % 64) & 1) == 0) continue;
      const uint64_t from = std::max(offset, p * kPageBytes);
      const uint64_t to = std::min(end, (p + 1) * kPageBytes);
      std::memset(vram + from, 0, to - from);
      // Cleared only if the whole page was: a partly zeroed page may still
      // hold other bytes.
      if (from == p * kPageBytes && to == (p + 1) * kPageBytes) {
        written_[p / 64] &= ~(uint64_t{1} << (p % 64));
      }
    }
  }
};

}  // namespace

absl::StatusOr<Descriptor> DescribeDevice(DeviceControl& device) {
  auto info = device.Info();
  if (!info.ok()) return info.status();
  Descriptor d;
  auto r = d.mutable_root();
  r.setStrategy(schema::Strategy::EMULATION);
  r.setInstanceId(info->name);
  r.setVendor("vgpu-migrate");
  r.setPciVendorId(0x1234);  // QEMU's bochs-display
  r.setPciDeviceId(0x1111);
  r.setArchitecture("bochs-dispi");
  r.setBoardType(absl::StrFormat("emu-2d-%uM", info->vram_bytes >> 20));
  r.setWrapperName("vgpu-emu-device");
  auto abi = r.initWrapperAbi();
  abi.setMajor(info->abi_major);
  abi.setMinor(info->abi_minor);
  auto f = r.initFeatures(3);
  f.set(0, absl::StrFormat("dispi-%04x", info->dispi_id));
  f.set(1, "2d-engine");
  f.set(2, "fences");
  r.setVramBytes(info->vram_bytes);
  r.setContextCount(1);
  return d;
}

absl::StatusOr<std::unique_ptr<Agent>> NewEmulatedSource(
    std::unique_ptr<DeviceControl> device) {
  auto info = device->Info();
  if (!info.ok()) return info.status();
  auto desc = DescribeDevice(*device);
  if (!desc.ok()) return desc.status();
  return std::unique_ptr<Agent>(new EmulatedSource(
      Role::kSource, std::move(device), std::move(*desc), *info));
}

absl::StatusOr<std::unique_ptr<Agent>> NewEmulatedDestination(
    std::unique_ptr<DeviceControl> device, const Descriptor& source) {
  auto info = device->Info();
  if (!info.ok()) return info.status();
  auto s = source.root();
  if (s.getStrategy() != schema::Strategy::EMULATION ||
      s.getVramBytes() != info->vram_bytes ||
      s.getWrapperAbi().getMajor() != info->abi_major) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "this device (%u bytes of VRAM, state ABI %u) cannot take a vGPU "
        "with %u bytes of VRAM and state ABI %u",
        info->vram_bytes, info->abi_major, s.getVramBytes(),
        s.getWrapperAbi().getMajor()));
  }
  if (!info->quiesced) {
    return absl::FailedPreconditionError(
        "the destination device is running; start it with --incoming");
  }
  auto probe = device->mutable_vram();
  if (!probe.ok()) return probe.status();
  // Fault the mapping in now, while the source still runs: touching 1 GiB
  // for the first time costs hundreds of milliseconds that would otherwise
  // land in the downtime. The device is fresh, so its VRAM is all zeros.
  for (uint64_t off = 0; off < probe->size(); off += kPageBytes) {
    reinterpret_cast<volatile uint8_t*>(probe->data())[off] = 0;
  }
  Descriptor desc;
  desc.builder().setRoot(s);
  desc.mutable_root().setInstanceId(info->name);
  return std::unique_ptr<Agent>(new EmulatedDestination(
      Role::kDestination, std::move(device), std::move(desc), *info));
}

DeviceControl& DeviceOf(Agent& agent) {
  return static_cast<EmulatedAgentBase&>(agent).device();
}

}  // namespace vgpu::agents::emulated
