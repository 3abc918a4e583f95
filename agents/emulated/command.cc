#include "agents/emulated/command.h"

namespace vgpu::agents::emulated {

Command Command::Fill(uint64_t offset, uint64_t length, uint32_t pattern) {
  Command c;
  c.op = CommandOp::kFill;
  c.offset = offset;
  c.length = length;
  c.pattern = pattern;
  return c;
}

Command Command::Copy(uint64_t src, uint64_t dst, uint64_t length) {
  Command c;
  c.op = CommandOp::kCopy;
  c.src_offset = src;
  c.offset = dst;
  c.length = length;
  return c;
}

Command Command::Blit(const BlitRect& rect) {
  Command c;
  c.op = CommandOp::kBlit;
  c.blit = rect;
  return c;
}

Command Command::Checksum(uint64_t offset, uint64_t length) {
  Command c;
  c.op = CommandOp::kChecksum;
  c.offset = offset;
  c.length = length;
  return c;
}

Command Command::Write(uint64_t offset, absl::Span<const uint8_t> bytes) {
  Command c;
  c.op = CommandOp::kWrite;
  c.offset = offset;
  c.data.assign(bytes.begin(), bytes.end());
  return c;
}

Command Command::Fence(uint64_t value) {
  Command c;
  c.op = CommandOp::kFence;
  c.fence = value;
  return c;
}

// Compares only the fields the op uses: a command decoded from the wire
// carries zeros elsewhere whatever the sender's struct held.
bool Command::operator==(const Command& o) const {
  if (op != o.op) return false;
  switch (op) {
    case CommandOp::kFill:
      return offset == o.offset && length == o.length && pattern == o.pattern;
    case CommandOp::kCopy:
      return offset == o.offset && src_offset == o.src_offset &&
             length == o.length;
    case CommandOp::kBlit:
      return blit.src_x == o.blit.src_x && blit.src_y == o.blit.src_y &&
             blit.dst_x == o.blit.dst_x && blit.dst_y == o.blit.dst_y &&
             blit.width == o.blit.width && blit.height == o.blit.height &&
             blit.rop == o.blit.rop;
    case CommandOp::kChecksum:
      return offset == o.offset && length == o.length;
    case CommandOp::kWrite:
      return offset == o.offset && data == o.data;
    case CommandOp::kFence:
      return fence == o.fence;
  }
  return false;
}

const char* CommandOpName(CommandOp op) {
  switch (op) {
    case CommandOp::kFill:
      return "FILL";
    case CommandOp::kCopy:
      return "COPY";
    case CommandOp::kBlit:
      return "BLIT";
    case CommandOp::kChecksum:
      return "CHECKSUM";
    case CommandOp::kWrite:
      return "WRITE";
    case CommandOp::kFence:
      return "FENCE";
  }
  return "UNKNOWN";
}

const char* EngineErrorName(EngineError error) {
  switch (error) {
    case EngineError::kNone:
      return "none";
    case EngineError::kOutOfBounds:
      return "out-of-bounds";
    case EngineError::kBadMode:
      return "bad-mode";
    case EngineError::kBadCommand:
      return "bad-command";
  }
  return "unknown";
}

}  // namespace vgpu::agents::emulated
