#include "state-codecs/sample.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace vgpu::codec {
namespace {

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr uint32_t kPage = 4096;

}  // namespace

std::vector<uint8_t> RandomBytes(uint64_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  uint64_t s = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = SplitMix(s);
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(SplitMix(s));
  return out;
}

std::vector<uint8_t> VramLikeBytes(uint64_t n, uint64_t seed) {
  std::vector<uint8_t> out(n, 0);
  uint64_t s = seed;
  constexpr uint64_t kBlock = 64 << 10;
  constexpr uint32_t kWidth = 1024;  // pixels per framebuffer line
  for (uint64_t base = 0; base < n; base += kBlock) {
    uint64_t len = std::min(kBlock, n - base);
    uint32_t* px = reinterpret_cast<uint32_t*>(out.data() + base);
    uint64_t pixels = len / 4;
    switch ((base / kBlock + seed) % 4) {
      case 0:  // framebuffer gradient
        for (uint64_t p = 0; p < pixels; ++p) {
          uint64_t g = base / 4 + p;
          uint32_t x = g % kWidth, y = static_cast<uint32_t>(g / kWidth);
          px[p] = 0xff000000u | ((x & 0xff) << 16) | ((y & 0xff) << 8) |
                  ((x + y) & 0xff);
        }
        break;
      case 1:  // never touched
        break;
      case 2: {  // repeated 16x16 tiles from a small palette
        uint32_t palette[4];
        for (uint32_t& c : palette) c = static_cast<uint32_t>(SplitMix(s));
        for (uint64_t p = 0; p < pixels; ++p) {
          uint32_t x = p % 64, y = static_cast<uint32_t>(p / 64);
          px[p] = palette[((x / 16) + (y / 16)) % 4];
        }
        break;
      }
      case 3: {  // texture-like: smooth with low-bit noise
        for (uint64_t p = 0; p < pixels; ++p) {
          uint32_t noise = static_cast<uint32_t>(SplitMix(s)) & 0x0f0f0f;
          px[p] = 0x80000000u |
                  ((static_cast<uint32_t>(p / 32) * 0x010101u) ^ noise);
        }
        break;
      }
    }
  }
  return out;
}

Manifest SampleManifest(uint64_t vram_bytes) {
  Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::CHECKPOINT);
  auto vm = root.initVm();
  vm.setName("demo-vm");
  vm.setUuid("6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f");
  auto dev = root.initDevices(1)[0];
  dev.setIndex(0);
  auto d = dev.initDescriptor();
  d.setStrategy(schema::Strategy::EMULATION);
  d.setInstanceId("bochs-dispi-0");
  d.setVendor("qemu-bochs");
  d.setPciVendorId(0x1234);
  d.setPciDeviceId(0x1111);
  d.setArchitecture("bochs-dispi");
  d.setBoardType("vgpu-emu-2d");
  auto drv = d.initDriverVersion();
  drv.setMajor(1);
  d.setWrapperName("vgpu-emu");
  auto abi = d.initWrapperAbi();
  abi.setMajor(1);
  auto features = d.initFeatures(2);
  features.set(0, "dispi-v5");
  features.set(1, "fill-copy-blit");
  d.setVramBytes(vram_bytes);
  d.setContextCount(1);
  return m;
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> WriteSampleImage(
    ByteSink* sink, const SampleImageOptions& options) {
  if (options.vram_bytes == 0 || options.vram_bytes % kPage != 0) {
    return absl::InvalidArgumentError("vram_bytes must be a multiple of 4096");
  }
  Manifest m = SampleManifest(options.vram_bytes);
  auto root = m.mutable_root();
  if (options.deterministic) {
    auto id = root.initImageId(16);
    for (size_t i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(i + options.seed);
    auto c = root.initCreation();
    c.setTool("vgpu-image sample");
    c.setHostName("sample-host");
    c.setCreatedUnixNanos(1764000000000000000);
  } else {
    StampManifest(m, "vgpu-image sample");
  }
  absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
      ImageWriter::Create(sink, m, options.writer);
  if (!writer.ok()) return writer.status();
  std::vector<std::vector<uint8_t>> contents;

  // DISPI register bank: 16 registers of 16 bits.
  {
    std::vector<uint8_t> regs(32);
    const uint16_t values[] = {0xB0C5, 1024, 768, 32, 0x41, 0, 1024, 768, 0, 0,
                               static_cast<uint16_t>(options.vram_bytes >> 16)};
    std::memcpy(regs.data(), values, sizeof(values));
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("dispi");
    r.setDeclaredBytes(regs.size());
    r.initRegisterBank().setRegisterWidth(2);
    r.getRegisterBank().setRegisterCount(16);
    if (auto s = (*writer)->AddSection(h, regs); !s.ok()) return s.status();
    contents.push_back(std::move(regs));
  }
  // VRAM: every page present except the last 1/8, which is a zero range.
  {
    uint64_t pages = options.vram_bytes / kPage;
    uint64_t zero = pages / 8;
    uint64_t present = pages - zero;
    std::vector<uint8_t> vram = VramLikeBytes(present * kPage, options.seed);
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("vram");
    r.setDeclaredBytes(vram.size());
    auto region = r.initMemoryRegion();
    region.setPageSize(kPage);
    region.setTotalPages(pages);
    auto pr = region.initPresentRanges(1)[0];
    pr.setFirst(0);
    pr.setCount(present);
    if (zero > 0) {
      auto zr = region.initZeroRanges(1)[0];
      zr.setFirst(present);
      zr.setCount(zero);
    }
    if (auto s = (*writer)->AddSection(h, vram); !s.ok()) return s.status();
    contents.push_back(std::move(vram));
  }
  // API session log: text-like records.
  {
    std::string log;
    for (int i = 0; i < 200; ++i) {
      log += absl::StrFormat("%06d clCreateBuffer ctx=1 flags=0x1 size=%d\n",
                             i, 4096 * (i % 7 + 1));
    }
    std::vector<uint8_t> bytes(log.begin(), log.end());
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("session");
    r.setDeclaredBytes(bytes.size());
    auto l = r.initApiSessionLog();
    l.setApi(schema::SessionApi::OPENCL);
    l.initAbi().setMajor(1);
    l.setEntryCount(200);
    if (auto s = (*writer)->AddSection(h, bytes); !s.ok()) return s.status();
    contents.push_back(std::move(bytes));
  }
  // Context image and vendor blob: small, partly random.
  {
    std::vector<uint8_t> ctx = RandomBytes(6000, options.seed + 7);
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("ctx0");
    r.setDeclaredBytes(ctx.size());
    auto c = r.initContextImage();
    c.setContextId(0);
    c.setEngine("2d");
    c.setImageFormat(1);
    if (auto s = (*writer)->AddSection(h, ctx); !s.ok()) return s.status();
    contents.push_back(std::move(ctx));
  }
  {
    std::vector<uint8_t> blob = RandomBytes(100, options.seed + 9);
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("fw-state");
    r.setCritical(false);
    auto v = r.initVendorBlob();
    v.setVendor("qemu-bochs");
    v.setBlobType("firmware-scratch");
    if (auto s = (*writer)->AddSection(h, blob); !s.ok()) return s.status();
    contents.push_back(std::move(blob));
  }
  if (absl::Status s = (*writer)->Finish(); !s.ok()) return s;
  return contents;
}

}  // namespace vgpu::codec
