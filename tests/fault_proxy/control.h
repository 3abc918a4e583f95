// The text command language of vgpu-fault-proxy's control socket, kept here
// so tests can drive a FaultProxy the way the binary does. One command per
// line; each gets one reply line ("ok", "ok N", or a JSON object).
// Stateless functions: call them from any thread (FaultProxy is thread-safe).
//
//   delay MS [DIR]           bandwidth BYTES_PER_S [DIR]   (0: unlimited)
//   drop on|off [DIR]        reset-after BYTES [DIR]       (0: never)
//   flip-every N [DIR]       flip-at OFFSET|off [DIR]      (DIR: up default)
//   seed S                   refuse on|off
//   reset-now                stats                         help
//
// DIR: both (default), up (client->upstream) or down (upstream->client).
#ifndef VGPU_TESTS_FAULT_PROXY_CONTROL_H_
#define VGPU_TESTS_FAULT_PROXY_CONTROL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tests/fault_proxy/fault_proxy.h"

namespace vgpu::fault_proxy {

// Parses and applies one command line. On success *reply holds the line to
// send back (without newline); on failure nothing was changed and the status
// (INVALID_ARGUMENT) says which command and which word were wrong.
absl::Status ApplyCommand(FaultProxy& proxy, absl::string_view line,
                          std::string* reply);

// The counters as one line of JSON, e.g. {"connections_accepted":1,...,
// "client_to_upstream":{"bytes_read":5,...},"upstream_to_client":{...}}.
std::string StatsJson(const FaultProxyStats& stats);

// The command summary above, for "help" and --help.
absl::string_view CommandHelp();

}  // namespace vgpu::fault_proxy

#endif  // VGPU_TESTS_FAULT_PROXY_CONTROL_H_
