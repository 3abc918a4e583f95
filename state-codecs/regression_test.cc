// Inputs that once crashed a decoder must now be refused cleanly.
#include <dirent.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "state-codecs/image.h"

namespace vgpu::codec {
namespace {

constexpr char kDir[] = "state-codecs/testdata/regressions";

std::vector<std::string> Inputs() {
  std::vector<std::string> names;
  if (DIR* d = opendir(kDir)) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.substr(n.size() - 4) == ".bin") names.push_back(n);
    }
    closedir(d);
  }
  return names;
}

absl::Status Decode(const std::string& name, absl::Span<const uint8_t> b) {
  MessageLimits limits;
  if (name.rfind("manifest-", 0) == 0 || name.rfind("slow-manifest-", 0) == 0) {
    return DecodeMessage<schema::Manifest>(b, limits).status();
  }
  if (name.rfind("section-", 0) == 0) {
    if (b.empty()) return absl::DataLossError("empty");
    return (b[0] & 1) ? DecodeMessage<schema::SectionIndex>(b.subspan(1), limits)
                            .status()
                      : DecodeMessage<schema::SectionHeader>(b.subspan(1),
                                                             limits)
                            .status();
  }
  MemorySource src(b, name);
  auto reader = ImageReader::Open(&src, {}, 1);
  if (!reader.ok()) return reader.status();
  for (;;) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) return next.status();
    if (!next->has_value()) return absl::OkStatus();
    if (auto s = (*reader)->SkipSection(true); !s.ok()) return s;
  }
}

TEST(RegressionTest, EveryRecordedInputIsRefused) {
  std::vector<std::string> names = Inputs();
  ASSERT_GE(names.size(), 5u) << "regression inputs missing from " << kDir;
  for (const std::string& name : names) {
    auto bytes = ReadWholeFile(std::string(kDir) + "/" + name);
    ASSERT_TRUE(bytes.ok()) << name;
    absl::Status s = Decode(name, *bytes);
    if (name.rfind("slow-", 0) == 0) {
      // Valid but costly shapes: accepted or refused, never a crash. Their
      // cost is bounded by the check budget (see message.cc).
      EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kDataLoss)
          << name << ": " << s;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << ": " << s;
    }
  }
}

}  // namespace
}  // namespace vgpu::codec
