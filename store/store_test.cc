// The checkpoint store on a real RocksDB on disk: round trips, dedup,
// incremental chains, deletes, GC, verify, limits.
#include "store/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "state-codecs/sample.h"
#include "store/testing/corrupt.h"
#include "store/testing/images.h"

namespace vgpu::store {
namespace {

using ::testing::HasSubstr;
using testing::Decode;
using testing::FullImage;
using testing::IdHex;
using testing::IncrementalImage;
using testing::MakeVm;
using testing::Mutate;
using testing::VmState;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/store-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(path_);
    Reopen();
  }
  void Reopen(StoreOptions o = {}) {
    store_.reset();
    o.path = path_;
    o.sync = false;  // durability is the crash test's subject
    auto s = Store::Open(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }
  absl::StatusOr<SnapshotInfo> Put(const std::vector<uint8_t>& image,
                                   const std::string& tag = "") {
    codec::MemorySource src(image, "test image");
    PutOptions o;
    o.tag = tag;
    return store_->Put(&src, o);
  }
  absl::StatusOr<std::vector<uint8_t>> ReadBack(const std::string& id) {
    codec::MemorySink sink;
    if (auto s = store_->Read(id, &sink, {}); !s.ok()) return s;
    return sink.bytes();
  }
  void ExpectRestores(const std::string& id, const VmState& want) {
    auto bytes = ReadBack(id);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto got = Decode(*bytes);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->registers, want.registers) << id;
    ASSERT_EQ(got->vram.size(), want.vram.size()) << id;
    EXPECT_TRUE(got->vram == want.vram) << id << ": VRAM differs";
  }
  // Chunks referenced by snapshots == chunks stored (after GC).
  void ExpectNoLeaks() {
    auto gc = store_->CollectGarbage();
    ASSERT_TRUE(gc.ok());
    auto again = store_->CollectGarbage();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->chunks_freed, 0u);
    auto verify = store_->Verify("");
    ASSERT_TRUE(verify.ok());
    EXPECT_TRUE(verify->damage.empty());
    auto stats = store_->Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->chunks, verify->chunks_checked)
        << "stored chunks that no snapshot references";
  }

  std::string path_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, FullSnapshotRoundTrips) {
  VmState vm = MakeVm(2 << 20, 1);
  auto image = FullImage(vm, 1);
  ASSERT_TRUE(image.ok());
  auto info = Put(*image, "first");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->id, IdHex(1));
  EXPECT_EQ(info->vm_name, "vm1");
  EXPECT_EQ(info->tag, "first");
  EXPECT_EQ(info->logical_bytes, vm.vram.size() + vm.registers.size());
  EXPECT_EQ(info->sections, 2u);
  EXPECT_EQ(info->devices, std::vector<std::string>{"emulation:bochs-dispi-0"});
  ExpectRestores(info->id, vm);

  // Survives a reopen.
  Reopen();
  auto list = store_->List("");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, info->id);
  ExpectRestores(info->id, vm);

  // The same image again is refused, not duplicated.
  auto again = Put(*image);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(StoreTest, LargeSnapshotRoundTripsAndLeavesNoGarbage) {
  // Incompressible VRAM, so the ingest flushes staged chunks several times.
  VmState vm = MakeVm(4 << 20, 21);
  vm.vram = codec::RandomBytes(24 << 20, 21);
  auto info = Put(*FullImage(vm, 21));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->stored_bytes, 24u << 20);
  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->chunks_freed, 0u) << "a successful Put left garbage";
  ExpectRestores(info->id, vm);
}

TEST_F(StoreTest, IdenticalContentIsStoredOnce) {
  VmState vm = MakeVm(2 << 20, 2);
  auto a = Put(*FullImage(vm, 10, "vm-a"));
  ASSERT_TRUE(a.ok());
  auto stats1 = store_->Stats();
  auto b = Put(*FullImage(vm, 11, "vm-b"));  // same bytes, another VM
  ASSERT_TRUE(b.ok());
  auto stats2 = store_->Stats();
  EXPECT_GT(a->stored_bytes, 0u);
  EXPECT_EQ(b->stored_bytes, 0u) << "nothing new to store";
  EXPECT_EQ(stats1->chunks, stats2->chunks);
  EXPECT_EQ(stats1->chunk_bytes, stats2->chunk_bytes);
  ASSERT_TRUE(store_->Delete(a->id).ok());
  ExpectRestores(b->id, vm);  // shared chunks survive the delete
  ExpectNoLeaks();
}

TEST_F(StoreTest, IncrementalChainOfTwelveRestoresEveryLink) {
  VmState vm = MakeVm(4 << 20, 3);
  std::vector<VmState> states{vm};
  auto base = Put(*FullImage(vm, 100));
  ASSERT_TRUE(base.ok()) << base.status();
  std::vector<std::string> ids{base->id};
  for (uint64_t i = 1; i <= 12; ++i) {
    std::vector<uint64_t> changed = Mutate(vm, 20, i);
    auto inc = IncrementalImage(vm, changed, 100 + i, 100 + i - 1);
    ASSERT_TRUE(inc.ok());
    auto info = Put(*inc);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->parent, ids.back());
    // Stored bytes follow the changed pages, not the VRAM size.
    EXPECT_LT(info->stored_bytes, 20u * testing::kPage * 2) << i;
    ids.push_back(info->id);
    states.push_back(vm);
  }
  for (size_t i = 0; i < ids.size(); ++i) ExpectRestores(ids[i], states[i]);

  // Delete links in the middle, then the base: the others stay whole.
  ASSERT_TRUE(store_->Delete(ids[5]).ok());
  ASSERT_TRUE(store_->Delete(ids[6]).ok());
  ASSERT_TRUE(store_->Delete(ids[0]).ok());
  for (size_t i : {1u, 4u, 7u, 12u}) ExpectRestores(ids[i], states[i]);
  EXPECT_EQ(store_->Get(ids[5]).status().code(), absl::StatusCode::kNotFound);
  ExpectNoLeaks();

  // Deleting everything leaves an empty store.
  for (size_t i : {1u, 2u, 3u, 4u, 7u, 8u, 9u, 10u, 11u, 12u}) {
    ASSERT_TRUE(store_->Delete(ids[i]).ok()) << i;
  }
  ExpectNoLeaks();
  auto stats = store_->Stats();
  EXPECT_EQ(stats->snapshots, 0u);
  EXPECT_EQ(stats->chunks, 0u);
  EXPECT_EQ(stats->chunk_bytes, 0u);
}

TEST_F(StoreTest, IncrementalWithoutItsParentIsRefused) {
  VmState vm = MakeVm(1 << 20, 4);
  auto inc = IncrementalImage(vm, Mutate(vm, 3, 1), 201, 200);
  auto info = Put(*inc);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(info.status().message(), HasSubstr(IdHex(200)));
  EXPECT_THAT(info.status().message(), HasSubstr("not in the store"));
}

TEST_F(StoreTest, DamagedOrCutImageLeavesNothingVisible) {
  VmState vm = MakeVm(2 << 20, 5);
  auto image = *FullImage(vm, 300);
  std::vector<uint8_t> cut(image.begin(), image.begin() + image.size() * 2 / 3);
  auto info = Put(cut);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> flipped = image;
  flipped[image.size() / 2] ^= 1;
  info = Put(flipped);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(info.status().message(), HasSubstr("test image"));
  EXPECT_TRUE(store_->List("")->empty());
  ExpectNoLeaks();
  EXPECT_EQ(store_->Stats()->chunks, 0u) << "chunks of failed ingests";
  // The intact image still goes in.
  ASSERT_TRUE(Put(image).ok());
}

TEST_F(StoreTest, CorruptChunkIsReportedExactlyAndRestoreFails) {
  VmState vm = MakeVm(1 << 20, 6);
  auto a = Put(*FullImage(vm, 400));
  VmState other = MakeVm(1 << 20, 7);
  auto b = Put(*FullImage(other, 401, "vm2"));
  ASSERT_TRUE(a.ok() && b.ok());
  store_.reset();
  // Find one chunk record of the first snapshot and damage its payload
  // through RocksDB itself (bit rot that RocksDB's own checksums would not
  // see, as if the bytes had been damaged before they were written).
  std::string damaged_chunk;
  {
    auto raw = testing::CorruptOneChunk(path_, a->id);
    ASSERT_TRUE(raw.ok()) << raw.status();
    damaged_chunk = *raw;
  }
  Reopen();
  auto report = store_->Verify("");
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->damage.size(), 1u);
  EXPECT_EQ(report->damage[0].snapshot, a->id);
  EXPECT_EQ(report->damage[0].section, "vram");
  EXPECT_EQ(report->damage[0].chunk, damaged_chunk);
  EXPECT_THAT(report->damage[0].what,
              ::testing::AnyOf(HasSubstr("checksum"), HasSubstr("corrupt")));
  // Restore of that snapshot fails and names the chunk; the other is fine.
  codec::MemorySink sink;
  absl::Status s = store_->Read(a->id, &sink, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(damaged_chunk));
  ExpectRestores(b->id, other);
}

TEST_F(StoreTest, DamagedTableFileIsReportedAndRestoreFailsCleanly) {
  // Incompressible VRAM: each chunk fills its own RocksDB data blocks.
  VmState vm = MakeVm(1 << 20, 13);
  vm.vram = codec::RandomBytes(4 << 20, 13);
  auto a = Put(*FullImage(vm, 450));
  ASSERT_TRUE(a.ok());
  // Reopening replays the WAL into a table file; flip one byte in the
  // middle of the largest one.
  Reopen();
  store_.reset();
  std::string largest;
  uintmax_t size = 0;
  for (const auto& f : std::filesystem::directory_iterator(path_)) {
    if (f.path().extension() == ".sst" && f.file_size() > size) {
      size = f.file_size();
      largest = f.path();
    }
  }
  ASSERT_GT(size, 1u << 20) << "no table file holds the chunks";
  {
    std::fstream file(largest, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(size / 2);
    char c;
    file.get(c);
    file.seekp(size / 2);
    file.put(static_cast<char>(c ^ 0x10));
  }
  Reopen();
  auto report = store_->Verify("");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->damage.empty());
  for (const Damage& d : report->damage) {
    EXPECT_EQ(d.snapshot, a->id);
    EXPECT_EQ(d.section, "vram");
    EXPECT_EQ(d.chunk.size(), 64u);
    EXPECT_THAT(d.what, ::testing::AnyOf(HasSubstr("orruption"),
                                         HasSubstr("checksum")));
  }
  codec::MemorySink sink;
  absl::Status s = store_->Read(a->id, &sink, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(report->damage[0].chunk));
}

TEST_F(StoreTest, SecondOpenIsRefusedWhileTheFirstHoldsTheStore) {
  StoreOptions o;
  o.path = path_;
  auto second = Store::Open(o);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use"));
}

TEST_F(StoreTest, ByteBudgetRefusesAndKeepsWhatWasThere) {
  StoreOptions o;
  o.byte_budget = 1 << 20;
  Reopen(o);
  VmState small = MakeVm(512 << 10, 8);
  auto a = Put(*FullImage(small, 500));
  ASSERT_TRUE(a.ok()) << a.status();
  VmState big = MakeVm(8 << 20, 9);
  auto b = Put(*FullImage(big, 501));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("byte budget"));
  ExpectRestores(a->id, small);
  ExpectNoLeaks();
}

TEST_F(StoreTest, RetentionKeepsTheNewest) {
  StoreOptions o;
  o.keep_last = 2;
  Reopen(o);
  VmState vm = MakeVm(256 << 10, 10);
  std::vector<std::string> ids;
  for (uint64_t i = 0; i < 4; ++i) {
    Mutate(vm, 4, i + 1);
    auto info = Put(*FullImage(vm, 600 + i));
    ASSERT_TRUE(info.ok());
    ids.push_back(info->id);
  }
  Put(*FullImage(MakeVm(256 << 10, 11), 700, "other-vm")).IgnoreError();
  auto list = store_->List("vm1");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].id, ids[3]);
  EXPECT_EQ((*list)[1].id, ids[2]);
  EXPECT_EQ(store_->List("other-vm")->size(), 1u);
  ExpectNoLeaks();
}

TEST_F(StoreTest, ExportAndImportMoveASnapshotBetweenStores) {
  VmState vm = MakeVm(2 << 20, 12);
  auto base = Put(*FullImage(vm, 800));
  ASSERT_TRUE(base.ok());
  auto inc = Put(*IncrementalImage(vm, Mutate(vm, 10, 4), 801, 800));
  ASSERT_TRUE(inc.ok());
  std::string file = path_ + ".vgi";
  ASSERT_TRUE(ExportSnapshot(*store_, inc->id, file).ok());

  std::string other_path = path_ + "-other";
  std::filesystem::remove_all(other_path);
  StoreOptions o;
  o.path = other_path;
  o.sync = false;
  auto other = Store::Open(o);
  ASSERT_TRUE(other.ok());
  auto imported = ImportSnapshot(**other, file, {});
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->id, inc->id);
  EXPECT_TRUE(imported->parent.empty()) << "exports are complete images";
  codec::MemorySink sink;
  ASSERT_TRUE((*other)->Read(imported->id, &sink, {}).ok());
  auto got = Decode(sink.bytes());
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->vram == vm.vram);
}

}  // namespace
}  // namespace vgpu::store
