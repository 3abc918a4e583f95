#include "agents/emulated/internal/proto_convert.h"

#include "absl/strings/str_format.h"

namespace vgpu::agents::emulated::internal {
namespace {

bool KnownRop(Rop rop) {
  switch (rop) {
    case Rop::kCopy:
    case Rop::kXor:
    case Rop::kAnd:
    case Rop::kOr:
    case Rop::kNotSrc:
      return true;
  }
  return false;
}

}  // namespace

absl::Status ValidateCommand(const Command& c) {
  switch (c.op) {
    case CommandOp::kFill:
    case CommandOp::kCopy:
    case CommandOp::kChecksum:
    case CommandOp::kFence:
      return absl::OkStatus();
    case CommandOp::kBlit:
      if (!KnownRop(c.blit.rop)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "BLIT with unknown raster op %d", static_cast<int>(c.blit.rop)));
      }
      return absl::OkStatus();
    case CommandOp::kWrite:
      if (c.data.size() > kMaxWriteBytes) {
        return absl::InvalidArgumentError(
            absl::StrFormat("WRITE of %u bytes exceeds the %u-byte limit",
                            c.data.size(), kMaxWriteBytes));
      }
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown command op %d", static_cast<int>(c.op)));
}

void ToProto(const Command& c, proto::Command::Builder out) {
  switch (c.op) {
    case CommandOp::kFill: {
      auto f = out.initFill();
      f.setOffset(c.offset);
      f.setLength(c.length);
      f.setPattern(c.pattern);
      return;
    }
    case CommandOp::kCopy: {
      auto f = out.initCopy();
      f.setSrc(c.src_offset);
      f.setDst(c.offset);
      f.setLength(c.length);
      return;
    }
    case CommandOp::kBlit: {
      auto f = out.initBlit();
      f.setSrcX(c.blit.src_x);
      f.setSrcY(c.blit.src_y);
      f.setDstX(c.blit.dst_x);
      f.setDstY(c.blit.dst_y);
      f.setWidth(c.blit.width);
      f.setHeight(c.blit.height);
      f.setRop(static_cast<proto::Rop>(c.blit.rop));
      return;
    }
    case CommandOp::kChecksum: {
      auto f = out.initChecksum();
      f.setOffset(c.offset);
      f.setLength(c.length);
      return;
    }
    case CommandOp::kWrite: {
      auto f = out.initWrite();
      f.setOffset(c.offset);
      f.setData(kj::arrayPtr(c.data.data(), c.data.size()));
      return;
    }
    case CommandOp::kFence:
      out.initFence().setValue(c.fence);
      return;
  }
}

absl::StatusOr<Command> FromProto(proto::Command::Reader in) {
  Command c;
  switch (in.which()) {
    case proto::Command::FILL: {
      auto f = in.getFill();
      c = Command::Fill(f.getOffset(), f.getLength(), f.getPattern());
      break;
    }
    case proto::Command::COPY: {
      auto f = in.getCopy();
      c = Command::Copy(f.getSrc(), f.getDst(), f.getLength());
      break;
    }
    case proto::Command::BLIT: {
      auto f = in.getBlit();
      BlitRect r;
      r.src_x = f.getSrcX();
      r.src_y = f.getSrcY();
      r.dst_x = f.getDstX();
      r.dst_y = f.getDstY();
      r.width = f.getWidth();
      r.height = f.getHeight();
      r.rop = static_cast<Rop>(f.getRop());
      c = Command::Blit(r);
      break;
    }
    case proto::Command::CHECKSUM: {
      auto f = in.getChecksum();
      c = Command::Checksum(f.getOffset(), f.getLength());
      break;
    }
    case proto::Command::WRITE: {
      auto f = in.getWrite();
      capnp::Data::Reader data = f.getData();
      if (data.size() > kMaxWriteBytes) {
        return absl::InvalidArgumentError(
            absl::StrFormat("WRITE of %u bytes exceeds the %u-byte limit",
                            data.size(), kMaxWriteBytes));
      }
      c = Command::Write(f.getOffset(),
                         absl::MakeConstSpan(data.begin(), data.size()));
      break;
    }
    case proto::Command::FENCE:
      c = Command::Fence(in.getFence().getValue());
      break;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown command (union tag %d)", static_cast<int>(in.which())));
  }
  absl::Status s = ValidateCommand(c);
  if (!s.ok()) return s;
  return c;
}

proto::EngineError ToProto(EngineError error) {
  return static_cast<proto::EngineError>(error);
}

absl::StatusOr<EngineError> FromProto(proto::EngineError error) {
  switch (error) {
    case proto::EngineError::NONE:
      return EngineError::kNone;
    case proto::EngineError::OUT_OF_BOUNDS:
      return EngineError::kOutOfBounds;
    case proto::EngineError::BAD_MODE:
      return EngineError::kBadMode;
    case proto::EngineError::BAD_COMMAND:
      return EngineError::kBadCommand;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown engine error code %d", static_cast<int>(error)));
}

void ToProto(const EngineStatus& s, proto::EngineStatus::Builder out) {
  out.setHead(s.head);
  out.setTail(s.tail);
  out.setSubmittedFence(s.submitted_fence);
  out.setCompletedFence(s.completed_fence);
  out.setErrorCount(s.error_count);
  out.setLastError(ToProto(s.last_error));
  out.setLastErrorSeq(s.last_error_seq);
  out.setLastErrorMessage(s.last_error_message);
  out.setQuiesced(s.quiesced);
}

absl::StatusOr<EngineStatus> FromProto(proto::EngineStatus::Reader in) {
  EngineStatus s;
  s.head = in.getHead();
  s.tail = in.getTail();
  s.submitted_fence = in.getSubmittedFence();
  s.completed_fence = in.getCompletedFence();
  s.error_count = in.getErrorCount();
  absl::StatusOr<EngineError> e = FromProto(in.getLastError());
  if (!e.ok()) return e.status();
  s.last_error = *e;
  s.last_error_seq = in.getLastErrorSeq();
  s.last_error_message = in.getLastErrorMessage();
  s.quiesced = in.getQuiesced();
  return s;
}

}  // namespace vgpu::agents::emulated::internal
