// The command vocabulary of the reference emulated vGPU's 2D engine, shared
// by the device model, its guest clients and the workload. A Command is a
// plain value; the engine executes commands one at a time, in ring order,
// and performs every VRAM write itself (which is what makes its dirty
// tracking exact). Semantics of each command: docs/formats/emulated-device.md.
#ifndef VGPU_AGENTS_EMULATED_COMMAND_H_
#define VGPU_AGENTS_EMULATED_COMMAND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace vgpu::agents::emulated {

// DISPI register indices (Bochs VBE), as QEMU and Linux's bochs driver name
// them.
namespace dispi {
inline constexpr uint16_t kIndexId = 0x0;
inline constexpr uint16_t kIndexXres = 0x1;
inline constexpr uint16_t kIndexYres = 0x2;
inline constexpr uint16_t kIndexBpp = 0x3;
inline constexpr uint16_t kIndexEnable = 0x4;
inline constexpr uint16_t kIndexBank = 0x5;
inline constexpr uint16_t kIndexVirtWidth = 0x6;
inline constexpr uint16_t kIndexVirtHeight = 0x7;
inline constexpr uint16_t kIndexXOffset = 0x8;
inline constexpr uint16_t kIndexYOffset = 0x9;
inline constexpr uint16_t kIndexVideoMemory64k = 0xa;
inline constexpr uint16_t kRegisterCount = 10;  // 0..9 are stored

inline constexpr uint16_t kId0 = 0xB0C0;
inline constexpr uint16_t kId5 = 0xB0C5;

// ENABLE bits.
inline constexpr uint16_t kEnabled = 0x01;
inline constexpr uint16_t kGetCaps = 0x02;
inline constexpr uint16_t k8BitDac = 0x20;
inline constexpr uint16_t kLfbEnabled = 0x40;
inline constexpr uint16_t kNoClearMem = 0x80;

inline constexpr uint16_t kMaxXres = 16000;
inline constexpr uint16_t kMaxYres = 12000;
inline constexpr uint16_t kMaxBpp = 32;
}  // namespace dispi

// Largest WRITE payload; larger uploads are split by the guest.
inline constexpr uint32_t kMaxWriteBytes = 64 * 1024;
// Ring entries of a device (commands queued and not yet executed).
inline constexpr uint32_t kRingCapacity = 1024;

enum class CommandOp : uint8_t {
  kFill = 1,
  kCopy = 2,
  kBlit = 3,
  kChecksum = 4,
  kWrite = 5,
  kFence = 6,
};

// Raster operations of BLIT, applied bitwise: dst = op(src, dst).
enum class Rop : uint8_t {
  kCopy = 0,    // dst = src
  kXor = 1,     // dst ^= src
  kAnd = 2,     // dst &= src
  kOr = 3,      // dst |= src
  kNotSrc = 4,  // dst = ~src
};

// A rectangle copy in framebuffer coordinates: pixels of the current BPP,
// rows VIRT_WIDTH pixels apart, (0, 0) at VRAM offset 0.
struct BlitRect {
  uint32_t src_x = 0;
  uint32_t src_y = 0;
  uint32_t dst_x = 0;
  uint32_t dst_y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  Rop rop = Rop::kCopy;
};

struct Command {
  CommandOp op = CommandOp::kFence;
  // FILL, CHECKSUM, WRITE: where the command works; COPY: the destination.
  uint64_t offset = 0;
  uint64_t src_offset = 0;    // COPY
  uint64_t length = 0;        // FILL, COPY, CHECKSUM
  uint32_t pattern = 0;       // FILL: repeated little-endian from `offset`
  uint64_t fence = 0;         // FENCE
  BlitRect blit;              // BLIT
  std::vector<uint8_t> data;  // WRITE, at most kMaxWriteBytes

  static Command Fill(uint64_t offset, uint64_t length, uint32_t pattern);
  static Command Copy(uint64_t src, uint64_t dst, uint64_t length);
  static Command Blit(const BlitRect& rect);
  static Command Checksum(uint64_t offset, uint64_t length);
  static Command Write(uint64_t offset, absl::Span<const uint8_t> bytes);
  static Command Fence(uint64_t value);

  bool operator==(const Command& other) const;
  bool operator!=(const Command& other) const { return !(*this == other); }
};

const char* CommandOpName(CommandOp op);

// Why the engine skipped a command. Values are part of the ring blob.
enum class EngineError : uint8_t {
  kNone = 0,
  kOutOfBounds = 1,  // touches bytes past the end of VRAM
  kBadMode = 2,      // BLIT without an enabled mode of 8 bpp or more
  kBadCommand = 3,   // a field outside its range (unknown raster op, ...)
};

const char* EngineErrorName(EngineError error);

// What a guest can read back about the engine.
struct EngineStatus {
  uint64_t head = 0;  // sequence number of the next command to execute
  uint64_t tail = 0;  // sequence number the next submission gets
  uint64_t submitted_fence = 0;
  uint64_t completed_fence = 0;
  uint64_t error_count = 0;  // commands skipped since the device started
  // The most recent skipped command (error == kNone when there was none).
  EngineError last_error = EngineError::kNone;
  uint64_t last_error_seq = 0;
  std::string last_error_message;
  bool quiesced = false;
};

}  // namespace vgpu::agents::emulated

#endif  // VGPU_AGENTS_EMULATED_COMMAND_H_
