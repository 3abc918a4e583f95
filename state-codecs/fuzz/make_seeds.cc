// Writes the fuzz seed corpus: a few small valid images for stream_fuzzer,
// and the manifest, section-header and index messages extracted from them
// for manifest_fuzzer and section_fuzzer. Deterministic: running it again
// rewrites the same files.
//
//   bazel run //state-codecs/fuzz:make_seeds --
//       state-codecs/fuzz/corpus/{manifest,section,stream}   (one line)
//
// Relative paths are taken from the workspace root under `bazel run`.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"
#include "state-codecs/message.h"
#include "state-codecs/sample.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::codec {
namespace {

// section_fuzzer's first byte: which message the rest is.
constexpr uint8_t kSelectHeader = 0;
constexpr uint8_t kSelectIndex = 1;

struct Dirs {
  std::string manifest, section, stream;
};

class Writer {
 public:
  absl::Status Put(const std::string& dir, const std::string& name,
                   const std::vector<uint8_t>& bytes) {
    // Identical seeds (the same register bank header in every image) are
    // written once.
    if (!seen_
             .insert(absl::StrCat(dir, "\n",
                                  std::string(bytes.begin(), bytes.end())))
             .second) {
      return absl::OkStatus();
    }
    std::string path = absl::StrCat(dir, "/", name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out)
      return absl::UnavailableError(absl::StrCat("cannot write ", path));
    std::printf("%8zu %s\n", bytes.size(), path.c_str());
    return absl::OkStatus();
  }

 private:
  std::set<std::string> seen_;
};

template <typename T>
std::vector<uint8_t> Encode(typename T::Reader root, uint8_t prefix = 0,
                            bool with_prefix = false) {
  capnp::MallocMessageBuilder builder;
  builder.setRoot(root);
  std::vector<uint8_t> bytes = EncodeMessageBytes(builder);
  if (with_prefix) bytes.insert(bytes.begin(), prefix);
  return bytes;
}

// Saves `image` as a stream seed, then reads it back and saves its manifest,
// section headers and index as message seeds.
absl::Status SaveImage(Writer& w, const Dirs& dirs, const std::string& tag,
                       const std::vector<uint8_t>& image) {
  if (absl::Status s = w.Put(dirs.stream, tag + ".vgi", image); !s.ok()) {
    return s;
  }
  MemorySource source(image, tag);
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      ImageReader::Open(&source, Limits{}, 1);
  if (!reader.ok()) return reader.status();
  if (absl::Status s =
          w.Put(dirs.manifest, tag + ".manifest",
                Encode<schema::Manifest>((*reader)->manifest().root()));
      !s.ok()) {
    return s;
  }
  for (;;) {
    absl::StatusOr<std::optional<SectionHeader>> next =
        (*reader)->NextSection();
    if (!next.ok()) return next.status();
    if (!next->has_value()) break;
    auto h = (*next)->root();
    if (absl::Status s = w.Put(
            dirs.section, absl::StrCat(tag, "-", h.getName().cStr(), ".header"),
            Encode<schema::SectionHeader>(h, kSelectHeader, true));
        !s.ok()) {
      return s;
    }
    if (absl::Status s = (*reader)->SkipSection(/*verify=*/true); !s.ok()) {
      return s;
    }
  }
  return w.Put(dirs.section, tag + ".index",
               Encode<schema::SectionIndex>((*reader)->index().root(),
                                            kSelectIndex, true));
}

absl::Status SampleImages(Writer& w, const Dirs& dirs) {
  struct Spec {
    uint64_t vram_bytes, seed;
    int zstd_level;
  };
  // Seeds 1..5 give stream_fuzzer five different section/mode pairings.
  const Spec specs[] = {{16 << 10, 1, 1},
                        {32 << 10, 2, 1},
                        {64 << 10, 3, 3},
                        {16 << 10, 4, 1},
                        {32 << 10, 5, 1}};
  for (const Spec& spec : specs) {
    SampleImageOptions options;
    options.vram_bytes = spec.vram_bytes;
    options.seed = spec.seed;
    options.writer.chunk_size = 4096;
    options.writer.zstd_level = spec.zstd_level;
    options.writer.threads = 1;
    MemorySink sink;
    if (auto s = WriteSampleImage(&sink, options); !s.ok()) return s.status();
    std::string tag =
        absl::StrFormat("sample-%uk-s%u", spec.vram_bytes >> 10, spec.seed);
    if (absl::Status s = SaveImage(w, dirs, tag, sink.bytes()); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// A migration-stream image that uses what the sample images leave out: two
// devices, a parent, required features, a later pre-copy round, a region with
// several ranges, sections of unknown size and an all-zero section.
absl::Status RichImage(Writer& w, const Dirs& dirs) {
  Manifest m = SampleManifest(32 << 10);
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::MIGRATION_STREAM);
  auto id = root.initImageId(16);
  for (size_t i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(0xa0 + i);
  auto creation = root.initCreation();
  creation.setTool("make_seeds");
  creation.setHostName("seed-host");
  creation.setCreatedUnixNanos(1764000000000000000);
  auto parent = root.initParent();
  auto pid = parent.initImageId(16);
  for (size_t i = 0; i < 16; ++i) pid[i] = static_cast<uint8_t>(0x50 + i);
  parent.setName("base");
  {
    // Keep device 0 from SampleManifest and add an API-forwarding device 7.
    capnp::MallocMessageBuilder tmp;
    auto old = tmp.initRoot<schema::DeviceEntry>();
    old.setIndex(0);
    old.setDescriptor(root.getDevices()[0].getDescriptor());
    auto devices = root.initDevices(2);
    devices.setWithCaveats(0, old.asReader());
    devices[1].setIndex(7);
    auto d = devices[1].initDescriptor();
    d.setStrategy(schema::Strategy::API_FORWARDING);
    d.setInstanceId("session-42");
    d.setVendor("pocl");
    d.setArchitecture("pthread-cpu");
    d.setWrapperName("libOpenCL-vgpu");
    auto abi = d.initWrapperAbi();
    abi.setMajor(3);
    abi.setMinor(1);
    abi.setPatch(4);
    auto req = d.initRequiredFeatures(2);
    req.set(0, "cl_khr_fp64");
    req.set(1, "svm");
    d.setEccEnabled(true);
    d.setContextCount(2);
  }

  WriterOptions options;
  options.chunk_size = 4096;
  options.threads = 1;
  MemorySink sink;
  absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
      ImageWriter::Create(&sink, m, options);
  if (!writer.ok()) return writer.status();
  ImageWriter& iw = **writer;
  {
    std::vector<uint8_t> regs = RandomBytes(64, 11);
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("bank1");
    r.setRound(1);
    r.setDeclaredBytes(regs.size());
    r.initRegisterBank().setRegisterWidth(8);
    r.getRegisterBank().setRegisterCount(8);
    if (auto s = iw.AddSection(h, regs); !s.ok()) return s.status();
  }
  {
    // Pages 0-1 and 4-5 present, 2-3 zero, 6-7 not sent (dirty tracking).
    std::vector<uint8_t> pages = VramLikeBytes(4 * 4096, 12);
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("vram");
    r.setRound(1);
    r.setDeclaredBytes(pages.size());
    auto region = r.initMemoryRegion();
    region.setPageSize(4096);
    region.setTotalPages(8);
    auto present = region.initPresentRanges(2);
    present[0].setFirst(0);
    present[0].setCount(2);
    present[1].setFirst(4);
    present[1].setCount(2);
    auto zero = region.initZeroRanges(1);
    zero[0].setFirst(2);
    zero[0].setCount(2);
    if (auto s = iw.AddSection(h, pages); !s.ok()) return s.status();
  }
  {
    // Unknown size, written piecemeal, with a zero run in the middle.
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("ctx1");
    r.setDevice(7);
    auto c = r.initContextImage();
    c.setContextId(1);
    c.setEngine("compute");
    c.setImageFormat(2);
    if (auto s = iw.BeginSection(h); !s.ok()) return s.status();
    std::vector<uint8_t> a = RandomBytes(5000, 13);
    if (auto s = iw.Write(a); !s.ok()) return s;
    if (auto s = iw.WriteZeros(9000); !s.ok()) return s;
    std::vector<uint8_t> b = VramLikeBytes(3000, 14);
    if (auto s = iw.Write(b); !s.ok()) return s;
    if (auto s = iw.EndSection(); !s.ok()) return s;
  }
  {
    SectionHeader h;
    auto r = h.mutable_root();
    r.setName("session");
    r.setDevice(7);
    r.setDeclaredBytes(8192);
    auto l = r.initApiSessionLog();
    l.setApi(schema::SessionApi::CUDA);
    l.initAbi().setMajor(12);
    l.setEntryCount(0);
    if (auto s = iw.BeginSection(h); !s.ok()) return s.status();
    if (auto s = iw.WriteZeros(8192); !s.ok()) return s;
    if (auto s = iw.EndSection(); !s.ok()) return s;
  }
  if (absl::Status s = iw.Finish(); !s.ok()) return s;
  return SaveImage(w, dirs, "rich-migration", sink.bytes());
}

std::string FromWorkspace(std::string path) {
  const char* ws = std::getenv("BUILD_WORKSPACE_DIRECTORY");
  if (!path.empty() && path[0] != '/' && ws != nullptr) {
    return absl::StrCat(ws, "/", path);
  }
  return path;
}

}  // namespace
}  // namespace vgpu::codec

int main(int argc, char** argv) {
  using namespace vgpu::codec;
  if (argc != 4) {
    std::fprintf(stderr,
                 "usage: %s MANIFEST_DIR SECTION_DIR STREAM_DIR\n"
                 "Writes fuzz seeds into the three (existing) directories.\n",
                 argv[0]);
    return 2;
  }
  Dirs dirs{FromWorkspace(argv[1]), FromWorkspace(argv[2]),
            FromWorkspace(argv[3])};
  Writer w;
  absl::Status s = SampleImages(w, dirs);
  if (s.ok()) s = RichImage(w, dirs);
  if (!s.ok()) {
    std::fprintf(stderr, "make_seeds: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
