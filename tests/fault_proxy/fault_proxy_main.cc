// vgpu-fault-proxy: a TCP proxy that injects link faults between a
// migration source and destination (hosts without netem). See
// fault_proxy.h for the faults and control.h for the control commands.
//
//   vgpu-fault-proxy --listen ADDR:PORT --to ADDR:PORT [faults...]
//                    [--control PATH]
//
// Prints "listening on ADDR:PORT" (flushed) once it accepts. SIGTERM or
// SIGINT: close every connection and exit 0. Logs one line per connection
// event and per control command to stderr.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "tests/fault_proxy/control.h"
#include "tests/fault_proxy/fault_proxy.h"

namespace {

using vgpu::fault_proxy::ApplyCommand;
using vgpu::fault_proxy::FaultProxy;
using vgpu::fault_proxy::FaultProxyOptions;

// A control line longer than this is not a command; the client is dropped.
constexpr size_t kMaxLine = 4096;

constexpr char kFooter[] =
    R"(Faults (each applies to both directions; change them at run time through
--control):
  --delay-ms N     hold every chunk N ms before forwarding it, order kept:
                   a long or congested path (adds N ms each way).
  --bandwidth B    forward at most B bytes/s per connection and direction:
                   a thin link; senders slow down through TCP backpressure.
  --drop           read and silently discard all data (FIN included): a cut
                   link where packets vanish. Connections stay open, so only
                   the peers' own timeouts can notice.
  --reset-after N  after N bytes were forwarded in a direction of a
                   connection, RST both sides: a middlebox or peer reset
                   mid-stream. The receiver gets N bytes (if it keeps
                   reading), never more.
  --flip-every N   flip one bit of every N-th byte (offsets N-1, 2N-1, ...):
                   corruption that TCP checksums missed; the migration's own
                   checksums must catch it.
  --flip-at K      flip one bit of the byte at offset K of each connection's
                   client->upstream stream: a single targeted corruption.
  --seed S         which bit each flip hits; runs repeat exactly per seed.
  --refuse         accept new connections and reset them at once: a
                   destination that is up but will not take migrations.

Control socket (--control PATH, a Unix stream socket, mode 0600): one command
per line, one reply line each ("ok", "ok N", JSON, or "error: ...").
Commands:
)";

void Log(absl::string_view line) {
  // One fprintf per line: stdio locks the stream, so proxy threads and the
  // main thread never interleave within a line.
  std::fprintf(stderr, "vgpu-fault-proxy: %.*s\n",
               static_cast<int>(line.size()), line.data());
}

// Binds a Unix stream socket at `path`, replacing a stale socket left by a
// killed run (but never a file of another kind).
int ListenUnix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    Log(absl::StrCat("--control ", path, ": longer than ",
                     sizeof(addr.sun_path) - 1, " bytes"));
    return -1;
  }
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    unlink(path.c_str());
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    Log(absl::StrCat("--control: socket: ", std::strerror(errno)));
    return -1;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  // Owner only: the control socket can cut any migration through us.
  const mode_t old_mask = umask(0077);
  const int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old_mask);
  if (rc != 0 || listen(fd, 8) != 0) {
    Log(absl::StrCat("--control ", path, ": ", std::strerror(errno)));
    close(fd);
    return -1;
  }
  return fd;
}

struct ControlClient {
  int fd;
  std::string pending;  // bytes after the last newline
};

// Handles what one control client sent; false when it should be dropped.
bool ServeClient(FaultProxy& proxy, ControlClient& client) {
  char buf[1024];
  const ssize_t n = recv(client.fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (n == 0) return false;
  client.pending.append(buf, n);
  size_t newline;
  while ((newline = client.pending.find('\n')) != std::string::npos) {
    std::string line = client.pending.substr(0, newline);
    client.pending.erase(0, newline + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::string reply;
    const absl::Status s = ApplyCommand(proxy, line, &reply);
    if (!s.ok()) reply = absl::StrCat("error: ", s.message());
    Log(absl::StrCat("control: ", line, " -> ", reply));
    reply += '\n';
    // Replies are short and the socket has a send timeout: a client that
    // stops reading cannot stall the proxy for long.
    if (send(client.fd, reply.data(), reply.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(reply.size())) {
      return false;
    }
  }
  if (client.pending.size() > kMaxLine) {
    const std::string reply = "error: line too long\n";
    send(client.fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-fault-proxy: forward TCP connections from --listen to --to, "
      "injecting link faults (netem in userspace) for migration tests"};
  app.footer(absl::StrCat(
      kFooter, "  ",
      absl::StrReplaceAll(vgpu::fault_proxy::CommandHelp(), {{"\n", "\n  "}}),
      "\n"));
  FaultProxyOptions options;
  uint64_t delay_ms = 0;
  uint64_t bandwidth = 0;
  bool drop = false;
  uint64_t reset_after = 0;
  uint64_t flip_every = 0;
  uint64_t flip_at = 0;
  std::string control_path;
  app.add_option("--listen", options.listen,
                 "ADDR:PORT to accept on (port 0: any free port)")
      ->required();
  app.add_option("--to", options.upstream,
                 "ADDR:PORT every connection is forwarded to")
      ->required();
  app.add_option("--delay-ms", delay_ms,
                 "delay each chunk N ms, each way (a long path)");
  app.add_option("--bandwidth", bandwidth,
                 "cap each direction of a connection at BYTES/s (a thin "
                 "link); 0: unlimited");
  app.add_flag("--drop", drop,
               "silently discard all data, connections stay open (a cut "
               "link)");
  app.add_option("--reset-after", reset_after,
                 "RST both sides after N bytes forwarded in a direction (a "
                 "reset mid-stream)");
  app.add_option("--flip-every", flip_every,
                 "flip one bit in every N-th byte (corruption TCP missed)");
  CLI::Option* flip_at_option = app.add_option(
      "--flip-at", flip_at,
      "flip one bit of the byte at offset K of each client->upstream "
      "stream");
  app.add_option("--seed", options.seed, "which bits the flips hit")
      ->capture_default_str();
  app.add_flag("--refuse", options.refuse,
               "accept and reset new connections at once (a destination "
               "that refuses)");
  app.add_option("--control", control_path,
                 "Unix socket taking fault commands at run time");
  CLI11_PARSE(app, argc, argv);

  for (auto* faults :
       {&options.client_to_upstream, &options.upstream_to_client}) {
    faults->delay = absl::Milliseconds(delay_ms);
    faults->bandwidth_bytes_per_s = bandwidth;
    faults->drop = drop;
    faults->reset_after_bytes = reset_after;
    faults->flip_every_bytes = flip_every;
  }
  if (flip_at_option->count() > 0) {
    options.client_to_upstream.flip_at_offset = flip_at;
  }
  options.log = Log;

  // Signals are taken synchronously through a signalfd; blocking them
  // before the proxy starts its threads makes every thread inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int stop_fd = signalfd(-1, &stop_signals, SFD_CLOEXEC);
  if (stop_fd < 0) {
    Log(absl::StrCat("signalfd: ", std::strerror(errno)));
    return 1;
  }

  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
      FaultProxy::Start(options);
  if (!proxy.ok()) {
    Log(proxy.status().ToString());
    return absl::IsInvalidArgument(proxy.status()) ? 2 : 1;
  }
  int control_fd = -1;
  if (!control_path.empty()) {
    control_fd = ListenUnix(control_path);
    if (control_fd < 0) return 1;
  }
  std::printf("listening on %s\n", (*proxy)->address().c_str());
  std::fflush(stdout);
  Log(absl::StrCat("listening on ", (*proxy)->address(), ", forwarding to ",
                   options.upstream));

  std::vector<ControlClient> clients;
  for (;;) {
    std::vector<pollfd> fds = {{stop_fd, POLLIN, 0}, {control_fd, POLLIN, 0}};
    for (const ControlClient& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      Log(absl::StrCat("poll: ", std::strerror(errno)));
      break;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info;
      if (read(stop_fd, &info, sizeof(info)) == sizeof(info)) {
        Log(absl::StrCat("signal ", info.ssi_signo, ": exiting"));
      }
      break;
    }
    // Clients first: their indexes in fds match `clients` only until an
    // accept appends one.
    for (size_t i = clients.size(); i-- > 0;) {
      if (fds[2 + i].revents == 0) continue;
      if (!ServeClient(**proxy, clients[i])) {
        close(clients[i].fd);
        clients.erase(clients.begin() + i);
      }
    }
    if (fds[1].revents & POLLIN) {
      const int fd = accept4(control_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        timeval timeout{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
        clients.push_back({fd, ""});
      }
    }
  }
  (*proxy)->Stop();
  for (const ControlClient& c : clients) close(c.fd);
  if (control_fd >= 0) {
    close(control_fd);
    unlink(control_path.c_str());
  }
  close(stop_fd);
  return 0;
}
