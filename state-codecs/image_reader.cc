// ImageReader: walks a framed stream, checking the frame grammar, every
// bound and every checksum before data is handed out.
#include <cstring>
#include <deque>
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

using internal::FrameHeader;
using internal::FrameKind;

const char* SectionKindName(SectionKind kind) {
  switch (kind) {
    case schema::SectionHeader::REGISTER_BANK:
      return "register-bank";
    case schema::SectionHeader::MEMORY_REGION:
      return "memory-region";
    case schema::SectionHeader::API_SESSION_LOG:
      return "api-session-log";
    case schema::SectionHeader::CONTEXT_IMAGE:
      return "context-image";
    case schema::SectionHeader::VENDOR_BLOB:
      return "vendor-blob";
  }
  return "unknown";
}

namespace {

// Where the reader is in the frame grammar.
enum class State { kBetweenSections, kInSection, kAfterIndex, kDone };

const char* StateName(State s) {
  switch (s) {
    case State::kBetweenSections:
      return "between sections";
    case State::kInSection:
      return "inside a section";
    case State::kAfterIndex:
      return "after the index";
    case State::kDone:
      return "after end-of-stream";
  }
  return "?";
}

// The frame grammar after the manifest. Any frame not listed for the
// current state is damage. Extension frames may appear anywhere before END.
struct Arc {
  State from;
  FrameKind kind;
  State to;
};
constexpr Arc kGrammar[] = {
    {State::kBetweenSections, FrameKind::kSectionBegin, State::kInSection},
    {State::kBetweenSections, FrameKind::kIndex, State::kAfterIndex},
    {State::kInSection, FrameKind::kChunk, State::kInSection},
    {State::kInSection, FrameKind::kSectionEnd, State::kBetweenSections},
    {State::kAfterIndex, FrameKind::kEnd, State::kDone},
};

const Arc* FindArc(State from, uint8_t kind) {
  for (const Arc& a : kGrammar) {
    if (a.from == from && static_cast<uint8_t>(a.kind) == kind) return &a;
  }
  return nullptr;
}

bool IsExtension(uint8_t kind) {
  return kind >= internal::kFirstExtension && kind <= internal::kLastExtension;
}

struct SeenSection {
  uint32_t id, device;
  std::string name;
  uint16_t kind;
  uint64_t begin_offset, raw_bytes, stored_bytes, chunk_count, digest;
};

enum class Consume { kSkip, kVerify, kVisit, kBuffer };

struct Pending {
  std::shared_ptr<internal::Slot<absl::Status>> slot;
  uint64_t frame_offset;
  std::unique_ptr<ByteBuffer> payload;  // recycled once the job is done
};

// Where ReadSection/ReadSectionInto put decoded bytes: a caller's span, or
// a vector that may grow (sections of undeclared size) up to `limit`.
struct Target {
  absl::Span<uint8_t> span;
  std::vector<uint8_t>* vec = nullptr;
  uint64_t limit = 0;
};

}  // namespace

struct ImageReader::Impl {
  ByteSource* src;
  Limits limits;
  int threads = 1;
  std::unique_ptr<internal::WorkPool> pool;
  std::vector<std::unique_ptr<ChunkDecoder>> decoders;  // per worker
  ChunkDecoder decoder;                                 // caller's thread
  Manifest manifest;
  SectionIndex index;
  StreamStats stats;
  absl::Status error;  // sticky

  State state = State::kBetweenSections;
  uint64_t offset = 0;
  uint64_t frames = 0;
  XXH3_state_t stream_digest;
  XXH3_state_t section_digest;
  uint32_t last_id = 0;
  std::vector<SeenSection> seen;
  SeenSection current;
  uint64_t declared = 0;
  std::vector<uint8_t> payload;  // metadata frames, reused
  ByteBuffer scratch;            // reused
  std::vector<ByteBuffer> worker_scratch;                 // one per worker
  std::vector<std::unique_ptr<ByteBuffer>> free_buffers;  // chunk payloads

  std::unique_ptr<ByteBuffer> TakeBuffer() {
    if (free_buffers.empty()) return std::make_unique<ByteBuffer>();
    std::unique_ptr<ByteBuffer> b = std::move(free_buffers.back());
    free_buffers.pop_back();
    return b;
  }
  std::function<void(const StreamStats&)> progress;

  // Every error goes through here: it names the stream, the section and the
  // byte offset, and makes the reader unusable afterwards.
  absl::Status Fail(absl::StatusCode code, uint64_t at, absl::string_view what) {
    if (error.ok()) {
      std::string where = state == State::kInSection
                              ? absl::StrFormat(", section %u '%s'", current.id,
                                                current.name)
                              : std::string();
      error = absl::Status(code, absl::StrCat("image ", src->name(), where,
                                              ", byte ", at, ": ", what));
    }
    return error;
  }
  absl::Status Fail(const absl::Status& s, uint64_t at) {
    return Fail(s.code(), at, s.message());
  }

  absl::Status ReadExact(absl::Span<uint8_t> buf, const char* what,
                         uint64_t frame_at) {
    absl::StatusOr<size_t> n = src->Read(buf);
    if (!n.ok()) return Fail(n.status(), offset);
    if (*n != buf.size()) {
      return Fail(absl::StatusCode::kDataLoss, frame_at,
                  absl::StrFormat("stream cut inside %s: %u of %u bytes "
                                  "present",
                                  what, *n, buf.size()));
    }
    offset += buf.size();
    return absl::OkStatus();
  }

  // Reads the next frame header; a clean end of the source here means the
  // stream was cut between frames.
  absl::Status ReadFrameHeader(FrameHeader* h, uint64_t* at) {
    *at = offset;
    uint8_t hdr[internal::kFrameHeaderBytes];
    absl::StatusOr<size_t> n = src->Read(absl::MakeSpan(hdr));
    if (!n.ok()) return Fail(n.status(), offset);
    if (*n == 0) {
      return Fail(absl::StatusCode::kDataLoss, offset,
                  absl::StrCat("stream ends without an end-of-stream frame (",
                               StateName(state), ")"));
    }
    if (*n != sizeof(hdr)) {
      return Fail(absl::StatusCode::kDataLoss, offset,
                  absl::StrFormat("stream cut inside a frame header: %u of %u "
                                  "bytes present",
                                  *n, sizeof(hdr)));
    }
    offset += sizeof(hdr);
    if (absl::Status s = internal::DecodeFrameHeader(hdr, h); !s.ok()) {
      return Fail(s, *at);
    }
    XXH3_64bits_update(&stream_digest, hdr, sizeof(hdr));
    if (h->kind == static_cast<uint8_t>(FrameKind::kChunk)) {
      XXH3_64bits_update(&section_digest, hdr, sizeof(hdr));
    }
    ++frames;
    return absl::OkStatus();
  }

  // Reads a metadata payload (bounded) and checks its checksum.
  absl::Status ReadCheckedPayload(const FrameHeader& h, uint64_t at,
                                  uint32_t max_len) {
    if (h.payload_len > max_len || h.raw_len != h.payload_len) {
      return Fail(absl::StatusCode::kDataLoss, at,
                  absl::StrFormat("%s frame declares %u payload bytes, limit "
                                  "%u",
                                  internal::FrameKindName(h.kind),
                                  h.payload_len, max_len));
    }
    payload.resize(h.payload_len);
    if (absl::Status s = ReadExact(absl::MakeSpan(payload),
                                   internal::FrameKindName(h.kind), at);
        !s.ok()) {
      return s;
    }
    uint64_t actual = internal::PayloadChecksum(payload);
    if (actual != h.checksum) {
      return Fail(absl::StatusCode::kDataLoss, at,
                  absl::StrFormat("%s frame checksum mismatch (stored %016x, "
                                  "computed %016x)",
                                  internal::FrameKindName(h.kind), h.checksum,
                                  actual));
    }
    return absl::OkStatus();
  }

  // Reads the next frame that the grammar allows, skipping extensions.
  absl::Status NextFrame(FrameHeader* h, uint64_t* at) {
    for (;;) {
      if (absl::Status s = ReadFrameHeader(h, at); !s.ok()) return s;
      if (IsExtension(h->kind)) {
        if (absl::Status s = ReadCheckedPayload(*h, *at,
                                                limits.message.max_bytes);
            !s.ok()) {
          return s;
        }
        continue;
      }
      const Arc* arc = FindArc(state, h->kind);
      if (arc == nullptr) {
        return Fail(absl::StatusCode::kDataLoss, *at,
                    absl::StrFormat("unexpected %s frame (kind %u) %s",
                                    internal::FrameKindName(h->kind), h->kind,
                                    StateName(state)));
      }
      if (h->kind != static_cast<uint8_t>(FrameKind::kSectionBegin) &&
          h->kind != static_cast<uint8_t>(FrameKind::kIndex) &&
          h->kind != static_cast<uint8_t>(FrameKind::kEnd) &&
          h->section_id != current.id) {
        return Fail(absl::StatusCode::kDataLoss, *at,
                    absl::StrFormat("%s frame names section %u",
                                    internal::FrameKindName(h->kind),
                                    h->section_id));
      }
      return absl::OkStatus();
    }
  }

  // Checks a chunk header against the section so far.
  absl::Status CheckChunk(const FrameHeader& h, uint64_t at) {
    auto bad = [&](std::string what) {
      return Fail(absl::StatusCode::kDataLoss, at, what);
    };
    if (h.offset != current.raw_bytes) {
      return bad(absl::StrFormat("chunk at section offset %u, expected %u",
                                 h.offset, current.raw_bytes));
    }
    if (h.raw_len == 0) return bad("empty chunk");
    uint64_t limit = declared != 0 ? declared : limits.max_section_bytes;
    if (h.raw_len > limit - current.raw_bytes) {
      return bad(absl::StrFormat(
          "chunk of %u bytes at offset %u runs past the section's %s of %u",
          h.raw_len, h.offset, declared != 0 ? "declared size" : "limit",
          limit));
    }
    switch (static_cast<ChunkCodec>(h.codec)) {
      case ChunkCodec::kZero:
        if (h.payload_len != 0 || h.checksum != 0) {
          return bad("zero chunk carries a payload or checksum");
        }
        return absl::OkStatus();
      case ChunkCodec::kStored:
        if (h.raw_len > limits.max_chunk_bytes || h.payload_len != h.raw_len) {
          return bad(absl::StrFormat(
              "stored chunk of %u raw / %u payload bytes (chunk limit %u)",
              h.raw_len, h.payload_len, limits.max_chunk_bytes));
        }
        return absl::OkStatus();
      case ChunkCodec::kZstd:
        if (h.raw_len > limits.max_chunk_bytes ||
            h.payload_len > MaxEncodedBytes(h.raw_len)) {
          return bad(absl::StrFormat(
              "zstd chunk of %u raw / %u payload bytes exceeds the bounds "
              "(chunk limit %u)",
              h.raw_len, h.payload_len, limits.max_chunk_bytes));
        }
        return absl::OkStatus();
    }
    return bad(absl::StrFormat("unknown chunk codec %u", h.codec));
  }

  absl::Status WaitOne(std::deque<Pending>& q) {
    Pending p = std::move(q.front());
    q.pop_front();
    absl::Status s = p.slot->Wait();
    free_buffers.push_back(std::move(p.payload));
    if (!s.ok()) return Fail(s.code(), p.frame_offset, s.message());
    return absl::OkStatus();
  }
  absl::Status DrainAll(std::deque<Pending>& q) {
    absl::Status first;
    while (!q.empty()) {
      absl::Status s = WaitOne(q);
      if (first.ok()) first = s;
    }
    return first;
  }

  absl::Status Consume(Consume mode, const ChunkVisitor* visit,
                       Target* target,
                       const ChunkViewVisitor* view_visit = nullptr);
  absl::Status FinishSection(const FrameHeader& h, uint64_t at);
  absl::Status ReadTrailer(const FrameHeader& index_frame, uint64_t at);
};

absl::Status ImageReader::Impl::Consume(enum Consume mode,
                                        const ChunkVisitor* visit,
                                        Target* target,
                                        const ChunkViewVisitor* view_visit) {
  if (state != State::kInSection) {
    return absl::FailedPreconditionError("no section to read");
  }
  const bool parallel = pool != nullptr && (mode == Consume::kVerify ||
                                            mode == Consume::kBuffer);
  const size_t window = static_cast<size_t>(threads) * 4;
  std::deque<Pending> inflight;
  auto drain = [&] {
    absl::Status first = DrainAll(inflight);
    return first;
  };
  if (mode == Consume::kBuffer) {
    if (declared > target->limit) {
      return Fail(absl::StatusCode::kResourceExhausted, offset,
                  absl::StrFormat("section of %u bytes exceeds the %u-byte "
                                  "read limit",
                                  declared, target->limit));
    }
    if (target->vec != nullptr) {
      target->vec->assign(declared, 0);
      target->span = absl::MakeSpan(*target->vec);
    }
  }
  // Makes room in a growable target; fixed targets only check the limit.
  auto ensure = [&](uint64_t end, uint64_t at) -> absl::Status {
    if (end <= target->span.size()) return absl::OkStatus();
    if (end > target->limit || target->vec == nullptr) {
      return Fail(absl::StatusCode::kResourceExhausted, at,
                  absl::StrFormat("section exceeds the %u-byte read limit",
                                  target->limit));
    }
    if (absl::Status s = drain(); !s.ok()) return s;  // workers write there
    uint64_t grown = std::min<uint64_t>(target->span.size() * 2, target->limit);
    target->vec->resize(std::max(end, grown), 0);
    target->span = absl::MakeSpan(*target->vec);
    return absl::OkStatus();
  };

  for (;;) {
    FrameHeader h;
    uint64_t at;
    absl::Status s = NextFrame(&h, &at);
    if (s.ok() && h.kind == static_cast<uint8_t>(FrameKind::kSectionEnd)) {
      s = drain();
      if (s.ok()) s = FinishSection(h, at);
      if (s.ok() && mode == Consume::kBuffer && target->vec != nullptr) {
        target->vec->resize(current.raw_bytes);
      }
      return s;
    }
    if (s.ok()) s = CheckChunk(h, at);
    if (!s.ok()) {
      (void)drain();
      return s;
    }
    const uint64_t chunk_offset = current.raw_bytes;
    current.raw_bytes += h.raw_len;
    ++current.chunk_count;
    ++stats.chunks;
    stats.raw_bytes += h.raw_len;
    stats.stored_bytes = offset + h.payload_len;
    if (progress) progress(stats);
    const ChunkCodec codec = static_cast<ChunkCodec>(h.codec);
    if (mode == Consume::kBuffer) s = ensure(current.raw_bytes, at);

    if (codec == ChunkCodec::kZero) {
      stats.zero_bytes += h.raw_len;
      if (s.ok() && mode == Consume::kVisit) {
        if (view_visit != nullptr) {
          ChunkView v{chunk_offset, h.raw_len, codec, 0, {}, {}};
          s = (*view_visit)(v);
        } else {
          s = (*visit)(chunk_offset, h.raw_len, {});
        }
      }
      if (s.ok() && mode == Consume::kBuffer && target->vec == nullptr) {
        std::memset(target->span.data() + chunk_offset, 0, h.raw_len);
      }
      if (!s.ok()) {
        (void)drain();
        return Fail(s, at);
      }
      continue;
    }
    std::unique_ptr<ByteBuffer> payload = TakeBuffer();
    payload->resize(h.payload_len);
    if (s.ok()) s = ReadExact(payload->span(), "chunk payload", at);
    if (!s.ok()) {
      (void)drain();
      return s;
    }
    XXH3_64bits_update(&stream_digest, payload->data(), payload->size());
    if (mode == Consume::kSkip) {
      free_buffers.push_back(std::move(payload));
      continue;
    }
    if (!parallel) {
      absl::Span<uint8_t> dst;
      if (mode == Consume::kBuffer) {
        dst = target->span.subspan(chunk_offset, h.raw_len);
      } else {
        scratch.resize(h.raw_len);
        dst = scratch.span();
      }
      s = decoder.Decode(codec, *payload, h.checksum, dst);
      if (s.ok() && mode == Consume::kVisit) {
        if (view_visit != nullptr) {
          ChunkView v{chunk_offset, h.raw_len, codec, h.checksum, *payload,
                      dst};
          s = (*view_visit)(v);
        } else {
          s = (*visit)(chunk_offset, h.raw_len, dst);
        }
      }
      free_buffers.push_back(std::move(payload));
      if (!s.ok()) return Fail(s, at);
      continue;
    }
    uint8_t* dst = mode == Consume::kBuffer
                       ? target->span.data() + chunk_offset
                       : nullptr;
    Pending p{std::make_shared<internal::Slot<absl::Status>>(), at,
              std::move(payload)};
    pool->Schedule([this, in = p.payload.get(), dst, codec, len = h.raw_len,
                    sum = h.checksum, slot = p.slot](int worker) {
      absl::Span<uint8_t> out;
      if (dst != nullptr) {
        out = absl::MakeSpan(dst, len);
      } else {
        worker_scratch[worker].resize(len);
        out = worker_scratch[worker].span();
      }
      slot->Set(decoders[worker]->Decode(codec, *in, sum, out));
    });
    inflight.push_back(std::move(p));
    while (inflight.size() > window) {
      if (absl::Status w = WaitOne(inflight); !w.ok()) {
        (void)drain();
        return w;
      }
    }
  }
}

absl::Status ImageReader::Impl::FinishSection(const FrameHeader& h,
                                              uint64_t at) {
  if (absl::Status s = ReadCheckedPayload(h, at,
                                          internal::kSectionEndPayloadBytes);
      !s.ok()) {
    return s;
  }
  if (h.payload_len != internal::kSectionEndPayloadBytes) {
    return Fail(absl::StatusCode::kDataLoss, at,
                "section-end frame has the wrong size");
  }
  uint64_t raw = internal::GetU64(payload.data());
  uint64_t chunks = internal::GetU64(payload.data() + 8);
  uint64_t digest = internal::GetU64(payload.data() + 16);
  uint64_t actual = XXH3_64bits_digest(&section_digest);
  if (raw != current.raw_bytes || chunks != current.chunk_count ||
      digest != actual) {
    return Fail(absl::StatusCode::kDataLoss, at,
                absl::StrFormat("section end says %u bytes in %u chunks "
                                "(digest %016x); read %u bytes in %u chunks "
                                "(digest %016x)",
                                raw, chunks, digest, current.raw_bytes,
                                current.chunk_count, actual));
  }
  if (declared != 0 && current.raw_bytes != declared) {
    return Fail(absl::StatusCode::kDataLoss, at,
                absl::StrFormat("section declared %u bytes but holds %u",
                                declared, current.raw_bytes));
  }
  current.digest = digest;
  current.stored_bytes = offset - current.begin_offset;
  seen.push_back(current);
  ++stats.sections;
  stats.stored_bytes = offset;
  state = State::kBetweenSections;
  return absl::OkStatus();
}

absl::Status ImageReader::Impl::ReadTrailer(const FrameHeader& h,
                                            uint64_t index_at) {
  if (absl::Status s = ReadCheckedPayload(h, index_at,
                                          limits.message.max_bytes);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<SectionIndex> decoded =
      DecodeMessage<schema::SectionIndex>(payload, limits.message);
  if (!decoded.ok()) return Fail(decoded.status(), index_at);
  index = std::move(*decoded);
  state = State::kAfterIndex;

  auto entries = index.root().getEntries();
  if (entries.size() != seen.size()) {
    return Fail(absl::StatusCode::kDataLoss, index_at,
                absl::StrFormat("index lists %u sections, the stream holds %u",
                                entries.size(), seen.size()));
  }
  for (uint32_t i = 0; i < entries.size(); ++i) {
    auto e = entries[i];
    const SeenSection& s = seen[i];
    if (e.getId() != s.id || e.getDevice() != s.device ||
        e.getName() != s.name.c_str() || e.getKind() != s.kind ||
        e.getBeginOffset() != s.begin_offset ||
        e.getRawBytes() != s.raw_bytes ||
        e.getStoredBytes() != s.stored_bytes ||
        e.getChunkCount() != s.chunk_count || e.getDigest() != s.digest) {
      return Fail(absl::StatusCode::kDataLoss, index_at,
                  absl::StrFormat("index entry %u disagrees with section %u "
                                  "'%s' as read",
                                  i, s.id, s.name));
    }
  }

  // The end frame's digest covers the headers before it, not its own.
  uint64_t digest_before_end = 0;
  FrameHeader end;
  uint64_t end_at = offset;
  {
    XXH3_state_t copy = stream_digest;
    digest_before_end = XXH3_64bits_digest(&copy);
  }
  uint64_t frames_before_end = frames;
  if (absl::Status s = NextFrame(&end, &end_at); !s.ok()) return s;
  if (absl::Status s = ReadCheckedPayload(end, end_at,
                                          internal::kEndPayloadBytes);
      !s.ok()) {
    return s;
  }
  if (end.payload_len != internal::kEndPayloadBytes) {
    return Fail(absl::StatusCode::kDataLoss, end_at,
                "end-of-stream frame has the wrong size");
  }
  uint64_t sections = internal::GetU64(payload.data());
  uint64_t frame_count = internal::GetU64(payload.data() + 8);
  uint64_t index_offset = internal::GetU64(payload.data() + 16);
  uint64_t digest = internal::GetU64(payload.data() + 24);
  if (sections != seen.size() || frame_count != frames_before_end ||
      index_offset != index_at || digest != digest_before_end) {
    return Fail(absl::StatusCode::kDataLoss, end_at,
                "end-of-stream frame disagrees with the stream (section "
                "count, frame count, index offset or digest)");
  }
  state = State::kDone;
  return absl::OkStatus();
}

ImageReader::ImageReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ImageReader::~ImageReader() = default;

absl::StatusOr<std::unique_ptr<ImageReader>> ImageReader::Open(
    ByteSource* source, const Limits& limits, int threads) {
  auto impl = std::make_unique<Impl>();
  Impl& r = *impl;
  r.src = source;
  r.limits = limits;
  r.threads = threads > 0 ? threads
                          : static_cast<int>(std::thread::hardware_concurrency());
  if (r.threads < 1) r.threads = 1;
  XXH3_64bits_reset(&r.stream_digest);
  XXH3_64bits_reset(&r.section_digest);

  uint8_t header[internal::kStreamHeaderBytes];
  absl::StatusOr<size_t> n = source->Read(absl::MakeSpan(header));
  if (!n.ok()) return r.Fail(n.status(), 0);
  if (*n != sizeof(header)) {
    if (*n >= 8) {
      internal::StreamHeader sh;
      absl::Status magic = internal::DecodeStreamHeader(header, &sh);
      if (magic.code() == absl::StatusCode::kInvalidArgument) {
        return r.Fail(magic, 0);
      }
    }
    return r.Fail(absl::StatusCode::kDataLoss, 0,
                  absl::StrFormat("stream cut inside the stream header: %u of "
                                  "%u bytes present",
                                  *n, sizeof(header)));
  }
  r.offset = sizeof(header);
  internal::StreamHeader sh;
  if (absl::Status s = internal::DecodeStreamHeader(header, &sh); !s.ok()) {
    return r.Fail(s, 0);
  }
  if (sh.major != kFormatMajor) {
    return r.Fail(absl::StatusCode::kUnimplemented, 8,
                  absl::StrFormat("image format %u.%u is not readable by this "
                                  "version (reads %u.x)",
                                  sh.major, sh.minor, kFormatMajor));
  }

  FrameHeader h;
  uint64_t at;
  if (absl::Status s = r.ReadFrameHeader(&h, &at); !s.ok()) return s;
  if (h.kind != static_cast<uint8_t>(FrameKind::kManifest)) {
    return r.Fail(absl::StatusCode::kDataLoss, at,
                  absl::StrFormat("first frame is %s, expected manifest",
                                  internal::FrameKindName(h.kind)));
  }
  if (absl::Status s = r.ReadCheckedPayload(h, at, limits.message.max_bytes);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<Manifest> m =
      DecodeMessage<schema::Manifest>(r.payload, limits.message);
  if (!m.ok()) return r.Fail(m.status(), at);
  if (absl::Status s = internal::CheckManifest(m->root(), limits); !s.ok()) {
    return r.Fail(s, at);
  }
  if (m->root().getFormatMinor() != sh.minor) {
    return r.Fail(absl::StatusCode::kDataLoss, at,
                  "manifest and stream header disagree on the format version");
  }
  r.manifest = std::move(*m);
  if (r.threads > 1) {
    r.pool = std::make_unique<internal::WorkPool>(r.threads);
    r.worker_scratch.resize(r.threads);
    for (int i = 0; i < r.threads; ++i) {
      r.decoders.push_back(std::make_unique<ChunkDecoder>());
    }
  }
  r.stats.stored_bytes = r.offset;
  return std::unique_ptr<ImageReader>(new ImageReader(std::move(impl)));
}

const Manifest& ImageReader::manifest() const { return impl_->manifest; }
const SectionIndex& ImageReader::index() const { return impl_->index; }
void ImageReader::set_progress(
    std::function<void(const StreamStats&)> progress) {
  impl_->progress = std::move(progress);
}
const StreamStats& ImageReader::stats() const { return impl_->stats; }
uint64_t ImageReader::offset() const { return impl_->offset; }

absl::StatusOr<std::optional<SectionHeader>> ImageReader::NextSection() {
  Impl& r = *impl_;
  if (!r.error.ok()) return r.error;
  if (r.state == State::kDone) return std::nullopt;
  if (r.state == State::kInSection) {
    if (absl::Status s = SkipSection(/*verify=*/true); !s.ok()) return s;
  }
  for (;;) {
    FrameHeader h;
    uint64_t at;
    if (absl::Status s = r.NextFrame(&h, &at); !s.ok()) return s;
    if (h.kind == static_cast<uint8_t>(FrameKind::kIndex)) {
      if (absl::Status s = r.ReadTrailer(h, at); !s.ok()) return s;
      return std::nullopt;
    }
    // A section-begin frame.
    if (absl::Status s =
            r.ReadCheckedPayload(h, at, r.limits.message.max_bytes);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<SectionHeader> header =
        DecodeMessage<schema::SectionHeader>(r.payload, r.limits.message);
    if (!header.ok()) return r.Fail(header.status(), at);
    auto hr = header->root();
    if (hr.getId() != h.section_id || hr.getId() <= r.last_id) {
      return r.Fail(absl::StatusCode::kDataLoss, at,
                    absl::StrFormat("section id %u (frame says %u) is not "
                                    "above the previous id %u: duplicate or "
                                    "reordered section",
                                    hr.getId(), h.section_id, r.last_id));
    }
    if (r.seen.size() >= r.limits.max_sections) {
      return r.Fail(absl::StatusCode::kDataLoss, at,
                    absl::StrFormat("more than %u sections",
                                    r.limits.max_sections));
    }
    r.last_id = hr.getId();
    r.current = SeenSection{hr.getId(), hr.getDevice(), hr.getName().cStr(),
                            static_cast<uint16_t>(hr.which()), at, 0, 0, 0, 0};
    r.declared = hr.getDeclaredBytes();
    r.state = State::kInSection;
    XXH3_64bits_reset(&r.section_digest);
    absl::Status rule =
        internal::CheckSectionHeader(hr, r.manifest.root(), r.limits);
    if (rule.code() == absl::StatusCode::kUnimplemented && !hr.getCritical()) {
      // A newer writer's optional section: check and drop its data.
      if (absl::Status s = SkipSection(/*verify=*/true); !s.ok()) return s;
      continue;
    }
    if (!rule.ok()) return r.Fail(rule, at);
    return std::optional<SectionHeader>(std::move(*header));
  }
}

absl::Status ImageReader::ReadChunks(const ChunkVisitor& visit) {
  if (!impl_->error.ok()) return impl_->error;
  return impl_->Consume(Consume::kVisit, &visit, nullptr);
}

absl::Status ImageReader::ReadChunkViews(const ChunkViewVisitor& visit) {
  if (!impl_->error.ok()) return impl_->error;
  return impl_->Consume(Consume::kVisit, nullptr, nullptr, &visit);
}

absl::StatusOr<std::vector<uint8_t>> ImageReader::ReadSection(
    uint64_t max_bytes) {
  if (!impl_->error.ok()) return impl_->error;
  std::vector<uint8_t> out;
  Target target{{}, &out, max_bytes};
  absl::Status s = impl_->Consume(Consume::kBuffer, nullptr, &target);
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<uint64_t> ImageReader::ReadSectionInto(
    absl::Span<uint8_t> out) {
  if (!impl_->error.ok()) return impl_->error;
  Target target{out, nullptr, out.size()};
  absl::Status s = impl_->Consume(Consume::kBuffer, nullptr, &target);
  if (!s.ok()) return s;
  return impl_->current.raw_bytes;
}

absl::Status ImageReader::SkipSection(bool verify) {
  if (!impl_->error.ok()) return impl_->error;
  return impl_->Consume(verify ? Consume::kVerify : Consume::kSkip, nullptr,
                        nullptr);
}

}  // namespace vgpu::codec
