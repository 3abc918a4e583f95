// The checkpoint store on a full disk. A small tmpfs is mounted for the
// store (the test needs root or CAP_SYS_ADMIN, and is skipped, visibly,
// without it), with a ballast file beside it; crash_writer --fill then puts
// snapshots there until a Put fails. The filling runs in a child process so
// that this test outlives a store that takes its process down.
//
//   PutOnAFullDiskFailsWithResourceExhausted: the failing Put returns
//     RESOURCE_EXHAUSTED naming space, the process lives on, and in that
//     process every acknowledged snapshot is listed and reads back, nothing
//     else is listed, and a further Put fails the same way.
//   AcknowledgedSnapshotsSurviveTheDiskFilling: however the filling process
//     ended, once the ballast is deleted the store reopens with exactly the
//     acknowledged snapshots, whole; GC leaves no leak; Puts work again.
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "state-codecs/byte_io.h"
#include "store/crash/crash_util.h"
#include "store/crash/subprocess.h"
#include "store/store.h"
#include "store/testing/images.h"

namespace vgpu::store::crash {
namespace {

using ::testing::HasSubstr;

constexpr char kTmpfsOptions[] = "size=8m";
// Freed before the reopen: RocksDB's recovery rewrites the log it replays
// into a table file, so the reopen needs about as much space as the store
// took after its last flush.
constexpr uint64_t kBallastMiB = 4;
constexpr uint64_t kVramBytes = 256 << 10;  // incompressible: 256 KiB a Put

// What crash_writer --fill said.
struct Fill {
  ChildRun run;
  std::map<std::string, std::string> acked;  // id -> digest
  std::string in_flight;                     // last PUT, when not ACKed
  std::string in_flight_digest;
  bool failed = false;
  std::string failed_id, failed_code, failed_message;
  bool listed_seen = false;
  std::set<std::string> listed;
  std::map<std::string, std::string> reads;  // id -> digest or "ERR ..."
  std::string again_code, again_message;
  bool done = false;

  std::string Describe() const {
    size_t from = run.lines.size() > 4 ? run.lines.size() - 4 : 0;
    std::vector<std::string> tail(run.lines.begin() + from, run.lines.end());
    std::string err = run.stderr_text;
    if (err.size() > 600) err = "..." + err.substr(err.size() - 600);
    return absl::StrCat("the filling process ", DescribeStatus(run.status),
                        "; its last lines: ", absl::StrJoin(tail, " | "),
                        "; its stderr: ", err.empty() ? "(empty)" : err);
  }
};

class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/disk-full";
    // A run that died before its TearDown may have left its mount.
    umount2(dir_.c_str(), MNT_DETACH);
    std::filesystem::create_directories(dir_);
    if (mount("tmpfs", dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              kTmpfsOptions) != 0) {
      int e = errno;
      GTEST_SKIP() << "cannot mount a tmpfs (" << kTmpfsOptions << ") on "
                   << dir_ << ": mount(2) failed with " << strerrorname_np(e)
                   << " (" << std::strerror(e)
                   << "); this test needs root or CAP_SYS_ADMIN";
    }
    mounted_ = true;
  }
  void TearDown() override {
    store_.reset();
    if (mounted_ && umount2(dir_.c_str(), MNT_DETACH) != 0) {
      ADD_FAILURE() << "umount " << dir_ << ": " << std::strerror(errno);
    }
  }

  std::string StorePath() const { return dir_ + "/store"; }
  std::string BallastPath() const { return dir_ + "/ballast"; }

  uint64_t FreeBytes() const {
    struct statvfs v;
    if (statvfs(dir_.c_str(), &v) != 0) return 0;
    return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
  }

  // Ballast, then crash_writer --fill until a Put fails (or it dies).
  void RunFill(Fill* fill) {
    {
      std::ofstream ballast(BallastPath(), std::ios::binary);
      std::string mib(1 << 20, 'b');
      for (uint64_t i = 0; i < kBallastMiB; ++i) ballast << mib;
      ballast.close();
      ASSERT_TRUE(ballast.good()) << "writing the ballast";
    }
    KillPlan plan;
    plan.ms = 120000;  // it ends by itself long before
    auto run = RunChild({RunfilePath("store/crash/crash_writer"), "--fill",
                         StorePath(), absl::StrCat(kVramBytes)},
                        plan, ::testing::TempDir() + "/fill-stderr.txt");
    ASSERT_TRUE(run.ok()) << run.status();
    fill->run = std::move(*run);
    for (const std::string& line : fill->run.lines) {
      std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (f[0] == "PUT" && f.size() == 3) {
        fill->in_flight = f[1];
        fill->in_flight_digest = f[2];
      } else if (f[0] == "ACK" && f.size() == 3) {
        fill->acked[f[1]] = f[2];
        fill->in_flight.clear();
      } else if (f[0] == "FAILED" && f.size() >= 3) {
        fill->failed = true;
        fill->failed_id = f[1];
        fill->failed_code = f[2];
        fill->failed_message = f.size() > 3 ? f[3] : "";
        fill->in_flight.clear();
      } else if (f[0] == "LISTED") {
        fill->listed_seen = true;
        for (absl::string_view id : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
          if (id != "LISTED") fill->listed.insert(std::string(id));
        }
      } else if (f[0] == "READ" && f.size() == 3) {
        fill->reads[f[1]] = f[2];
      } else if (f[0] == "READERR" && f.size() >= 2) {
        fill->reads[f[1]] = "ERR " + line;
      } else if (f[0] == "AGAIN") {
        std::vector<std::string> g = absl::StrSplit(line, absl::MaxSplits(' ', 2));
        fill->again_code = g.size() > 1 ? g[1] : "";
        fill->again_message = g.size() > 2 ? g[2] : "";
      } else if (f[0] == "DONE") {
        fill->done = true;
      }
    }
    std::printf("filled %zu snapshots; %s; %llu bytes free now\n",
                fill->acked.size(), fill->Describe().c_str(),
                static_cast<unsigned long long>(FreeBytes()));
    std::fflush(stdout);
  }

  std::string dir_;
  bool mounted_ = false;
  std::unique_ptr<Store> store_;
};

// This once failed: on a full disk the first failing Put did not return: the
// process aborted inside RocksDB. Debian's librocksdb 7.8.3 is built with
// assertions, and the store keeps RocksDB's info LOG in the store directory,
// on the full filesystem. When the write batch hits ENOSPC, RocksDB's error
// handler logs to LOG; the first LOG write fails, the next one trips
// assert(sync_without_flush_called_) in
// WritableFileWriter::AssertFalseAndGetStatusForPrevError (via
// ErrorHandler::SetBGError -> HandleKnownErrors -> Log -> EnvLogger::Logv),
// and the process got SIGABRT. With the LOG elsewhere (DBOptions::db_log_dir
// or an info_log of the store's own) the Put returns RESOURCE_EXHAUSTED
// "storing chunks: IO error: No space left on device: While appending to
// file: .../000004.log". Store::Open now logs RocksDB warnings to stderr.
TEST_F(DiskFullTest, PutOnAFullDiskFailsWithResourceExhausted) {
  Fill fill;
  ASSERT_NO_FATAL_FAILURE(RunFill(&fill));
  ASSERT_TRUE(WIFEXITED(fill.run.status) && WEXITSTATUS(fill.run.status) == 0)
      << "a Put on a full disk took the process down: " << fill.Describe();
  ASSERT_TRUE(fill.done) << fill.Describe();
  ASSERT_GT(fill.acked.size(), 0u) << "not even one snapshot fit";
  ASSERT_TRUE(fill.failed);
  EXPECT_EQ(fill.failed_code, "RESOURCE_EXHAUSTED") << fill.failed_message;
  EXPECT_THAT(absl::AsciiStrToLower(fill.failed_message), HasSubstr("space"));

  // In the same process, after the failure: exactly the acknowledged
  // snapshots are listed (not the failed one) and each reads back.
  ASSERT_TRUE(fill.listed_seen);
  std::set<std::string> want;
  for (const auto& [id, digest] : fill.acked) want.insert(id);
  EXPECT_EQ(fill.listed, want);
  EXPECT_EQ(fill.listed.count(fill.failed_id), 0u);
  for (const auto& [id, digest] : fill.acked) {
    auto read = fill.reads.find(id);
    ASSERT_NE(read, fill.reads.end()) << id << " was not read back";
    EXPECT_EQ(read->second, digest) << id;
  }
  // A further Put on the still-full disk fails the same way.
  EXPECT_EQ(fill.again_code, "RESOURCE_EXHAUSTED") << fill.again_message;
}

TEST_F(DiskFullTest, AcknowledgedSnapshotsSurviveTheDiskFilling) {
  Fill fill;
  ASSERT_NO_FATAL_FAILURE(RunFill(&fill));
  // It stopped at the full disk: a Put failed, or it died inside one.
  ASSERT_TRUE(fill.failed || !fill.in_flight.empty()) << fill.Describe();
  ASSERT_GT(fill.acked.size(), 0u) << fill.Describe();

  // Give space back and reopen.
  ASSERT_TRUE(std::filesystem::remove(BallastPath()));
  StoreOptions o;
  o.path = StorePath();
  o.sync = true;
  auto opened = Store::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status() << " (with " << FreeBytes()
                           << " bytes free)";
  store_ = std::move(*opened);

  // Exactly the acknowledged snapshots; the Put the process was in when it
  // died, if it died, may have committed (it was not acknowledged), but one
  // that returned an error must not have.
  auto list = store_->List("");
  ASSERT_TRUE(list.ok()) << list.status();
  std::set<std::string> listed;
  for (const SnapshotInfo& s : *list) listed.insert(s.id);
  std::map<std::string, std::string> want = fill.acked;
  if (!fill.in_flight.empty() && listed.count(fill.in_flight)) {
    want[fill.in_flight] = fill.in_flight_digest;
  }
  std::set<std::string> want_ids;
  for (const auto& [id, digest] : want) want_ids.insert(id);
  EXPECT_EQ(listed, want_ids) << fill.Describe();
  if (fill.failed) {
    EXPECT_EQ(listed.count(fill.failed_id), 0u)
        << "the Put that failed is visible";
  }
  for (const auto& [id, digest] : want) {
    auto vm = ReadBack(*store_, id);
    ASSERT_TRUE(vm.ok()) << id << ": " << vm.status();
    EXPECT_EQ(DigestHex(ContentDigest(*vm)), digest) << id;
  }
  auto verify = store_->Verify("");
  ASSERT_TRUE(verify.ok()) << verify.status();
  EXPECT_TRUE(verify->damage.empty());
  EXPECT_EQ(verify->snapshots, want.size());

  // Chunks of the failed Put are garbage; GC frees all of them.
  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok()) << gc.status();
  auto stats = store_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->chunks, verify->chunks_checked) << "leaked chunks";

  // And the store takes snapshots again.
  auto image = testing::FullImage(DieInPutVm(kVramBytes, 2000000), 2000000);
  ASSERT_TRUE(image.ok());
  codec::MemorySource src(*image, "image after the disk was freed");
  auto info = store_->Put(&src, {});
  EXPECT_TRUE(info.ok()) << info.status();
}

}  // namespace
}  // namespace vgpu::store::crash
