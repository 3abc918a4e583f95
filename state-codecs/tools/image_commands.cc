#include "state-codecs/tools/image_commands.h"

#include <sys/stat.h>

#include <ctime>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "state-codecs/image.h"
#include "state-codecs/sample.h"
#include "state-codecs/tools/progress.h"

namespace vgpu::tools {
namespace {

using codec::ImageReader;
using json = nlohmann::ordered_json;

std::string Hex(capnp::Data::Reader d) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(d.begin()), d.size()));
}

std::string VersionString(schema::Version::Reader v) {
  return absl::StrFormat("%u.%u.%u", v.getMajor(), v.getMinor(), v.getPatch());
}

const char* StrategyName(schema::Strategy s) {
  switch (s) {
    case schema::Strategy::EMULATION:
      return "emulation";
    case schema::Strategy::API_FORWARDING:
      return "api-forwarding";
    case schema::Strategy::MEDIATED:
      return "mediated";
    case schema::Strategy::DIRECT_PASSTHROUGH:
      return "direct-passthrough";
    default:
      return "unknown";
  }
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size)
                                        : 0;
}

struct Opened {
  std::unique_ptr<codec::ByteSource> source;
  std::unique_ptr<ImageReader> reader;
};

// Opens an image, reporting failure the way every command does.
bool Open(const std::string& path, const CommandIo& io, Opened* o, int* rc) {
  auto src = codec::OpenFileSource(path);
  if (!src.ok()) {
    io.err << "vgpu-image: " << src.status().message() << "\n";
    *rc = kExitUsage;
    return false;
  }
  o->source = std::move(*src);
  auto reader = ImageReader::Open(o->source.get(), {}, io.threads);
  if (!reader.ok()) {
    io.err << "vgpu-image: " << reader.status().message() << "\n";
    *rc = kExitDamaged;
    return false;
  }
  o->reader = std::move(*reader);
  return true;
}

json DeviceJson(schema::DeviceEntry::Reader e) {
  auto d = e.getDescriptor();
  json features = json::array(), required = json::array();
  for (auto f : d.getFeatures()) features.push_back(f.cStr());
  for (auto f : d.getRequiredFeatures()) required.push_back(f.cStr());
  return json{{"index", e.getIndex()},
              {"strategy", StrategyName(d.getStrategy())},
              {"instanceId", d.getInstanceId().cStr()},
              {"vendor", d.getVendor().cStr()},
              {"pciId", absl::StrFormat("%04x:%04x", d.getPciVendorId(),
                                        d.getPciDeviceId())},
              {"architecture", d.getArchitecture().cStr()},
              {"boardType", d.getBoardType().cStr()},
              {"driverVersion", VersionString(d.getDriverVersion())},
              {"wrapper", d.getWrapperName().cStr()},
              {"wrapperAbi", VersionString(d.getWrapperAbi())},
              {"features", features},
              {"requiredFeatures", required},
              {"vramBytes", d.getVramBytes()},
              {"contextCount", d.getContextCount()},
              {"eccEnabled", d.getEccEnabled()},
              {"migrationCapable", d.getMigrationCapable()}};
}

json SectionDetail(schema::SectionHeader::Reader h) {
  switch (h.which()) {
    case schema::SectionHeader::REGISTER_BANK:
      return json{{"registerWidth", h.getRegisterBank().getRegisterWidth()},
                  {"registerCount", h.getRegisterBank().getRegisterCount()}};
    case schema::SectionHeader::MEMORY_REGION: {
      auto r = h.getMemoryRegion();
      json present = json::array(), zero = json::array();
      for (auto p : r.getPresentRanges()) {
        present.push_back({p.getFirst(), p.getCount()});
      }
      for (auto p : r.getZeroRanges()) zero.push_back({p.getFirst(), p.getCount()});
      return json{{"pageSize", r.getPageSize()},
                  {"totalPages", r.getTotalPages()},
                  {"presentRanges", present},
                  {"zeroRanges", zero}};
    }
    case schema::SectionHeader::API_SESSION_LOG: {
      auto l = h.getApiSessionLog();
      return json{
          {"api", l.getApi() == schema::SessionApi::CUDA ? "cuda" : "opencl"},
          {"abi", VersionString(l.getAbi())},
          {"entryCount", l.getEntryCount()}};
    }
    case schema::SectionHeader::CONTEXT_IMAGE: {
      auto c = h.getContextImage();
      return json{{"contextId", c.getContextId()},
                  {"engine", c.getEngine().cStr()},
                  {"imageFormat", c.getImageFormat()}};
    }
    case schema::SectionHeader::VENDOR_BLOB:
      return json{{"vendor", h.getVendorBlob().getVendor().cStr()},
                  {"blobType", h.getVendorBlob().getBlobType().cStr()}};
  }
  return json::object();
}

// The table's DETAIL column. Long lists (a scattered memory region has
// thousands of ranges) show their first few and a count; --json has all.
std::string DetailText(const json& d) {
  constexpr size_t kShown = 4;
  std::string out;
  for (auto it = d.begin(); it != d.end(); ++it) {
    if (!out.empty()) out += " ";
    std::string value;
    if (it.value().is_string()) {
      value = it.value().get<std::string>();
    } else if (it.value().is_array() && it.value().size() > 2 * kShown) {
      json head(it.value().begin(), it.value().begin() + kShown);
      value = head.dump();
      value.insert(value.size() - 1,
                   absl::StrFormat(",... (%d in all)", it.value().size()));
    } else {
      value = it.value().dump();
    }
    out += it.key() + "=" + value;
  }
  return out;
}

// Walks the whole image; with `verify`, decompresses and checks every chunk.
// Fills `report` with the manifest, sections and totals.
absl::Status Walk(const std::string& path, const CommandIo& io, bool verify,
                  Opened& o, json* report) {
  auto m = o.reader->manifest().root();
  json devices = json::array();
  for (auto d : m.getDevices()) devices.push_back(DeviceJson(d));
  (*report)["image"] = path;
  (*report)["format"] = absl::StrFormat("%u.%u", m.getFormatMajor(),
                                        m.getFormatMinor());
  (*report)["imageId"] = Hex(m.getImageId());
  (*report)["kind"] = m.getKind() == schema::ImageKind::MIGRATION_STREAM
                          ? "migration-stream"
                          : "checkpoint";
  (*report)["vm"] = {{"name", m.getVm().getName().cStr()},
                     {"uuid", m.getVm().getUuid().cStr()}};
  (*report)["creation"] = {
      {"tool", m.getCreation().getTool().cStr()},
      {"host", m.getCreation().getHostName().cStr()},
      {"time", IsoTime(m.getCreation().getCreatedUnixNanos())}};
  (*report)["parent"] =
      m.getParent().getImageId().size() == 0
          ? json(nullptr)
          : json{{"imageId", Hex(m.getParent().getImageId())},
                 {"name", m.getParent().getName().cStr()}};
  (*report)["chunkSize"] = m.getChunkSize();
  (*report)["zstdLevel"] = m.getZstdLevel();
  (*report)["devices"] = devices;

  ProgressBar bar(verify ? "verify" : "read", FileSize(path),
                  io.progress && !io.json);
  o.reader->set_progress(
      [&](const codec::StreamStats& s) { bar.Update(s.stored_bytes); });
  json sections = json::array();
  std::vector<schema::SectionHeader::Reader> headers;
  std::vector<codec::SectionHeader> keep;
  for (;;) {
    auto next = o.reader->NextSection();
    if (!next.ok()) {
      bar.Done();
      (*report)["sections"] = sections;
      return next.status();
    }
    if (!next->has_value()) break;
    keep.push_back(std::move(**next));
    auto h = keep.back().root();
    if (absl::Status s = o.reader->SkipSection(verify); !s.ok()) {
      bar.Done();
      (*report)["sections"] = sections;
      return s;
    }
    sections.push_back({{"id", h.getId()},
                        {"name", h.getName().cStr()},
                        {"kind", codec::SectionKindName(h.which())},
                        {"device", h.getDevice()},
                        {"round", h.getRound()},
                        {"critical", h.getCritical()},
                        {"detail", SectionDetail(h)}});
  }
  bar.Done();
  // Sizes come from the index, which the reader has checked against the
  // sections as read.
  auto entries = o.reader->index().root().getEntries();
  uint64_t raw = 0, stored = 0;
  for (uint32_t i = 0; i < entries.size() && i < sections.size(); ++i) {
    sections[i]["rawBytes"] = entries[i].getRawBytes();
    sections[i]["storedBytes"] = entries[i].getStoredBytes();
    sections[i]["chunks"] = entries[i].getChunkCount();
    raw += entries[i].getRawBytes();
    stored += entries[i].getStoredBytes();
  }
  (*report)["sections"] = sections;
  (*report)["totals"] = {{"rawBytes", raw},
                         {"storedBytes", stored},
                         {"fileBytes", o.reader->offset()},
                         {"zeroBytes", o.reader->stats().zero_bytes}};
  return absl::OkStatus();
}

void PrintHuman(const json& r, std::ostream& out) {
  out << absl::StrFormat("image     %s (format %s, %s)\n",
                         r["image"].get<std::string>(),
                         r["format"].get<std::string>(),
                         r["kind"].get<std::string>());
  out << absl::StrFormat("id        %s\n", r["imageId"].get<std::string>());
  out << absl::StrFormat("vm        %s (%s)\n",
                         r["vm"]["name"].get<std::string>(),
                         r["vm"]["uuid"].get<std::string>());
  out << absl::StrFormat("created   %s by %s on %s\n",
                         r["creation"]["time"].get<std::string>(),
                         r["creation"]["tool"].get<std::string>(),
                         r["creation"]["host"].get<std::string>());
  out << "parent    "
      << (r["parent"].is_null()
              ? std::string("none (full image)")
              : r["parent"]["name"].get<std::string>() + " " +
                    r["parent"]["imageId"].get<std::string>())
      << "\n";
  out << absl::StrFormat("encoding  %s chunks, zstd level %d\n",
                         HumanBytes(r["chunkSize"].get<double>()),
                         r["zstdLevel"].get<int>());
  out << "devices\n";
  for (const json& d : r["devices"]) {
    out << absl::StrFormat(
        "  %-3d %-18s %s %s (%s) driver %s, %s abi %s, vram %s\n",
        d["index"].get<int>(), d["strategy"].get<std::string>(),
        d["vendor"].get<std::string>(), d["architecture"].get<std::string>(),
        d["instanceId"].get<std::string>(),
        d["driverVersion"].get<std::string>(), d["wrapper"].get<std::string>(),
        d["wrapperAbi"].get<std::string>(),
        HumanBytes(d["vramBytes"].get<double>()));
  }
  out << "sections\n";
  out << absl::StrFormat("  %-4s %-12s %-16s %-4s %-6s %10s %10s %7s  %s\n",
                         "ID", "NAME", "KIND", "DEV", "ROUND", "RAW", "STORED",
                         "RATIO", "DETAIL");
  for (const json& s : r["sections"]) {
    double raw = s.value("rawBytes", 0.0), stored = s.value("storedBytes", 0.0);
    out << absl::StrFormat(
        "  %-4d %-12s %-16s %-4d %-6d %10s %10s %6.1fx  %s\n",
        s["id"].get<int>(), s["name"].get<std::string>(),
        s["kind"].get<std::string>(), s["device"].get<int>(),
        s["round"].get<int>(), HumanBytes(raw), HumanBytes(stored),
        stored > 0 ? raw / stored : 0.0, DetailText(s["detail"]));
  }
  if (r.contains("totals")) {
    double raw = r["totals"]["rawBytes"].get<double>();
    double file = r["totals"]["fileBytes"].get<double>();
    out << absl::StrFormat("total     %s of state in %s (%.1fx), %s as zero "
                           "runs\n",
                           HumanBytes(raw), HumanBytes(file),
                           file > 0 ? raw / file : 0.0,
                           HumanBytes(r["totals"]["zeroBytes"].get<double>()));
  }
}

}  // namespace

int ShowImage(const std::string& path, const CommandIo& io) {
  Opened o;
  int rc;
  if (!Open(path, io, &o, &rc)) return rc;
  json report;
  absl::Status s = Walk(path, io, /*verify=*/false, o, &report);
  if (!s.ok()) report["error"] = std::string(s.message());
  if (io.json) {
    io.out << report.dump(2) << "\n";
  } else {
    PrintHuman(report, io.out);
  }
  if (!s.ok()) {
    io.err << "vgpu-image: " << s.message() << "\n";
    return kExitDamaged;
  }
  return kExitOk;
}

int VerifyImage(const std::string& path, const CommandIo& io) {
  Opened o;
  int rc;
  if (!Open(path, io, &o, &rc)) {
    if (io.json) io.out << json{{"image", path}, {"ok", false}}.dump() << "\n";
    return rc;
  }
  json report;
  absl::Status s = Walk(path, io, /*verify=*/true, o, &report);
  if (s.ok()) {
    // Anything after the end-of-stream frame is not part of the image.
    uint8_t extra;
    auto n = o.source->Read(absl::MakeSpan(&extra, 1));
    if (n.ok() && *n != 0) {
      s = absl::DataLossError(absl::StrCat("image ", path, ", byte ",
                                           o.reader->offset(),
                                           ": trailing bytes after the "
                                           "end-of-stream frame"));
    }
  }
  json result = {{"image", path}, {"ok", s.ok()}};
  if (!s.ok()) {
    result["error"] = std::string(s.message());
    result["code"] = absl::StatusCodeToString(s.code());
  } else {
    result["sections"] = report["sections"].size();
    result["chunks"] = o.reader->stats().chunks;
    result["rawBytes"] = report["totals"]["rawBytes"];
    result["fileBytes"] = report["totals"]["fileBytes"];
  }
  if (io.json) {
    io.out << result.dump(2) << "\n";
  } else if (s.ok()) {
    io.out << absl::StrFormat(
        "OK %s: %d sections, %u chunks, %s of state; every bound and checksum "
        "holds\n",
        path, report["sections"].size(), o.reader->stats().chunks,
        HumanBytes(report["totals"]["rawBytes"].get<double>()));
  } else {
    io.out << "DAMAGED " << s.message() << "\n";
  }
  return s.ok() ? kExitOk : kExitDamaged;
}

int CatSection(const std::string& path, const std::string& section,
               const std::string& out_path, const CommandIo& io) {
  Opened o;
  int rc;
  if (!Open(path, io, &o, &rc)) return rc;
  uint32_t want_id = 0;
  bool by_id = absl::SimpleAtoi(section, &want_id);
  std::unique_ptr<codec::ByteSink> sink;
  if (out_path == "-") {
    sink = codec::FdSink(STDOUT_FILENO, "stdout", false);
  }
  for (;;) {
    auto next = o.reader->NextSection();
    if (!next.ok()) {
      io.err << "vgpu-image: " << next.status().message() << "\n";
      return kExitDamaged;
    }
    if (!next->has_value()) {
      io.err << "vgpu-image: " << path << " has no section '" << section
             << "'\n";
      return kExitUsage;
    }
    auto h = (*next)->root();
    if (by_id ? h.getId() != want_id : h.getName() != section.c_str()) {
      continue;
    }
    if (sink == nullptr) {
      // Atomic: the file appears only once the whole section verified.
      auto file = codec::OpenFileSink(out_path);
      if (!file.ok()) {
        io.err << "vgpu-image: " << file.status().message() << "\n";
        return kExitUsage;
      }
      sink = std::move(*file);
    }
    std::vector<uint8_t> zeros;
    absl::Status s = o.reader->ReadChunks(
        [&](uint64_t, uint64_t len, absl::Span<const uint8_t> data) {
          if (!data.empty()) return sink->Write(data);
          zeros.assign(std::min<uint64_t>(len, 1 << 20), 0);
          for (uint64_t left = len; left > 0;) {
            uint64_t n = std::min<uint64_t>(left, zeros.size());
            if (absl::Status w = sink->Write(absl::MakeSpan(zeros.data(), n));
                !w.ok()) {
              return w;
            }
            left -= n;
          }
          return absl::OkStatus();
        });
    if (s.ok()) s = sink->Close();
    if (!s.ok()) {
      io.err << "vgpu-image: " << s.message() << "\n";
      return kExitDamaged;
    }
    return kExitOk;
  }
}

int RecodeImage(const std::string& in, const std::string& out_path,
                const CommandIo& io) {
  Opened o;
  int rc;
  if (!Open(in, io, &o, &rc)) return rc;
  auto m = o.reader->manifest().root();
  codec::WriterOptions opts;
  opts.chunk_size = m.getChunkSize();
  opts.zstd_level = m.getZstdLevel();
  opts.threads = io.threads;
  auto encoded = codec::OpenFileSink(out_path);
  if (!encoded.ok()) {
    io.err << "vgpu-image: " << encoded.status().message() << "\n";
    return kExitUsage;
  }
  auto writer =
      codec::ImageWriter::Create(encoded->get(), o.reader->manifest(), opts);
  if (!writer.ok()) {
    io.err << "vgpu-image: " << writer.status().message() << "\n";
    return kExitDamaged;
  }
  ProgressBar bar("recode", FileSize(in), io.progress);
  o.reader->set_progress(
      [&](const codec::StreamStats& s) { bar.Update(s.stored_bytes); });
  absl::Status s;
  for (;;) {
    auto next = o.reader->NextSection();
    if (!next.ok()) {
      s = next.status();
      break;
    }
    if (!next->has_value()) break;
    // Replaying chunk by chunk (zero runs as zero runs) reproduces the
    // original chunk boundaries.
    s = (*writer)->BeginSection(**next).status();
    if (s.ok()) {
      s = o.reader->ReadChunks(
          [&](uint64_t, uint64_t len, absl::Span<const uint8_t> data) {
            return data.empty() ? (*writer)->WriteZeros(len)
                                : (*writer)->Write(data);
          });
    }
    if (s.ok()) s = (*writer)->EndSection();
    if (!s.ok()) break;
  }
  if (s.ok()) s = (*writer)->Finish();
  bar.Done();
  if (!s.ok()) {
    io.err << "vgpu-image: " << s.message() << "\n";
    return kExitDamaged;
  }
  // Compare the two files in bounded memory.
  auto lhs = codec::OpenFileSource(in);
  auto rhs = codec::OpenFileSource(out_path);
  if (!lhs.ok() || !rhs.ok()) {
    io.err << "vgpu-image: cannot reopen " << in << " or " << out_path << "\n";
    return kExitUsage;
  }
  std::vector<uint8_t> x(1 << 20), y(1 << 20);
  uint64_t diff = 0, in_bytes = 0, out_bytes = 0;
  bool same = true;
  for (;;) {
    auto nx = (*lhs)->Read(absl::MakeSpan(x));
    auto ny = (*rhs)->Read(absl::MakeSpan(y));
    if (!nx.ok() || !ny.ok()) {
      io.err << "vgpu-image: read error while comparing\n";
      return kExitUsage;
    }
    in_bytes += *nx;
    out_bytes += *ny;
    if (same) {
      size_t i = 0;
      while (i < *nx && i < *ny && x[i] == y[i]) ++i;
      diff += i;
      if (i != *nx || i != *ny) same = false;
    }
    if (*nx == 0 && *ny == 0) break;
  }
  if (io.json) {
    json r = {{"input", in}, {"output", out_path}, {"identical", same},
              {"bytes", out_bytes}};
    if (!same) r["firstDifference"] = diff;
    io.out << r.dump(2) << "\n";
  } else if (same) {
    io.out << absl::StrFormat("identical: %s re-encodes to the same %u bytes "
                              "(%s)\n",
                              in, out_bytes, out_path);
  } else {
    io.out << absl::StrFormat("DIFFERENT: %s (%u bytes) and its re-encoding "
                              "%s (%u bytes) first differ at byte %u\n",
                              in, in_bytes, out_path, out_bytes, diff);
  }
  return same ? kExitOk : kExitDamaged;
}

int WriteSample(const std::string& out_path, uint64_t vram_bytes,
                uint64_t seed, uint32_t chunk_size, bool fixed_id,
                const CommandIo& io) {
  auto sink = codec::OpenFileSink(out_path);
  if (!sink.ok()) {
    io.err << "vgpu-image: " << sink.status().message() << "\n";
    return kExitUsage;
  }
  codec::SampleImageOptions opts;
  opts.vram_bytes = vram_bytes;
  opts.seed = seed;
  opts.writer.threads = io.threads;
  opts.writer.chunk_size = chunk_size;
  opts.deterministic = fixed_id;
  auto written = codec::WriteSampleImage(sink->get(), opts);
  if (!written.ok()) {
    io.err << "vgpu-image: " << written.status().message() << "\n";
    return kExitUsage;
  }
  io.out << absl::StrFormat("wrote %s: sample vGPU state with %s of VRAM\n",
                            out_path, HumanBytes(static_cast<double>(vram_bytes)));
  return kExitOk;
}

}  // namespace vgpu::tools
