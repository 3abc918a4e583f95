#include "agents/mediated/reference_device.h"

#include <sys/mman.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/mediated/internal/stream_format.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace vgpu::agents::mediated {
namespace {

using stream::RecordType;

constexpr uint32_t kRegisters = 64;
constexpr uint32_t kRingSlots = 256;
constexpr uint32_t kGttEntries = 512;
constexpr uint32_t kSaveAreaBytes = 16 << 10;
constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kRunPages = (1u << 20) / kPageSize;  // pages per record
constexpr uint64_t kMaxZeroRun = 1u << 20;              // pages per record
constexpr size_t kMaxDmaRanges = 256;

struct Bitmap {
  std::vector<uint64_t> words;
  uint64_t count = 0;
  void Resize(uint64_t bits) {
    words.assign((bits + 63) / 64, 0);
    count = 0;
  }
  bool Get(uint64_t i) const { return (words[i / 64] >> (i % 64)) & 1; }
  bool Set(uint64_t i) {
    uint64_t& w = words[i / 64];
    const uint64_t bit = uint64_t{1} << (i % 64);
    if (w & bit) return false;
    w |= bit;
    ++count;
    return true;
  }
  bool Clear(uint64_t i) {
    uint64_t& w = words[i / 64];
    const uint64_t bit = uint64_t{1} << (i % 64);
    if (!(w & bit)) return false;
    w &= ~bit;
    --count;
    return true;
  }
  void SetAll(uint64_t bits) {
    std::fill(words.begin(), words.end(), ~uint64_t{0});
    if (bits % 64 != 0) words.back() = (uint64_t{1} << (bits % 64)) - 1;
    count = bits;
  }
  void ClearAll() {
    std::fill(words.begin(), words.end(), 0);
    count = 0;
  }
  // First set bit at or after `from`, or `size` if none.
  uint64_t FindNext(uint64_t from, uint64_t size) const {
    while (from < size) {
      uint64_t w = words[from / 64] >> (from % 64);
      if (w != 0) return std::min(size, from + __builtin_ctzll(w));
      from = (from / 64 + 1) * 64;
    }
    return size;
  }
};

struct Context {
  std::vector<uint64_t> regs;
  uint32_t head = 0;
  uint32_t tail = 0;
  std::vector<RefCommand> ring;
  std::vector<uint64_t> gtt;
  std::vector<uint8_t> save_area;
  bool empty() const { return head == tail; }
};

bool Runs(MigState s) {
  return s == MigState::kRunning || s == MigState::kRunningP2p ||
         s == MigState::kPreCopy || s == MigState::kPreCopyP2p;
}
bool P2pQuiesced(MigState s) {
  return s == MigState::kRunningP2p || s == MigState::kPreCopyP2p;
}

void PutLe64(uint8_t* p, uint64_t v) { absl::little_endian::Store64(p, v); }

}  // namespace

struct RefVgpu::Impl {
  RefVgpuConfig cfg;
  stream::DeviceShape shape;
  uint64_t pages = 0;

  mutable std::mutex mu;
  std::condition_variable cv;       // work queued, state changed, quit
  std::condition_variable idle_cv;  // a scheduler pass ended
  MigState state = MigState::kRunning;
  std::vector<Context> ctx;
  uint8_t* vram = nullptr;
  std::vector<uint8_t> guest;
  Bitmap written;  // pages ever written since creation or reset
  uint64_t executed = 0;
  bool stalled = false;  // the last pass found only P2P-blocked work
  bool quit = false;

  // The open data session: saving group or RESUMING. Streams hold `gen`
  // and stop working once it moves on.
  uint64_t gen = 0;
  bool session = false;
  bool tracking = false;
  Bitmap initial, dirty;  // pages
  uint64_t initial_written = 0;
  std::vector<bool> ctx_initial, ctx_dirty;
  uint64_t initial_cursor = 0, dirty_cursor = 0;
  bool device_sent = false, end_sent = false;
  std::vector<uint8_t> out;
  size_t out_pos = 0;
  // RESUMING
  stream::RecordParser parser;
  absl::Status resume_error;
  bool got_device = false, got_end = false;
  uint64_t end_digest = 0;
  std::vector<bool> ctx_loaded;

  // DMA logging
  bool dma_on = false;
  std::vector<DmaRange> dma_ranges;
  Bitmap dma_dirty;  // guest pages at 4 KiB

  std::optional<std::pair<MigState, MigState>> arc_fault;
  bool resume_fault = false;

  std::thread scheduler;

  ~Impl() {
    if (vram != nullptr) munmap(vram, cfg.vram_bytes);
  }

  absl::Status Err(int err, absl::string_view what) const {
    return ErrnoError(err, absl::StrCat("reference vGPU ", cfg.name, ": ", what));
  }

  // --- state changes that migration tracks ---
  void MarkPage(uint64_t p) {
    if (written.Set(p) && session && initial.Get(p)) ++initial_written;
    if (tracking && !initial.Get(p)) dirty.Set(p);
  }
  void MarkContext(uint32_t c) {
    if (tracking && !ctx_initial[c]) ctx_dirty[c] = true;
  }

  // --- the engine ---
  void Execute(uint32_t c, const RefCommand& cmd) {
    Context& x = ctx[c];
    switch (cmd.op) {
      case RefCommand::kStamp: {
        x.regs[0] += 1;
        if (cmd.arg1 >= pages) {
          x.regs[1] += 1;  // page fault counter
          break;
        }
        const uint64_t stamp = (uint64_t{c} << 48) | x.regs[0];
        uint8_t* page = vram + cmd.arg1 * kPageSize;
        PutLe64(page, stamp);
        PutLe64(page + kPageSize - 8, stamp);
        MarkPage(cmd.arg1);
        break;
      }
      case RefCommand::kFill: {
        if (cmd.arg1 >= pages) {
          x.regs[1] += 1;
          break;
        }
        uint8_t* page = vram + cmd.arg1 * kPageSize;
        for (uint64_t o = 0; o < kPageSize; o += 8) PutLe64(page + o, cmd.arg2);
        MarkPage(cmd.arg1);
        break;
      }
      case RefCommand::kMapGtt:
        if (cmd.arg0 < x.gtt.size()) x.gtt[cmd.arg0] = cmd.arg1;
        break;
      case RefCommand::kDmaWrite: {
        if (cmd.arg0 >= x.gtt.size() || !(x.gtt[cmd.arg0] & 1)) {
          x.regs[1] += 1;
          break;
        }
        const uint64_t addr = (x.gtt[cmd.arg0] >> 12) * kPageSize +
                              (cmd.arg1 % kPageSize & ~uint64_t{7});
        if (addr + 8 > guest.size()) {
          x.regs[1] += 1;
          break;
        }
        PutLe64(guest.data() + addr, cmd.arg2);
        if (dma_on) {
          for (const DmaRange& r : dma_ranges) {
            if (addr >= r.iova && addr < r.iova + r.length) {
              dma_dirty.Set(addr / kPageSize);
            }
          }
        }
        break;
      }
      case RefCommand::kPeerWrite:
        x.regs[2] += cmd.arg2;
        break;
      case RefCommand::kSaveContext:
        std::memcpy(x.save_area.data(), x.regs.data(),
                    std::min(x.save_area.size(), x.regs.size() * 8));
        break;
      default:
        break;
    }
    ++executed;
    MarkContext(c);
  }

  void SchedulerLoop() {
    std::unique_lock<std::mutex> lock(mu);
    while (!quit) {
      bool progressed = false, pending = false;
      if (Runs(state)) {
        for (uint32_t c = 0; c < ctx.size(); ++c) {
          Context& x = ctx[c];
          for (uint32_t n = 0; n < cfg.batch && !x.empty(); ++n) {
            const RefCommand& cmd = x.ring[x.head];
            // P2P quiescence: no new peer-to-peer DMA; the context waits.
            if (cmd.op == RefCommand::kPeerWrite && P2pQuiesced(state)) break;
            Execute(c, cmd);
            x.head = (x.head + 1) % kRingSlots;
            progressed = true;
          }
          if (!x.empty()) pending = true;
        }
      }
      stalled = pending && !progressed;
      idle_cv.notify_all();
      if (progressed) {
        // Let the guest and the migration side in between batches.
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
        continue;
      }
      cv.wait(lock);
    }
  }

  bool AllIdle() const {
    for (const Context& x : ctx) {
      if (!x.empty()) return false;
    }
    return true;
  }

  // --- context images ---
  std::vector<uint8_t> EncodeContext(uint32_t c) const {
    const Context& x = ctx[c];
    std::vector<uint8_t> b(shape.context_image_bytes());
    uint8_t* p = b.data();
    for (uint64_t r : x.regs) {
      PutLe64(p, r);
      p += 8;
    }
    absl::little_endian::Store32(p, x.head);
    absl::little_endian::Store32(p + 4, x.tail);
    p += 8;
    for (const RefCommand& cmd : x.ring) {
      absl::little_endian::Store32(p, cmd.op);
      absl::little_endian::Store32(p + 4, cmd.arg0);
      PutLe64(p + 8, cmd.arg1);
      PutLe64(p + 16, cmd.arg2);
      PutLe64(p + 24, cmd.arg3);
      p += 32;
    }
    for (uint64_t g : x.gtt) {
      PutLe64(p, g);
      p += 8;
    }
    std::memcpy(p, x.save_area.data(), x.save_area.size());
    return b;
  }

  absl::Status DecodeContext(uint32_t c, absl::Span<const uint8_t> b) {
    if (b.size() != shape.context_image_bytes()) {
      return Err(EINVAL, absl::StrFormat(
                             "context %d image is %d bytes; this vGPU's "
                             "context images are %d bytes",
                             c, b.size(), shape.context_image_bytes()));
    }
    Context x = ctx[c];
    const uint8_t* p = b.data();
    for (uint64_t& r : x.regs) {
      r = absl::little_endian::Load64(p);
      p += 8;
    }
    x.head = absl::little_endian::Load32(p);
    x.tail = absl::little_endian::Load32(p + 4);
    p += 8;
    if (x.head >= kRingSlots || x.tail >= kRingSlots) {
      return Err(EINVAL, absl::StrFormat("context %d image: ring head %d tail "
                                         "%d outside a %d-slot ring",
                                         c, x.head, x.tail, kRingSlots));
    }
    for (RefCommand& cmd : x.ring) {
      cmd.op = absl::little_endian::Load32(p);
      cmd.arg0 = absl::little_endian::Load32(p + 4);
      cmd.arg1 = absl::little_endian::Load64(p + 8);
      cmd.arg2 = absl::little_endian::Load64(p + 16);
      cmd.arg3 = absl::little_endian::Load64(p + 24);
      if (cmd.op > RefCommand::kSaveContext) {
        return Err(EINVAL, absl::StrFormat("context %d image: unknown command "
                                           "opcode %d in the ring",
                                           c, cmd.op));
      }
      p += 32;
    }
    for (uint64_t& g : x.gtt) {
      g = absl::little_endian::Load64(p);
      p += 8;
    }
    std::memcpy(x.save_area.data(), p, x.save_area.size());
    ctx[c] = std::move(x);
    return absl::OkStatus();
  }

  uint64_t ContextDigest() const {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (uint32_t c = 0; c < ctx.size(); ++c) {
      std::vector<uint8_t> img = EncodeContext(c);
      XXH3_64bits_update(&st, img.data(), img.size());
    }
    return XXH3_64bits_digest(&st);
  }

  // --- saving ---
  uint64_t ContextRecordBytes() const {
    return stream::kHeaderBytes + shape.context_image_bytes();
  }
  // Bytes the records for these pages would take (zero pages cost a
  // header per run; count one per run of up to kRunPages to stay
  // pessimistic).
  uint64_t PageBytes(uint64_t written_pages, uint64_t zero_pages) const {
    return written_pages * kPageSize +
           (written_pages + kRunPages - 1) / kRunPages *
               (stream::kHeaderBytes + 8) +
           (zero_pages > 0 ? stream::kHeaderBytes + 16 : 0);
  }
  PrecopyInfo Estimate() const {
    PrecopyInfo info;
    info.initial_bytes = out.size() - out_pos;
    if (!device_sent) {
      info.initial_bytes +=
          stream::kHeaderBytes + stream::EncodeShape(shape).size();
    }
    for (uint32_t c = 0; c < ctx.size(); ++c) {
      if (ctx_initial[c]) info.initial_bytes += ContextRecordBytes();
      if (ctx_dirty[c]) info.dirty_bytes += ContextRecordBytes();
    }
    info.initial_bytes +=
        PageBytes(initial_written, initial.count - initial_written);
    info.dirty_bytes += PageBytes(dirty.count, 0);
    return info;
  }

  // Appends the next run of pages set in `set` (clearing them) as one
  // record. Returns false when the set is empty.
  bool ProducePages(Bitmap& set, uint64_t& cursor, bool is_initial) {
    if (set.count == 0) return false;
    uint64_t p = set.FindNext(cursor, pages);
    if (p == pages) p = set.FindNext(0, pages);
    if (p == pages) return false;
    const bool is_written = written.Get(p);
    uint64_t n = 0;
    const uint64_t limit = is_written ? kRunPages : kMaxZeroRun;
    while (p + n < pages && n < limit && set.Get(p + n) &&
           written.Get(p + n) == is_written) {
      set.Clear(p + n);
      if (is_initial && is_written) --initial_written;
      ++n;
    }
    cursor = p + n;
    uint8_t first[8];
    PutLe64(first, p);
    if (is_written) {
      stream::AppendRecordParts(
          RecordType::kVramPages, 0,
          {absl::MakeConstSpan(first, 8),
           absl::MakeConstSpan(vram + p * kPageSize, n * kPageSize)},
          &out);
    } else {
      uint8_t payload[16];
      PutLe64(payload, p);
      PutLe64(payload + 8, n);
      stream::AppendRecord(RecordType::kVramZero, 0,
                           absl::MakeConstSpan(payload, 16), &out);
    }
    return true;
  }

  // Appends at least one record to `out` if anything is left to send.
  bool Produce() {
    if (!device_sent) {
      stream::AppendRecord(RecordType::kDevice, 0, stream::EncodeShape(shape),
                           &out);
      device_sent = true;
      return true;
    }
    for (uint32_t c = 0; c < ctx.size(); ++c) {
      if (ctx_initial[c]) {
        ctx_initial[c] = false;
        ctx_dirty[c] = false;
        stream::AppendRecord(RecordType::kContext, c, EncodeContext(c), &out);
        return true;
      }
    }
    if (ProducePages(initial, initial_cursor, true)) return true;
    for (uint32_t c = 0; c < ctx.size(); ++c) {
      if (ctx_dirty[c]) {
        ctx_dirty[c] = false;
        stream::AppendRecord(RecordType::kContext, c, EncodeContext(c), &out);
        return true;
      }
    }
    if (ProducePages(dirty, dirty_cursor, false)) return true;
    if (state == MigState::kStopCopy && !end_sent) {
      uint8_t digest[8];
      PutLe64(digest, ContextDigest());
      stream::AppendRecord(RecordType::kEnd, 0, absl::MakeConstSpan(digest, 8),
                           &out);
      end_sent = true;
      return true;
    }
    return false;
  }

  void OpenSaveSession(bool track) {
    ++gen;
    session = true;
    tracking = track;
    initial.Resize(pages);
    initial.SetAll(pages);
    initial_written = written.count;
    dirty.Resize(pages);
    ctx_initial.assign(ctx.size(), true);
    ctx_dirty.assign(ctx.size(), false);
    initial_cursor = dirty_cursor = 0;
    device_sent = end_sent = false;
    out.clear();
    out_pos = 0;
  }

  void OpenResumeSession() {
    // Fault the VRAM share in now, while the source still runs: first
    // touches during the load would otherwise land in the downtime (a
    // hardware driver pins and maps its memory when the vGPU is created).
    if (madvise(vram, cfg.vram_bytes, MADV_POPULATE_WRITE) != 0) {
      for (uint64_t off = 0; off < cfg.vram_bytes; off += kPageSize) {
        reinterpret_cast<volatile uint8_t*>(vram)[off] =
            reinterpret_cast<volatile uint8_t*>(vram)[off];
      }
    }
    ++gen;
    session = true;
    tracking = false;
    parser = stream::RecordParser();
    resume_error = absl::OkStatus();
    got_device = got_end = false;
    end_digest = 0;
    ctx_loaded.assign(ctx.size(), false);
  }

  void EndSession() {
    ++gen;
    session = false;
    tracking = false;
    out.clear();
    out.shrink_to_fit();
    out_pos = 0;
    initial.Resize(0);
    dirty.Resize(0);
  }

  // --- resuming ---
  absl::Status ApplyRecord(const stream::RecordView& r) {
    const auto& p = r.payload;
    if (got_end) {
      return Err(EINVAL, absl::StrCat(stream::RecordTypeName(r.header.type),
                                      " record after the end record"));
    }
    if (r.header.type != RecordType::kDevice && !got_device) {
      return Err(EINVAL, absl::StrCat(stream::RecordTypeName(r.header.type),
                                      " record before the device record"));
    }
    switch (r.header.type) {
      case RecordType::kDevice: {
        auto s = stream::DecodeShape(p);
        if (!s.ok()) return Err(EINVAL, s.status().message());
        if (!(*s == shape)) {
          return Err(EINVAL,
                     absl::StrFormat("stream is from a %s vGPU with %d "
                                     "contexts and %d bytes of VRAM; this is "
                                     "a %s with %d contexts and %d bytes",
                                     s->type, s->contexts, s->vram_bytes,
                                     shape.type, shape.contexts,
                                     shape.vram_bytes));
        }
        got_device = true;
        return absl::OkStatus();
      }
      case RecordType::kContext:
        if (r.header.index >= ctx.size()) {
          return Err(EINVAL, absl::StrFormat("context %d: this vGPU has %d",
                                             r.header.index, ctx.size()));
        }
        if (auto s = DecodeContext(r.header.index, p); !s.ok()) return s;
        ctx_loaded[r.header.index] = true;
        return absl::OkStatus();
      case RecordType::kVramPages: {
        if (p.size() < 8 || (p.size() - 8) % kPageSize != 0) {
          return Err(EINVAL, absl::StrCat("vram-pages record of ", p.size(),
                                          " bytes is not whole pages"));
        }
        const uint64_t first = absl::little_endian::Load64(p.data());
        const uint64_t n = (p.size() - 8) / kPageSize;
        if (first > pages || n > pages - first) {
          return Err(EINVAL, absl::StrFormat("vram pages %d..%d outside the "
                                             "%d-page VRAM share",
                                             first, first + n, pages));
        }
        std::memcpy(vram + first * kPageSize, p.data() + 8, n * kPageSize);
        for (uint64_t i = 0; i < n; ++i) written.Set(first + i);
        return absl::OkStatus();
      }
      case RecordType::kVramZero: {
        if (p.size() != 16) {
          return Err(EINVAL, "vram-zero record is not 16 bytes");
        }
        const uint64_t first = absl::little_endian::Load64(p.data());
        const uint64_t n = absl::little_endian::Load64(p.data() + 8);
        if (first > pages || n > pages - first) {
          return Err(EINVAL, absl::StrFormat("vram pages %d..%d outside the "
                                             "%d-page VRAM share",
                                             first, first + n, pages));
        }
        for (uint64_t i = 0; i < n; ++i) {
          if (written.Clear(first + i)) {
            std::memset(vram + (first + i) * kPageSize, 0, kPageSize);
          }
        }
        return absl::OkStatus();
      }
      case RecordType::kEnd:
        if (p.size() != 8) return Err(EINVAL, "end record is not 8 bytes");
        end_digest = absl::little_endian::Load64(p.data());
        got_end = true;
        return absl::OkStatus();
    }
    return Err(EINVAL, "unknown record");
  }

  // RESUMING -> STOP: the final consistency check.
  absl::Status FinishResume() {
    if (!resume_error.ok()) return resume_error;
    if (parser.partial_bytes() != 0) {
      return Err(EINVAL, absl::StrFormat("the stream stops %d bytes into a "
                                         "record at offset %d",
                                         parser.partial_bytes(),
                                         parser.offset()));
    }
    if (!got_device) return Err(EINVAL, "no device record was written");
    for (uint32_t c = 0; c < ctx.size(); ++c) {
      if (!ctx_loaded[c]) {
        return Err(EINVAL, absl::StrCat("context ", c, " never arrived"));
      }
    }
    if (!got_end) {
      return Err(EINVAL, "no end record: the stream is incomplete");
    }
    if (ContextDigest() != end_digest) {
      return Err(EINVAL,
                 "the loaded context images do not match the source's digest");
    }
    return absl::OkStatus();
  }

  void ResetLocked() {
    state = MigState::kRunning;
    if (session) EndSession();
    for (Context& x : ctx) {
      std::fill(x.regs.begin(), x.regs.end(), 0);
      x.head = x.tail = 0;
      std::fill(x.ring.begin(), x.ring.end(), RefCommand{});
      std::fill(x.gtt.begin(), x.gtt.end(), 0);
      std::fill(x.save_area.begin(), x.save_area.end(), 0);
    }
    madvise(vram, cfg.vram_bytes, MADV_DONTNEED);  // reads back as zeros
    written.ClearAll();
    dma_on = false;
    dma_ranges.clear();
    dma_dirty.ClearAll();
    executed = 0;
    cv.notify_all();
  }
};

namespace {

class RefStream : public DataStream {
 public:
  RefStream(std::shared_ptr<RefVgpu::Impl> dev, uint64_t gen)
      : dev_(std::move(dev)), gen_(gen) {}

  absl::StatusOr<size_t> Read(absl::Span<uint8_t> out) override {
    auto& d = *dev_;
    std::lock_guard<std::mutex> lock(d.mu);
    if (auto s = Check(); !s.ok()) return s;
    if (!InSavingGroup(d.state)) {
      return d.Err(EINVAL, "read: the data session is not a saving one");
    }
    size_t done = 0;
    while (done < out.size()) {
      if (d.out_pos == d.out.size()) {
        d.out.clear();
        d.out_pos = 0;
        if (!d.Produce()) break;
      }
      const size_t n = std::min(out.size() - done, d.out.size() - d.out_pos);
      std::memcpy(out.data() + done, d.out.data() + d.out_pos, n);
      d.out_pos += n;
      done += n;
    }
    if (done == 0 && d.state != MigState::kStopCopy) {
      return d.Err(ENOMSG, "no pre-copy data right now");
    }
    return done;
  }

  absl::Status Write(absl::Span<const uint8_t> data) override {
    auto& d = *dev_;
    std::lock_guard<std::mutex> lock(d.mu);
    if (auto s = Check(); !s.ok()) return s;
    if (d.state != MigState::kResuming) {
      return d.Err(EINVAL, "write: the data session is not RESUMING");
    }
    if (d.resume_fault) {
      d.resume_fault = false;
      d.state = MigState::kError;
      d.EndSession();
      return d.Err(EIO, "injected fault while loading");
    }
    if (!d.resume_error.ok()) return d.resume_error;
    absl::Status applied;  // the device's own refusal, errno and all
    absl::Status s = d.parser.Feed(data, [&](const stream::RecordView& r) {
      applied = d.ApplyRecord(r);
      return applied;
    });
    if (!s.ok()) {
      d.resume_error = applied.ok() ? d.Err(EINVAL, s.message()) : applied;
      return d.resume_error;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<PrecopyInfo> GetPrecopyInfo() override {
    auto& d = *dev_;
    std::lock_guard<std::mutex> lock(d.mu);
    if (auto s = Check(); !s.ok()) return s;
    if (d.state != MigState::kPreCopy && d.state != MigState::kPreCopyP2p) {
      return d.Err(EINVAL, absl::StrCat("precopy info in ",
                                        MigStateName(d.state)));
    }
    return d.Estimate();
  }

 private:
  absl::Status Check() const {
    if (!dev_->session || dev_->gen != gen_) {
      return dev_->Err(EBADF, "this data session has ended");
    }
    return absl::OkStatus();
  }
  std::shared_ptr<RefVgpu::Impl> dev_;
  uint64_t gen_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RefVgpu>> RefVgpu::Create(
    const RefVgpuConfig& config) {
  if (config.contexts == 0 || config.contexts > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference vGPU: ", config.contexts,
                     " contexts; 1 to 64 are possible"));
  }
  if (config.vram_bytes == 0 || config.vram_bytes % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reference vGPU: VRAM share of ", config.vram_bytes,
        " bytes is not a whole number of 4 KiB pages"));
  }
  if (!(config.migration_flags & kMigFlagStopCopy)) {
    return absl::InvalidArgumentError(
        "reference vGPU: migration flags must include STOP_COPY");
  }
  auto impl = std::make_shared<Impl>();
  impl->cfg = config;
  impl->shape.type = config.type;
  impl->shape.contexts = config.contexts;
  impl->shape.vram_bytes = config.vram_bytes;
  impl->shape.page_size = kPageSize;
  impl->shape.registers = kRegisters;
  impl->shape.ring_slots = kRingSlots;
  impl->shape.gtt_entries = kGttEntries;
  impl->shape.save_area_bytes = kSaveAreaBytes;
  impl->pages = config.vram_bytes / kPageSize;
  void* m = mmap(nullptr, config.vram_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    return ErrnoError(errno, absl::StrCat("reference vGPU ", config.name,
                                          ": mapping ", config.vram_bytes,
                                          " bytes of VRAM"));
  }
  impl->vram = static_cast<uint8_t*>(m);
  impl->guest.assign(config.guest_memory_bytes, 0);
  impl->ctx.resize(config.contexts);
  for (Context& x : impl->ctx) {
    x.regs.assign(kRegisters, 0);
    x.ring.assign(kRingSlots, RefCommand{});
    x.gtt.assign(kGttEntries, 0);
    x.save_area.assign(kSaveAreaBytes, 0);
  }
  impl->written.Resize(impl->pages);
  impl->dma_dirty.Resize((config.guest_memory_bytes + kPageSize - 1) /
                         kPageSize);
  impl->ctx_initial.assign(config.contexts, false);
  impl->ctx_dirty.assign(config.contexts, false);
  Impl* raw = impl.get();
  impl->scheduler = std::thread([raw] { raw->SchedulerLoop(); });
  return std::unique_ptr<RefVgpu>(new RefVgpu(std::move(impl)));
}

RefVgpu::RefVgpu(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

RefVgpu::~RefVgpu() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->quit = true;
    // Sessions outliving the device see it ended.
    if (impl_->session) impl_->EndSession();
    impl_->cv.notify_all();
  }
  impl_->scheduler.join();
}

const RefVgpuConfig& RefVgpu::config() const { return impl_->cfg; }
const std::string& RefVgpu::name() const { return impl_->cfg.name; }

absl::Status RefVgpu::Submit(uint32_t context, const RefCommand& command) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  if (context >= d.ctx.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context ", context, ": this vGPU has ", d.ctx.size()));
  }
  if (!Runs(d.state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "reference vGPU ", d.cfg.name, " is ", MigStateName(d.state),
        ": the guest is paused"));
  }
  Context& x = d.ctx[context];
  if ((x.tail + 1) % kRingSlots == x.head) {
    return absl::UnavailableError(absl::StrCat("context ", context,
                                               ": ring full"));
  }
  x.ring[x.tail] = command;
  x.tail = (x.tail + 1) % kRingSlots;
  d.MarkContext(context);
  d.stalled = false;
  d.cv.notify_all();
  return absl::OkStatus();
}

void RefVgpu::WaitIdle() {
  Impl& d = *impl_;
  std::unique_lock<std::mutex> lock(d.mu);
  d.idle_cv.wait(lock, [&] {
    return d.quit || !Runs(d.state) || d.AllIdle() || d.stalled;
  });
}

uint64_t RefVgpu::executed() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->executed;
}

std::string RefVgpu::Fingerprint() const {
  const Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  std::vector<uint8_t> shape = stream::EncodeShape(d.shape);
  XXH3_64bits_update(&st, shape.data(), shape.size());
  for (uint32_t c = 0; c < d.ctx.size(); ++c) {
    std::vector<uint8_t> img = d.EncodeContext(c);
    XXH3_64bits_update(&st, img.data(), img.size());
  }
  XXH3_64bits_update(&st, d.vram, d.cfg.vram_bytes);
  return absl::StrFormat("%016x", XXH3_64bits_digest(&st));
}

uint64_t RefVgpu::Register(uint32_t context, uint32_t reg) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->ctx.at(context).regs.at(reg);
}

uint64_t RefVgpu::VramWord(uint64_t page, uint32_t word) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return absl::little_endian::Load64(impl_->vram + page * kPageSize +
                                     uint64_t{word} * 8);
}

uint64_t RefVgpu::GuestWord(uint64_t offset) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return absl::little_endian::Load64(impl_->guest.data() + offset);
}

absl::Status RefVgpu::CheckStamps() const {
  const Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  const uint64_t mask = (uint64_t{1} << 48) - 1;
  std::vector<uint64_t> newest(d.ctx.size(), 0);
  for (uint64_t p = 0; p < d.pages; ++p) {
    const uint8_t* page = d.vram + p * kPageSize;
    const uint64_t first = absl::little_endian::Load64(page);
    const uint64_t last = absl::little_endian::Load64(page + kPageSize - 8);
    if (first == 0 && last == 0) continue;
    if (first != last) {
      return absl::DataLossError(absl::StrFormat(
          "page %d: torn stamp (first word %x, last %x)", p, first, last));
    }
    const uint64_t c = first >> 48, seq = first & mask;
    if (c >= d.ctx.size()) {
      return absl::DataLossError(
          absl::StrFormat("page %d: stamp of context %d", p, c));
    }
    if (seq > d.ctx[c].regs[0]) {
      return absl::DataLossError(absl::StrFormat(
          "page %d: stamp %d of context %d is newer than its sequence %d", p,
          seq, c, d.ctx[c].regs[0]));
    }
    newest[c] = std::max(newest[c], seq);
  }
  for (uint32_t c = 0; c < d.ctx.size(); ++c) {
    // Only a context whose stamps all landed (no page faults, nothing
    // queued) must show its newest stamp.
    if (d.ctx[c].empty() && d.ctx[c].regs[1] == 0 && d.ctx[c].regs[0] > 0 &&
        newest[c] != d.ctx[c].regs[0]) {
      return absl::DataLossError(absl::StrFormat(
          "context %d: sequence %d but its newest stamp in VRAM is %d", c,
          d.ctx[c].regs[0], newest[c]));
    }
  }
  return absl::OkStatus();
}

void RefVgpu::InjectArcFault(MigState from, MigState to) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->arc_fault = std::make_pair(from, to);
}

void RefVgpu::InjectResumeFault() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->resume_fault = true;
}

absl::StatusOr<uint64_t> RefVgpu::MigrationFlags() {
  return impl_->cfg.migration_flags;
}

absl::StatusOr<MigState> RefVgpu::GetState() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->state;
}

absl::StatusOr<std::unique_ptr<DataStream>> RefVgpu::SetState(
    MigState target) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  const uint64_t flags = d.cfg.migration_flags;
  if (d.state == MigState::kError || target == MigState::kError ||
      !StateSupported(flags, target)) {
    return d.Err(EINVAL, absl::StrCat(MigStateName(d.state), " -> ",
                                      MigStateName(target),
                                      " is not a transition this device "
                                      "takes"));
  }
  std::unique_ptr<DataStream> opened;
  d.stalled = false;
  while (d.state != target) {
    auto next = NextStep(flags, d.state, target);
    if (!next.ok()) {
      return d.Err(EINVAL, absl::StrCat(MigStateName(d.state), " -> ",
                                        MigStateName(target), ": ",
                                        next.status().message()));
    }
    const MigState from = d.state, to = *next;
    if (d.arc_fault && d.arc_fault->first == from &&
        d.arc_fault->second == to) {
      d.arc_fault.reset();
      if (d.session) d.EndSession();
      d.state = MigState::kError;
      d.cv.notify_all();
      return d.Err(EIO, absl::StrCat("injected fault on ", MigStateName(from),
                                     " -> ", MigStateName(to)));
    }
    if (from == MigState::kResuming) {
      absl::Status s = d.FinishResume();
      d.EndSession();
      if (!s.ok()) {
        d.state = MigState::kError;
        return s;
      }
    } else if (ArcEndsSession(from, to)) {
      d.EndSession();
    }
    if (ArcOpensSession(from, to)) {
      if (to == MigState::kResuming) {
        d.OpenResumeSession();
      } else {
        d.OpenSaveSession(/*track=*/to != MigState::kStopCopy);
      }
      opened = std::make_unique<RefStream>(impl_, d.gen);
    }
    d.state = to;
    d.cv.notify_all();
  }
  return opened;
}

absl::StatusOr<uint64_t> RefVgpu::StopCopyBytes() {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  const uint64_t end = stream::kHeaderBytes + 8;
  if (d.session && InSavingGroup(d.state)) {
    PrecopyInfo info = d.Estimate();
    return info.initial_bytes + info.dirty_bytes + (d.end_sent ? 0 : end);
  }
  return stream::kHeaderBytes + stream::EncodeShape(d.shape).size() +
         d.ctx.size() * d.ContextRecordBytes() +
         d.PageBytes(d.written.count, d.pages - d.written.count) + end;
}

absl::Status RefVgpu::Reset() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->ResetLocked();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RefVgpu::DmaLoggingStart(
    absl::Span<const DmaRange> ranges, uint64_t page_size) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.cfg.dma_logging) return d.Err(ENOTTY, "no DMA logging");
  if (ranges.empty()) return d.Err(EINVAL, "DMA logging: no ranges");
  if (ranges.size() > kMaxDmaRanges) {
    return d.Err(E2BIG, absl::StrCat("DMA logging: ", ranges.size(),
                                     " ranges; at most ", kMaxDmaRanges));
  }
  if (page_size < kPageSize || (page_size & (page_size - 1)) != 0) {
    return d.Err(EINVAL, absl::StrCat("DMA logging: page size ", page_size));
  }
  if (d.dma_on) return d.Err(EINVAL, "DMA logging is already on");
  std::vector<DmaRange> sorted(ranges.begin(), ranges.end());
  for (const DmaRange& r : sorted) {
    if (r.iova % page_size != 0 || r.length % page_size != 0 ||
        r.length == 0) {
      return d.Err(EINVAL, absl::StrFormat("DMA logging: range %x+%x is not "
                                           "aligned to %d",
                                           r.iova, r.length, page_size));
    }
    if (r.iova + r.length < r.iova) {
      return d.Err(EOVERFLOW, "DMA logging: range wraps");
    }
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const DmaRange& a, const DmaRange& b) { return a.iova < b.iova; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].iova < sorted[i - 1].iova + sorted[i - 1].length) {
      return d.Err(EINVAL, "DMA logging: ranges overlap");
    }
  }
  d.dma_ranges = std::move(sorted);
  d.dma_dirty.ClearAll();
  d.dma_on = true;
  return page_size;
}

absl::Status RefVgpu::DmaLoggingStop() {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.cfg.dma_logging) return d.Err(ENOTTY, "no DMA logging");
  d.dma_on = false;
  d.dma_ranges.clear();
  d.dma_dirty.ClearAll();
  return absl::OkStatus();
}

absl::Status RefVgpu::DmaLoggingReport(uint64_t iova, uint64_t length,
                                       uint64_t page_size,
                                       absl::Span<uint64_t> bitmap) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.cfg.dma_logging) return d.Err(ENOTTY, "no DMA logging");
  if (!d.dma_on) return d.Err(EINVAL, "DMA logging is not on");
  if (page_size < kPageSize || (page_size & (page_size - 1)) != 0) {
    return d.Err(EINVAL, absl::StrCat("DMA report: page size ", page_size));
  }
  if (iova + length < iova) return d.Err(EOVERFLOW, "DMA report: range wraps");
  const uint64_t bits = (length + page_size - 1) / page_size;
  if (bitmap.size() * 64 < bits) {
    return d.Err(EFAULT, absl::StrFormat("DMA report: a %d-bit bitmap for %d "
                                         "pages",
                                         bitmap.size() * 64, bits));
  }
  const uint64_t guest_pages = d.dma_dirty.words.size() * 64;
  for (uint64_t g = d.dma_dirty.FindNext(0, guest_pages); g < guest_pages;
       g = d.dma_dirty.FindNext(g + 1, guest_pages)) {
    const uint64_t addr = g * kPageSize;
    if (addr + kPageSize <= iova || addr >= iova + length) continue;
    // A logged 4 KiB page sets every report page it touches.
    const uint64_t lo = std::max(addr, iova), hi = std::min(addr + kPageSize,
                                                            iova + length);
    for (uint64_t b = (lo - iova) / page_size; b <= (hi - 1 - iova) / page_size;
         ++b) {
      bitmap[b / 64] |= uint64_t{1} << (b % 64);
    }
    d.dma_dirty.Clear(g);
  }
  return absl::OkStatus();
}

// --- the workload ---

struct RefWorkload::State {
  RefVgpu* device;
  uint64_t bytes_per_second;
  std::mt19937_64 rng;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> submitted{0};
  std::thread thread;

  void Run() {
    const RefVgpuConfig& cfg = device->config();
    const uint64_t pages = cfg.vram_bytes / kPageSize;
    const uint32_t n = cfg.contexts;
    const uint64_t per_context = pages / n;
    const auto start = std::chrono::steady_clock::now();
    uint64_t done = 0;
    uint32_t c = 0;
    while (!stop.load()) {
      const double secs = std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - start)
                              .count();
      const uint64_t due =
          static_cast<uint64_t>(secs * bytes_per_second / kPageSize) + 1;
      // After a pause, carry on at the rate instead of catching up.
      if (due > done + 4096) done = due - 4096;
      if (done >= due || per_context == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(500));
        continue;
      }
      RefCommand cmd;
      cmd.op = RefCommand::kStamp;
      cmd.arg1 = c + n * (rng() % per_context);
      absl::Status s = device->Submit(c, cmd);
      if (s.ok()) {
        ++done;
        submitted.fetch_add(1);
        c = (c + 1) % n;
      } else {
        // Paused (not running) or ring full: try again shortly.
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  }
};

RefWorkload::RefWorkload(RefVgpu* device, uint64_t bytes_per_second,
                         uint64_t seed)
    : state_(std::make_unique<State>()) {
  state_->device = device;
  state_->bytes_per_second = bytes_per_second;
  state_->rng.seed(seed);
  State* s = state_.get();
  state_->thread = std::thread([s] { s->Run(); });
}

RefWorkload::~RefWorkload() { Stop(); }

void RefWorkload::Stop() {
  state_->stop.store(true);
  if (state_->thread.joinable()) state_->thread.join();
}

uint64_t RefWorkload::submitted() const { return state_->submitted.load(); }

}  // namespace vgpu::agents::mediated
