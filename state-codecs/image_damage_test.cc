// Damaged, hostile and future images: each is rejected with the right code
// and a message naming where, before any unverified byte reaches a caller.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zstd.h>

#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>

#include "state-codecs/image.h"
#include "state-codecs/internal/frame.h"
#include "state-codecs/sample.h"
#include "state-codecs/testdata/future_image.capnp.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

// Counts heap bytes allocated through operator new, so tests can assert that
// hostile lengths never turn into big allocations.
namespace {
std::atomic<size_t> g_live{0};
std::atomic<size_t> g_peak{0};

void* CountedAlloc(size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  size_t live = g_live += malloc_usable_size(p);
  size_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  return p;
}
void CountedFree(void* p) {
  if (p == nullptr) return;
  g_live -= malloc_usable_size(p);
  std::free(p);
}
}  // namespace

void* operator new(size_t n) { return CountedAlloc(n); }
void* operator new[](size_t n) { return CountedAlloc(n); }
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, size_t) noexcept { CountedFree(p); }

namespace vgpu::codec {
namespace {

// Heap bytes allocated at the peak of `fn`, above what was live before it.
template <typename F>
size_t PeakHeapDuring(F fn) {
  size_t base = g_live.load();
  g_peak = base;
  fn();
  return g_peak.load() - base;
}

using internal::FrameHeader;
using internal::FrameKind;
using ::testing::AnyOf;
using ::testing::HasSubstr;

std::vector<uint8_t> SmallImage(std::vector<std::vector<uint8_t>>* contents =
                                    nullptr) {
  SampleImageOptions opts;
  opts.vram_bytes = 16 << 10;
  opts.writer.chunk_size = 4096;
  opts.writer.threads = 1;
  MemorySink sink;
  auto written = WriteSampleImage(&sink, opts);
  EXPECT_TRUE(written.ok()) << written.status();
  if (contents != nullptr) *contents = *written;
  return sink.bytes();
}

struct FrameAt {
  size_t offset;
  FrameHeader header;
};

// Walks a well-formed image's frames.
std::vector<FrameAt> Frames(const std::vector<uint8_t>& image) {
  std::vector<FrameAt> out;
  size_t pos = internal::kStreamHeaderBytes;
  while (pos < image.size()) {
    FrameAt f{pos, {}};
    EXPECT_TRUE(internal::DecodeFrameHeader(image.data() + pos, &f.header).ok());
    out.push_back(f);
    pos += internal::kFrameHeaderBytes + f.header.payload_len;
  }
  return out;
}

void Rewrite(std::vector<uint8_t>& image, const FrameAt& f,
             const FrameHeader& h) {
  internal::EncodeFrameHeader(h, image.data() + f.offset);
}

// Reads everything; every byte a visitor sees must match the original
// section contents, damaged or not.
absl::Status ReadChecked(const std::vector<uint8_t>& image,
                         const std::vector<std::vector<uint8_t>>* expect,
                         int threads = 1) {
  MemorySource src(image, "damaged.vgi");
  auto reader = ImageReader::Open(&src, {}, threads);
  if (!reader.ok()) return reader.status();
  size_t section = 0;
  for (;; ++section) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) return next.status();
    if (!next->has_value()) return absl::OkStatus();
    absl::Status s = (*reader)->ReadChunks(
        [&](uint64_t off, uint64_t len, absl::Span<const uint8_t> data) {
          if (expect == nullptr) return absl::OkStatus();
          const std::vector<uint8_t>& want = (*expect)[section];
          EXPECT_LE(off + len, want.size());
          for (uint64_t i = 0; i < len && off + i < want.size(); ++i) {
            uint8_t got = data.empty() ? 0 : data[i];
            if (got != want[off + i]) {
              ADD_FAILURE() << "unverified byte handed out at section "
                            << section << " offset " << off + i;
              return absl::InternalError("bad byte");
            }
          }
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
  }
}

TEST(DamageTest, IntactImageReads) {
  std::vector<std::vector<uint8_t>> contents;
  std::vector<uint8_t> image = SmallImage(&contents);
  EXPECT_TRUE(ReadChecked(image, &contents).ok());
}

TEST(DamageTest, TruncationAtEveryByteIsDetected) {
  std::vector<std::vector<uint8_t>> contents;
  std::vector<uint8_t> image = SmallImage(&contents);
  std::map<size_t, bool> boundaries;
  for (const FrameAt& f : Frames(image)) boundaries[f.offset] = true;
  for (size_t len = 0; len < image.size(); ++len) {
    std::vector<uint8_t> cut(image.begin(), image.begin() + len);
    absl::Status s = ReadChecked(cut, &contents);
    ASSERT_EQ(s.code(), absl::StatusCode::kDataLoss) << len << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("damaged.vgi")) << len;
    if (boundaries.count(len)) {
      EXPECT_THAT(s.message(), HasSubstr("without an end-of-stream frame"))
          << len;
      EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("byte ", len)));
    } else if (len > internal::kStreamHeaderBytes) {
      EXPECT_THAT(s.message(), HasSubstr("stream cut inside")) << len;
    }
  }
}

TEST(DamageTest, BitFlipAnywhereIsDetectedBeforeDataIsHandedOut) {
  std::vector<std::vector<uint8_t>> contents;
  std::vector<uint8_t> image = SmallImage(&contents);
  for (size_t i = 0; i < image.size(); ++i) {
    std::vector<uint8_t> bad = image;
    bad[i] ^= static_cast<uint8_t>(1u << (i % 8));
    absl::Status s = ReadChecked(bad, &contents, i % 2 + 1);
    ASSERT_FALSE(s.ok()) << "flip at byte " << i << " went unnoticed";
    EXPECT_THAT(s.code(), AnyOf(absl::StatusCode::kDataLoss,
                                absl::StatusCode::kInvalidArgument))
        << i << ": " << s;
  }
}

TEST(DamageTest, WrongMagicSaysWhatItIs) {
  std::vector<uint8_t> image = SmallImage();
  std::memcpy(image.data(), "GIF89a..", 8);
  absl::Status s = ReadChecked(image, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not a vGPU state image"));
  EXPECT_THAT(s.message(), HasSubstr("byte 0"));
}

TEST(DamageTest, FutureMajorVersionIsRefused) {
  std::vector<uint8_t> image = SmallImage();
  internal::EncodeStreamHeader(kFormatMajor + 1, 0, image.data());
  absl::Status s = ReadChecked(image, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("image format 2.0"));
}

TEST(DamageTest, InflatedLengthsAreRefusedBeforeAllocating) {
  std::vector<uint8_t> image = SmallImage();
  std::vector<FrameAt> frames = Frames(image);
  // The manifest frame claims 4 GiB of payload.
  {
    std::vector<uint8_t> bad = image;
    FrameHeader h = frames[0].header;
    h.payload_len = 0xfffffff0u;
    Rewrite(bad, frames[0], h);
    absl::Status s;
    size_t peak = PeakHeapDuring([&] { s = ReadChecked(bad, nullptr); });
    EXPECT_LT(peak, 4u << 20) << "a 4 GiB claim must not be believed";
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(s.message(), HasSubstr("limit"));
    EXPECT_THAT(s.message(), HasSubstr("byte 16"));
  }
  int chunk_frames = 0;
  for (const FrameAt& f : frames) {
    if (f.header.kind != static_cast<uint8_t>(FrameKind::kChunk)) continue;
    ++chunk_frames;
    // Payload length far past any chunk.
    std::vector<uint8_t> bad = image;
    FrameHeader h = f.header;
    h.payload_len = 0xfffffff0u;
    Rewrite(bad, f, h);
    absl::Status s;
    size_t peak = PeakHeapDuring([&] { s = ReadChecked(bad, nullptr); });
    EXPECT_LT(peak, 4u << 20);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("byte ", f.offset)));
    // Raw length past the section's declared size.
    bad = image;
    h = f.header;
    h.raw_len = 1ull << 40;
    Rewrite(bad, f, h);
    peak = PeakHeapDuring([&] { s = ReadChecked(bad, nullptr); });
    EXPECT_LT(peak, 4u << 20);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), AnyOf(HasSubstr("runs past"),
                                   HasSubstr("bounds"),
                                   HasSubstr("chunk limit")));
  }
  EXPECT_GT(chunk_frames, 4);
}

// Builds streams by hand, with valid checks and digests, for shapes the
// writer never produces.
class StreamBuilder {
 public:
  explicit StreamBuilder(uint16_t minor = kFormatMinor) {
    XXH3_64bits_reset(&stream_);
    out_.resize(internal::kStreamHeaderBytes);
    internal::EncodeStreamHeader(kFormatMajor, minor, out_.data());
    Manifest m = SampleManifest(1 << 20);
    auto r = m.mutable_root();
    r.setMagic(kImageMagic);
    r.setFormatMajor(kFormatMajor);
    r.setFormatMinor(minor);
    r.initImageId(16);
    r.setChunkSize(4096);
    r.setZstdLevel(1);
    Message(FrameKind::kManifest, 0, EncodeMessageBytes(m.builder()));
  }

  void Frame(uint8_t kind, uint8_t codec, uint32_t id,
             const std::vector<uint8_t>& payload, uint64_t raw_len,
             uint64_t offset, uint64_t checksum) {
    FrameHeader h;
    h.kind = kind;
    h.codec = codec;
    h.section_id = id;
    h.payload_len = static_cast<uint32_t>(payload.size());
    h.raw_len = raw_len;
    h.offset = offset;
    h.checksum = checksum;
    uint8_t hdr[internal::kFrameHeaderBytes];
    internal::EncodeFrameHeader(h, hdr);
    XXH3_64bits_update(&stream_, hdr, sizeof(hdr));
    if (kind == static_cast<uint8_t>(FrameKind::kChunk)) {
      XXH3_64bits_update(&section_, hdr, sizeof(hdr));
      XXH3_64bits_update(&stream_, payload.data(), payload.size());
    }
    out_.insert(out_.end(), hdr, hdr + sizeof(hdr));
    out_.insert(out_.end(), payload.begin(), payload.end());
    ++frames_;
  }
  void Message(FrameKind kind, uint32_t id, const std::vector<uint8_t>& p) {
    Frame(static_cast<uint8_t>(kind), 0, id, p, p.size(), 0,
          internal::PayloadChecksum(p));
  }
  template <typename Builder>
  void Begin(uint32_t id, Builder& msg) {
    XXH3_64bits_reset(&section_);
    begin_ = out_.size();
    raw_ = chunks_ = 0;
    id_ = id;
    Message(FrameKind::kSectionBegin, id, EncodeMessageBytes(msg));
  }
  void Chunk(ChunkCodec codec, const std::vector<uint8_t>& payload,
             uint64_t raw_len, uint64_t checksum) {
    Frame(static_cast<uint8_t>(FrameKind::kChunk),
          static_cast<uint8_t>(codec), id_, payload, raw_len, raw_, checksum);
    raw_ += raw_len;
    ++chunks_;
  }
  void End() {
    std::vector<uint8_t> p(internal::kSectionEndPayloadBytes);
    uint64_t digest = XXH3_64bits_digest(&section_);
    internal::PutU64(p.data(), raw_);
    internal::PutU64(p.data() + 8, chunks_);
    internal::PutU64(p.data() + 16, digest);
    Message(FrameKind::kSectionEnd, id_, p);
    rows_.push_back({id_, raw_, chunks_, digest, begin_,
                     out_.size() - begin_});
  }
  // `kinds` defaults to vendor blobs.
  std::vector<uint8_t> Finish(const std::vector<std::string>& names,
                              std::vector<uint16_t> kinds = {}) {
    kinds.resize(names.size(), schema::SectionHeader::VENDOR_BLOB);
    SectionIndex index;
    auto entries = index.mutable_root().initEntries(
        static_cast<unsigned>(rows_.size()));
    for (size_t i = 0; i < rows_.size(); ++i) {
      auto e = entries[static_cast<unsigned>(i)];
      e.setId(rows_[i].id);
      e.setName(names[i]);
      e.setKind(kinds[i]);
      e.setBeginOffset(rows_[i].begin);
      e.setRawBytes(rows_[i].raw);
      e.setStoredBytes(rows_[i].stored);
      e.setChunkCount(rows_[i].chunks);
      e.setDigest(rows_[i].digest);
    }
    uint64_t index_at = out_.size();
    Message(FrameKind::kIndex, 0, EncodeMessageBytes(index.builder()));
    std::vector<uint8_t> end(internal::kEndPayloadBytes);
    internal::PutU64(end.data(), rows_.size());
    internal::PutU64(end.data() + 8, frames_);
    internal::PutU64(end.data() + 16, index_at);
    internal::PutU64(end.data() + 24, XXH3_64bits_digest(&stream_));
    Message(FrameKind::kEnd, 0, end);
    return out_;
  }

 private:
  struct Row {
    uint32_t id;
    uint64_t raw, chunks, digest, begin, stored;
  };
  std::vector<uint8_t> out_;
  XXH3_state_t stream_, section_;
  uint64_t frames_ = 0, raw_ = 0, chunks_ = 0;
  size_t begin_ = 0;
  uint32_t id_ = 0;
  std::vector<Row> rows_;
};

SectionHeader Blob(uint32_t id, const char* name, uint64_t declared) {
  SectionHeader h;
  auto r = h.mutable_root();
  r.setId(id);
  r.setName(name);
  r.setDeclaredBytes(declared);
  r.initVendorBlob().setVendor("test");
  return h;
}

void StoredChunk(StreamBuilder& b, const std::vector<uint8_t>& raw) {
  b.Chunk(ChunkCodec::kStored, raw, raw.size(), ChunkChecksum(raw));
}

TEST(DamageTest, BuilderMakesReadableStreams) {
  StreamBuilder b;
  SectionHeader h = Blob(1, "a", 100);
  b.Begin(1, h.builder());
  StoredChunk(b, std::vector<uint8_t>(100, 7));
  b.End();
  EXPECT_TRUE(ReadChecked(b.Finish({"a"}), nullptr).ok());
}

TEST(DamageTest, ZstdBombIsRejectedWithBoundedMemory) {
  // 64 MiB of zeros compress to a few KiB; the chunk claims 4 KiB.
  std::vector<uint8_t> big(64 << 20, 0);
  big[12345] = 1;  // not a zero chunk
  std::vector<uint8_t> frame(ZSTD_compressBound(big.size()));
  size_t n = ZSTD_compress(frame.data(), frame.size(), big.data(), big.size(),
                           1);
  ASSERT_FALSE(ZSTD_isError(n));
  frame.resize(n);

  StreamBuilder b;
  SectionHeader h = Blob(1, "bomb", 4096);
  b.Begin(1, h.builder());
  b.Chunk(ChunkCodec::kZstd, frame, 4096, ChunkChecksum(big));
  b.End();
  std::vector<uint8_t> bomb = b.Finish({"bomb"});
  absl::Status s;
  size_t peak = PeakHeapDuring([&] { s = ReadChecked(bomb, nullptr); });
  EXPECT_LT(peak, 1u << 20) << "the bomb inflated";
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("declares 67108864 content bytes"));
  EXPECT_THAT(s.message(), HasSubstr("section 1 'bomb'"));

  // Same bomb without a content size in the zstd frame header.
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  std::vector<uint8_t> unsized(ZSTD_compressBound(big.size()));
  ZSTD_outBuffer out{unsized.data(), unsized.size(), 0};
  ZSTD_inBuffer in{big.data(), big.size(), 0};
  ASSERT_EQ(ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end), 0u);
  ZSTD_freeCCtx(cctx);
  unsized.resize(out.pos);
  StreamBuilder b2;
  b2.Begin(1, h.builder());
  b2.Chunk(ChunkCodec::kZstd, unsized, 4096, ChunkChecksum(big));
  b2.End();
  std::vector<uint8_t> bomb2 = b2.Finish({"bomb"});
  peak = PeakHeapDuring([&] { s = ReadChecked(bomb2, nullptr); });
  EXPECT_LT(peak, 1u << 20) << "the bomb inflated";
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("unknown"));
}

TEST(DamageTest, DuplicateSectionIsRejected) {
  StreamBuilder b;
  SectionHeader h = Blob(1, "a", 10);
  for (int i = 0; i < 2; ++i) {
    b.Begin(1, h.builder());
    StoredChunk(b, std::vector<uint8_t>(10, 1));
    b.End();
  }
  absl::Status s = ReadChecked(b.Finish({"a", "a"}), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("duplicate or reordered section"));
}

TEST(DamageTest, MissingSectionIsRejected) {
  // Drop the third section (frames and all) from a real image.
  std::vector<uint8_t> image = SmallImage();
  std::vector<FrameAt> frames = Frames(image);
  size_t from = 0, to = 0;
  for (const FrameAt& f : frames) {
    if (f.header.section_id == 3 && from == 0) from = f.offset;
    if (f.header.section_id == 3) {
      to = f.offset + internal::kFrameHeaderBytes + f.header.payload_len;
    }
  }
  ASSERT_GT(to, from);
  image.erase(image.begin() + from, image.begin() + to);
  absl::Status s = ReadChecked(image, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("section"));

  // An index listing a section the stream lacks.
  StreamBuilder b;
  SectionHeader h = Blob(1, "a", 10);
  b.Begin(1, h.builder());
  StoredChunk(b, std::vector<uint8_t>(10, 1));
  b.End();
  std::vector<uint8_t> bytes = b.Finish({"a"});
  // Re-point: a stream ending right after the section (no index) is cut.
  std::vector<FrameAt> f2 = Frames(bytes);
  bytes.resize(f2[f2.size() - 2].offset);
  s = ReadChecked(bytes, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("without an end-of-stream frame"));
}

TEST(DamageTest, ChunkGapsAndOverlapsAreRejected) {
  StreamBuilder b;
  SectionHeader h = Blob(1, "a", 20);
  b.Begin(1, h.builder());
  std::vector<uint8_t> raw(10, 1);
  b.Frame(static_cast<uint8_t>(FrameKind::kChunk), 0, 1, raw, 10,
          /*offset=*/5, ChunkChecksum(raw));
  absl::Status s = ReadChecked(b.Finish({"a"}), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("chunk at section offset 5, expected 0"));
}

TEST(DamageTest, NewerMinorVersionWithOptionalExtrasIsRead) {
  StreamBuilder b(kFormatMinor + 1);
  b.Message(static_cast<FrameKind>(0x41), 0, {1, 2, 3});  // optional frame
  // A section of a kind this reader does not know, marked optional.
  capnp::MallocMessageBuilder future;
  auto fh = future.initRoot<future::SectionHeader>();
  fh.setId(1);
  fh.setName("tensor");
  fh.setCritical(false);
  fh.setDeclaredBytes(8);
  fh.initTensorCoreState().setSmCount(132);
  b.Begin(1, future);
  StoredChunk(b, std::vector<uint8_t>(8, 9));
  b.End();
  SectionHeader h = Blob(2, "known", 4);
  b.Begin(2, h.builder());
  StoredChunk(b, std::vector<uint8_t>(4, 4));
  b.End();
  std::vector<uint8_t> bytes = b.Finish(
      {"tensor", "known"},
      {static_cast<uint16_t>(future::SectionHeader::TENSOR_CORE_STATE)});

  MemorySource src(bytes);
  auto r = ImageReader::Open(&src);
  ASSERT_TRUE(r.ok()) << r.status();
  auto next = (*r)->NextSection();
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_TRUE(next->has_value());
  EXPECT_EQ((*next)->root().getName(), "known");
  auto data = (*r)->ReadSection(100);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(*data, std::vector<uint8_t>(4, 4));
  next = (*r)->NextSection();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_FALSE(next->has_value());
}

TEST(DamageTest, UnknownCriticalSectionIsRefused) {
  StreamBuilder b(kFormatMinor + 1);
  capnp::MallocMessageBuilder future;
  auto fh = future.initRoot<future::SectionHeader>();
  fh.setId(1);
  fh.setName("tensor");
  fh.setDeclaredBytes(8);  // critical by default
  fh.initTensorCoreState().setSmCount(132);
  b.Begin(1, future);
  StoredChunk(b, std::vector<uint8_t>(8, 9));
  b.End();
  absl::Status s = ReadChecked(b.Finish({"tensor"}), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("section 1 'tensor'"));
  EXPECT_THAT(s.message(), HasSubstr("unknown to this reader"));
}

TEST(DamageTest, UnknownRequiredFrameKindIsRefused) {
  StreamBuilder b;
  b.Message(static_cast<FrameKind>(0x20), 0, {1});
  absl::Status s = ReadChecked(b.Finish({}), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("unexpected unknown frame (kind 32)"));
}

TEST(DamageTest, HostileCapnpMessagesAreRefused) {
  MessageLimits limits;
  // Segment count 0xFFFFFFFF.
  std::vector<uint8_t> m(16, 0);
  std::memset(m.data(), 0xff, 4);
  auto r = DecodeMessage<schema::Manifest>(m, limits);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("4294967296 segments"));
  // Segment sizes that disagree with the length.
  std::vector<uint8_t> m2(16, 0);
  m2[4] = 200;
  r = DecodeMessage<schema::Manifest>(m2, limits);
  EXPECT_THAT(r.status().message(), HasSubstr("segment table declares"));
  // Deep nesting beyond the limit: a chain of lists of lists would need a
  // schema for it; a pointer loop (aliased pointers) is the closest hostile
  // shape: a root struct pointer pointing at itself.
  std::vector<uint8_t> loop(16, 0);
  loop[4] = 1;  // one segment of one word
  uint64_t self = 0xfffffffc;  // struct pointer, offset -1, no data
  std::memcpy(loop.data() + 8, &self, 8);
  auto l = DecodeMessage<schema::SectionIndex>(loop, limits);
  // Either refused, or harmlessly empty: never a crash or endless walk.
  if (l.ok()) {
    EXPECT_EQ(l->root().getEntries().size(), 0u);
  }
}

}  // namespace
}  // namespace vgpu::codec
