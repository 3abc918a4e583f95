#include "agents/emulated/internal/dispi.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace vgpu::agents::emulated::internal {
namespace {

using namespace dispi;  // NOLINT: the register names read better bare

constexpr uint16_t kEnableMask =
    kEnabled | kGetCaps | k8BitDac | kLfbEnabled | kNoClearMem;

bool ValidBpp(uint16_t bpp) {
  return bpp == 4 || bpp == 8 || bpp == 15 || bpp == 16 || bpp == 24 ||
         bpp == 32;
}

// Bytes of `pixels` pixels at `bpp` (4 bpp packs two pixels a byte; 15 bpp
// takes two bytes, as in QEMU).
uint64_t PixelBytes(uint16_t bpp, uint64_t pixels) {
  if (bpp == 4) return pixels / 2;
  if (bpp == 15) return pixels * 2;
  return pixels * ((bpp + 7u) / 8u);
}

uint16_t VirtHeight(uint64_t vram_bytes, uint64_t line_bytes) {
  return static_cast<uint16_t>(
      std::min<uint64_t>(vram_bytes / line_bytes, 0xFFFF));
}

// Whether the visible window of an enabled mode lies inside VRAM: QEMU's
// vbe_fixup_regs test (start offset + YRES whole lines <= VRAM size).
bool Fits(const RegisterArray& r, uint64_t vram_bytes) {
  const uint64_t line = PixelBytes(r[kIndexBpp], r[kIndexVirtWidth]);
  if (line == 0) return false;
  const uint64_t start = uint64_t{r[kIndexYOffset]} * line +
                         PixelBytes(r[kIndexBpp], r[kIndexXOffset]);
  return start + uint64_t{r[kIndexYres]} * line <= vram_bytes;
}

}  // namespace

DispiRegisters::DispiRegisters(uint64_t vram_bytes) : vram_bytes_(vram_bytes) {
  regs_[kIndexId] = kId5;  // QEMU's reset value
}

uint16_t DispiRegisters::Read(uint16_t index) const {
  if (index < kRegisterCount) {
    // GETCAPS turns the mode registers into a report of the maxima, which is
    // how drivers probe the limits before choosing a mode.
    if (regs_[kIndexEnable] & kGetCaps) {
      if (index == kIndexXres) return kMaxXres;
      if (index == kIndexYres) return kMaxYres;
      if (index == kIndexBpp) return kMaxBpp;
    }
    return regs_[index];
  }
  if (index == kIndexVideoMemory64k) {
    return static_cast<uint16_t>(vram_bytes_ / (64 * 1024));
  }
  return 0;
}

DispiRegisters::WriteResult DispiRegisters::Write(uint16_t index,
                                                  uint16_t value) {
  WriteResult ignored;
  WriteResult accepted;
  accepted.accepted = true;
  const bool enabled = regs_[kIndexEnable] & kEnabled;
  RegisterArray c = regs_;  // the candidate state, committed if valid

  // A changed mode register on an enabled display must leave a mode that
  // still fits in VRAM; VIRT_HEIGHT follows the new line length.
  auto commit_mode = [&]() -> WriteResult {
    if (enabled) {
      if (!Fits(c, vram_bytes_)) return ignored;
      c[kIndexVirtHeight] =
          VirtHeight(vram_bytes_, PixelBytes(c[kIndexBpp], c[kIndexVirtWidth]));
    }
    regs_ = c;
    return accepted;
  };

  switch (index) {
    case kIndexId:
      if (value < kId0 || value > kId5) return ignored;
      reg(kIndexId) = value;
      return accepted;

    case kIndexXres:
      if (value == 0 || value % 8 != 0 || value > kMaxXres) return ignored;
      c[kIndexXres] = value;
      if (enabled && c[kIndexVirtWidth] < value) c[kIndexVirtWidth] = value;
      return commit_mode();

    case kIndexYres:
      if (value == 0 || value > kMaxYres) return ignored;
      c[kIndexYres] = value;
      return commit_mode();

    case kIndexBpp:
      if (value == 0) value = 8;  // as QEMU and Bochs do
      if (!ValidBpp(value)) return ignored;
      c[kIndexBpp] = value;
      return commit_mode();

    case kIndexBank: {
      const uint16_t mask =
          static_cast<uint16_t>((vram_bytes_ >> 16) - 1);  // QEMU's bank mask
      reg(kIndexBank) = value & mask;
      return accepted;
    }

    case kIndexEnable: {
      value &= kEnableMask;
      if ((value & kEnabled) && !enabled) {
        // Enabling: the virtual screen starts as wide as the visible one at
        // offset 0 (QEMU does the same), and the mode must fit.
        if (c[kIndexBpp] == 0) c[kIndexBpp] = 8;
        if (c[kIndexXres] == 0 || c[kIndexYres] == 0) return ignored;
        c[kIndexVirtWidth] = c[kIndexXres];
        c[kIndexXOffset] = 0;
        c[kIndexYOffset] = 0;
        if (!Fits(c, vram_bytes_)) return ignored;
        const uint64_t line = PixelBytes(c[kIndexBpp], c[kIndexVirtWidth]);
        c[kIndexVirtHeight] = VirtHeight(vram_bytes_, line);
        c[kIndexEnable] = value;
        regs_ = c;
        if (!(value & kNoClearMem)) {
          accepted.clear_bytes = uint64_t{c[kIndexYres]} * line;
        }
        return accepted;
      }
      reg(kIndexEnable) = value;
      return accepted;
    }

    case kIndexVirtWidth: {
      if (value > kMaxXres || value < c[kIndexXres]) return ignored;
      const uint64_t line = PixelBytes(c[kIndexBpp], value);
      if (line == 0 || vram_bytes_ / line < c[kIndexYres]) return ignored;
      c[kIndexVirtWidth] = value;
      c[kIndexVirtHeight] = VirtHeight(vram_bytes_, line);
      if (enabled && !Fits(c, vram_bytes_)) return ignored;
      regs_ = c;
      return accepted;
    }

    case kIndexXOffset:
      if (value > kMaxXres) return ignored;
      c[kIndexXOffset] = value;
      return commit_mode();

    case kIndexYOffset:
      c[kIndexYOffset] = value;
      return commit_mode();

    default:  // VIRT_HEIGHT and VIDEO_MEMORY_64K are read-only
      return ignored;
  }
}

DisplayMode DispiRegisters::mode() const {
  DisplayMode m;
  m.enabled = regs_[kIndexEnable] & kEnabled;
  m.bpp = regs_[kIndexBpp];
  m.bytes_per_pixel =
      m.bpp == 4 ? 0 : static_cast<uint32_t>(PixelBytes(m.bpp, 1));
  m.virt_width = regs_[kIndexVirtWidth];
  m.pitch = PixelBytes(regs_[kIndexBpp], regs_[kIndexVirtWidth]);
  return m;
}

absl::Status DispiRegisters::Validate(const RegisterArray& r,
                                      uint64_t vram_bytes) {
  auto bad = [](const char* what, uint16_t v) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DISPI register %s = 0x%04x is invalid", what, v));
  };
  if (r[kIndexId] < kId0 || r[kIndexId] > kId5) return bad("ID", r[kIndexId]);
  if (r[kIndexBpp] != 0 && !ValidBpp(r[kIndexBpp])) {
    return bad("BPP", r[kIndexBpp]);
  }
  if (r[kIndexXres] % 8 != 0 || r[kIndexXres] > kMaxXres) {
    return bad("XRES", r[kIndexXres]);
  }
  if (r[kIndexYres] > kMaxYres) return bad("YRES", r[kIndexYres]);
  if (r[kIndexVirtWidth] > kMaxXres) {
    return bad("VIRT_WIDTH", r[kIndexVirtWidth]);
  }
  if (r[kIndexXOffset] > kMaxXres) return bad("X_OFFSET", r[kIndexXOffset]);
  if (r[kIndexEnable] & ~kEnableMask) return bad("ENABLE", r[kIndexEnable]);
  if (r[kIndexBank] > ((vram_bytes >> 16) - 1)) {
    return bad("BANK", r[kIndexBank]);
  }
  if (r[kIndexEnable] & kEnabled) {
    if (r[kIndexXres] == 0) return bad("XRES", r[kIndexXres]);
    if (r[kIndexYres] == 0) return bad("YRES", r[kIndexYres]);
    if (r[kIndexBpp] == 0) return bad("BPP", r[kIndexBpp]);
    if (r[kIndexVirtWidth] < r[kIndexXres]) {
      return bad("VIRT_WIDTH", r[kIndexVirtWidth]);
    }
    if (!Fits(r, vram_bytes)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "DISPI mode %ux%u at %u bpp (virtual width %u, offset %u,%u) does "
          "not fit in %u bytes of VRAM",
          r[kIndexXres], r[kIndexYres], r[kIndexBpp], r[kIndexVirtWidth],
          r[kIndexXOffset], r[kIndexYOffset], vram_bytes));
    }
    const uint64_t line = PixelBytes(r[kIndexBpp], r[kIndexVirtWidth]);
    if (r[kIndexVirtHeight] != VirtHeight(vram_bytes, line)) {
      return bad("VIRT_HEIGHT", r[kIndexVirtHeight]);
    }
  }
  return absl::OkStatus();
}

}  // namespace vgpu::agents::emulated::internal
