// vgpud's configuration file: JSON text -> Config. Every key is checked for
// type, range and spelling, so a mistake stops start-up with the key's path
// instead of running on a default. Also the two small parsers the CLI shares:
// sizes ("64M") and "ADDR[:PORT]". Called once by main(); no global state.
#include "migrator/config.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "migrator/internal/json_fields.h"
#include "nlohmann/json.hpp"

namespace vgpu::migrator {
namespace {

using internal::FieldReader;
using json = nlohmann::json;

constexpr uint32_t kMaxRounds = 1000;
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxVmName = 64;

std::string LocalHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return "localhost";
  }
  return name;
}

// A byte count: a non-negative integer or a size string ("64M").
bool ReadSize(FieldReader& f, absl::string_view key, uint64_t* out) {
  const json* v = f.Take(key);
  if (v == nullptr) return false;
  if (v->is_number_unsigned()) {
    *out = v->get<uint64_t>();
    return true;
  }
  if (v->is_string()) {
    absl::StatusOr<uint64_t> n = ParseByteSize(v->get<std::string>());
    if (!n.ok()) return f.Fail(f.Path(key), n.status().message());
    *out = *n;
    return true;
  }
  return f.Fail(f.Path(key), "expected a byte count or a size like \"64M\"");
}

bool IsVmNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' ||
         c == '.' || c == '-';
}

// 8-4-4-4-12 hex digits: libvirt's form, which is how VMs are matched.
bool IsUuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-'
             : !absl::ascii_isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

void ParseTls(FieldReader& top, absl::Status* status, TlsConfig* tls) {
  const json* t = top.Take("tls");
  if (t == nullptr) return;
  FieldReader f(*t, "tls", status);
  f.String("ca", &tls->ca_file);
  f.String("cert", &tls->cert_file);
  f.String("key", &tls->key_file);
  f.Bool("insecure", &tls->insecure);
  f.Finish();
  if (!status->ok() || tls->insecure) return;
  // All three or none: none leaves the choice to the daemon (which refuses
  // to talk plaintext off loopback); a partial set is surely a mistake.
  std::vector<std::string> set;
  std::vector<std::string> missing;
  const struct {
    const char* key;
    const std::string& value;
  } files[] = {
      {"ca", tls->ca_file}, {"cert", tls->cert_file}, {"key", tls->key_file}};
  for (const auto& file : files) {
    (file.value.empty() ? missing : set).push_back(file.key);
  }
  if (!set.empty() && !missing.empty()) {
    f.Fail("tls", absl::StrCat("ca, cert and key go together: ",
                               absl::StrJoin(set, " and "), " set but ",
                               absl::StrJoin(missing, " and "), " missing"));
  }
}

void ParseVms(FieldReader& top, absl::Status* status,
              std::vector<StaticVm>* vms) {
  std::set<std::string> names;
  top.List("vms", [&](const json& v, const std::string& path) {
    StaticVm vm;
    FieldReader f(v, path, status);
    if (!f.String("name", &vm.name) && status->ok()) {
      f.Fail(f.Path("name"), "missing");
    }
    if (status->ok()) {
      const bool valid_chars =
          std::all_of(vm.name.begin(), vm.name.end(), IsVmNameChar);
      if (vm.name.empty() || vm.name.size() > kMaxVmName || !valid_chars) {
        f.Fail(f.Path("name"),
               absl::StrFormat("\"%s\" is not a VM name (1 to %d of "
                               "A-Z a-z 0-9 _ . -)",
                               vm.name, kMaxVmName));
      } else if (!names.insert(vm.name).second) {
        f.Fail(f.Path("name"),
               absl::StrCat("\"", vm.name, "\" is named twice"));
      }
    }
    if (f.String("uuid", &vm.uuid) && !vm.uuid.empty() && !IsUuid(vm.uuid)) {
      f.Fail(f.Path("uuid"), absl::StrCat("\"", vm.uuid, "\" is not a UUID"));
    }
    f.List("devices", [&](const json& d, const std::string& dpath) {
      StaticDevice dev;
      FieldReader df(d, dpath, status);
      if (!df.String("strategy", &dev.strategy) && status->ok()) {
        df.Fail(df.Path("strategy"), "missing");
      }
      // Strategies without an agent in this build are refused here rather
      // than failing when the VM first migrates.
      if (status->ok() && dev.strategy != "emulation" &&
          dev.strategy != "mediated" && dev.strategy != "directPassthrough" &&
          dev.strategy != "apiForwarding") {
        df.Fail(df.Path("strategy"),
                absl::StrCat("strategy ", dev.strategy,
                             " not supported by this build"));
      }
      if (!df.String("endpoint", &dev.endpoint) && status->ok()) {
        df.Fail(df.Path("endpoint"),
                "missing (a device socket, mdev UUID or PCI address)");
      }
      df.Finish();
      vm.devices.push_back(std::move(dev));
    });
    f.Finish();
    vms->push_back(std::move(vm));
  });
}

absl::Status ParseTop(const json& j, Config* c) {
  absl::Status status;
  FieldReader top(j, "", &status);
  if (top.String("host", &c->host) && c->host.empty()) {
    top.Fail("host", "empty");
  }
  top.String("control_socket", &c->control_socket);
  if (top.String("listen", &c->listen)) {
    std::string addr;
    uint16_t port = 0;
    absl::Status s = SplitHostPort(c->listen, kDefaultPeerPort, &addr, &port);
    if (!s.ok()) top.Fail("listen", s.message());
  }
  if (const json* peers = top.Take("peers")) {
    FieldReader f(*peers, "peers", &status);
    if (status.ok()) {
      for (auto it = peers->begin(); it != peers->end(); ++it) {
        if (it.key().empty()) {
          f.Fail("peers", "a peer with an empty name");
          break;
        }
        std::string value;
        if (!f.String(it.key(), &value)) break;
        std::string addr;
        uint16_t port = 0;
        absl::Status s = SplitHostPort(value, kDefaultPeerPort, &addr, &port);
        if (!s.ok()) {
          f.Fail(f.Path(it.key()), s.message());
          break;
        }
        c->peers[it.key()] = value;
      }
    }
    f.Finish();
  }
  top.String("store", &c->store_path);
  top.String("run_dir", &c->run_dir);
  if (top.Uint32("downtime_ms", &c->downtime_ms) && c->downtime_ms == 0) {
    top.Fail("downtime_ms", "must be at least 1");
  }
  if (top.Uint32("peer_timeout_ms", &c->peer_timeout_ms) &&
      (c->peer_timeout_ms < 500 || c->peer_timeout_ms > 600000)) {
    top.Fail("peer_timeout_ms", "must be within 500..600000");
  }
  if (top.Uint32("max_rounds", &c->max_rounds) &&
      (c->max_rounds < 1 || c->max_rounds > kMaxRounds)) {
    top.Fail("max_rounds",
             absl::StrFormat("%d is outside 1..%d", c->max_rounds, kMaxRounds));
  }
  ReadSize(top, "bandwidth", &c->bandwidth_bytes_per_second);
  // A zero window would never let a byte through.
  if (ReadSize(top, "window", &c->window_bytes) && c->window_bytes == 0) {
    top.Fail("window", "must be at least 1 byte");
  }
  top.Bool("compress", &c->compress);
  if (top.Int("threads", &c->threads) &&
      (c->threads < 0 || c->threads > kMaxThreads)) {
    top.Fail("threads", absl::StrFormat("%d is outside 0..%d (0: one per "
                                        "core)",
                                        c->threads, kMaxThreads));
  }
  ParseTls(top, &status, &c->tls);
  if (const json* e = top.Take("emulation")) {
    FieldReader f(*e, "emulation", &status);
    f.String("device_binary", &c->emulated_device_binary);
    ReadSize(f, "max_vram", &c->emulated_max_vram_bytes);
    f.Finish();
  }
  if (const json* m = top.Take("mediated")) {
    FieldReader f(*m, "mediated", &status);
    if (const json* r = f.Take("reference")) {
      FieldReader rf(*r, "mediated.reference", &status);
      c->reference_gpu = true;
      rf.Bool("enabled", &c->reference_gpu);
      rf.String("type", &c->reference_type);
      int n = static_cast<int>(c->reference_instances);
      if (rf.Int("instances", &n) && (n < 1 || n > 64)) {
        rf.Fail(rf.Path("instances"), absl::StrCat(n, " is outside 1..64"));
      }
      c->reference_instances = static_cast<uint32_t>(n);
      ReadSize(rf, "vram", &c->reference_vram_bytes);
      if (c->reference_vram_bytes == 0 || c->reference_vram_bytes % 4096 != 0) {
        rf.Fail(rf.Path("vram"), "must be a positive multiple of 4K");
      }
      int ctx = static_cast<int>(c->reference_contexts);
      if (rf.Int("contexts", &ctx) && (ctx < 1 || ctx > 64)) {
        rf.Fail(rf.Path("contexts"), absl::StrCat(ctx, " is outside 1..64"));
      }
      c->reference_contexts = static_cast<uint32_t>(ctx);
      ReadSize(rf, "workload", &c->reference_workload_bytes_per_second);
      rf.Finish();
    }
    f.Finish();
  }
  if (const json* f = top.Take("forwarding")) {
    FieldReader r(*f, "forwarding", &status);
    r.String("control", &c->forwarding_control);
    r.String("vendor", &c->forwarding_vendor);
    r.String("architecture", &c->forwarding_architecture);
    r.String("device", &c->forwarding_device);
    int ms = static_cast<int>(c->forwarding_poll_ms);
    if (r.Int("poll_ms", &ms) && (ms < 100 || ms > 600000)) {
      r.Fail(r.Path("poll_ms"), absl::StrCat(ms, " is outside 100..600000"));
    }
    c->forwarding_poll_ms = static_cast<uint32_t>(ms);
    ReadSize(r, "memory", &c->forwarding_memory_bytes);
    r.Finish();
  }
  if (const json* l = top.Take("libvirt")) {
    FieldReader f(*l, "libvirt", &status);
    f.String("uri", &c->libvirt_uri);
    int ms = static_cast<int>(c->libvirt_poll_ms);
    if (f.Int("poll_ms", &ms) && (ms < 100 || ms > 600000)) {
      f.Fail(f.Path("poll_ms"), absl::StrCat(ms, " is outside 100..600000"));
    }
    c->libvirt_poll_ms = static_cast<uint32_t>(ms);
    f.Finish();
  }
  if (const json* p = top.Take("passthrough")) {
    FieldReader f(*p, "passthrough", &status);
    f.String("sys_root", &c->sys_root);
    f.String("dev_root", &c->dev_root);
    f.Finish();
  }
  if (const json* p = top.Take("profile")) {
    // ProfileFromJson's messages name paths inside the profile.
    if (!p->is_object()) {
      top.Fail("profile", "expected an object");
    } else if (absl::Status s = ProfileFromJson(*p, &c->declared); !s.ok()) {
      top.Fail("", absl::StrCat("profile.", s.message()));
    }
  }
  ParseVms(top, &status, &c->vms);
  top.Finish();
  return status;
}

// Drops nlohmann's "[json.exception.parse_error.101] " prefix: the rest
// ("parse error at line 3, column 5: ...") is what a person needs.
std::string JsonErrorText(const char* what) {
  absl::string_view text(what);
  if (!text.empty() && text[0] == '[') {
    const size_t end = text.find("] ");
    if (end != absl::string_view::npos) text.remove_prefix(end + 2);
  }
  return std::string(text);
}

absl::Status ErrnoStatus(int err, const std::string& message) {
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnknownError(message);
  }
}

}  // namespace

absl::StatusOr<Config> ParseConfig(const std::string& json_text,
                                   const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": not valid JSON: ", JsonErrorText(e.what())));
  }
  Config config;
  config.host = LocalHostName();
  if (absl::Status s = ParseTop(j, &config); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", s.message()));
  }
  return config;
}

absl::StatusOr<Config> LoadConfig(const std::string& path, bool explicit_path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    // No file at the default path is a host that runs on the defaults.
    if (err == ENOENT && !explicit_path) return ParseConfig("{}", path);
    return ErrnoStatus(
        err, absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  std::string text;
  char buf[1 << 14];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return ErrnoStatus(
        err, absl::StrCat(path, ": cannot read: ", std::strerror(err)));
  }
  return ParseConfig(text, path);
}

absl::Status SplitHostPort(const std::string& text, uint16_t default_port,
                           std::string* addr, uint16_t* port) {
  if (text.empty()) return absl::InvalidArgumentError("empty address");
  std::string host;
  std::string port_text;
  bool has_port = false;
  if (text[0] == '[') {
    // "[v6]" or "[v6]:port".
    const size_t close = text.find(']');
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing ']' in \"", text, "\""));
    }
    host = text.substr(1, close - 1);
    const std::string rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') {
        return absl::InvalidArgumentError(absl::StrCat(
            "unexpected \"", rest, "\" after ']' in \"", text, "\""));
      }
      has_port = true;
      port_text = rest.substr(1);
    }
  } else {
    const size_t colon = text.find(':');
    if (colon != std::string::npos &&
        text.find(':', colon + 1) == std::string::npos) {
      host = text.substr(0, colon);
      has_port = true;
      port_text = text.substr(colon + 1);
    } else {
      // No colon, or several: a bare IPv6 address, which cannot carry a
      // port without brackets.
      host = text;
    }
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing address in \"", text, "\""));
  }
  for (char c : host) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) || c == '[' ||
        c == ']' || c == '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", host, "\" is not a host name or address"));
    }
  }
  uint16_t p = default_port;
  if (has_port) {
    if (port_text.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing port after ':' in \"", text, "\""));
    }
    uint64_t value = 0;
    if (port_text.find_first_not_of("0123456789") != std::string::npos ||
        port_text.size() > 10 || !absl::SimpleAtoi(port_text, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("port \"", port_text, "\" is not a number"));
    }
    if (value < 1 || value > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("port ", port_text, " out of range"));
    }
    p = static_cast<uint16_t>(value);
  }
  *addr = std::move(host);
  *port = p;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  auto bad = [&text](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("size \"", text, "\": ", why));
  };
  absl::string_view s = absl::StripAsciiWhitespace(text);
  if (s.empty()) return bad("empty");
  if (s[0] == '-') return bad("negative");

  // Whole part, then an optional fraction: exact integer arithmetic, since
  // "1.5G" must be exactly 1610612736 and not a rounded double.
  using u128 = unsigned __int128;
  constexpr u128 kMax = UINT64_MAX;
  size_t i = 0;
  u128 whole = 0;
  while (i < s.size() &&
         absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
    whole = whole * 10 + (s[i++] - '0');
    if (whole > kMax) return bad("too large");
  }
  if (i == 0) return bad("expected a number with an optional K, M, G or T");
  u128 frac = 0;
  u128 frac_scale = 1;
  if (i < s.size() && s[i] == '.') {
    ++i;
    const size_t start = i;
    while (i < s.size() &&
           absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
      if (i - start >= 18) return bad("too many decimals");
      frac = frac * 10 + (s[i++] - '0');
      frac_scale *= 10;
    }
    if (i == start) return bad("expected digits after '.'");
  }
  while (i < s.size() && s[i] == ' ') ++i;

  const std::string unit = absl::AsciiStrToLower(s.substr(i));
  static constexpr struct {
    char letter;
    int shift;
  } kUnits[] = {{'k', 10}, {'m', 20}, {'g', 30}, {'t', 40}};
  int shift = -1;
  if (unit.empty() || unit == "b") shift = 0;
  for (const auto& u : kUnits) {
    if (unit.size() >= 1 && unit[0] == u.letter &&
        (unit.size() == 1 || unit.substr(1) == "b" || unit.substr(1) == "ib")) {
      shift = u.shift;
    }
  }
  if (shift < 0) {
    return bad(absl::StrCat("unknown unit \"", s.substr(i),
                            "\" (use K, M, G or T, optionally with B or iB)"));
  }
  const u128 multiplier = u128{1} << shift;
  if (frac * multiplier % frac_scale != 0) {
    return bad("not a whole number of bytes");
  }
  const u128 bytes = whole * multiplier + frac * multiplier / frac_scale;
  if (bytes > kMax) return bad("too large");
  return static_cast<uint64_t>(bytes);
}

}  // namespace vgpu::migrator
