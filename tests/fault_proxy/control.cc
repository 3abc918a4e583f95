// The control-socket command language: see control.h.
#include "tests/fault_proxy/control.h"

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace vgpu::fault_proxy {
namespace {

constexpr absl::string_view kHelp =
    "delay MS [DIR]: hold each chunk MS ms before forwarding it\n"
    "bandwidth BYTES_PER_S [DIR]: cap the rate per connection (0: unlimited)\n"
    "drop on|off [DIR]: read and discard everything, FIN included\n"
    "reset-after BYTES [DIR]: RST both sides once BYTES were forwarded "
    "(0: never)\n"
    "flip-every N [DIR]: flip one bit of every N-th byte (0: never)\n"
    "flip-at OFFSET|off [DIR]: flip one bit of the byte at OFFSET of each "
    "connection (DIR defaults to up)\n"
    "seed S: choose which bits the flips hit\n"
    "refuse on|off: accept new connections and reset them at once\n"
    "reset-now: RST every live connection (replies \"ok N\")\n"
    "stats: the counters as one JSON line\n"
    "DIR: both (default), up (client->upstream), down (upstream->client)";

absl::Status Bad(absl::string_view line, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("control command \"", line, "\": ", why));
}

}  // namespace

absl::string_view CommandHelp() { return kHelp; }

std::string StatsJson(const FaultProxyStats& s) {
  auto direction = [](const DirectionStats& d) {
    return absl::StrCat("{\"bytes_read\":", d.bytes_read,
                        ",\"bytes_forwarded\":", d.bytes_forwarded,
                        ",\"bytes_dropped\":", d.bytes_dropped,
                        ",\"flips\":", d.flips, "}");
  };
  return absl::StrCat(
      "{\"connections_accepted\":", s.connections_accepted,
      ",\"connections_refused\":", s.connections_refused,
      ",\"connections_live\":", s.connections_live,
      ",\"upstream_connect_failures\":", s.upstream_connect_failures,
      ",\"resets\":", s.resets,
      ",\"flips\":", s.client_to_upstream.flips + s.upstream_to_client.flips,
      ",\"client_to_upstream\":", direction(s.client_to_upstream),
      ",\"upstream_to_client\":", direction(s.upstream_to_client), "}");
}

absl::Status ApplyCommand(FaultProxy& proxy, absl::string_view line,
                          std::string* reply) {
  const std::vector<absl::string_view> words =
      absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
  if (words.empty()) return Bad(line, "empty");
  const absl::string_view verb = words[0];

  // Each command takes up to `max_args` words after the verb; a trailing
  // direction is parsed for those that accept one.
  auto want_args = [&](size_t min_args, size_t max_args) -> absl::Status {
    const size_t n = words.size() - 1;
    if (n < min_args || n > max_args) {
      return Bad(line,
                 absl::StrCat(
                     "takes ", min_args,
                     min_args == max_args ? "" : absl::StrCat(" to ", max_args),
                     " argument(s), got ", n));
    }
    return absl::OkStatus();
  };
  auto direction = [&](Direction fallback, Direction* out) -> absl::Status {
    *out = fallback;
    if (words.size() < 3) return absl::OkStatus();
    const absl::string_view d = words[2];
    if (d == "both") {
      *out = Direction::kBoth;
    } else if (d == "up" || d == DirectionName(Direction::kClientToUpstream)) {
      *out = Direction::kClientToUpstream;
    } else if (d == "down" ||
               d == DirectionName(Direction::kUpstreamToClient)) {
      *out = Direction::kUpstreamToClient;
    } else {
      return Bad(line,
                 absl::StrCat("direction \"", d, "\": want both, up or down"));
    }
    return absl::OkStatus();
  };
  auto number = [&](uint64_t* out) -> absl::Status {
    if (!absl::SimpleAtoi(words[1], out)) {
      return Bad(line, absl::StrCat("\"", words[1],
                                    "\" is not a non-negative integer"));
    }
    return absl::OkStatus();
  };
  auto on_off = [&](bool* out) -> absl::Status {
    if (words[1] == "on") {
      *out = true;
    } else if (words[1] == "off") {
      *out = false;
    } else {
      return Bad(line, absl::StrCat("\"", words[1], "\": want on or off"));
    }
    return absl::OkStatus();
  };
// Returns from ApplyCommand on an error, as the parse steps above can fail.
#define VGPU_RETURN_IF_ERROR(expr) \
  do {                             \
    absl::Status _s = (expr);      \
    if (!_s.ok()) return _s;       \
  } while (0)

  Direction dir;
  uint64_t n = 0;
  bool flag = false;
  if (verb == "delay" || verb == "bandwidth" || verb == "reset-after" ||
      verb == "flip-every") {
    VGPU_RETURN_IF_ERROR(want_args(1, 2));
    VGPU_RETURN_IF_ERROR(number(&n));
    VGPU_RETURN_IF_ERROR(direction(Direction::kBoth, &dir));
    if (verb == "delay") {
      proxy.SetDelay(absl::Milliseconds(n), dir);
    } else if (verb == "bandwidth") {
      proxy.SetBandwidth(n, dir);
    } else if (verb == "reset-after") {
      proxy.SetResetAfterBytes(n, dir);
    } else {
      proxy.SetFlipEveryBytes(n, dir);
    }
  } else if (verb == "drop") {
    VGPU_RETURN_IF_ERROR(want_args(1, 2));
    VGPU_RETURN_IF_ERROR(on_off(&flag));
    VGPU_RETURN_IF_ERROR(direction(Direction::kBoth, &dir));
    proxy.SetDrop(flag, dir);
  } else if (verb == "flip-at") {
    VGPU_RETURN_IF_ERROR(want_args(1, 2));
    std::optional<uint64_t> offset;
    if (words[1] != "off") {
      VGPU_RETURN_IF_ERROR(number(&n));
      offset = n;
    }
    VGPU_RETURN_IF_ERROR(direction(Direction::kClientToUpstream, &dir));
    proxy.SetFlipAtOffset(offset, dir);
  } else if (verb == "seed") {
    VGPU_RETURN_IF_ERROR(want_args(1, 1));
    VGPU_RETURN_IF_ERROR(number(&n));
    proxy.SetSeed(n);
  } else if (verb == "refuse") {
    VGPU_RETURN_IF_ERROR(want_args(1, 1));
    VGPU_RETURN_IF_ERROR(on_off(&flag));
    proxy.SetRefuse(flag);
  } else if (verb == "reset-now") {
    VGPU_RETURN_IF_ERROR(want_args(0, 0));
    *reply = absl::StrCat("ok ", proxy.ResetAllConnections());
    return absl::OkStatus();
  } else if (verb == "stats") {
    VGPU_RETURN_IF_ERROR(want_args(0, 0));
    *reply = StatsJson(proxy.stats());
    return absl::OkStatus();
  } else if (verb == "help") {
    *reply = absl::StrReplaceAll(kHelp, {{"\n", " | "}});
    return absl::OkStatus();
  } else {
    return Bad(line,
               absl::StrCat("unknown command \"", verb, "\" (try \"help\")"));
  }
#undef VGPU_RETURN_IF_ERROR
  *reply = "ok";
  return absl::OkStatus();
}

}  // namespace vgpu::fault_proxy
