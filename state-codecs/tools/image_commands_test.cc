// vgpu-image's commands, run as a user would, on real files.
#include "state-codecs/tools/image_commands.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "state-codecs/byte_io.h"

namespace vgpu::tools {
namespace {

using ::testing::HasSubstr;

struct Outcome {
  int rc;
  std::string out, err;
};

template <typename F>
Outcome Capture(bool json, F f) {
  std::ostringstream out, err;
  CommandIo io{out, err, json, false, 2};
  int rc = f(io);
  return {rc, out.str(), err.str()};
}

class ImageCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir();
    image_ = dir_ + "/sample.vgi";
    Outcome r = Capture(false, [&](const CommandIo& io) {
      return WriteSample(image_, 1 << 20, 3, 64 << 10, false, io);
    });
    ASSERT_EQ(r.rc, kExitOk) << r.err;
  }
  std::string dir_, image_;
};

TEST_F(ImageCommandsTest, ShowListsEverySectionInTextAndJson) {
  Outcome text = Capture(false, [&](const CommandIo& io) {
    return ShowImage(image_, io);
  });
  EXPECT_EQ(text.rc, kExitOk) << text.err;
  for (const char* s : {"dispi", "vram", "session", "ctx0", "fw-state",
                        "memory-region", "demo-vm", "bochs-dispi"}) {
    EXPECT_THAT(text.out, HasSubstr(s));
  }
  Outcome js = Capture(true, [&](const CommandIo& io) {
    return ShowImage(image_, io);
  });
  ASSERT_EQ(js.rc, kExitOk);
  auto j = nlohmann::json::parse(js.out);
  ASSERT_EQ(j["sections"].size(), 5u);
  EXPECT_EQ(j["sections"][1]["name"], "vram");
  EXPECT_EQ(j["sections"][1]["kind"], "memory-region");
  EXPECT_EQ(j["sections"][1]["rawBytes"], 7u * 128 * 1024);  // 7/8 present
  EXPECT_EQ(j["sections"][1]["detail"]["pageSize"], 4096);
  EXPECT_EQ(j["devices"][0]["strategy"], "emulation");
  EXPECT_EQ(j["format"], "1.0");
}

TEST_F(ImageCommandsTest, VerifyPassesIntactAndFailsDamaged) {
  Outcome ok = Capture(true, [&](const CommandIo& io) {
    return VerifyImage(image_, io);
  });
  EXPECT_EQ(ok.rc, kExitOk) << ok.out;
  EXPECT_EQ(nlohmann::json::parse(ok.out)["ok"], true);

  auto bytes = codec::ReadWholeFile(image_);
  ASSERT_TRUE(bytes.ok());
  std::string bad = dir_ + "/bad.vgi";
  (*bytes)[bytes->size() / 2] ^= 0x10;
  std::ofstream(bad, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  Outcome damaged = Capture(false, [&](const CommandIo& io) {
    return VerifyImage(bad, io);
  });
  EXPECT_EQ(damaged.rc, kExitDamaged);
  EXPECT_THAT(damaged.out, HasSubstr("DAMAGED image " + bad));
  EXPECT_THAT(damaged.out, HasSubstr("byte "));

  // Trailing garbage after a complete image is not an image.
  std::string trailing = dir_ + "/trailing.vgi";
  auto good = codec::ReadWholeFile(image_);
  good->push_back(0);
  std::ofstream(trailing, std::ios::binary)
      .write(reinterpret_cast<const char*>(good->data()), good->size());
  Outcome t = Capture(false, [&](const CommandIo& io) {
    return VerifyImage(trailing, io);
  });
  EXPECT_EQ(t.rc, kExitDamaged);
  EXPECT_THAT(t.out, HasSubstr("trailing bytes"));

  Outcome missing = Capture(false, [&](const CommandIo& io) {
    return VerifyImage(dir_ + "/nope.vgi", io);
  });
  EXPECT_EQ(missing.rc, kExitUsage);
}

TEST_F(ImageCommandsTest, RecodeIsByteIdentical) {
  Outcome r = Capture(false, [&](const CommandIo& io) {
    return RecodeImage(image_, dir_ + "/recoded.vgi", io);
  });
  EXPECT_EQ(r.rc, kExitOk) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("identical"));
  EXPECT_EQ(*codec::ReadWholeFile(image_),
            *codec::ReadWholeFile(dir_ + "/recoded.vgi"));
}

TEST_F(ImageCommandsTest, CatWritesTheSectionBytes) {
  std::string out = dir_ + "/session.bin";
  Outcome r = Capture(false, [&](const CommandIo& io) {
    return CatSection(image_, "session", out, io);
  });
  ASSERT_EQ(r.rc, kExitOk) << r.err;
  auto bytes = codec::ReadWholeFile(out);
  ASSERT_TRUE(bytes.ok());
  std::string text(bytes->begin(), bytes->end());
  EXPECT_THAT(text, HasSubstr("000199 clCreateBuffer"));

  Outcome by_id = Capture(false, [&](const CommandIo& io) {
    return CatSection(image_, "2", dir_ + "/vram.bin", io);
  });
  ASSERT_EQ(by_id.rc, kExitOk);
  EXPECT_EQ(codec::ReadWholeFile(dir_ + "/vram.bin")->size(), 7u * 128 * 1024);

  Outcome none = Capture(false, [&](const CommandIo& io) {
    return CatSection(image_, "nosuch", dir_ + "/x.bin", io);
  });
  EXPECT_EQ(none.rc, kExitUsage);
  EXPECT_THAT(none.err, HasSubstr("no section 'nosuch'"));
}

}  // namespace
}  // namespace vgpu::tools
