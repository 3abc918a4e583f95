#include "agents/emulated/internal/emu_gpu.h"

#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/emulated/internal/proto_convert.h"
#include "agents/emulated/internal/state_blob.h"
#include "agents/emulated/state.capnp.h"
#include "state-codecs/message.h"

namespace vgpu::agents::emulated::internal {
namespace {

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// A ring blob holds at most kRingCapacity WRITEs of 64 KiB plus framing.
codec::MessageLimits BlobLimits() {
  codec::MessageLimits limits;
  limits.max_bytes = 80u << 20;
  limits.max_segments = 1024;
  return limits;
}

// Unwraps a state blob of `kind` and decodes its message; damage is
// DATA_LOSS naming `what`. Nothing here touches the device.
template <typename T>
absl::StatusOr<codec::Message<T>> DecodeStateBlob(absl::Span<const uint8_t> blob,
                                                  BlobKind kind,
                                                  absl::string_view what) {
  absl::StatusOr<absl::Span<const uint8_t>> body = DecodeBlob(blob, kind);
  if (!body.ok()) return body.status();
  auto msg = codec::DecodeMessage<T>(*body, BlobLimits());
  if (!msg.ok()) {
    return absl::DataLossError(
        absl::StrCat(what, " blob: ", msg.status().message()));
  }
  return msg;
}

void Apply(Rop rop, const uint8_t* src, uint8_t* dst, size_t n) {
  switch (rop) {
    case Rop::kCopy:
      std::memcpy(dst, src, n);
      return;
    case Rop::kXor:
      for (size_t i = 0; i < n; ++i) dst[i] ^= src[i];
      return;
    case Rop::kAnd:
      for (size_t i = 0; i < n; ++i) dst[i] &= src[i];
      return;
    case Rop::kOr:
      for (size_t i = 0; i < n; ++i) dst[i] |= src[i];
      return;
    case Rop::kNotSrc:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(~src[i]);
      return;
  }
}

// The lifecycle as a table. A guest call that changes device state
// (register write, submission) waits until the state allows it, rather
// than failing, as a CPU stalls on a busy device.
struct StateRule {
  DeviceState state;
  bool engine_runs;   // the engine takes commands from the ring
  bool guest_writes;  // WriteReg / Submit proceed (else they wait)
  bool save;          // SaveRegisters / SaveRing
  bool load;          // LoadRegisters / LoadRing / writable VRAM
  DeviceState on_quiesce;
  DeviceState on_resume;
};

// clang-format off
constexpr StateRule kStateRules[] = {
    // state                 engine guest  save   load   on Quiesce               on Resume
    {DeviceState::kRunning,  true,  true,  false, false, DeviceState::kQuiesced, DeviceState::kRunning},
    {DeviceState::kQuiesced, false, false, true,  false, DeviceState::kQuiesced, DeviceState::kRunning},
    // An incoming device stays loadable through any number of Quiesce
    // calls; the first Resume makes it an ordinary device for good.
    {DeviceState::kIncoming, false, false, true,  true,  DeviceState::kIncoming, DeviceState::kRunning},
};
// clang-format on

const StateRule& Rule(DeviceState state) {
  for (const StateRule& r : kStateRules) {
    if (r.state == state) return r;
  }
  return kStateRules[0];  // not reached: every state has a row
}

}  // namespace

const char* DeviceStateName(DeviceState state) {
  switch (state) {
    case DeviceState::kRunning:
      return "running";
    case DeviceState::kQuiesced:
      return "quiesced";
    case DeviceState::kIncoming:
      return "incoming";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<EmuGpu>> EmuGpu::Create(
    const EmuGpuOptions& options) {
  if (options.vram_bytes % (64 * 1024) != 0 ||
      options.vram_bytes < kMinVramBytes ||
      options.vram_bytes > kMaxVramBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VRAM size %u must be a multiple of 64 KiB between %u and %u bytes",
        options.vram_bytes, kMinVramBytes, kMaxVramBytes));
  }
  if (options.ring_capacity == 0) {
    return absl::InvalidArgumentError("ring capacity must be positive");
  }
  const std::string memfd_name = absl::StrCat("vgpu-vram:", options.name);
  int fd = memfd_create(memfd_name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(options.vram_bytes)) != 0) {
    absl::Status s = ErrnoStatus("ftruncate of the VRAM memfd");
    close(fd);
    return s;
  }
  // VRAM is backed from the start, as a real card's is (MAP_POPULATE), so
  // the engine and the clients' mappings never fault pages in one by one.
  void* p = mmap(nullptr, options.vram_bytes, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    absl::Status s = ErrnoStatus("mmap of VRAM");
    close(fd);
    return s;
  }
  return std::unique_ptr<EmuGpu>(
      new EmuGpu(options, fd, static_cast<uint8_t*>(p)));
}

EmuGpu::EmuGpu(const EmuGpuOptions& options, int fd, uint8_t* vram)
    : options_(options),
      vram_fd_(fd),
      vram_(vram),
      pages_(options.vram_bytes / kDirtyPageBytes),
      regs_(options.vram_bytes),
      ring_(options.ring_capacity) {
  dirty_words_ = (pages_ + 63) / 64;
  dirty_ = std::make_unique<std::atomic<uint64_t>[]>(dirty_words_);
  for (size_t i = 0; i < dirty_words_; ++i) dirty_[i].store(0);
  state_ = options.incoming ? DeviceState::kIncoming : DeviceState::kRunning;
  engine_ = std::thread([this] { EngineLoop(); });
}

EmuGpu::~EmuGpu() {
  Shutdown();
  engine_.join();
  munmap(vram_, options_.vram_bytes);
  close(vram_fd_);
}

void EmuGpu::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

// --- registers

uint16_t EmuGpu::ReadReg(uint16_t index) {
  absl::MutexLock lock(&mu_);
  return regs_.Read(index);
}

absl::Status EmuGpu::WriteReg(uint16_t index, uint16_t value) {
  absl::MutexLock lock(&mu_);
  auto runnable = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return shutdown_ || Rule(state_).guest_writes;
  };
  mu_.Await(absl::Condition(&runnable));
  if (shutdown_) return absl::CancelledError("device is shutting down");
  DispiRegisters::WriteResult r = regs_.Write(index, value);
  if (r.clear_bytes > 0) {
    absl::MutexLock vram_lock(&vram_mu_);
    std::memset(vram_, 0, r.clear_bytes);
    MarkDirty(0, r.clear_bytes);
  }
  return absl::OkStatus();
}

// --- ring

absl::StatusOr<uint64_t> EmuGpu::Submit(Command command) {
  absl::Status valid = ValidateCommand(command);
  if (!valid.ok()) return valid;
  absl::MutexLock lock(&mu_);
  auto room = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return shutdown_ || (Rule(state_).guest_writes &&
                         tail_ - head_ < options_.ring_capacity);
  };
  mu_.Await(absl::Condition(&room));
  if (shutdown_) return absl::CancelledError("device is shutting down");
  if (command.op == CommandOp::kFence) {
    submitted_fence_ = std::max(submitted_fence_, command.fence);
  }
  const uint64_t seq = tail_++;
  ring_[seq % options_.ring_capacity] = std::move(command);
  return seq;
}

absl::StatusOr<uint64_t> EmuGpu::SubmitFence() {
  absl::MutexLock lock(&mu_);
  auto room = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return shutdown_ || (Rule(state_).guest_writes &&
                         tail_ - head_ < options_.ring_capacity);
  };
  mu_.Await(absl::Condition(&room));
  if (shutdown_) return absl::CancelledError("device is shutting down");
  // Allocating the value and queueing it under one lock keeps fence values
  // in ring order whatever the number of guests.
  const uint64_t value = ++submitted_fence_;
  ring_[tail_++ % options_.ring_capacity] = Command::Fence(value);
  return value;
}

absl::Status EmuGpu::WaitFence(uint64_t value, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this, value]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return shutdown_ || completed_fence_ >= value;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrFormat("fence %u not reached after %s (completed %u)", value,
                        absl::FormatDuration(timeout), completed_fence_));
  }
  if (completed_fence_ >= value) return absl::OkStatus();
  return absl::CancelledError("device is shutting down");
}

absl::StatusOr<uint64_t> EmuGpu::TakeChecksum(uint64_t seq) {
  absl::MutexLock lock(&mu_);
  auto it = checksums_.find(seq);
  if (it == checksums_.end()) {
    if (seq >= head_) {
      return absl::FailedPreconditionError(
          absl::StrFormat("command %u has not executed yet", seq));
    }
    return absl::NotFoundError(absl::StrFormat(
        "no checksum result for command %u (taken, dropped, or not a "
        "CHECKSUM)",
        seq));
  }
  ChecksumEntry e = it->second;
  checksums_.erase(it);
  if (e.error != EngineError::kNone) {
    return absl::OutOfRangeError(absl::StrFormat(
        "CHECKSUM command %u was skipped: %s", seq, EngineErrorName(e.error)));
  }
  return e.value;
}

std::pair<uint64_t, uint64_t> EmuGpu::QueuedCommandBytes() {
  absl::MutexLock lock(&mu_);
  uint64_t bytes = 0;
  for (uint64_t seq = head_; seq < tail_; ++seq) {
    bytes += ring_[seq % ring_.size()].data.size();
  }
  return {bytes, tail_ - head_};
}

EngineStatus EmuGpu::Status() {
  absl::MutexLock lock(&mu_);
  EngineStatus s;
  s.head = head_;
  s.tail = tail_;
  s.submitted_fence = submitted_fence_;
  s.completed_fence = completed_fence_;
  s.error_count = error_count_;
  s.last_error = last_error_;
  s.last_error_seq = last_error_seq_;
  s.last_error_message = last_error_message_;
  s.quiesced = !Rule(state_).engine_runs;
  return s;
}

absl::StatusOr<std::vector<uint8_t>> EmuGpu::ReadVram(uint64_t offset,
                                                      uint64_t length) {
  if (!InBounds(offset, length)) {
    return absl::OutOfRangeError(
        absl::StrFormat("VRAM read of %u bytes at %u passes the end (%u bytes)",
                        length, offset, options_.vram_bytes));
  }
  absl::MutexLock lock(&vram_mu_);
  return std::vector<uint8_t>(vram_ + offset, vram_ + offset + length);
}

// --- engine

void EmuGpu::EngineLoop() {
  for (;;) {
    Command command;
    DisplayMode mode;
    uint64_t seq;
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return shutdown_ || (Rule(state_).engine_runs && head_ < tail_);
      };
      mu_.Await(absl::Condition(&work));
      if (shutdown_) return;
      seq = head_;
      command = std::move(ring_[seq % options_.ring_capacity]);
      mode = regs_.mode();
      executing_ = true;
    }
    if (options_.command_latency > absl::ZeroDuration()) {
      absl::SleepFor(options_.command_latency);
    }
    Outcome outcome;
    {
      absl::MutexLock vram_lock(&vram_mu_);
      outcome = Execute(command, mode);
    }
    {
      absl::MutexLock lock(&mu_);
      CompleteLocked(seq, command, outcome);
      ++head_;
      executing_ = false;
    }
    if (outcome.error != EngineError::kNone && options_.log) {
      options_.log(absl::StrFormat(
          "command %u (%s) skipped: %s: %s", seq, CommandOpName(command.op),
          EngineErrorName(outcome.error), outcome.message));
    }
  }
}

void EmuGpu::CompleteLocked(uint64_t seq, const Command& command,
                            const Outcome& outcome) {
  if (command.op == CommandOp::kFence) completed_fence_ = command.fence;
  if (command.op == CommandOp::kChecksum) {
    checksums_[seq] = ChecksumEntry{outcome.checksum, outcome.error};
    while (checksums_.size() > kMaxPendingChecksums) {
      checksums_.erase(checksums_.begin());
    }
  }
  if (outcome.error != EngineError::kNone) {
    ++error_count_;
    last_error_ = outcome.error;
    last_error_seq_ = seq;
    last_error_message_ = outcome.message;
  }
}

bool EmuGpu::InBounds(uint64_t offset, uint64_t length) const {
  return offset <= options_.vram_bytes &&
         length <= options_.vram_bytes - offset;
}

EmuGpu::Outcome EmuGpu::Execute(const Command& c, const DisplayMode& mode) {
  Outcome out;
  auto oob = [&](absl::string_view what, uint64_t offset, uint64_t length) {
    out.error = EngineError::kOutOfBounds;
    out.message = absl::StrFormat(
        "%s of %u bytes at %u passes the end of "
        "VRAM (%u bytes)",
        what, length, offset, options_.vram_bytes);
    return out;
  };
  switch (c.op) {
    case CommandOp::kFill: {
      if (!InBounds(c.offset, c.length)) return oob("fill", c.offset, c.length);
      if (c.length == 0) return out;
      // Build one aligned block of the pattern, then copy it out.
      uint8_t block[4096];
      for (size_t i = 0; i < sizeof(block); ++i) {
        block[i] = static_cast<uint8_t>(c.pattern >> (8 * (i % 4)));
      }
      uint8_t* dst = vram_ + c.offset;
      for (uint64_t done = 0; done < c.length;) {
        const uint64_t n = std::min<uint64_t>(sizeof(block), c.length - done);
        std::memcpy(dst + done, block, n);
        done += n;
      }
      MarkDirty(c.offset, c.length);
      return out;
    }
    case CommandOp::kCopy: {
      if (!InBounds(c.src_offset, c.length)) {
        return oob("copy source", c.src_offset, c.length);
      }
      if (!InBounds(c.offset, c.length)) {
        return oob("copy destination", c.offset, c.length);
      }
      if (c.length == 0) return out;
      std::memmove(vram_ + c.offset, vram_ + c.src_offset, c.length);
      MarkDirty(c.offset, c.length);
      return out;
    }
    case CommandOp::kBlit:
      return ExecuteBlit(c.blit, mode);
    case CommandOp::kChecksum:
      if (!InBounds(c.offset, c.length)) {
        return oob("checksum", c.offset, c.length);
      }
      out.checksum = XXH3_64bits(vram_ + c.offset, c.length);
      return out;
    case CommandOp::kWrite:
      if (!InBounds(c.offset, c.data.size())) {
        return oob("write", c.offset, c.data.size());
      }
      if (c.data.empty()) return out;
      std::memcpy(vram_ + c.offset, c.data.data(), c.data.size());
      MarkDirty(c.offset, c.data.size());
      return out;
    case CommandOp::kFence:
      return out;
  }
  out.error = EngineError::kBadCommand;
  out.message = absl::StrFormat("unknown op %d", static_cast<int>(c.op));
  return out;
}

EmuGpu::Outcome EmuGpu::ExecuteBlit(const BlitRect& r,
                                    const DisplayMode& mode) {
  Outcome out;
  if (!mode.enabled || mode.bytes_per_pixel == 0) {
    out.error = EngineError::kBadMode;
    out.message = absl::StrFormat(
        "BLIT needs an enabled mode of 8 bpp or more (enabled=%d, bpp=%u)",
        mode.enabled, mode.bpp);
    return out;
  }
  if (static_cast<uint8_t>(r.rop) > static_cast<uint8_t>(Rop::kNotSrc)) {
    out.error = EngineError::kBadCommand;
    out.message =
        absl::StrFormat("unknown raster op %d", static_cast<int>(r.rop));
    return out;
  }
  if (r.width == 0 || r.height == 0) return out;
  const uint64_t bpp = mode.bytes_per_pixel;
  // Rows never wrap: a rectangle must lie inside the virtual width, and its
  // last byte inside VRAM.
  auto rect_ok = [&](uint64_t x, uint64_t y) {
    if (x + r.width > mode.virt_width) return false;
    const uint64_t end = (y + r.height - 1) * mode.pitch + (x + r.width) * bpp;
    return end <= options_.vram_bytes;
  };
  if (!rect_ok(r.src_x, r.src_y) || !rect_ok(r.dst_x, r.dst_y)) {
    out.error = EngineError::kOutOfBounds;
    out.message = absl::StrFormat(
        "BLIT %ux%u from (%u,%u) to (%u,%u) leaves the framebuffer "
        "(virtual width %u, pitch %u, VRAM %u bytes)",
        r.width, r.height, r.src_x, r.src_y, r.dst_x, r.dst_y, mode.virt_width,
        mode.pitch, options_.vram_bytes);
    return out;
  }
  const uint64_t row_bytes = uint64_t{r.width} * bpp;
  std::vector<uint8_t> row(row_bytes);
  // memmove semantics for overlapping rectangles: each source row is copied
  // out before its destination row is written, and rows are visited so that
  // a source row is read before any destination row lands on it.
  const bool bottom_up = r.dst_y > r.src_y;
  for (uint32_t i = 0; i < r.height; ++i) {
    const uint32_t k = bottom_up ? r.height - 1 - i : i;
    const uint64_t src = (r.src_y + uint64_t{k}) * mode.pitch + r.src_x * bpp;
    const uint64_t dst = (r.dst_y + uint64_t{k}) * mode.pitch + r.dst_x * bpp;
    std::memcpy(row.data(), vram_ + src, row_bytes);
    Apply(r.rop, row.data(), vram_ + dst, row_bytes);
    MarkDirty(dst, row_bytes);
  }
  return out;
}

// --- dirty tracking

void EmuGpu::MarkDirty(uint64_t offset, uint64_t length) {
  if (length == 0 || !tracking_.load()) return;
  uint64_t first = offset / kDirtyPageBytes;
  const uint64_t last = (offset + length - 1) / kDirtyPageBytes;
  while (first <= last) {
    const uint64_t word = first / 64;
    const uint64_t lo = first % 64;
    const uint64_t hi = std::min<uint64_t>(63, lo + (last - first));
    const uint64_t bits =
        (hi == 63 ? ~uint64_t{0} : ((uint64_t{1} << (hi + 1)) - 1)) &
        ~((uint64_t{1} << lo) - 1);
    dirty_[word].fetch_or(bits, std::memory_order_release);
    first += hi - lo + 1;
  }
}

void EmuGpu::StartDirtyTracking() {
  // The flag goes first: a write finishing now either sees it and marks
  // its pages, or happened before and is covered by the all-dirty fill.
  tracking_.store(true);
  for (size_t w = 0; w < dirty_words_; ++w) {
    const uint64_t first_page = uint64_t{w} * 64;
    const uint64_t n = std::min<uint64_t>(64, pages_ - first_page);
    dirty_[w].store(n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1);
  }
}

void EmuGpu::StopDirtyTracking() {
  tracking_.store(false);
  for (size_t w = 0; w < dirty_words_; ++w) dirty_[w].store(0);
}

absl::StatusOr<std::vector<uint64_t>> EmuGpu::FetchDirtyBitmap() {
  if (!tracking_.load()) {
    return absl::FailedPreconditionError("dirty tracking is not started");
  }
  std::vector<uint64_t> out(dirty_words_);
  for (size_t w = 0; w < dirty_words_; ++w) {
    out[w] = dirty_[w].exchange(0, std::memory_order_acq_rel);
  }
  return out;
}

// --- quiesce

void EmuGpu::Quiesce() {
  absl::MutexLock lock(&mu_);
  state_ = Rule(state_).on_quiesce;
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !executing_; };
  mu_.Await(absl::Condition(&idle));
}

void EmuGpu::Resume() {
  absl::MutexLock lock(&mu_);
  state_ = Rule(state_).on_resume;
}

DeviceState EmuGpu::state() {
  absl::MutexLock lock(&mu_);
  return state_;
}

absl::Status EmuGpu::CheckLoadableLocked(absl::string_view what) {
  if (!Rule(state_).load) {
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        " needs a device started with --incoming that has not run yet "
        "(this one is ",
        DeviceStateName(state_), ")"));
  }
  return absl::OkStatus();
}

absl::Status EmuGpu::CheckVramWritable() {
  absl::MutexLock lock(&mu_);
  return CheckLoadableLocked("writing VRAM from outside");
}

// --- state

absl::StatusOr<std::vector<uint8_t>> EmuGpu::SaveRegisters() {
  codec::Message<proto::RegistersState> msg;
  {
    absl::MutexLock lock(&mu_);
    if (!Rule(state_).save) {
      return absl::FailedPreconditionError(
          absl::StrCat("saving registers needs a quiesced device (this one is ",
                       DeviceStateName(state_), ")"));
    }
    auto root = msg.mutable_root();
    root.setVramBytes(options_.vram_bytes);
    auto regs = root.initRegs(dispi::kRegisterCount);
    for (uint16_t i = 0; i < dispi::kRegisterCount; ++i) {
      regs.set(i, regs_.regs()[i]);
    }
  }
  return EncodeBlob(BlobKind::kRegisters,
                    codec::EncodeMessageBytes(msg.builder()));
}

absl::Status EmuGpu::LoadRegisters(absl::Span<const uint8_t> blob) {
  {
    absl::MutexLock lock(&mu_);
    absl::Status s = CheckLoadableLocked("loading registers");
    if (!s.ok()) return s;
  }
  auto msg = DecodeStateBlob<proto::RegistersState>(
      blob, BlobKind::kRegisters, "registers");
  if (!msg.ok()) return msg.status();
  proto::RegistersState::Reader root = msg->root();
  if (root.getVramBytes() != options_.vram_bytes) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "registers blob is for %u bytes of VRAM; this device has %u",
        root.getVramBytes(), options_.vram_bytes));
  }
  if (root.getRegs().size() != dispi::kRegisterCount) {
    return absl::InvalidArgumentError(
        absl::StrFormat("registers blob holds %u registers, expected %u",
                        root.getRegs().size(), dispi::kRegisterCount));
  }
  RegisterArray regs;
  for (uint16_t i = 0; i < dispi::kRegisterCount; ++i) {
    regs[i] = root.getRegs()[i];
  }
  absl::Status valid = DispiRegisters::Validate(regs, options_.vram_bytes);
  if (!valid.ok()) return valid;

  absl::MutexLock lock(&mu_);
  absl::Status s =
      CheckLoadableLocked("loading registers");  // may have resumed meanwhile
  if (!s.ok()) return s;
  regs_.Restore(regs);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EmuGpu::SaveRing() {
  codec::Message<proto::RingState> msg;
  {
    absl::MutexLock lock(&mu_);
    if (!Rule(state_).save || executing_) {
      return absl::FailedPreconditionError(
          absl::StrCat("saving the ring needs a quiesced device (this one is ",
                       DeviceStateName(state_), ")"));
    }
    auto root = msg.mutable_root();
    root.setCapacity(options_.ring_capacity);
    root.setHead(head_);
    auto commands = root.initCommands(static_cast<unsigned>(tail_ - head_));
    for (uint64_t seq = head_; seq < tail_; ++seq) {
      ToProto(ring_[seq % options_.ring_capacity],
              commands[static_cast<unsigned>(seq - head_)]);
    }
    root.setSubmittedFence(submitted_fence_);
    root.setCompletedFence(completed_fence_);
    auto checksums =
        root.initChecksums(static_cast<unsigned>(checksums_.size()));
    unsigned i = 0;
    for (const auto& [seq, entry] : checksums_) {
      checksums[i].setSeq(seq);
      checksums[i].setValue(entry.value);
      checksums[i].setError(ToProto(entry.error));
      ++i;
    }
    root.setErrorCount(error_count_);
    root.setLastError(ToProto(last_error_));
    root.setLastErrorSeq(last_error_seq_);
    root.setLastErrorMessage(last_error_message_);
  }
  return EncodeBlob(BlobKind::kRing, codec::EncodeMessageBytes(msg.builder()));
}

absl::Status EmuGpu::LoadRing(absl::Span<const uint8_t> blob) {
  {
    absl::MutexLock lock(&mu_);
    absl::Status s = CheckLoadableLocked("loading the ring");
    if (!s.ok()) return s;
  }
  auto msg = DecodeStateBlob<proto::RingState>(blob, BlobKind::kRing, "ring");
  if (!msg.ok()) return msg.status();
  proto::RingState::Reader root = msg->root();

  // Check and convert everything before touching the device.
  const uint64_t head = root.getHead();
  auto commands_in = root.getCommands();
  if (commands_in.size() > options_.ring_capacity) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring blob holds %u queued commands; this ring has %u entries",
        commands_in.size(), options_.ring_capacity));
  }
  if (head > UINT64_MAX - commands_in.size()) {
    return absl::InvalidArgumentError("ring blob head is out of range");
  }
  std::vector<Command> commands;
  commands.reserve(commands_in.size());
  for (unsigned i = 0; i < commands_in.size(); ++i) {
    absl::StatusOr<Command> c = FromProto(commands_in[i]);
    if (!c.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ring blob command %u: %s", head + i, c.status().message()));
    }
    if (c->op == CommandOp::kFence && c->fence > root.getSubmittedFence()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ring blob command %u is FENCE(%u), past the submitted fence %u",
          head + i, c->fence, root.getSubmittedFence()));
    }
    commands.push_back(*std::move(c));
  }
  if (root.getCompletedFence() > root.getSubmittedFence()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring blob completed fence %u is past the submitted fence %u",
        root.getCompletedFence(), root.getSubmittedFence()));
  }
  std::map<uint64_t, ChecksumEntry> checksums;
  auto checksums_in = root.getChecksums();
  if (checksums_in.size() > kMaxPendingChecksums) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ring blob holds %u checksum results, limit %u",
                        checksums_in.size(), kMaxPendingChecksums));
  }
  for (auto r : checksums_in) {
    absl::StatusOr<EngineError> e = FromProto(r.getError());
    if (!e.ok()) return e.status();
    if (r.getSeq() >= head) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ring blob has a checksum result for command %u, which has not "
          "executed (head %u)",
          r.getSeq(), head));
    }
    if (!checksums.emplace(r.getSeq(), ChecksumEntry{r.getValue(), *e})
             .second) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ring blob has two checksum results for command %u", r.getSeq()));
    }
  }
  absl::StatusOr<EngineError> last_error = FromProto(root.getLastError());
  if (!last_error.ok()) return last_error.status();
  if (*last_error != EngineError::kNone &&
      (root.getErrorCount() == 0 || root.getLastErrorSeq() >= head)) {
    return absl::InvalidArgumentError(
        "ring blob's last engine error is inconsistent with its error count "
        "and head");
  }

  absl::MutexLock lock(&mu_);
  absl::Status s = CheckLoadableLocked("loading the ring");
  if (!s.ok()) return s;
  head_ = head;
  tail_ = head + commands.size();
  for (uint64_t i = 0; i < commands.size(); ++i) {
    ring_[(head + i) % options_.ring_capacity] = std::move(commands[i]);
  }
  submitted_fence_ = root.getSubmittedFence();
  completed_fence_ = root.getCompletedFence();
  checksums_ = std::move(checksums);
  error_count_ = root.getErrorCount();
  last_error_ = *last_error;
  last_error_seq_ = root.getLastErrorSeq();
  last_error_message_ = root.getLastErrorMessage();
  return absl::OkStatus();
}

}  // namespace vgpu::agents::emulated::internal
