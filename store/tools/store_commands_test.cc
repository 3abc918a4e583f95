// vgpu-store's commands against a real store on disk.
#include "store/tools/store_commands.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "store/testing/images.h"

namespace vgpu::store::tools {
namespace {

using ::testing::HasSubstr;

struct Outcome {
  int rc;
  std::string out, err;
};

class StoreCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/store-commands";
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    StoreOptions o;
    o.path = dir_ + "/db";
    o.sync = false;
    auto s = Store::Open(o);
    ASSERT_TRUE(s.ok());
    store_ = std::move(*s);
    vm_ = testing::MakeVm(1 << 20, 4);
    auto bytes = testing::FullImage(vm_, 77);
    ASSERT_TRUE(bytes.ok());
    image_ = dir_ + "/vm1.vgi";
    std::ofstream(image_, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  }
  template <typename F>
  Outcome Run(bool json, F f) {
    std::ostringstream out, err;
    StoreIo io{out, err, json, false};
    int rc = f(io);
    return {rc, out.str(), err.str()};
  }

  std::string dir_, image_;
  std::unique_ptr<Store> store_;
  testing::VmState vm_;
};

TEST_F(StoreCommandsTest, PutListShowExportVerifyDelete) {
  PutOptions po;
  po.tag = "nightly";
  Outcome put = Run(false, [&](const StoreIo& io) {
    return PutImage(*store_, image_, po, io);
  });
  ASSERT_EQ(put.rc, 0) << put.err;
  EXPECT_THAT(put.out, HasSubstr(testing::IdHex(77)));

  Outcome again = Run(false, [&](const StoreIo& io) {
    return PutImage(*store_, image_, po, io);
  });
  EXPECT_EQ(again.rc, 1);
  EXPECT_THAT(again.err, HasSubstr("already in the store"));

  Outcome list = Run(true, [&](const StoreIo& io) {
    return ListSnapshots(*store_, "", io);
  });
  ASSERT_EQ(list.rc, 0);
  auto j = nlohmann::json::parse(list.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["id"], testing::IdHex(77));
  EXPECT_EQ(j[0]["tag"], "nightly");
  EXPECT_EQ(j[0]["vm"], "vm1");

  Outcome show = Run(false, [&](const StoreIo& io) {
    return ShowSnapshot(*store_, testing::IdHex(77), io);
  });
  EXPECT_EQ(show.rc, 0);
  EXPECT_THAT(show.out, HasSubstr("emulation:bochs-dispi-0"));

  std::string exported = dir_ + "/out.vgi";
  Outcome exp = Run(false, [&](const StoreIo& io) {
    return ExportImage(*store_, testing::IdHex(77), exported, io);
  });
  ASSERT_EQ(exp.rc, 0) << exp.err;
  std::ifstream in(exported, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  auto decoded = testing::Decode(bytes);
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(decoded->vram == vm_.vram);

  Outcome verify = Run(true, [&](const StoreIo& io) {
    return VerifyStore(*store_, "", io);
  });
  EXPECT_EQ(verify.rc, 0);
  EXPECT_EQ(nlohmann::json::parse(verify.out)["ok"], true);

  Outcome del = Run(false, [&](const StoreIo& io) {
    return DeleteSnapshot(*store_, testing::IdHex(77), io);
  });
  EXPECT_EQ(del.rc, 0);
  Outcome missing = Run(false, [&](const StoreIo& io) {
    return ShowSnapshot(*store_, testing::IdHex(77), io);
  });
  EXPECT_EQ(missing.rc, 2);
  EXPECT_THAT(missing.err, HasSubstr("no snapshot"));
  Outcome stats = Run(true, [&](const StoreIo& io) {
    return ShowStats(*store_, io);
  });
  EXPECT_EQ(nlohmann::json::parse(stats.out)["chunks"], 0);
}

}  // namespace
}  // namespace vgpu::store::tools
