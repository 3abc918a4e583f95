// The compatibility checker: one function per strategy, each appending one
// row per rule it checked, ok or refused, with both sides' values in words.
// A gate rule that fails (no emulation, no backend, no GPU of the type) ends
// that device's checks, since the later rules would compare against nothing.
// Also the report's table and JSON forms and the HostProfile's JSON form.
// Pure functions without I/O; safe on any thread.
#include "migrator/compat.h"

#include <algorithm>
#include <cstddef>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "migrator/internal/json_fields.h"

namespace vgpu::migrator {
namespace {

using internal::FieldError;
using internal::FieldReader;
using internal::JoinPath;
using json = nlohmann::json;
using schema::DeviceDescriptor;
using schema::Strategy;

// ---------------------------------------------------------------------------
// Words for values.

std::string Str(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}

std::string StrategyName(Strategy s) {
  switch (s) {
    case Strategy::UNKNOWN:
      return "unknown";
    case Strategy::EMULATION:
      return "emulation";
    case Strategy::API_FORWARDING:
      return "apiForwarding";
    case Strategy::MEDIATED:
      return "mediated";
    case Strategy::DIRECT_PASSTHROUGH:
      return "directPassthrough";
  }
  // A value from a newer schema than this build knows.
  return absl::StrCat(static_cast<int>(s));
}

VersionTriple FromCapnp(schema::Version::Reader v) {
  return {v.getMajor(), v.getMinor(), v.getPatch()};
}

std::string VersionString(const VersionTriple& v) {
  return absl::StrFormat("%d.%d.%d", v.major, v.minor, v.patch);
}

bool Older(const VersionTriple& a, const VersionTriple& b) {
  return std::tie(a.major, a.minor, a.patch) <
         std::tie(b.major, b.minor, b.patch);
}

// "256 MiB" when a binary unit divides evenly; otherwise the value in the
// largest unit with the exact byte count, since a refusal over a few bytes
// must show them.
std::string FormatBytes(uint64_t n) {
  static constexpr struct {
    uint64_t size;
    const char* name;
  } kUnits[] = {{1ull << 40, "TiB"},
                {1ull << 30, "GiB"},
                {1ull << 20, "MiB"},
                {1ull << 10, "KiB"}};
  for (const auto& unit : kUnits) {
    if (n < unit.size) continue;
    if (n % unit.size == 0) return absl::StrCat(n / unit.size, " ", unit.name);
    return absl::StrFormat("%.2f %s (%d bytes)",
                           static_cast<double>(n) / unit.size, unit.name, n);
  }
  return absl::StrCat(n, " bytes");
}

std::string JoinOrNone(const std::vector<std::string>& items) {
  return items.empty() ? "none" : absl::StrJoin(items, ", ");
}

std::string DeviceList(const std::vector<int>& devices) {
  return absl::StrCat(devices.size() == 1 ? "device " : "devices ",
                      absl::StrJoin(devices, ", "));
}

// A reader of `writer`'s state accepts it when the major versions match and
// the reader knows at least the minor version the writer used: minors only
// add fields a newer reader understands.
bool AbiAccepts(const VersionTriple& reader, const VersionTriple& writer) {
  return reader.major == writer.major && reader.minor >= writer.minor;
}

std::string AbiDetail(absl::string_view source_what, const VersionTriple& src,
                      absl::string_view dest_what, const VersionTriple& dst) {
  return absl::StrFormat("%s %s; %s %s (needs major %d, minor >= %d)",
                         source_what, VersionString(src), dest_what,
                         VersionString(dst), src.major, src.minor);
}

// ---------------------------------------------------------------------------
// NVIDIA vGPU migration accepts a destination host driver of the same
// release branch or one branch newer, and never an older one (FACTS.md,
// "NVIDIA vGPU compatibility"). A branch is the version's major number and
// "one branch newer" is major + 1. NVIDIA's real branch numbers skip (535,
// 550, 570), so between real branches this refuses a move the vendor may
// allow: the safe direction until profiles carry the list of branches.
enum class DriverMove { kSameBranch, kNextBranch, kDowngrade, kTooNew };

DriverMove ClassifyDriverMove(const VersionTriple& src,
                              const VersionTriple& dst) {
  if (Older(dst, src)) return DriverMove::kDowngrade;
  if (dst.major == src.major) return DriverMove::kSameBranch;
  if (dst.major == src.major + 1) return DriverMove::kNextBranch;
  return DriverMove::kTooNew;
}

bool IsAllowedDriverMove(const VersionTriple& src, const VersionTriple& dst) {
  DriverMove move = ClassifyDriverMove(src, dst);
  return move == DriverMove::kSameBranch || move == DriverMove::kNextBranch;
}

const char* DriverMoveWords(DriverMove move) {
  switch (move) {
    case DriverMove::kSameBranch:
      return "same branch";
    case DriverMove::kNextBranch:
      return "one branch newer";
    case DriverMove::kDowngrade:
      return "older than the source (a downgrade)";
    case DriverMove::kTooNew:
      return "more than one branch newer";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// The rules.

struct Rule {
  std::string rule;
  bool ok;
  std::string detail;
};

bool AllOk(const std::vector<Rule>& rules) {
  for (const Rule& r : rules) {
    if (!r.ok) return false;
  }
  return true;
}

// Runs the rules of every device of one VM against one host. State shared
// between devices (memory handed out by a backend, the instances a type
// needs) lives here so devices competing for it are counted together.
class Checker {
 public:
  Checker(const std::vector<DeviceDescriptor::Reader>& devices,
          const HostProfile& host, CompatReport* report)
      : devices_(devices),
        host_(host),
        dest_(host.host.empty() ? "the destination" : host.host),
        report_(report),
        backend_used_(host.api_forwarding.size(), 0),
        backend_users_(host.api_forwarding.size()) {}

  void Run() {
    CountGpuDemand();
    for (size_t i = 0; i < devices_.size(); ++i) {
      index_ = static_cast<int>(i);
      const DeviceDescriptor::Reader& d = devices_[i];
      switch (d.getStrategy()) {
        case Strategy::EMULATION:
          CheckEmulation(d);
          break;
        case Strategy::API_FORWARDING:
          CheckApiForwarding(d);
          break;
        case Strategy::MEDIATED:
          CheckOnGpu(d, /*whole_gpu=*/false);
          break;
        case Strategy::DIRECT_PASSTHROUGH:
          CheckDirectPassthrough(d);
          break;
        default:
          Add(d, "strategy", false,
              absl::StrCat("strategy ", StrategyName(d.getStrategy()),
                           " is not supported"));
          break;
      }
    }
  }

 private:
  // Appends a row for the current device and returns `ok`, so a gate rule
  // reads `if (!Add(...)) return;`.
  bool Add(const DeviceDescriptor::Reader& d, absl::string_view rule, bool ok,
           std::string detail) {
    CompatRow row;
    row.device = index_;
    row.instance = Str(d.getInstanceId());
    row.strategy = StrategyName(d.getStrategy());
    row.rule = std::string(rule);
    row.ok = ok;
    row.detail = std::move(detail);
    report_->rows.push_back(std::move(row));
    return ok;
  }
  void Add(const DeviceDescriptor::Reader& d, const Rule& r) {
    Add(d, r.rule, r.ok, r.detail);
  }

  // --- emulation: the destination runs the same device model. ---
  void CheckEmulation(const DeviceDescriptor::Reader& d) {
    const EmulationOffer& offer = host_.emulation;
    const std::string src_model =
        absl::StrCat(Str(d.getVendor()), "/", Str(d.getArchitecture()));
    const std::string dst_model =
        absl::StrCat(offer.vendor, "/", offer.architecture);
    if (!offer.available) {
      Add(d, "emulation", false,
          absl::StrCat("source device is emulated (", src_model, "); ", dest_,
                       " offers no device emulation"));
      return;
    }
    if (offer.max_vram_bytes == 0) {
      Add(d, "emulation", false,
          absl::StrCat("source device is emulated (", src_model, "); ", dest_,
                       " offers emulation but no VRAM for it "
                       "(max_vram_bytes 0)"));
      return;
    }
    Add(d, "emulation", true,
        absl::StrCat(dest_, " offers emulated devices (", dst_model, ")"));

    Add(d, "vendor-architecture",
        Str(d.getVendor()) == offer.vendor &&
            Str(d.getArchitecture()) == offer.architecture,
        absl::StrCat("source device is ", src_model, "; ", dest_, " emulates ",
                     dst_model));

    // An emulated device's wrapperAbi is its device model's state-blob ABI.
    const VersionTriple src_abi = FromCapnp(d.getWrapperAbi());
    Add(d, "device-abi", AbiAccepts(offer.device_abi, src_abi),
        AbiDetail("source device state ABI", src_abi,
                  absl::StrCat(dest_, "'s device model reads"),
                  offer.device_abi));

    Add(d, "vram", d.getVramBytes() <= offer.max_vram_bytes,
        absl::StrCat("source needs ", FormatBytes(d.getVramBytes()),
                     " of VRAM; ", dest_, " offers emulated devices up to ",
                     FormatBytes(offer.max_vram_bytes)));
  }

  // --- API forwarding: a backend speaking the guest wrapper's protocol. ---
  void CheckApiForwarding(const DeviceDescriptor::Reader& d) {
    const std::string wrapper = Str(d.getWrapperName());
    std::vector<size_t> candidates;
    std::vector<std::string> offered;
    for (size_t i = 0; i < host_.api_forwarding.size(); ++i) {
      const ApiForwardingOffer& b = host_.api_forwarding[i];
      if (b.wrapper_name == wrapper) candidates.push_back(i);
      offered.push_back(b.wrapper_name);
    }
    if (candidates.empty()) {
      Add(d, "backend", false,
          absl::StrCat(
              "source session uses wrapper ", wrapper, "; ", dest_,
              " has no backend for it (backends: ", JoinOrNone(offered), ")"));
      return;
    }
    // The first backend that passes every rule takes the session; when
    // none does, the first one's rows say what is missing.
    size_t chosen = candidates.front();
    std::vector<Rule> rules = BackendRules(d, chosen);
    for (size_t i : candidates) {
      std::vector<Rule> r = BackendRules(d, i);
      if (AllOk(r)) {
        chosen = i;
        rules = std::move(r);
        break;
      }
    }
    const ApiForwardingOffer& b = host_.api_forwarding[chosen];
    std::string which;
    if (candidates.size() > 1) {
      const auto pos = std::find(candidates.begin(), candidates.end(), chosen);
      which = absl::StrFormat(" (%d of %d for this wrapper)",
                              pos - candidates.begin() + 1, candidates.size());
    }
    Add(d, "backend", true,
        absl::StrCat(dest_, " has backend ", wrapper, " on ", b.vendor, "/",
                     b.architecture, which));
    for (const Rule& r : rules) Add(d, r);
    if (AllOk(rules)) {
      backend_used_[chosen] += d.getVramBytes();
      backend_users_[chosen].push_back(index_);
    }
  }

  std::vector<Rule> BackendRules(const DeviceDescriptor::Reader& d,
                                 size_t backend) const {
    const ApiForwardingOffer& b = host_.api_forwarding[backend];
    std::vector<Rule> rules;

    const VersionTriple src_abi = FromCapnp(d.getWrapperAbi());
    rules.push_back(
        {"wrapper-abi", AbiAccepts(b.abi, src_abi),
         AbiDetail("guest wrapper ABI", src_abi,
                   absl::StrCat(dest_, "'s backend speaks"), b.abi)});

    std::vector<std::string> required;
    std::vector<std::string> missing;
    const std::set<std::string> have(b.features.begin(), b.features.end());
    for (capnp::Text::Reader f : d.getRequiredFeatures()) {
      required.push_back(Str(f));
      if (have.count(required.back()) == 0) missing.push_back(required.back());
    }
    std::string features_detail;
    if (required.empty()) {
      features_detail = "the session requires no features";
    } else if (missing.empty()) {
      features_detail = absl::StrCat(dest_,
                                     "'s backend has every feature the "
                                     "session requires (",
                                     JoinOrNone(required), ")");
    } else {
      features_detail = absl::StrCat(
          dest_, "'s backend lacks ", absl::StrJoin(missing, ", "),
          " (the session requires ", absl::StrJoin(required, ", "), ")");
    }
    rules.push_back({"features", missing.empty(), features_detail});

    // Sessions already placed on this backend hold their memory too.
    const uint64_t need = d.getVramBytes();
    if (b.memory_bytes == 0) {
      rules.push_back({"device-memory", true,
                       absl::StrCat("session holds ", FormatBytes(need), "; ",
                                    dest_, "'s backend sets no memory limit")});
    } else {
      const uint64_t used = backend_used_[backend];
      const uint64_t left = used >= b.memory_bytes ? 0 : b.memory_bytes - used;
      std::string detail =
          absl::StrCat("session holds ", FormatBytes(need), "; ", dest_,
                       "'s backend gives ", FormatBytes(b.memory_bytes));
      if (used > 0) {
        absl::StrAppend(&detail, ", ", FormatBytes(used), " of it taken by ",
                        DeviceList(backend_users_[backend]));
      }
      rules.push_back({"device-memory", need <= left, std::move(detail)});
    }
    return rules;
  }

  // --- direct pass-through: the whole GPU moves, through VFIO migration. ---
  void CheckDirectPassthrough(const DeviceDescriptor::Reader& d) {
    if (!d.getMigrationCapable()) {
      Add(d, "migration-support", false,
          absl::StrCat("device ", Str(d.getInstanceId()), " (",
                       Str(d.getVendor()), " ", Str(d.getBoardType()),
                       ") is passed through whole and its driver offers no "
                       "migration (VFIO migration v2)"));
      // The VM cannot move, but its API-forwarding sessions live in host
      // processes that can still be checkpointed on their own.
      for (size_t i = 0; i < devices_.size(); ++i) {
        if (devices_[i].getStrategy() != Strategy::API_FORWARDING) continue;
        AddNote(absl::StrCat("the API-forwarding session on device ", i,
                             " can still be saved with `vgpu-migrate "
                             "snapshot`"));
      }
      return;
    }
    CheckOnGpu(d, /*whole_gpu=*/true);
  }

  void AddNote(std::string note) {
    for (const std::string& n : report_->notes) {
      if (n == note) return;
    }
    report_->notes.push_back(std::move(note));
  }

  // --- mediated and migratable pass-through: a GPU of the same kind. ---
  //
  // Mediated: a GPU of the descriptor's vendor and architecture that offers
  // the vGPU type (the descriptor's boardType) among its free_instances.
  // Pass-through (whole_gpu): a GPU of the same vendor, architecture and
  // board type; the "migration-support" rule then keeps those whose driver
  // offers VFIO migration, and each of them takes one device. Whether such
  // a GPU is otherwise idle is not in the profile, so it is not checked.
  bool GpuMatches(const DeviceDescriptor::Reader& d, const GpuOffer& gpu,
                  bool whole_gpu) const {
    if (gpu.vendor != Str(d.getVendor()) ||
        gpu.architecture != Str(d.getArchitecture())) {
      return false;
    }
    const std::string type = Str(d.getBoardType());
    return whole_gpu ? gpu.board_type == type
                     : gpu.free_instances.count(type) > 0;
  }

  static std::string DemandKey(const DeviceDescriptor::Reader& d,
                               bool whole_gpu) {
    return absl::StrCat(whole_gpu ? "gpu/" : "vgpu/", Str(d.getVendor()), "/",
                        Str(d.getArchitecture()), "/", Str(d.getBoardType()));
  }

  // Which devices of the VM want the same vGPU type (or the same board, for
  // pass-through): they draw on one pool of instances.
  void CountGpuDemand() {
    for (size_t i = 0; i < devices_.size(); ++i) {
      const DeviceDescriptor::Reader& d = devices_[i];
      if (d.getStrategy() == Strategy::MEDIATED) {
        demand_[DemandKey(d, false)].push_back(static_cast<int>(i));
      } else if (d.getStrategy() == Strategy::DIRECT_PASSTHROUGH &&
                 d.getMigrationCapable()) {
        demand_[DemandKey(d, true)].push_back(static_cast<int>(i));
      }
    }
  }

  // Several VFIO devices of one VM stop together only through the P2P
  // states: each must reach RUNNING_P2P (no new peer-to-peer DMA) before
  // any of them stops. A driver without them cannot take part (QEMU
  // refuses such a VM likewise).
  void CheckP2p(const DeviceDescriptor::Reader& d) {
    int vfio = 0;
    for (const DeviceDescriptor::Reader& o : devices_) {
      if (o.getStrategy() == Strategy::MEDIATED ||
          (o.getStrategy() == Strategy::DIRECT_PASSTHROUGH &&
           o.getMigrationCapable())) {
        ++vfio;
      }
    }
    if (vfio < 2) return;
    bool p2p = false;
    for (auto f : d.getFeatures()) p2p = p2p || Str(f) == "p2p";
    Add(d, "p2p", p2p,
        p2p ? absl::StrFormat("the VM has %d VFIO devices; this one's driver "
                              "offers the P2P states to stop with them",
                              vfio)
            : absl::StrFormat("the VM has %d VFIO devices, which must all stop "
                              "peer-to-peer DMA before any stops; this "
                              "device's driver has no P2P states",
                              vfio));
  }

  void CheckOnGpu(const DeviceDescriptor::Reader& d, bool whole_gpu) {
    CheckP2p(d);
    const std::string type = Str(d.getBoardType());
    const std::string kind =
        absl::StrCat(Str(d.getVendor()), "/", Str(d.getArchitecture()));
    std::vector<size_t> candidates;
    std::vector<std::string> offered;
    for (size_t i = 0; i < host_.gpus.size(); ++i) {
      const GpuOffer& gpu = host_.gpus[i];
      if (GpuMatches(d, gpu, whole_gpu)) candidates.push_back(i);
      if (whole_gpu) {
        offered.push_back(absl::StrCat(gpu.vendor, "/", gpu.architecture, " ",
                                       gpu.board_type));
      } else {
        for (const auto& [t, n] : gpu.free_instances) {
          offered.push_back(
              absl::StrCat(gpu.vendor, "/", gpu.architecture, " ", t));
        }
      }
    }
    const std::string type_rule = whole_gpu ? "board-type" : "vendor-type";
    if (candidates.empty()) {
      Add(d, type_rule, false,
          absl::StrCat("source ", whole_gpu ? "GPU" : "vGPU", " is ", kind, " ",
                       type, "; ", dest_, " has no such ",
                       whole_gpu ? "GPU (GPUs: " : "vGPU type (types: ",
                       JoinOrNone(offered), ")"));
      return;
    }
    Add(d, type_rule, true,
        absl::StrFormat("source %s is %s %s; %s has %d %s GPU%s %s",
                        whole_gpu ? "GPU" : "vGPU", kind, type, dest_,
                        candidates.size(), kind,
                        candidates.size() == 1 ? "" : "s",
                        whole_gpu ? "of that board" : "offering that type"));

    if (whole_gpu) {
      std::vector<size_t> capable;
      for (size_t i : candidates) {
        if (host_.gpus[i].migration_capable) capable.push_back(i);
      }
      if (!Add(d, "migration-support", !capable.empty(),
               absl::StrFormat("source GPU's driver offers VFIO migration v2; "
                               "%s has %d of %d %s GPU%s whose driver does",
                               dest_, capable.size(), candidates.size(), type,
                               candidates.size() == 1 ? "" : "s"))) {
        return;
      }
      candidates = std::move(capable);
    }

    // All GPUs of a host run one driver, but ECC and memory are per GPU:
    // the first GPU that passes every per-device rule is reported.
    size_t chosen = candidates.front();
    std::vector<Rule> rules = PerGpuRules(d, chosen, whole_gpu);
    for (size_t i : candidates) {
      std::vector<Rule> r = PerGpuRules(d, i, whole_gpu);
      if (AllOk(r)) {
        chosen = i;
        rules = std::move(r);
        break;
      }
    }
    Add(d, rules[0]);  // driver-branch
    Add(d, rules[1]);  // ecc
    Add(d, InstancesRule(d, candidates, whole_gpu));
    Add(d, rules[2]);  // vram
  }

  // driver-branch, ecc, vram against one GPU.
  std::vector<Rule> PerGpuRules(const DeviceDescriptor::Reader& d, size_t i,
                                bool whole_gpu) const {
    const GpuOffer& gpu = host_.gpus[i];
    const std::string gpu_name =
        absl::StrCat(dest_, " GPU ", i, " (", gpu.board_type, ")");
    std::vector<Rule> rules;

    const VersionTriple src = FromCapnp(d.getDriverVersion());
    rules.push_back(
        {"driver-branch", IsAllowedDriverMove(src, gpu.driver),
         absl::StrFormat(
             "source driver %s (branch %d), %s %s: %s", VersionString(src),
             src.major, dest_, VersionString(gpu.driver),
             DriverMoveWords(ClassifyDriverMove(src, gpu.driver)))});

    auto on_off = [](bool b) { return b ? "on" : "off"; };
    rules.push_back(
        {"ecc", d.getEccEnabled() == gpu.ecc_enabled,
         absl::StrCat("source has ECC ", on_off(d.getEccEnabled()), "; ",
                      gpu_name, " has ECC ", on_off(gpu.ecc_enabled))});

    rules.push_back(
        {"vram", d.getVramBytes() <= gpu.vram_bytes,
         absl::StrCat(whole_gpu ? "source GPU has " : "vGPU needs ",
                      FormatBytes(d.getVramBytes()),
                      whole_gpu ? " of VRAM; " : " of framebuffer; ", gpu_name,
                      " has ", FormatBytes(gpu.vram_bytes))});
    return rules;
  }

  Rule InstancesRule(const DeviceDescriptor::Reader& d,
                     const std::vector<size_t>& candidates,
                     bool whole_gpu) const {
    const std::string type = Str(d.getBoardType());
    const std::vector<int>& wanting = demand_.at(DemandKey(d, whole_gpu));
    if (whole_gpu) {
      // Each candidate (already migration-capable) takes one device.
      return {
          "instances", wanting.size() <= candidates.size(),
          absl::StrFormat("the VM passes through %d whole %s GPU%s (%s); "
                          "%s has %d that can take one",
                          wanting.size(), type, wanting.size() == 1 ? "" : "s",
                          DeviceList(wanting), dest_, candidates.size())};
    }
    uint64_t free = 0;
    for (size_t i : candidates) free += host_.gpus[i].free_instances.at(type);
    return {
        "instances", wanting.size() <= free,
        absl::StrFormat("the VM needs %d %s instance%s (%s); %s has %d "
                        "free on %d GPU%s",
                        wanting.size(), type, wanting.size() == 1 ? "" : "s",
                        DeviceList(wanting), dest_, free, candidates.size(),
                        candidates.size() == 1 ? "" : "s")};
  }

  const std::vector<DeviceDescriptor::Reader>& devices_;
  const HostProfile& host_;
  const std::string dest_;
  CompatReport* report_;
  int index_ = -1;  // the device being checked
  // Per API-forwarding backend: bytes and devices already placed on it.
  std::vector<uint64_t> backend_used_;
  std::vector<std::vector<int>> backend_users_;
  // DemandKey -> the devices wanting an instance of that pool.
  std::map<std::string, std::vector<int>> demand_;
};

// ---------------------------------------------------------------------------
// JSON reading, through internal::FieldReader: a typo is an error and not a
// silently ignored setting, and the first error names the key's path.

bool ParseVersion(const std::string& text, VersionTriple* out) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '.');
  if (parts.size() < 2 || parts.size() > 3) return false;
  uint32_t v[3] = {0, 0, 0};
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty() ||
        parts[i].find_first_not_of("0123456789") != absl::string_view::npos ||
        !absl::SimpleAtoi(parts[i], &v[i])) {
      return false;
    }
  }
  *out = {v[0], v[1], v[2]};
  return true;
}

// A "MAJOR.MINOR[.PATCH]" string at `key`.
void ReadVersion(FieldReader& f, absl::string_view key, VersionTriple* out) {
  const json* v = f.Take(key);
  if (v == nullptr) return;
  if (!v->is_string() || !ParseVersion(v->get<std::string>(), out)) {
    f.Fail(f.Path(key), "expected \"MAJOR.MINOR[.PATCH]\"");
  }
}

json VersionJson(const VersionTriple& v) { return VersionString(v); }

}  // namespace

bool CompatReport::ok() const {
  for (const CompatRow& row : rows) {
    if (!row.ok) return false;
  }
  return true;
}

absl::Status CompatReport::ToStatus() const {
  for (const CompatRow& row : rows) {
    if (row.ok) continue;
    std::string where = "vm";
    if (row.device >= 0) {
      where = row.instance.empty() ? absl::StrCat("device ", row.device)
                                   : absl::StrCat("device ", row.device, " (",
                                                  row.instance, ")");
    }
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": ", row.rule, ": ", row.detail));
  }
  return absl::OkStatus();
}

CompatReport CheckCompatibility(
    const std::vector<schema::DeviceDescriptor::Reader>& devices,
    const HostProfile& host) {
  CompatReport report;
  report.destination = host.host;
  if (devices.empty()) {
    CompatRow row;
    row.rule = "devices";
    row.ok = false;
    row.detail = "the VM has no vGPUs registered";
    report.rows.push_back(std::move(row));
    return report;
  }
  Checker(devices, host, &report).Run();
  return report;
}

std::string FormatReportTable(const CompatReport& report) {
  std::vector<std::vector<std::string>> lines = {
      {"DEVICE", "RULE", "RESULT", "DETAIL"}};
  size_t failed = 0;
  for (const CompatRow& row : report.rows) {
    std::string device = "vm";
    if (row.device >= 0) {
      device = row.instance.empty()
                   ? absl::StrCat(row.device)
                   : absl::StrCat(row.device, " (", row.instance, ")");
    }
    if (!row.ok) ++failed;
    lines.push_back({device, row.rule, row.ok ? "ok" : "REFUSED", row.detail});
  }
  size_t width[3] = {0, 0, 0};
  for (const auto& line : lines) {
    for (size_t c = 0; c < 3; ++c)
      width[c] = std::max(width[c], line[c].size());
  }
  std::string out;
  for (const auto& line : lines) {
    for (size_t c = 0; c < 3; ++c) {
      absl::StrAppend(&out, line[c],
                      std::string(width[c] - line[c].size() + 2, ' '));
    }
    absl::StrAppend(&out, line[3], "\n");
  }
  for (const std::string& note : report.notes) {
    absl::StrAppend(&out, "note: ", note, "\n");
  }
  const std::string dest =
      report.destination.empty() ? "the destination" : report.destination;
  if (report.ok()) {
    absl::StrAppend(&out, "compatible: vm can move to ", dest, "\n");
  } else {
    absl::StrAppend(&out, "refused: ", failed, " of ", report.rows.size(),
                    " checks failed\n");
  }
  return out;
}

json ReportToJson(const CompatReport& report) {
  json rows = json::array();
  for (const CompatRow& row : report.rows) {
    rows.push_back({{"device", row.device},
                    {"instance", row.instance},
                    {"strategy", row.strategy},
                    {"rule", row.rule},
                    {"ok", row.ok},
                    {"detail", row.detail}});
  }
  return {{"destination", report.destination},
          {"compatible", report.ok()},
          {"rows", std::move(rows)},
          {"notes", report.notes}};
}

absl::Status ReportFromJson(const json& j, CompatReport* out) {
  absl::Status status;
  CompatReport report;
  FieldReader top(j, "", &status);
  top.String("destination", &report.destination);
  bool compatible = true;
  const bool has_compatible = j.is_object() && j.contains("compatible");
  top.Bool("compatible", &compatible);
  top.List("rows", [&](const json& r, const std::string& path) {
    CompatRow row;
    FieldReader f(r, path, &status);
    f.Int("device", -1, 1 << 20, &row.device);
    f.String("instance", &row.instance);
    f.String("strategy", &row.strategy);
    f.String("rule", &row.rule);
    f.Bool("ok", &row.ok);
    f.String("detail", &row.detail);
    f.Finish();
    report.rows.push_back(std::move(row));
  });
  top.StringList("notes", &report.notes);
  top.Finish();
  if (!status.ok()) return status;
  // "compatible" is derived from the rows; a mismatch means the two were
  // edited apart, and trusting either could let a refused VM move.
  if (has_compatible && compatible != report.ok()) {
    return FieldError("compatible",
                      absl::StrCat("says ", compatible ? "true" : "false",
                                   " but the rows say otherwise"));
  }
  *out = std::move(report);
  return absl::OkStatus();
}

json ProfileToJson(const HostProfile& profile) {
  const EmulationOffer& e = profile.emulation;
  json backends = json::array();
  for (const ApiForwardingOffer& b : profile.api_forwarding) {
    backends.push_back({{"wrapper_name", b.wrapper_name},
                        {"abi", VersionJson(b.abi)},
                        {"features", b.features},
                        {"vendor", b.vendor},
                        {"architecture", b.architecture},
                        {"memory_bytes", b.memory_bytes}});
  }
  json gpus = json::array();
  for (const GpuOffer& g : profile.gpus) {
    json free = json::object();
    for (const auto& [type, n] : g.free_instances) free[type] = n;
    gpus.push_back({{"vendor", g.vendor},
                    {"architecture", g.architecture},
                    {"board_type", g.board_type},
                    {"driver", VersionJson(g.driver)},
                    {"ecc_enabled", g.ecc_enabled},
                    {"vram_bytes", g.vram_bytes},
                    {"migration_capable", g.migration_capable},
                    {"free_instances", std::move(free)}});
  }
  return {{"host", profile.host},
          {"emulation",
           {{"available", e.available},
            {"vendor", e.vendor},
            {"architecture", e.architecture},
            {"device_abi", VersionJson(e.device_abi)},
            {"max_vram_bytes", e.max_vram_bytes}}},
          {"api_forwarding", std::move(backends)},
          {"gpus", std::move(gpus)}};
}

absl::Status ProfileFromJson(const json& j, HostProfile* out) {
  absl::Status status;
  HostProfile profile;
  FieldReader top(j, "", &status);
  top.String("host", &profile.host);
  if (const json* e = top.Take("emulation")) {
    EmulationOffer& offer = profile.emulation;
    FieldReader f(*e, "emulation", &status);
    f.Bool("available", &offer.available);
    f.String("vendor", &offer.vendor);
    f.String("architecture", &offer.architecture);
    ReadVersion(f, "device_abi", &offer.device_abi);
    f.Uint64("max_vram_bytes", &offer.max_vram_bytes);
    f.Finish();
  }
  top.List("api_forwarding", [&](const json& b, const std::string& path) {
    ApiForwardingOffer offer;
    FieldReader f(b, path, &status);
    f.String("wrapper_name", &offer.wrapper_name);
    ReadVersion(f, "abi", &offer.abi);
    f.StringList("features", &offer.features);
    f.String("vendor", &offer.vendor);
    f.String("architecture", &offer.architecture);
    f.Uint64("memory_bytes", &offer.memory_bytes);
    f.Finish();
    profile.api_forwarding.push_back(std::move(offer));
  });
  top.List("gpus", [&](const json& g, const std::string& path) {
    GpuOffer gpu;
    FieldReader f(g, path, &status);
    f.String("vendor", &gpu.vendor);
    f.String("architecture", &gpu.architecture);
    f.String("board_type", &gpu.board_type);
    ReadVersion(f, "driver", &gpu.driver);
    f.Bool("ecc_enabled", &gpu.ecc_enabled);
    f.Uint64("vram_bytes", &gpu.vram_bytes);
    f.Bool("migration_capable", &gpu.migration_capable);
    if (const json* free = f.Take("free_instances")) {
      const std::string free_path = f.Path("free_instances");
      if (!free->is_object()) {
        f.Fail(free_path, "expected an object of vGPU type -> count");
      } else {
        for (auto it = free->begin(); it != free->end(); ++it) {
          if (!it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX) {
            f.Fail(JoinPath(free_path, it.key()),
                   "expected a non-negative integer");
            break;
          }
          gpu.free_instances[it.key()] =
              static_cast<uint32_t>(it->get<uint64_t>());
        }
      }
    }
    f.Finish();
    profile.gpus.push_back(std::move(gpu));
  });
  top.Finish();
  if (!status.ok()) return status;
  *out = std::move(profile);
  return absl::OkStatus();
}

}  // namespace vgpu::migrator
