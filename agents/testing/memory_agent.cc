#include "agents/testing/memory_agent.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace vgpu::agents::testing {
namespace {

constexpr uint32_t kPage = 4096;

Descriptor MakeDescriptor(const MemoryDevice& d) {
  Descriptor desc;
  auto r = desc.mutable_root();
  r.setStrategy(schema::Strategy::EMULATION);
  r.setInstanceId("memory-vgpu");
  r.setVendor("test");
  r.setArchitecture("memory");
  r.setVramBytes(d.vram.size());
  return desc;
}

class MemorySource : public Agent {
 public:
  explicit MemorySource(std::shared_ptr<MemoryDevice> d)
      : Agent(Role::kSource), dev_(std::move(d)), desc_(MakeDescriptor(*dev_)) {}
  const Descriptor& descriptor() const override { return desc_; }

  absl::StatusOr<PendingBytes> Pending() override {
    PendingBytes p;
    p.exact = true;
    for (size_t i = 0; i < dev_->dirty.size(); ++i) {
      if (dev_->dirty[i]) (sent_any_ ? p.dirty : p.initial) += kPage;
    }
    if (!registers_sent_) p.initial += dev_->registers.size();
    return p;
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    if (to == State::kPreCopy) {
      dev_->tracking = true;
      dev_->dirty.assign(dev_->dirty.size(), true);
      sent_any_ = false;
      registers_sent_ = false;
    } else if (to == State::kStopCopy) {
      if (from == State::kRunning) {
        dev_->dirty.assign(dev_->dirty.size(), true);
        sent_any_ = false;
        registers_sent_ = false;
      }
      dev_->quiesced = true;
    } else if (to == State::kRunning) {
      dev_->tracking = false;
      dev_->quiesced = false;
    }
    return absl::OkStatus();
  }

  absl::Status DoSave(codec::ImageWriter& w, uint32_t device,
                      uint32_t round) override {
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    for (uint64_t p = 0; p < dev_->dirty.size(); ++p) {
      if (!dev_->dirty[p]) continue;
      dev_->dirty[p] = false;
      if (!runs.empty() && runs.back().first + runs.back().second == p) {
        ++runs.back().second;
      } else {
        runs.push_back({p, 1});
      }
    }
    if (!runs.empty()) {
      codec::SectionHeader h;
      auto r = h.mutable_root();
      r.setDevice(device);
      r.setName("vram");
      r.setRound(round);
      uint64_t pages = 0;
      for (auto& run : runs) pages += run.second;
      r.setDeclaredBytes(pages * kPage);
      auto region = r.initMemoryRegion();
      region.setPageSize(kPage);
      region.setTotalPages(dev_->dirty.size());
      auto pr = region.initPresentRanges(static_cast<unsigned>(runs.size()));
      for (size_t i = 0; i < runs.size(); ++i) {
        pr[static_cast<unsigned>(i)].setFirst(runs[i].first);
        pr[static_cast<unsigned>(i)].setCount(runs[i].second);
      }
      if (auto id = w.BeginSection(h); !id.ok()) return id.status();
      for (auto [first, count] : runs) {
        if (auto s = w.Write(absl::MakeConstSpan(
                dev_->vram.data() + first * kPage, count * kPage));
            !s.ok()) {
          return s;
        }
      }
      if (auto s = w.EndSection(); !s.ok()) return s;
    }
    sent_any_ = true;
    if (state() == State::kStopCopy && !registers_sent_) {
      codec::SectionHeader h;
      auto r = h.mutable_root();
      r.setDevice(device);
      r.setName("registers");
      r.setRound(round);
      r.setDeclaredBytes(dev_->registers.size());
      r.initRegisterBank().setRegisterWidth(8);
      r.getRegisterBank().setRegisterCount(dev_->registers.size() / 8);
      if (auto s = w.AddSection(h, dev_->registers); !s.ok()) return s.status();
      registers_sent_ = true;
    }
    return absl::OkStatus();
  }

  absl::Status DoLoad(const codec::SectionHeader&, codec::ImageReader&) override {
    return absl::FailedPreconditionError("a source does not load");
  }

 private:
  std::shared_ptr<MemoryDevice> dev_;
  Descriptor desc_;
  bool sent_any_ = false;
  bool registers_sent_ = false;
};

class MemoryDestination : public Agent {
 public:
  MemoryDestination(std::shared_ptr<MemoryDevice> d, const Descriptor& expected)
      : Agent(Role::kDestination), dev_(std::move(d)) {
    desc_.builder().setRoot(expected.root());
    dev_->quiesced = true;
  }
  const Descriptor& descriptor() const override { return desc_; }
  absl::StatusOr<PendingBytes> Pending() override {
    return absl::FailedPreconditionError("a destination has nothing pending");
  }

 protected:
  absl::Status OnTransition(State from, State to) override {
    if (to == State::kResuming) {
      staged_vram_ = dev_->vram;
      staged_regs_.clear();
    } else if (to == State::kRunning) {
      if (staged_regs_.empty()) {
        return absl::FailedPreconditionError(
            "the image ended without the register bank");
      }
      dev_->vram = std::move(staged_vram_);
      dev_->registers = staged_regs_;
      dev_->quiesced = false;
    } else if (to == State::kPrepared) {
      staged_vram_.clear();
      staged_regs_.clear();
    }
    return absl::OkStatus();
  }
  absl::Status DoSave(codec::ImageWriter&, uint32_t, uint32_t) override {
    return absl::FailedPreconditionError("a destination does not save");
  }
  absl::Status DoLoad(const codec::SectionHeader& header,
                      codec::ImageReader& reader) override {
    auto h = header.root();
    if (h.getName() == "registers" && h.isRegisterBank() &&
        h.getDeclaredBytes() == dev_->registers.size()) {
      auto data = reader.ReadSection(dev_->registers.size());
      if (!data.ok()) return data.status();
      staged_regs_ = *data;
      return absl::OkStatus();
    }
    if (h.getName() == "vram" && h.isMemoryRegion() &&
        h.getMemoryRegion().getPageSize() == kPage &&
        h.getMemoryRegion().getTotalPages() * kPage == staged_vram_.size()) {
      auto data = reader.ReadSection(staged_vram_.size());
      if (!data.ok()) return data.status();
      uint64_t pos = 0;
      for (auto r : h.getMemoryRegion().getPresentRanges()) {
        std::memcpy(staged_vram_.data() + r.getFirst() * kPage,
                    data->data() + pos, r.getCount() * kPage);
        pos += r.getCount() * kPage;
      }
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrFormat(
        "section '%s' does not fit this device", h.getName().cStr()));
  }

 private:
  std::shared_ptr<MemoryDevice> dev_;
  Descriptor desc_;
  std::vector<uint8_t> staged_vram_, staged_regs_;
};

}  // namespace

absl::Status MemoryDevice::Write(uint64_t offset,
                                 absl::Span<const uint8_t> bytes) {
  if (quiesced) return absl::FailedPreconditionError("device is quiesced");
  if (offset + bytes.size() > vram.size()) {
    return absl::OutOfRangeError("write past VRAM");
  }
  std::memcpy(vram.data() + offset, bytes.data(), bytes.size());
  if (tracking) {
    for (uint64_t p = offset / kPage; p * kPage < offset + bytes.size(); ++p) {
      dirty[p] = true;
    }
  }
  return absl::OkStatus();
}

std::unique_ptr<Agent> NewMemorySourceAgent(std::shared_ptr<MemoryDevice> d) {
  return std::make_unique<MemorySource>(std::move(d));
}

std::unique_ptr<Agent> NewMemoryDestinationAgent(
    std::shared_ptr<MemoryDevice> d, const Descriptor& expected) {
  return std::make_unique<MemoryDestination>(std::move(d), expected);
}

}  // namespace vgpu::agents::testing
