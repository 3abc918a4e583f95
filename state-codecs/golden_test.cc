// Golden images: files written by earlier versions, read by this one.
#include <gtest/gtest.h>

#include "state-codecs/image.h"
#include "state-codecs/sample.h"

namespace vgpu::codec {
namespace {

std::string Golden(const char* name) {
  return std::string("state-codecs/testdata/golden/") + name;
}

TEST(GoldenTest, Version1_0SampleReadsWithTheSameContents) {
  auto bytes = ReadWholeFile(Golden("v1.0-sample.vgi"));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_EQ(bytes->size(), 72347u) << "golden files are never regenerated";

  // The contents the file was made from, regenerated from the same seed.
  SampleImageOptions opts;
  opts.vram_bytes = 256 << 10;
  opts.seed = 7;
  opts.writer.chunk_size = 16 << 10;
  MemorySink scratch;
  auto expected = WriteSampleImage(&scratch, opts);
  ASSERT_TRUE(expected.ok());

  for (int threads : {1, 2}) {
    MemorySource src(*bytes, "v1.0-sample.vgi");
    auto reader = ImageReader::Open(&src, {}, threads);
    ASSERT_TRUE(reader.ok()) << reader.status();
    auto m = (*reader)->manifest().root();
    EXPECT_EQ(m.getFormatMajor(), 1);
    EXPECT_EQ(m.getFormatMinor(), 0);
    EXPECT_EQ(m.getVm().getName(), "demo-vm");
    EXPECT_EQ(m.getCreation().getTool(), "vgpu-image sample");
    EXPECT_EQ(m.getChunkSize(), 16u << 10);
    ASSERT_EQ(m.getDevices().size(), 1u);
    EXPECT_EQ(m.getDevices()[0].getDescriptor().getArchitecture(),
              "bochs-dispi");
    size_t i = 0;
    for (;; ++i) {
      auto next = (*reader)->NextSection();
      ASSERT_TRUE(next.ok()) << next.status();
      if (!next->has_value()) break;
      auto data = (*reader)->ReadSection(1 << 30);
      ASSERT_TRUE(data.ok()) << data.status();
      ASSERT_LT(i, expected->size());
      EXPECT_EQ(*data, (*expected)[i]) << "section " << i;
    }
    EXPECT_EQ(i, 5u);
  }
}

}  // namespace
}  // namespace vgpu::codec
