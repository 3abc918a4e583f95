// ImageWriter: frames a manifest and sections onto a sink, compressing chunks
// on a worker pool while the caller's thread writes frames in order.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "state-codecs/image.h"
#include "state-codecs/internal/frame.h"
#include "state-codecs/internal/rules.h"
#include "state-codecs/internal/work_pool.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace vgpu::codec {

static_assert(kImageMagic == internal::kMagic, "one magic");

using internal::FrameHeader;
using internal::FrameKind;

namespace {

// One chunk in flight. Buffers are recycled through the writer's free lists:
// allocating a fresh 256 KiB buffer per chunk cost a page fault per page.
struct Job {
  std::shared_ptr<internal::Slot<absl::Status>> slot;  // null: already done
  std::unique_ptr<EncodedChunk> chunk;
  std::unique_ptr<ByteBuffer> input;  // copied input; null when borrowed
};

struct IndexRow {
  uint32_t id, device;
  std::string name;
  uint16_t kind;
  uint64_t begin_offset, raw_bytes, stored_bytes, chunk_count, digest;
};

}  // namespace

struct ImageWriter::Impl {
  ByteSink* sink;
  Manifest manifest;
  WriterOptions options;
  std::unique_ptr<internal::WorkPool> pool;  // null when single-threaded
  std::vector<std::unique_ptr<ChunkEncoder>> encoders;  // one per worker
  size_t window = 0;
  absl::Status error;  // sticky: a half-written stream cannot be resumed
  bool finished = false;

  uint64_t offset = 0;
  uint64_t frames = 0;
  XXH3_state_t stream_digest;
  XXH3_state_t section_digest;
  StreamStats stats;
  uint32_t next_id = 1;
  std::vector<IndexRow> index;

  // The open section.
  bool in_section = false;
  IndexRow current;
  uint64_t declared = 0;
  std::unique_ptr<ByteBuffer> pending;  // a partial chunk, copied
  uint64_t zero_run = 0;                // zero bytes not yet framed
  std::deque<Job> inflight;
  std::vector<std::unique_ptr<EncodedChunk>> free_chunks;
  std::vector<std::unique_ptr<ByteBuffer>> free_inputs;

  absl::Status WriteFrame(const FrameHeader& h,
                          absl::Span<const uint8_t> payload) {
    uint8_t hdr[internal::kFrameHeaderBytes];
    internal::EncodeFrameHeader(h, hdr);
    if (absl::Status s = sink->Write(absl::MakeConstSpan(hdr)); !s.ok()) {
      return s;
    }
    if (!payload.empty()) {
      if (absl::Status s = sink->Write(payload); !s.ok()) return s;
    }
    XXH3_64bits_update(&stream_digest, hdr, sizeof(hdr));
    if (h.kind == static_cast<uint8_t>(FrameKind::kChunk)) {
      XXH3_64bits_update(&section_digest, hdr, sizeof(hdr));
      // Chunk checksums cover raw bytes; this covers the stored form too,
      // so that a flip the decoder happens to ignore is still caught.
      XXH3_64bits_update(&stream_digest, payload.data(), payload.size());
    }
    offset += sizeof(hdr) + payload.size();
    ++frames;
    return absl::OkStatus();
  }

  absl::Status WriteMessageFrame(FrameKind kind, uint32_t section_id,
                                 const std::vector<uint8_t>& payload) {
    FrameHeader h;
    h.kind = static_cast<uint8_t>(kind);
    h.section_id = section_id;
    h.payload_len = static_cast<uint32_t>(payload.size());
    h.raw_len = payload.size();
    h.checksum = internal::PayloadChecksum(payload);
    return WriteFrame(h, payload);
  }

  absl::Status FlushZeroRun() {
    if (zero_run == 0) return absl::OkStatus();
    FrameHeader h;
    h.kind = static_cast<uint8_t>(FrameKind::kChunk);
    h.codec = static_cast<uint8_t>(ChunkCodec::kZero);
    h.section_id = current.id;
    h.raw_len = zero_run;
    h.offset = current.raw_bytes;
    current.raw_bytes += zero_run;
    stats.zero_bytes += zero_run;
    zero_run = 0;
    ++current.chunk_count;
    ++stats.chunks;
    return WriteFrame(h, {});
  }

  // Emits one encoded chunk in stream order, merging zero chunks into runs.
  absl::Status Emit(const EncodedChunk& c) {
    stats.raw_bytes += c.raw_len;
    if (c.codec == ChunkCodec::kZero) {
      zero_run += c.raw_len;
      return absl::OkStatus();
    }
    if (absl::Status s = FlushZeroRun(); !s.ok()) return s;
    FrameHeader h;
    h.kind = static_cast<uint8_t>(FrameKind::kChunk);
    h.codec = static_cast<uint8_t>(c.codec);
    h.section_id = current.id;
    h.payload_len = static_cast<uint32_t>(c.payload.size());
    h.raw_len = c.raw_len;
    h.offset = current.raw_bytes;
    h.checksum = c.checksum;
    current.raw_bytes += c.raw_len;
    ++current.chunk_count;
    ++stats.chunks;
    return WriteFrame(h, c.payload);
  }

  std::unique_ptr<EncodedChunk> TakeChunk() {
    if (free_chunks.empty()) return std::make_unique<EncodedChunk>();
    std::unique_ptr<EncodedChunk> c = std::move(free_chunks.back());
    free_chunks.pop_back();
    return c;
  }
  std::unique_ptr<ByteBuffer> TakeInput() {
    if (free_inputs.empty()) {
      auto b = std::make_unique<ByteBuffer>();
      b->reserve(options.chunk_size);
      return b;
    }
    std::unique_ptr<ByteBuffer> b = std::move(free_inputs.back());
    free_inputs.pop_back();
    b->clear();
    b->reserve(options.chunk_size);
    return b;
  }
  void Recycle(Job& job) {
    if (job.chunk) free_chunks.push_back(std::move(job.chunk));
    if (job.input) free_inputs.push_back(std::move(job.input));
  }

  absl::Status PopOne() {
    Job job = std::move(inflight.front());
    inflight.pop_front();
    absl::Status s = job.slot ? job.slot->Wait() : absl::OkStatus();
    if (s.ok()) s = Emit(*job.chunk);
    Recycle(job);
    return s;
  }

  absl::Status Drain() {
    absl::Status first;
    // Wait for every job even after an error: they may borrow caller memory.
    while (!inflight.empty()) {
      absl::Status s = PopOne();
      if (first.ok() && !s.ok()) first = s;
    }
    return first;
  }

  // Encodes one chunk: inline when single-threaded, else on the pool. A
  // borrowed `raw` (input null) must stay valid until Drain().
  absl::Status Submit(absl::Span<const uint8_t> raw,
                      std::unique_ptr<ByteBuffer> input) {
    Job job{nullptr, TakeChunk(), std::move(input)};
    if (IsAllZero(raw)) {
      // Cheaper here than a hand-off to a worker.
      job.chunk->codec = ChunkCodec::kZero;
      job.chunk->raw_len = raw.size();
      job.chunk->checksum = 0;
      job.chunk->payload.clear();
    } else if (pool == nullptr) {
      absl::Status s = encoders[0]->Encode(raw, job.chunk.get());
      if (!s.ok()) {
        Recycle(job);
        return s;
      }
    } else {
      job.slot = std::make_shared<internal::Slot<absl::Status>>();
      pool->Schedule([this, raw, chunk = job.chunk.get(),
                      slot = job.slot](int worker) {
        slot->Set(encoders[worker]->Encode(raw, chunk));
      });
    }
    inflight.push_back(std::move(job));
    // Single-threaded, or nothing queued ahead: emit right away.
    while (!inflight.empty() &&
           (inflight.size() > window || !inflight.front().slot)) {
      if (absl::Status s = PopOne(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status SubmitPending() {
    std::unique_ptr<ByteBuffer> input = std::move(pending);
    pending = TakeInput();
    absl::Span<const uint8_t> raw = *input;
    return Submit(raw, std::move(input));
  }

  absl::Status Fail(absl::Status s) {
    if (error.ok()) {
      error = absl::Status(
          s.code(), absl::StrCat("writing image to ", sink->name(), " at byte ",
                                 offset, in_section
                                     ? absl::StrFormat(", section %u '%s'",
                                                       current.id, current.name)
                                     : std::string(),
                                 ": ", s.message()));
    }
    return error;
  }
};

ImageWriter::ImageWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ImageWriter::~ImageWriter() {
  // Jobs may still reference memory; never leave them running.
  if (impl_) (void)impl_->Drain();
}

void StampManifest(Manifest& manifest, const std::string& tool) {
  auto root = manifest.mutable_root();
  auto creation = root.initCreation();
  creation.setTool(tool);
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) == 0) creation.setHostName(host);
  creation.setCreatedUnixNanos(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  std::random_device rd;
  auto id = root.initImageId(16);
  for (size_t i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(rd());
}

absl::StatusOr<std::unique_ptr<ImageWriter>> ImageWriter::Create(
    ByteSink* sink, const Manifest& manifest, const WriterOptions& options) {
  Limits limits;
  if (options.chunk_size < 4096 || options.chunk_size > limits.max_chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk size %u outside 4096..%u", options.chunk_size,
        limits.max_chunk_bytes));
  }
  auto impl = std::make_unique<Impl>();
  impl->sink = sink;
  impl->options = options;
  impl->manifest.builder().setRoot(manifest.root());
  auto root = impl->manifest.mutable_root();
  root.setMagic(kImageMagic);
  root.setFormatMajor(kFormatMajor);
  root.setFormatMinor(kFormatMinor);
  root.setChunkSize(options.chunk_size);
  root.setZstdLevel(options.zstd_level);
  if (root.getImageId().size() == 0) {
    std::random_device rd;
    auto id = root.initImageId(16);
    for (size_t i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(rd());
  }
  if (absl::Status s = internal::CheckManifest(root.asReader(), limits);
      !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifest for ", sink->name(), ": ", s.message()));
  }

  int threads = options.threads > 0
                    ? options.threads
                    : static_cast<int>(std::thread::hardware_concurrency());
  if (threads < 1) threads = 1;
  for (int i = 0; i < threads; ++i) {
    impl->encoders.push_back(std::make_unique<ChunkEncoder>(options.zstd_level));
  }
  if (threads > 1) {
    impl->pool = std::make_unique<internal::WorkPool>(threads);
    impl->window = static_cast<size_t>(threads) * 4;
  }
  impl->pending = impl->TakeInput();
  XXH3_64bits_reset(&impl->stream_digest);

  uint8_t header[internal::kStreamHeaderBytes];
  internal::EncodeStreamHeader(kFormatMajor, kFormatMinor, header);
  if (absl::Status s = sink->Write(absl::MakeConstSpan(header)); !s.ok()) {
    return impl->Fail(s);
  }
  impl->offset = sizeof(header);
  if (absl::Status s = impl->WriteMessageFrame(
          FrameKind::kManifest, 0,
          EncodeMessageBytes(impl->manifest.builder()));
      !s.ok()) {
    return impl->Fail(s);
  }
  impl->stats.stored_bytes = impl->offset;
  return std::unique_ptr<ImageWriter>(new ImageWriter(std::move(impl)));
}

const Manifest& ImageWriter::manifest() const { return impl_->manifest; }
const StreamStats& ImageWriter::stats() const { return impl_->stats; }

absl::StatusOr<uint32_t> ImageWriter::BeginSection(const SectionHeader& header) {
  Impl& w = *impl_;
  if (!w.error.ok()) return w.error;
  if (w.in_section || w.finished) {
    return absl::FailedPreconditionError(
        "BeginSection while a section is open or after Finish");
  }
  SectionHeader copy;
  copy.builder().setRoot(header.root());
  auto h = copy.mutable_root();
  h.setId(w.next_id);
  Limits limits;
  if (absl::Status s = internal::CheckSectionHeader(
          h.asReader(), w.manifest.root(), limits);
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "section '%s' for %s: %s", h.getName().cStr(), w.sink->name(),
        s.message()));
  }
  w.current = IndexRow{w.next_id, h.getDevice(), h.getName().cStr(),
                       static_cast<uint16_t>(h.which()), w.offset, 0, 0, 0, 0};
  w.declared = h.getDeclaredBytes();
  w.in_section = true;
  XXH3_64bits_reset(&w.section_digest);
  if (absl::Status s = w.WriteMessageFrame(FrameKind::kSectionBegin, w.next_id,
                                           EncodeMessageBytes(copy.builder()));
      !s.ok()) {
    return w.Fail(s);
  }
  ++w.next_id;
  w.stats.stored_bytes = w.offset;
  return w.current.id;
}

absl::Status ImageWriter::Write(absl::Span<const uint8_t> data) {
  Impl& w = *impl_;
  if (!w.error.ok()) return w.error;
  if (!w.in_section) return absl::FailedPreconditionError("no open section");
  const size_t chunk = w.options.chunk_size;
  bool borrowed = false;
  while (!data.empty()) {
    absl::Status s;
    if (!w.pending->empty() || data.size() < chunk) {
      size_t have = w.pending->size();
      size_t take = std::min(chunk - have, data.size());
      w.pending->resize(have + take);
      std::memcpy(w.pending->data() + have, data.data(), take);
      data.remove_prefix(take);
      if (w.pending->size() == chunk) s = w.SubmitPending();
    } else {
      s = w.Submit(data.subspan(0, chunk), nullptr);
      data.remove_prefix(chunk);
      borrowed = true;
    }
    if (!s.ok()) {
      (void)w.Drain();
      return w.Fail(s);
    }
  }
  // The caller's memory may go away after we return.
  if (borrowed) {
    if (absl::Status s = w.Drain(); !s.ok()) return w.Fail(s);
  }
  w.stats.stored_bytes = w.offset;
  return absl::OkStatus();
}

absl::Status ImageWriter::WriteZeros(uint64_t n) {
  Impl& w = *impl_;
  if (!w.error.ok()) return w.error;
  if (!w.in_section) return absl::FailedPreconditionError("no open section");
  absl::Status s;
  if (!w.pending->empty()) s = w.SubmitPending();
  if (s.ok()) s = w.Drain();
  if (!s.ok()) return w.Fail(s);
  w.zero_run += n;
  w.stats.raw_bytes += n;
  return absl::OkStatus();
}

absl::Status ImageWriter::EndSection() {
  Impl& w = *impl_;
  if (!w.error.ok()) return w.error;
  if (!w.in_section) return absl::FailedPreconditionError("no open section");
  absl::Status s;
  if (!w.pending->empty()) s = w.SubmitPending();
  if (s.ok()) s = w.Drain();
  if (s.ok()) s = w.FlushZeroRun();
  if (!s.ok()) return w.Fail(s);
  if (w.declared != 0 && w.current.raw_bytes != w.declared) {
    return w.Fail(absl::InvalidArgumentError(absl::StrFormat(
        "section declared %u bytes but %u were written", w.declared,
        w.current.raw_bytes)));
  }
  w.current.digest = XXH3_64bits_digest(&w.section_digest);
  std::vector<uint8_t> payload(internal::kSectionEndPayloadBytes);
  internal::PutU64(payload.data(), w.current.raw_bytes);
  internal::PutU64(payload.data() + 8, w.current.chunk_count);
  internal::PutU64(payload.data() + 16, w.current.digest);
  if (absl::Status e =
          w.WriteMessageFrame(FrameKind::kSectionEnd, w.current.id, payload);
      !e.ok()) {
    return w.Fail(e);
  }
  w.current.stored_bytes = w.offset - w.current.begin_offset;
  w.index.push_back(w.current);
  w.in_section = false;
  ++w.stats.sections;
  w.stats.stored_bytes = w.offset;
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ImageWriter::AddSection(
    const SectionHeader& header, absl::Span<const uint8_t> data) {
  absl::StatusOr<uint32_t> id = BeginSection(header);
  if (!id.ok()) return id;
  if (absl::Status s = Write(data); !s.ok()) return s;
  if (absl::Status s = EndSection(); !s.ok()) return s;
  return id;
}

absl::Status ImageWriter::Finish() {
  Impl& w = *impl_;
  if (!w.error.ok()) return w.error;
  if (w.in_section) return absl::FailedPreconditionError("a section is open");
  if (w.finished) return absl::OkStatus();
  SectionIndex index;
  auto entries = index.mutable_root().initEntries(
      static_cast<unsigned>(w.index.size()));
  for (size_t i = 0; i < w.index.size(); ++i) {
    const IndexRow& r = w.index[i];
    auto e = entries[static_cast<unsigned>(i)];
    e.setId(r.id);
    e.setDevice(r.device);
    e.setName(r.name);
    e.setKind(r.kind);
    e.setBeginOffset(r.begin_offset);
    e.setRawBytes(r.raw_bytes);
    e.setStoredBytes(r.stored_bytes);
    e.setChunkCount(r.chunk_count);
    e.setDigest(r.digest);
  }
  uint64_t index_offset = w.offset;
  if (absl::Status s = w.WriteMessageFrame(FrameKind::kIndex, 0,
                                           EncodeMessageBytes(index.builder()));
      !s.ok()) {
    return w.Fail(s);
  }
  // The end frame's digest covers every frame header before it, and so,
  // through their checksums, every byte of the stream.
  std::vector<uint8_t> end(internal::kEndPayloadBytes);
  internal::PutU64(end.data(), w.index.size());
  internal::PutU64(end.data() + 8, w.frames);
  internal::PutU64(end.data() + 16, index_offset);
  internal::PutU64(end.data() + 24, XXH3_64bits_digest(&w.stream_digest));
  if (absl::Status s = w.WriteMessageFrame(FrameKind::kEnd, 0, end); !s.ok()) {
    return w.Fail(s);
  }
  if (absl::Status s = w.sink->Close(); !s.ok()) return w.Fail(s);
  w.finished = true;
  w.stats.stored_bytes = w.offset;
  return absl::OkStatus();
}

}  // namespace vgpu::codec
