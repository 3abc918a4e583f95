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

constexpr size_t kKeepAtMost = 10;  // delete when the store holds more

int Main(int argc, char** argv) {
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

    if (chance(3)) {
      auto all = store.List("");
      if (!all.ok()) Fail(absl::StrCat("list: ", all.status().ToString()));
      if (all->size() > kKeepAtMost) {
        // Any but the newest (the next incremental's parent): old bases,
        // middle links and snapshots of earlier processes alike.
        const SnapshotInfo& victim = (*all)[1 + rng() % (all->size() - 1)];
        Say(absl::StrCat("DELETING ", victim.id));
        if (absl::Status s = store.Delete(victim.id); !s.ok()) {
          Fail(absl::StrCat("delete ", victim.id, ": ", s.ToString()));
        }
        Say(absl::StrCat("DEL ", victim.id));
      }
    }
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
