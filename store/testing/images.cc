#include "store/testing/images.h"

#include <cstring>

#include "absl/strings/escaping.h"
#include "state-codecs/sample.h"

namespace vgpu::store::testing {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

std::vector<uint8_t> Id(uint64_t seed) {
  std::vector<uint8_t> id(16);
  uint64_t a = Mix(seed + 1), b = Mix(seed + 2);
  std::memcpy(id.data(), &a, 8);
  std::memcpy(id.data() + 8, &b, 8);
  return id;
}

codec::Manifest BaseManifest(const VmState& vm, uint64_t id_seed,
                             const std::string& name) {
  codec::Manifest m = codec::SampleManifest(vm.vram.size());
  auto root = m.mutable_root();
  root.getVm().setName(name);
  std::vector<uint8_t> id = Id(id_seed);
  root.setImageId(kj::arrayPtr(id.data(), id.size()));
  return m;
}

absl::Status AddRegisters(codec::ImageWriter& w, const VmState& vm) {
  codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setName("regs");
  r.setDeclaredBytes(vm.registers.size());
  r.initRegisterBank().setRegisterWidth(4);
  r.getRegisterBank().setRegisterCount(vm.registers.size() / 4);
  return w.AddSection(h, vm.registers).status();
}

}  // namespace

std::string IdHex(uint64_t id_seed) {
  std::vector<uint8_t> id = Id(id_seed);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(id.data()), id.size()));
}

VmState MakeVm(uint64_t vram_bytes, uint64_t seed) {
  VmState vm;
  vm.vram = codec::VramLikeBytes(vram_bytes, seed);
  vm.registers = codec::RandomBytes(64, seed);
  return vm;
}

std::vector<uint64_t> Mutate(VmState& vm, uint64_t count, uint64_t seed) {
  uint64_t pages = vm.vram.size() / kPage;
  std::vector<bool> hit(pages, false);
  std::vector<uint64_t> out;
  for (uint64_t i = 0; out.size() < count && out.size() < pages; ++i) {
    uint64_t p = Mix(seed * 1000003 + i) % pages;
    if (hit[p]) continue;
    hit[p] = true;
    out.push_back(p);
    uint8_t* page = vm.vram.data() + p * kPage;
    if (Mix(p + seed) % 8 == 0) {
      std::memset(page, 0, kPage);
    } else {
      std::vector<uint8_t> fresh = codec::VramLikeBytes(kPage, Mix(p ^ seed));
      for (uint32_t b = 0; b < kPage; b += 64) fresh[b] ^= static_cast<uint8_t>(seed);
      std::memcpy(page, fresh.data(), kPage);
    }
  }
  std::sort(out.begin(), out.end());
  vm.registers[seed % 64] ^= 0x5a;
  return out;
}

absl::StatusOr<std::vector<uint8_t>> FullImage(const VmState& vm,
                                               uint64_t id_seed,
                                               const std::string& vm_name) {
  codec::MemorySink sink;
  codec::WriterOptions opts;
  opts.chunk_size = 64 << 10;
  auto w = codec::ImageWriter::Create(&sink, BaseManifest(vm, id_seed, vm_name),
                                      opts);
  if (!w.ok()) return w.status();
  if (auto s = AddRegisters(**w, vm); !s.ok()) return s;
  codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setDeclaredBytes(vm.vram.size());
  auto region = r.initMemoryRegion();
  region.setPageSize(kPage);
  region.setTotalPages(vm.vram.size() / kPage);
  auto pr = region.initPresentRanges(1)[0];
  pr.setFirst(0);
  pr.setCount(vm.vram.size() / kPage);
  if (auto s = (*w)->AddSection(h, vm.vram); !s.ok()) return s.status();
  if (auto s = (*w)->Finish(); !s.ok()) return s;
  return sink.bytes();
}

absl::StatusOr<std::vector<uint8_t>> IncrementalImage(
    const VmState& vm, const std::vector<uint64_t>& changed, uint64_t id_seed,
    uint64_t parent_id_seed, const std::string& vm_name) {
  codec::MemorySink sink;
  codec::WriterOptions opts;
  opts.chunk_size = 64 << 10;
  codec::Manifest m = BaseManifest(vm, id_seed, vm_name);
  std::vector<uint8_t> parent = Id(parent_id_seed);
  m.mutable_root().initParent().setImageId(
      kj::arrayPtr(parent.data(), parent.size()));
  auto w = codec::ImageWriter::Create(&sink, m, opts);
  if (!w.ok()) return w.status();
  if (auto s = AddRegisters(**w, vm); !s.ok()) return s;
  // Changed pages, as sorted runs.
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (uint64_t p : changed) {
    if (!runs.empty() && runs.back().first + runs.back().second == p) {
      ++runs.back().second;
    } else {
      runs.push_back({p, 1});
    }
  }
  codec::SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setRound(1);
  r.setDeclaredBytes(changed.size() * kPage);
  auto region = r.initMemoryRegion();
  region.setPageSize(kPage);
  region.setTotalPages(vm.vram.size() / kPage);
  auto pr = region.initPresentRanges(static_cast<unsigned>(runs.size()));
  for (size_t i = 0; i < runs.size(); ++i) {
    pr[static_cast<unsigned>(i)].setFirst(runs[i].first);
    pr[static_cast<unsigned>(i)].setCount(runs[i].second);
  }
  if (auto id = (*w)->BeginSection(h); !id.ok()) return id.status();
  for (auto [first, count] : runs) {
    if (auto s = (*w)->Write(absl::MakeConstSpan(
            vm.vram.data() + first * kPage, count * kPage));
        !s.ok()) {
      return s;
    }
  }
  if (auto s = (*w)->EndSection(); !s.ok()) return s;
  if (auto s = (*w)->Finish(); !s.ok()) return s;
  return sink.bytes();
}

absl::StatusOr<VmState> Decode(const std::vector<uint8_t>& image) {
  codec::MemorySource src(image);
  auto reader = codec::ImageReader::Open(&src);
  if (!reader.ok()) return reader.status();
  VmState vm;
  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) return next.status();
    if (!next->has_value()) break;
    auto h = (**next).root();
    auto data = (*reader)->ReadSection(1ull << 32);
    if (!data.ok()) return data.status();
    if (h.getName() == "regs") {
      vm.registers = *data;
    } else if (h.isMemoryRegion()) {
      auto region = h.getMemoryRegion();
      vm.vram.assign(region.getTotalPages() * kPage, 0xEE);
      for (auto z : region.getZeroRanges()) {
        std::memset(vm.vram.data() + z.getFirst() * kPage, 0,
                    z.getCount() * kPage);
      }
      uint64_t pos = 0;
      for (auto p : region.getPresentRanges()) {
        std::memcpy(vm.vram.data() + p.getFirst() * kPage, data->data() + pos,
                    p.getCount() * kPage);
        pos += p.getCount() * kPage;
      }
    }
  }
  return vm;
}

}  // namespace vgpu::store::testing
