#include "migrator/internal/byte_pipe.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace vgpu::migrator::internal {
namespace {

TEST(BytePipe, ReadFillsTheBufferAcrossWritesAndEndsCleanly) {
  BytePipe pipe(1 << 10, "test pipe");
  std::thread writer([&] {
    for (int i = 0; i < 100; ++i) {
      std::vector<uint8_t> block(100, static_cast<uint8_t>(i));
      ASSERT_TRUE(pipe.Write(block).ok());
    }
    pipe.CloseWrite();
  });
  std::vector<uint8_t> out(10000);
  auto n = pipe.Read(absl::MakeSpan(out));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 10000u);  // whole, although it arrived in 100-byte pieces
  for (int i = 0; i < 100; ++i) EXPECT_EQ(out[i * 100 + 99], i);
  auto end = pipe.Read(absl::MakeSpan(out));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(*end, 0u);
  writer.join();
  EXPECT_EQ(pipe.bytes_written(), 10000u);
}

TEST(BytePipe, ShortReadOnlyAtTheEnd) {
  BytePipe pipe(1 << 20, "p");
  std::vector<uint8_t> data(300, 7);
  ASSERT_TRUE(pipe.Write(data).ok());
  pipe.CloseWrite();
  std::vector<uint8_t> out(1000);
  auto n = pipe.Read(absl::MakeSpan(out));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 300u);
}

TEST(BytePipe, WriterErrorReachesTheReaderAndDropsTheTail) {
  BytePipe pipe(1 << 20, "p");
  std::vector<uint8_t> data(300, 7);
  ASSERT_TRUE(pipe.Write(data).ok());
  pipe.CloseWrite(absl::DataLossError("source broke"));
  std::vector<uint8_t> out(100);
  auto n = pipe.Read(absl::MakeSpan(out));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss);
}

TEST(BytePipe, ReaderCloseFailsABlockedWriter) {
  BytePipe pipe(100, "p");
  std::vector<uint8_t> data(100, 1);
  ASSERT_TRUE(pipe.Write(data).ok());  // full now
  absl::Status blocked;
  std::thread writer([&] { blocked = pipe.Write(data); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  pipe.CloseRead(absl::UnavailableError("loader gave up"));
  writer.join();
  EXPECT_EQ(blocked.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(blocked.message(), "loader gave up");
}

TEST(BytePipe, CapacityBoundsQueuedBytes) {
  BytePipe pipe(1000, "p");
  std::vector<uint8_t> data(600, 1);
  ASSERT_TRUE(pipe.Write(data).ok());
  std::atomic<bool> second_done{false};
  std::thread writer([&] {
    ASSERT_TRUE(pipe.Write(data).ok());
    second_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(second_done) << "1200 bytes queued in a 1000-byte pipe";
  std::vector<uint8_t> out(600);
  ASSERT_TRUE(pipe.Read(absl::MakeSpan(out)).ok());
  writer.join();
  EXPECT_TRUE(second_done);
}

}  // namespace
}  // namespace vgpu::migrator::internal
