// The crash test's victim: keeps writing snapshots into a synced store until
// it is killed. Usage:
//   crash_writer STORE_PATH ID_BASE RNG_SEED
// Snapshot id seeds are ID_BASE * 1000000 + n, so a caller that passes a new
// ID_BASE to every run never sees an id twice. Each seed is also the
// snapshot's tag, so a later run can find the seed of a stored snapshot.
//
// Protocol on stdout, one write(2) per line (atomic on a pipe), each line
// written before the next step starts:
//   OPEN                      the store is open
//   BASE <id>                 continuing from stored snapshot <id>
//   PUT <id> <digest> full|inc <parent>
//                             a Put is about to start
//   ACK <id> <digest>         Put returned OK: the snapshot is durable
//   DELETING <id>             a Delete is about to start
//   DEL <id>                  Delete returned OK
//   GC                        CollectGarbage is about to start
//   GCDONE <chunks freed>     CollectGarbage returned OK
//   ERR <what>                anything failed; the writer then exits 1
// <digest> is crash::ContentDigest of the VM content the snapshot restores.
//
// A second mode dies inside one Put at a chosen point of the image stream:
//   crash_writer --die-in-put STORE_PATH SEED VRAM_BYTES DIE_AT_BYTE
// puts FullImage(DieInPutVm(VRAM_BYTES, SEED), SEED) and SIGKILLs itself
// when the store has read DIE_AT_BYTE bytes of it.
//
// A third fills a store until a Put fails (disk_full_test runs it, so that
// the test survives if the store takes its process down):
//   crash_writer --fill STORE_PATH VRAM_BYTES
// puts FullImage(DieInPutVm(VRAM_BYTES, n), n) for n = 1, 2, ... and says
//   PUT <id> <digest> / ACK <id> <digest>     as above
//   FAILED <id> <status code name> <message>  the first Put that failed
//   LISTED <id> ...                           List("") after the failure
//   READ <id> <digest> | READERR <id> <status>   each listed snapshot
//   AGAIN <status code name> <message>        a further Put on the full disk
//   DONE
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "state-codecs/byte_io.h"
#include "store/crash/crash_util.h"
#include "store/store.h"
#include "store/testing/images.h"

namespace vgpu::store::crash {
namespace {

void Say(const std::string& line) {
  std::string l = line + "\n";
  const char* p = l.data();
  size_t left = l.size();
  while (left > 0) {
    ssize_t n = write(STDOUT_FILENO, p, left);
    if (n <= 0) _exit(3);
    p += n;
    left -= static_cast<size_t>(n);
  }
}

[[noreturn]] void Fail(const std::string& what) {
  Say(absl::StrCat("ERR ", what));
  _exit(1);
}

// A source that kills its own process once `die_at` bytes have been read.
class DyingSource : public codec::ByteSource {
 public:
  DyingSource(absl::Span<const uint8_t> bytes, uint64_t die_at)
      : inner_(bytes, "dying image"), die_at_(die_at) {}
  absl::StatusOr<size_t> Read(absl::Span<uint8_t> data) override {
    if (read_ >= die_at_) raise(SIGKILL);
    auto n = inner_.Read(data);
    if (n.ok()) read_ += *n;
    return n;
  }
  const std::string& name() const override { return inner_.name(); }

 private:
  codec::MemorySource inner_;
  uint64_t die_at_;
  uint64_t read_ = 0;
};

int DieInPut(int argc, char** argv) {
  uint64_t seed = 0, vram = 0, die_at = 0;
  if (argc != 6 || !absl::SimpleAtoi(argv[3], &seed) ||
      !absl::SimpleAtoi(argv[4], &vram) || !absl::SimpleAtoi(argv[5], &die_at)) {
    std::fprintf(stderr,
                 "usage: crash_writer --die-in-put STORE_PATH SEED VRAM_BYTES "
                 "DIE_AT_BYTE\n");
    return 2;
  }
  StoreOptions options;
  options.path = argv[2];
  auto opened = Store::Open(options);
  if (!opened.ok()) Fail(absl::StrCat("open: ", opened.status().ToString()));
  auto image = testing::FullImage(DieInPutVm(vram, seed), seed);
  if (!image.ok()) Fail(absl::StrCat("image: ", image.status().ToString()));
  Say(absl::StrCat("PUT ", testing::IdHex(seed), " ", image->size()));
  DyingSource src(*image, die_at);
  auto info = (*opened)->Put(&src, PutOptions{});
  Fail(absl::StrCat("Put returned before byte ", die_at, ": ",
                    info.status().ToString()));
}

int Fill(int argc, char** argv) {
  uint64_t vram = 0;
  if (argc != 4 || !absl::SimpleAtoi(argv[3], &vram)) {
    std::fprintf(stderr, "usage: crash_writer --fill STORE_PATH VRAM_BYTES\n");
    return 2;
  }
  StoreOptions options;
  options.path = argv[2];
  auto opened = Store::Open(options);
  if (!opened.ok()) Fail(absl::StrCat("open: ", opened.status().ToString()));
  Store& store = **opened;
  Say("OPEN");
  auto put = [&](uint64_t seed) {
    testing::VmState vm = DieInPutVm(vram, seed);
    auto image = testing::FullImage(vm, seed);
    if (!image.ok()) Fail(absl::StrCat("image: ", image.status().ToString()));
    codec::MemorySource src(*image, absl::StrCat("image ", seed));
    return store.Put(&src, PutOptions{});
  };
  for (uint64_t seed = 1;; ++seed) {
    if (seed > 10000) Fail("10000 snapshots and the disk is not full");
    const std::string id = testing::IdHex(seed);
    const std::string digest = DigestHex(ContentDigest(DieInPutVm(vram, seed)));
    Say(absl::StrCat("PUT ", id, " ", digest));
    auto info = put(seed);
    if (!info.ok()) {
      Say(absl::StrCat("FAILED ", id, " ",
                       absl::StatusCodeToString(info.status().code()), " ",
                       info.status().message()));
      break;
    }
    Say(absl::StrCat("ACK ", id, " ", digest));
  }
  auto list = store.List("");
  if (!list.ok()) Fail(absl::StrCat("list: ", list.status().ToString()));
  std::string listed = "LISTED";
  for (const SnapshotInfo& s : *list) absl::StrAppend(&listed, " ", s.id);
  Say(listed);
  for (const SnapshotInfo& s : *list) {
    auto vm = ReadBack(store, s.id);
    Say(vm.ok() ? absl::StrCat("READ ", s.id, " ", DigestHex(ContentDigest(*vm)))
                : absl::StrCat("READERR ", s.id, " ", vm.status().ToString()));
  }
  auto again = put(1000000);
  Say(again.ok() ? std::string("AGAIN OK")
                 : absl::StrCat("AGAIN ",
                                absl::StatusCodeToString(again.status().code()),
                                " ", again.status().message()));
  Say("DONE");
  return 0;
}

constexpr size_t kKeepAtMost = 10;  // delete when the store holds more

int Main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--die-in-put") {
    return DieInPut(argc, argv);
  }
  if (argc > 1 && std::string(argv[1]) == "--fill") return Fill(argc, argv);
  uint64_t id_base = 0, rng_seed = 0;
  if (argc != 4 || !absl::SimpleAtoi(argv[2], &id_base) ||
      !absl::SimpleAtoi(argv[3], &rng_seed)) {
    std::fprintf(stderr, "usage: crash_writer STORE_PATH ID_BASE RNG_SEED\n");
    return 2;
  }
  std::mt19937_64 rng(rng_seed);
  auto chance = [&](int one_in) { return rng() % one_in == 0; };

  StoreOptions options;
  options.path = argv[1];
  options.sync = true;
  auto opened = Store::Open(options);
  if (!opened.ok()) Fail(absl::StrCat("open: ", opened.status().ToString()));
  Store& store = **opened;
  Say("OPEN");

  // Continue the newest stored snapshot's chain most of the time, so that
  // incrementals are also put on parents committed by an earlier process.
  testing::VmState vm;
  std::string parent_id;
  uint64_t parent_seed = 0;
  auto list = store.List("");
  if (!list.ok()) Fail(absl::StrCat("list: ", list.status().ToString()));
  if (!list->empty() && !chance(4)) {
    const SnapshotInfo& newest = list->front();
    auto state = ReadBack(store, newest.id);
    if (!state.ok()) {
      Fail(absl::StrCat("read ", newest.id, ": ", state.status().ToString()));
    }
    if (!absl::SimpleAtoi(newest.tag, &parent_seed)) {
      Fail(absl::StrCat("snapshot ", newest.id, " has tag '", newest.tag, "'"));
    }
    vm = std::move(*state);
    parent_id = newest.id;
    Say(absl::StrCat("BASE ", parent_id));
  } else {
    static constexpr uint64_t kSizes[] = {256 << 10, 512 << 10, 1 << 20};
    vm = testing::MakeVm(kSizes[rng() % 3], id_base);
  }

  // Keeps the store near kKeepAtMost snapshots: deletes one, when more,
  // any but the next incremental's parent: old bases, middle links and
  // snapshots of earlier processes alike.
  auto trim = [&] {
    auto all = store.List("");
    if (!all.ok()) Fail(absl::StrCat("list: ", all.status().ToString()));
    if (all->size() <= kKeepAtMost) return;
    std::vector<std::string> candidates;
    for (const SnapshotInfo& s : *all) {
      if (s.id != parent_id) candidates.push_back(s.id);
    }
    const std::string victim = candidates[rng() % candidates.size()];
    Say(absl::StrCat("DELETING ", victim));
    if (absl::Status s = store.Delete(victim); !s.ok()) {
      Fail(absl::StrCat("delete ", victim, ": ", s.ToString()));
    }
    Say(absl::StrCat("DEL ", victim));
  };
  trim();

  for (uint64_t n = 1;; ++n) {
    const uint64_t seed = id_base * 1000000 + n;
    const uint64_t pages = vm.vram.size() / testing::kPage;
    std::vector<uint64_t> changed =
        testing::Mutate(vm, 1 + rng() % (pages / 4), seed);
    const bool full = parent_id.empty() || chance(4);
    auto image = full ? testing::FullImage(vm, seed)
                      : testing::IncrementalImage(vm, changed, seed,
                                                  parent_seed);
    if (!image.ok()) Fail(absl::StrCat("image: ", image.status().ToString()));
    const std::string id = testing::IdHex(seed);
    const std::string digest = DigestHex(ContentDigest(vm));
    Say(absl::StrCat("PUT ", id, " ", digest, full ? " full " : " inc ",
                     full ? "-" : parent_id));
    codec::MemorySource src(*image, absl::StrCat("image ", seed));
    PutOptions put;
    put.tag = absl::StrCat(seed);
    auto info = store.Put(&src, put);
    if (!info.ok()) Fail(absl::StrCat("put ", id, ": ", info.status().ToString()));
    Say(absl::StrCat("ACK ", id, " ", digest));
    parent_id = id;
    parent_seed = seed;

    trim();
    if (chance(8)) {
      Say("GC");
      auto gc = store.CollectGarbage();
      if (!gc.ok()) Fail(absl::StrCat("gc: ", gc.status().ToString()));
      Say(absl::StrCat("GCDONE ", gc->chunks_freed));
    }
  }
}

}  // namespace
}  // namespace vgpu::store::crash

int main(int argc, char** argv) {
  return vgpu::store::crash::Main(argc, argv);
}
