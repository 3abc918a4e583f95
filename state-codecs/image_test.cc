// Round trips of the image format: every section kind, every read path,
// writer options, incremental manifests and streaming writes.
#include "state-codecs/image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "state-codecs/sample.h"

namespace vgpu::codec {
namespace {

using ::testing::HasSubstr;

struct ReadBack {
  std::vector<std::string> names;
  std::vector<SectionKind> kinds;
  std::vector<std::vector<uint8_t>> contents;
};

enum class Path { kBuffer, kChunks };

ReadBack ReadAll(const std::vector<uint8_t>& image, Path path, int threads) {
  ReadBack out;
  MemorySource src(image, "test-image");
  auto reader = ImageReader::Open(&src, {}, threads);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return out;
  for (;;) {
    auto next = (*reader)->NextSection();
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !next->has_value()) break;
    out.names.push_back((*next)->root().getName().cStr());
    out.kinds.push_back((*next)->root().which());
    if (path == Path::kBuffer) {
      auto data = (*reader)->ReadSection(1ull << 32);
      EXPECT_TRUE(data.ok()) << data.status();
      out.contents.push_back(data.ok() ? *data : std::vector<uint8_t>());
    } else {
      std::vector<uint8_t> data;
      EXPECT_TRUE((*reader)
                      ->ReadChunks([&](uint64_t off, uint64_t len,
                                       absl::Span<const uint8_t> bytes) {
                        EXPECT_EQ(off, data.size());
                        if (bytes.empty()) {
                          data.resize(data.size() + len, 0);
                        } else {
                          EXPECT_EQ(bytes.size(), len);
                          data.insert(data.end(), bytes.begin(), bytes.end());
                        }
                        return absl::OkStatus();
                      })
                      .ok());
      out.contents.push_back(std::move(data));
    }
  }
  return out;
}

struct Config {
  uint32_t chunk_size;
  int level;
  int threads;
};

class RoundTripTest : public ::testing::TestWithParam<Config> {};

TEST_P(RoundTripTest, EverySectionKindReadsBackExactly) {
  SampleImageOptions opts;
  opts.vram_bytes = 2 << 20;
  opts.writer.chunk_size = GetParam().chunk_size;
  opts.writer.zstd_level = GetParam().level;
  opts.writer.threads = GetParam().threads;
  MemorySink sink;
  auto written = WriteSampleImage(&sink, opts);
  ASSERT_TRUE(written.ok()) << written.status();

  for (Path path : {Path::kBuffer, Path::kChunks}) {
    for (int threads : {1, 2}) {
      ReadBack back = ReadAll(sink.bytes(), path, threads);
      ASSERT_EQ(back.contents.size(), 5u);
      EXPECT_EQ(back.names, (std::vector<std::string>{
                                "dispi", "vram", "session", "ctx0",
                                "fw-state"}));
      EXPECT_EQ(back.kinds, (std::vector<SectionKind>{
                                schema::SectionHeader::REGISTER_BANK,
                                schema::SectionHeader::MEMORY_REGION,
                                schema::SectionHeader::API_SESSION_LOG,
                                schema::SectionHeader::CONTEXT_IMAGE,
                                schema::SectionHeader::VENDOR_BLOB}));
      for (size_t i = 0; i < back.contents.size(); ++i) {
        EXPECT_EQ(back.contents[i], (*written)[i]) << "section " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Options, RoundTripTest,
    ::testing::Values(Config{4096, 1, 1}, Config{256 << 10, 1, 2},
                      Config{1 << 20, 3, 2}, Config{65536, -5, 1},
                      Config{16 << 20, 1, 2}, Config{256 << 10, 0, 2}));

TEST(ImageTest, LevelZeroStoresChunksUncompressed) {
  // Compressible bytes: level 1 shrinks them, level 0 must not.
  std::vector<uint8_t> raw(1 << 20);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<uint8_t>(i % 7 + 1);
  EncodedChunk stored, packed;
  ASSERT_TRUE(ChunkEncoder(0).Encode(raw, &stored).ok());
  ASSERT_TRUE(ChunkEncoder(1).Encode(raw, &packed).ok());
  EXPECT_EQ(stored.codec, ChunkCodec::kStored);
  ASSERT_EQ(stored.payload.size(), raw.size());
  EXPECT_EQ(0, std::memcmp(stored.payload.data(), raw.data(), raw.size()));
  EXPECT_EQ(packed.codec, ChunkCodec::kZstd);
  std::vector<uint8_t> zeros(4096);
  ASSERT_TRUE(ChunkEncoder(0).Encode(zeros, &stored).ok());
  EXPECT_EQ(stored.codec, ChunkCodec::kZero);  // still elided
}

TEST(ImageTest, WriterOutputIsIndependentOfThreadCount) {
  std::vector<uint8_t> first;
  for (int threads : {1, 2, 4}) {
    SampleImageOptions opts;
    opts.vram_bytes = 1 << 20;
    opts.writer.chunk_size = 16384;
    opts.writer.threads = threads;
    MemorySink sink;
    ASSERT_TRUE(WriteSampleImage(&sink, opts).ok());
    if (first.empty()) {
      first = sink.bytes();
    } else {
      EXPECT_EQ(sink.bytes(), first) << threads << " threads";
    }
  }
}

TEST(ImageTest, ManifestSurvivesWithDescriptorsAndParent) {
  Manifest m = SampleManifest(1 << 20);
  auto parent = m.mutable_root().initParent();
  std::vector<uint8_t> parent_id(16, 0xab);
  parent.setImageId(kj::arrayPtr(parent_id.data(), parent_id.size()));
  parent.setName("monday");
  MemorySink sink;
  auto w = ImageWriter::Create(&sink, m, {});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Finish().ok());

  MemorySource src(sink.bytes());
  auto r = ImageReader::Open(&src);
  ASSERT_TRUE(r.ok()) << r.status();
  auto root = (*r)->manifest().root();
  EXPECT_EQ(root.getMagic(), kImageMagic);
  EXPECT_EQ(root.getFormatMajor(), kFormatMajor);
  EXPECT_EQ(root.getImageId().size(), 16u);
  EXPECT_EQ(root.getParent().getName(), "monday");
  EXPECT_EQ(root.getParent().getImageId()[3], 0xab);
  EXPECT_EQ(root.getVm().getName(), "demo-vm");
  ASSERT_EQ(root.getDevices().size(), 1u);
  auto d = root.getDevices()[0].getDescriptor();
  EXPECT_EQ(d.getStrategy(), schema::Strategy::EMULATION);
  EXPECT_EQ(d.getArchitecture(), "bochs-dispi");
  EXPECT_EQ(d.getVramBytes(), 1u << 20);
  EXPECT_EQ(d.getFeatures()[1], "fill-copy-blit");
  auto next = (*r)->NextSection();
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ((*r)->index().root().getEntries().size(), 0u);
}

SectionHeader BlobHeader(const char* name, uint64_t declared) {
  SectionHeader h;
  auto r = h.mutable_root();
  r.setName(name);
  r.setDeclaredBytes(declared);
  r.initVendorBlob().setVendor("test");
  return h;
}

TEST(ImageTest, SmallWritesZeroRunsAndUnknownSizeRoundTrip) {
  MemorySink sink;
  WriterOptions opts;
  opts.chunk_size = 4096;
  opts.threads = 2;
  auto w = ImageWriter::Create(&sink, SampleManifest(1 << 20), opts);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->BeginSection(BlobHeader("log", 0)).ok());
  std::vector<uint8_t> expect;
  std::vector<uint8_t> piece = RandomBytes(1000, 3);
  for (int i = 0; i < 37; ++i) {  // 37 writes of 1000 bytes: ragged chunks
    ASSERT_TRUE((*w)->Write(piece).ok());
    expect.insert(expect.end(), piece.begin(), piece.end());
  }
  ASSERT_TRUE((*w)->WriteZeros(1 << 20).ok());
  expect.resize(expect.size() + (1 << 20), 0);
  ASSERT_TRUE((*w)->Write(piece).ok());
  expect.insert(expect.end(), piece.begin(), piece.end());
  ASSERT_TRUE((*w)->EndSection().ok());
  ASSERT_TRUE((*w)->Finish().ok());
  // A 1 MiB zero run costs one frame header, not 256 of them.
  EXPECT_LT(sink.bytes().size(), 50000u);
  EXPECT_EQ((*w)->stats().zero_bytes, 1u << 20);

  ReadBack back = ReadAll(sink.bytes(), Path::kBuffer, 2);
  ASSERT_EQ(back.contents.size(), 1u);
  EXPECT_EQ(back.contents[0], expect);
  back = ReadAll(sink.bytes(), Path::kChunks, 1);
  ASSERT_EQ(back.contents.size(), 1u);
  EXPECT_EQ(back.contents[0], expect);
}

TEST(ImageTest, AllZeroSectionCostsAlmostNothing) {
  MemorySink sink;
  auto w = ImageWriter::Create(&sink, SampleManifest(64 << 20), {});
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> zeros(64 << 20, 0);
  ASSERT_TRUE((*w)->AddSection(BlobHeader("vram", zeros.size()), zeros).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_LT(sink.bytes().size(), 2048u) << "64 MiB of zeros";
  ReadBack back = ReadAll(sink.bytes(), Path::kBuffer, 2);
  ASSERT_EQ(back.contents.size(), 1u);
  EXPECT_EQ(back.contents[0], zeros);
}

TEST(ImageTest, WriterRefusesBadSectionsBeforeWritingThem) {
  MemorySink sink;
  auto w = ImageWriter::Create(&sink, SampleManifest(1 << 20), {});
  ASSERT_TRUE(w.ok());
  SectionHeader h;
  auto r = h.mutable_root();
  r.setName("vram");
  r.setDevice(7);  // not in the manifest
  r.initVendorBlob();
  size_t before = sink.bytes().size();
  auto id = (*w)->BeginSection(h);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("device 7"));
  EXPECT_EQ(sink.bytes().size(), before);

  SectionHeader region;
  auto m = region.mutable_root();
  m.setName("vram");
  m.setDeclaredBytes(8192);
  auto mr = m.initMemoryRegion();
  mr.setPageSize(4096);
  mr.setTotalPages(4);
  auto ranges = mr.initPresentRanges(2);
  ranges[0].setFirst(2);
  ranges[0].setCount(1);
  ranges[1].setFirst(1);  // unsorted
  ranges[1].setCount(1);
  id = (*w)->BeginSection(region);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("unsorted"));
}

TEST(ImageTest, WrongAmountOfDataFailsTheSection) {
  MemorySink sink;
  auto w = ImageWriter::Create(&sink, SampleManifest(1 << 20), {});
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> data(100, 1);
  auto id = (*w)->AddSection(BlobHeader("blob", 200), data);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("declared 200 bytes"));
  // The writer stays failed: a half-written stream cannot be resumed.
  EXPECT_FALSE((*w)->Finish().ok());
}

TEST(ImageTest, FileSinkAppearsOnlyWhenFinished) {
  std::string path = ::testing::TempDir() + "/atomic.vgi";
  std::remove(path.c_str());
  {
    auto sink = OpenFileSink(path);
    ASSERT_TRUE(sink.ok());
    auto w = ImageWriter::Create(sink->get(), SampleManifest(1 << 20), {});
    ASSERT_TRUE(w.ok());
    // Dropped without Finish: nothing under either name.
  }
  EXPECT_FALSE(ReadWholeFile(path).ok());
  EXPECT_FALSE(ReadWholeFile(path + ".partial").ok());

  auto sink = OpenFileSink(path);
  ASSERT_TRUE(sink.ok());
  SampleImageOptions opts;
  opts.vram_bytes = 1 << 20;
  auto written = WriteSampleImage(sink->get(), opts);
  ASSERT_TRUE(written.ok()) << written.status();
  auto bytes = ReadWholeFile(path);
  ASSERT_TRUE(bytes.ok());
  ReadBack back = ReadAll(*bytes, Path::kBuffer, 2);
  ASSERT_EQ(back.contents.size(), 5u);
  EXPECT_EQ(back.contents[1], (*written)[1]);
}

TEST(ImageTest, ReadSectionRespectsTheCallersLimit) {
  SampleImageOptions opts;
  opts.vram_bytes = 1 << 20;
  MemorySink sink;
  ASSERT_TRUE(WriteSampleImage(&sink, opts).ok());
  MemorySource src(sink.bytes());
  auto r = ImageReader::Open(&src);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->NextSection().ok());  // dispi
  auto next = (*r)->NextSection();        // vram
  ASSERT_TRUE(next.ok() && next->has_value());
  auto data = (*r)->ReadSection(4096);
  EXPECT_EQ(data.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(data.status().message(), HasSubstr("'vram'"));
}

}  // namespace
}  // namespace vgpu::codec

namespace vgpu::codec {
namespace {

TEST(ImageTest, ReadSectionIntoCallerMemoryOverwritesEverything) {
  MemorySink sink;
  WriterOptions opts;
  opts.chunk_size = 8192;
  auto w = ImageWriter::Create(&sink, SampleManifest(1 << 20), opts);
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> expect = VramLikeBytes(300000, 5);
  std::fill(expect.begin() + 100000, expect.begin() + 200000, 0);  // zeros
  ASSERT_TRUE((*w)->AddSection(BlobHeader("v", expect.size()), expect).ok());
  ASSERT_TRUE((*w)->AddSection(BlobHeader("w", 0), expect).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_GT((*w)->stats().zero_bytes, 0u);

  for (int threads : {1, 2}) {
    MemorySource src(sink.bytes());
    auto r = ImageReader::Open(&src, {}, threads);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE((*r)->NextSection().ok());
    std::vector<uint8_t> out(expect.size(), 0xee);  // dirty memory
    auto n = (*r)->ReadSectionInto(absl::MakeSpan(out));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, expect.size());
    EXPECT_EQ(out, expect);
    // An undeclared-size section that does not fit is refused.
    ASSERT_TRUE((*r)->NextSection().ok());
    std::vector<uint8_t> small(1000);
    auto m = (*r)->ReadSectionInto(absl::MakeSpan(small));
    EXPECT_EQ(m.status().code(), absl::StatusCode::kResourceExhausted);
  }
}

}  // namespace
}  // namespace vgpu::codec
