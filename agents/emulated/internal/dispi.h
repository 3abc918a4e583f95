// DispiRegisters: the Bochs VBE "DISPI" register bank of the emulated vGPU,
// as pure logic (no locking, no VRAM access). The device core owns one under
// its lock; a register write that must clear VRAM says so in its result and
// the core does the clearing. Semantics follow QEMU's hw/display/vga.c (the
// VBE part) with invalid writes ignored; the exact rules are in
// docs/formats/emulated-device.md.
#ifndef VGPU_AGENTS_EMULATED_INTERNAL_DISPI_H_
#define VGPU_AGENTS_EMULATED_INTERNAL_DISPI_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "agents/emulated/command.h"

namespace vgpu::agents::emulated::internal {

using RegisterArray = std::array<uint16_t, dispi::kRegisterCount>;

// The mode the 2D engine draws in, derived from the registers.
struct DisplayMode {
  bool enabled = false;
  uint32_t bpp = 0;
  uint32_t bytes_per_pixel = 0;  // 0 for 4 bpp (planar; the engine refuses)
  uint32_t virt_width = 0;       // pixels per row
  uint64_t pitch = 0;            // bytes per row
};

class DispiRegisters {
 public:
  // `vram_bytes` is a multiple of 64 KiB.
  explicit DispiRegisters(uint64_t vram_bytes);

  uint16_t Read(uint16_t index) const;

  struct WriteResult {
    bool accepted = false;  // false: the write was ignored as invalid
    // Bytes from VRAM offset 0 to zero (ENABLE without NOCLEARMEM).
    uint64_t clear_bytes = 0;
  };
  WriteResult Write(uint16_t index, uint16_t value);

  DisplayMode mode() const;
  const RegisterArray& regs() const { return regs_; }
  uint64_t vram_bytes() const { return vram_bytes_; }

  // Checks that `regs` is a state Write() could have produced on a device
  // with `vram_bytes` of VRAM (INVALID_ARGUMENT otherwise, saying which
  // register is wrong).
  static absl::Status Validate(const RegisterArray& regs, uint64_t vram_bytes);
  // Replaces the registers; `regs` must have passed Validate().
  void Restore(const RegisterArray& regs) { regs_ = regs; }

 private:
  uint16_t& reg(uint16_t index) { return regs_[index]; }

  uint64_t vram_bytes_;
  RegisterArray regs_{};
};

}  // namespace vgpu::agents::emulated::internal

#endif  // VGPU_AGENTS_EMULATED_INTERNAL_DISPI_H_
