// Fuzzes the mediated agent's destination side: the fuzz input describes a
// sequence of image sections (kinds, names, context ids, memory ranges,
// bytes, and whether a blob is framed as a valid record of some type),
// which are written as a well-formed image, so that every input gets past
// the image's own checks and reaches what the agent does with sections:
// its kind and name checks, the record checks, the regrouping of VRAM
// pages into records, and the device behind them. Any outcome but a crash,
// a hang, a device that runs after refusing what it got, or an abort that
// fails is fine.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "agents/agent.h"
#include "agents/mediated/internal/stream_format.h"
#include "agents/mediated/mediated_agent.h"
#include "agents/mediated/reference_device.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace {

namespace med = vgpu::agents::mediated;
namespace st = vgpu::agents::mediated::stream;
using vgpu::agents::State;

constexpr uint64_t kPages = 16;  // the device's 64 KiB VRAM share

med::RefVgpu& Device() {
  static med::RefVgpu* device = [] {
    med::RefVgpuConfig c;
    c.name = "fuzz";
    c.contexts = 2;
    c.vram_bytes = kPages * 4096;
    c.guest_memory_bytes = 64 << 10;
    return med::RefVgpu::Create(c)->release();
  }();
  return *device;
}

std::vector<uint8_t> Blob(FuzzedDataProvider& in) {
  std::vector<uint8_t> data =
      in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 40000));
  if (in.ConsumeBool()) {  // frame it as a record that verifies
    std::vector<uint8_t> rec;
    st::AppendRecord(static_cast<st::RecordType>(
                         in.ConsumeIntegralInRange<uint16_t>(0, 6)),
                     in.ConsumeIntegralInRange<uint32_t>(0, 3), data, &rec);
    return rec;
  }
  return data;
}

void AddSection(FuzzedDataProvider& in, vgpu::codec::ImageWriter& w) {
  vgpu::codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setDevice(0);
  std::vector<uint8_t> data;
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0:
    case 3: {
      const bool end = in.ConsumeBool();
      r.setName(end ? "end" : "mdev");
      auto b = r.initVendorBlob();
      b.setVendor("vgpu-migrate");
      b.setBlobType(end ? "ref-mdev-end" : "ref-mdev-device");
      data = Blob(in);
      break;
    }
    case 1: {
      const uint32_t ctx = in.ConsumeIntegralInRange<uint32_t>(0, 3);
      r.setName(in.ConsumeBool() ? "ctx" + std::to_string(ctx)
                                 : in.ConsumeRandomLengthString(8));
      auto c = r.initContextImage();
      c.setContextId(in.ConsumeIntegralInRange<uint32_t>(0, 3));
      c.setEngine("gfx");
      data = Blob(in);
      break;
    }
    case 2: {
      r.setName("vram");
      auto m = r.initMemoryRegion();
      const uint32_t page = in.ConsumeBool() ? 4096 : 8192;
      const uint64_t total = in.ConsumeBool() ? kPages : kPages * 2;
      m.setPageSize(page);
      m.setTotalPages(total);
      // Sorted, disjoint ranges, some present and some zero.
      std::vector<std::pair<uint64_t, uint64_t>> present, zero;
      for (uint64_t p = 0; p < total && present.size() + zero.size() < 6;) {
        p += in.ConsumeIntegralInRange<uint64_t>(0, 3);
        const uint64_t n = in.ConsumeIntegralInRange<uint64_t>(1, 4);
        if (p + n > total) break;
        (in.ConsumeBool() ? present : zero).push_back({p, n});
        p += n;
      }
      auto pr = m.initPresentRanges(static_cast<unsigned>(present.size()));
      uint64_t bytes = 0;
      for (size_t i = 0; i < present.size(); ++i) {
        pr[static_cast<unsigned>(i)].setFirst(present[i].first);
        pr[static_cast<unsigned>(i)].setCount(present[i].second);
        bytes += present[i].second * page;
      }
      auto zr = m.initZeroRanges(static_cast<unsigned>(zero.size()));
      for (size_t i = 0; i < zero.size(); ++i) {
        zr[static_cast<unsigned>(i)].setFirst(zero[i].first);
        zr[static_cast<unsigned>(i)].setCount(zero[i].second);
      }
      data = in.ConsumeBytes<uint8_t>(bytes);
      data.resize(bytes, 0x5a);
      break;
    }
    case 4:
      r.setName("vfio.r" + std::to_string(in.ConsumeIntegral<uint8_t>()));
      r.initVendorBlob().setVendor("acme");
      data = Blob(in);
      break;
    default:
      r.setName(in.ConsumeRandomLengthString(8));
      r.initRegisterBank().setRegisterWidth(4);
      data = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange(0, 64));
      break;
  }
  r.setDeclaredBytes(data.size());
  (void)w.AddSection(h, data);  // a header the writer refuses is skipped
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  FuzzedDataProvider in(bytes, size);
  med::RefVgpu& dev = Device();
  if (!dev.Reset().ok()) std::abort();
  auto desc = med::DescribeMediated(dev, med::RefInfo(dev.config()));
  if (!desc.ok()) std::abort();

  vgpu::codec::Manifest m;
  auto d = m.mutable_root().initDevices(1)[0];
  d.setIndex(0);
  d.setDescriptor(desc->root());
  vgpu::codec::MemorySink sink;
  vgpu::codec::WriterOptions wo;
  wo.threads = 1;
  auto w = vgpu::codec::ImageWriter::Create(&sink, m, wo);
  if (!w.ok()) std::abort();
  const int sections = in.ConsumeIntegralInRange(0, 12);
  for (int i = 0; i < sections && in.remaining_bytes() > 0; ++i) {
    AddSection(in, **w);
  }
  if (!(*w)->Finish().ok()) return 0;

  auto agent = med::NewMediatedDestination(&dev, med::RefInfo(dev.config()),
                                           *desc);
  if (!agent.ok()) std::abort();
  if (!(*agent)->TransitionTo(State::kResuming).ok()) std::abort();
  vgpu::codec::MemorySource src(sink.bytes(), "fuzz image");
  auto reader = vgpu::codec::ImageReader::Open(&src, {}, 1);
  if (!reader.ok()) std::abort();  // the writer made it
  bool refused = false;
  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) std::abort();
    if (!next->has_value()) break;
    if (!(*agent)->Load(**next, **reader).ok()) {
      refused = true;
      break;
    }
  }
  if (refused) {
    // What the coordinator does on a refused section: abort. The device
    // must not run, and the abort path must always work.
    if (!(*agent)->TransitionTo(State::kPrepared).ok()) std::abort();
    auto state = dev.GetState();
    if (!state.ok() || *state == med::MigState::kRunning) std::abort();
    return 0;
  }
  absl::Status ran =
      vgpu::agents::TransitionGroup({agent->get()}, State::kRunning);
  if (!ran.ok()) {
    // The device's final check refused what it got: it must not run.
    auto state = dev.GetState();
    if (!state.ok() || *state == med::MigState::kRunning) std::abort();
    if ((*agent)->state() == State::kResuming &&
        !(*agent)->TransitionTo(State::kPrepared).ok()) {
      std::abort();
    }
  }
  return 0;
}
