#include "tests/e2e/cluster.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/control.capnp.h"
#include "migrator/tls.h"

namespace vgpu::e2e {
namespace {

using migrator::internal::GetError;
using migrator::internal::RpcClient;
using schema::Control;

int Run(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

absl::Status RunOk(const std::string& cmd) {
  if (Run(cmd) != 0) return absl::InternalError("command failed: " + cmd);
  return absl::OkStatus();
}

// One control connection for one call.
struct Conn {
  std::unique_ptr<RpcClient> rpc;
  std::unique_ptr<Control::Client> api;
};

absl::StatusOr<Conn> Open(const std::string& socket) {
  auto rpc = RpcClient::ConnectUnix(socket);
  if (!rpc.ok()) return rpc.status();
  Conn c;
  c.rpc = std::move(*rpc);
  c.api = std::make_unique<Control::Client>(c.rpc->Bootstrap<Control>());
  return c;
}

JobView ToView(schema::JobStatus::Reader s) {
  JobView v;
  v.id = s.getId();
  v.kind = s.getKind();
  v.vm = s.getVm();
  v.phase = s.getPhase();
  v.state = s.getState();
  absl::Status e = GetError(s.getError());
  v.error = std::string(e.message());
  v.error_code = static_cast<int>(e.code());
  v.snapshot = s.getSnapshot();
  v.source_resumed = s.getSourceResumed();
  v.downtime_ms = s.getDowntimeMs();
  v.raw_bytes = s.getRawBytes();
  v.wire_bytes = s.getWireBytes();
  v.rounds = s.getRounds().size();
  for (auto row : s.getReport().getRows()) {
    if (!row.getOk()) v.refused_rules.push_back(row.getRule());
  }
  return v;
}

template <typename R>
absl::Status ErrorOf(const absl::StatusOr<R>& reply) {
  if (!reply.ok()) return reply.status();
  return GetError(reply->getError());
}

constexpr absl::Duration kCallTimeout = absl::Seconds(60);

}  // namespace

std::string Cluster::Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && workspace != nullptr) {
    std::string p = absl::StrCat(srcdir, "/", workspace, "/", path);
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return path;
}

int Cluster::CountProcesses(const std::string& needle) {
  int n = 0;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return -1;
  while (dirent* e = readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream in(absl::StrCat("/proc/", e->d_name, "/cmdline"));
    std::string cmdline((std::istreambuf_iterator<char>(in)),
                        std::istreambuf_iterator<char>());
    if (cmdline.find(needle) != std::string::npos) ++n;
  }
  closedir(proc);
  return n;
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Create(
    const ClusterOptions& options) {
  std::unique_ptr<Cluster> c(new Cluster());
  if (auto s = c->Setup(options); !s.ok()) return s;
  for (int i = 0; i < c->size(); ++i) {
    if (auto s = c->StartHost(i); !s.ok()) return s;
  }
  return c;
}

absl::Status Cluster::Setup(const ClusterOptions& options) {
  options_ = options;
  // Unix socket paths are short-limited: a short directory under /tmp.
  char tmpl[] = "/tmp/vgpu-e2e.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp");
  dir_ = tmpl;
  const pid_t me = getpid();
  const bool root = geteuid() == 0;
  bool have_ip = Run("ip netns list") == 0;
  bool have_iptables = Run("iptables --version") == 0;
  netns_ = root && have_ip && have_iptables;
  if (netns_) {
    mode_ = "netns";
  } else {
    mode_ = absl::StrCat("loopback (", !root ? "not root" : "",
                         !have_ip ? " no iproute2" : "",
                         !have_iptables ? " no iptables" : "", ")");
  }
  // A subnet of our own, so concurrent test processes never meet.
  const int a = 100 + me % 100, b = (me / 100) % 250;
  bridge_ = absl::StrFormat("vb%d", me % 100000);
  if (netns_) {
    if (auto s = RunOk(absl::StrCat("ip link add ", bridge_, " type bridge"));
        !s.ok()) {
      return s;
    }
    for (const std::string& cmd :
         {absl::StrFormat("ip addr add 10.%d.%d.254/24 dev %s", a, b, bridge_),
          absl::StrCat("ip link set ", bridge_, " up")}) {
      if (auto s = RunOk(cmd); !s.ok()) return s;
    }
  }
  // Certificates: one CA for the cluster, a foreign CA for some hosts.
  std::vector<std::string> names, foreign;
  for (int i = 0; i < options.hosts; ++i) {
    bool is_foreign = false;
    for (int f : options.foreign_ca) is_foreign |= f == i;
    (is_foreign ? foreign : names).push_back(absl::StrCat("host", i + 1));
  }
  if (auto s = migrator::MakeDemoCerts(dir_ + "/certs", names); !s.ok()) return s;
  if (!foreign.empty()) {
    if (auto s = migrator::MakeDemoCerts(dir_ + "/foreign-certs", foreign);
        !s.ok()) {
      return s;
    }
  }
  for (int i = 0; i < options.hosts; ++i) {
    Host h;
    h.name = absl::StrCat("host", i + 1);
    h.dir = absl::StrCat(dir_, "/", h.name);
    mkdir(h.dir.c_str(), 0700);
    h.control = h.dir + "/control.sock";
    if (netns_) {
      h.ns = absl::StrFormat("vgpu%d-h%d", me % 100000, i + 1);
      h.addr = absl::StrFormat("10.%d.%d.%d", a, b, i + 1);
      h.port = 7480;
      std::string veth = absl::StrFormat("vh%d-%d", me % 100000, i + 1);
      std::string peer = absl::StrFormat("vp%d-%d", me % 100000, i + 1);
      for (const std::string& cmd :
           {absl::StrCat("ip netns add ", h.ns),
            absl::StrCat("ip link add ", veth, " type veth peer name ", peer),
            absl::StrCat("ip link set ", veth, " netns ", h.ns),
            absl::StrCat("ip link set ", peer, " master ", bridge_),
            absl::StrCat("ip link set ", peer, " up"),
            absl::StrCat("ip -n ", h.ns, " addr add ", h.addr, "/24 dev ", veth),
            absl::StrCat("ip -n ", h.ns, " link set ", veth, " up"),
            absl::StrCat("ip -n ", h.ns, " link set lo up")}) {
        if (auto s = RunOk(cmd); !s.ok()) return s;
      }
    } else {
      h.addr = "127.0.0.1";
      h.port = static_cast<uint16_t>(20000 + (me % 2000) * 10 + i);
    }
    hosts_.push_back(h);
  }
  return absl::OkStatus();
}

Cluster::~Cluster() {
  for (int i = 0; i < size(); ++i) StopHost(i, SIGKILL);
  for (pid_t p : children_) KillProcess(p);
  if (netns_) {
    for (const Host& h : hosts_) Run("ip netns del " + h.ns);
    Run("ip link del " + bridge_);
  }
  Run("rm -rf " + dir_);
}

std::string Cluster::PeerAddress(int i) const {
  return absl::StrCat(hosts_[i].addr, ":", hosts_[i].port);
}

std::string Cluster::ProxyListenAddress() const {
  if (!netns_) return "127.0.0.1";
  std::string a = hosts_[0].addr;
  return a.substr(0, a.rfind('.')) + ".254";
}

void Cluster::OverridePeer(int from, int to, const std::string& addr) {
  hosts_[from].peer_override[to] = addr;
}

absl::Status Cluster::WriteConfig(int i) {
  const Host& h = hosts_[i];
  bool foreign = false;
  for (int f : options_.foreign_ca) foreign |= f == i;
  std::string certs = dir_ + (foreign ? "/foreign-certs" : "/certs");
  std::vector<std::string> peers;
  for (int j = 0; j < size(); ++j) {
    if (j == i) continue;
    auto o = h.peer_override.find(j);
    peers.push_back(absl::StrFormat(
        "\"%s\": \"%s\"", hosts_[j].name,
        o != h.peer_override.end() ? o->second : PeerAddress(j)));
  }
  std::string max_vram;
  auto mv = options_.max_vram.find(i);
  if (mv != options_.max_vram.end()) {
    max_vram = absl::StrCat(", \"max_vram\": \"", mv->second, "\"");
  }
  std::string extra;
  auto e = options_.extra_config.find(i);
  if (e != options_.extra_config.end()) extra = ",\n" + e->second;
  if (options_.cl_backends) {
    absl::StrAppend(&extra, ",\n  \"forwarding\": {\"control\": \"",
                    ClControl(i), "\"}");
  }
  std::string json = absl::StrFormat(
      R"({
  "host": "%s",
  "control_socket": "%s",
  "listen": "%s",
  "peers": {%s},
  "store": "%s/store",
  "run_dir": "%s/run",
  "peer_timeout_ms": %u,
  "emulation": {"device_binary": "%s"%s},
  "tls": {"ca": "%s/ca.pem", "cert": "%s/%s.pem", "key": "%s/%s.key"}%s
})",
      h.name, h.control,
      absl::StrCat(netns_ ? h.addr : "127.0.0.1", ":", h.port),
      absl::StrJoin(peers, ", "), h.dir, h.dir, options_.peer_timeout_ms,
      Runfile("agents/emulated/vgpu-emu-device"), max_vram, certs, certs, h.name, certs,
      h.name, extra);
  std::ofstream(h.dir + "/vgpud.json") << json;
  mkdir((h.dir + "/run").c_str(), 0755);
  return absl::OkStatus();
}

absl::StatusOr<pid_t> Cluster::Spawn(const std::vector<std::string>& argv,
                                     const std::string& log,
                                     const std::string& ns) {
  std::vector<std::string> full;
  if (!ns.empty()) full = {"/usr/sbin/ip", "netns", "exec", ns};
  full.insert(full.end(), argv.begin(), argv.end());
  std::vector<char*> args;
  for (auto& a : full) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

absl::Status Cluster::StartHost(int i) {
  Host& h = hosts_[i];
  if (auto s = WriteConfig(i); !s.ok()) return s;
  unlink(h.control.c_str());
  auto pid = Spawn({Runfile("migrator/vgpud"), "--config", h.dir + "/vgpud.json"},
                   h.dir + "/vgpud.log", h.ns);
  if (!pid.ok()) return pid.status();
  h.pid = *pid;
  for (int n = 0; n < 500; ++n) {
    auto c = Open(h.control);
    if (c.ok()) return absl::OkStatus();
    int st;
    if (waitpid(h.pid, &st, WNOHANG) == h.pid) {
      h.pid = -1;
      std::ifstream in(h.dir + "/vgpud.log");
      std::stringstream ss;
      ss << in.rdbuf();
      return absl::InternalError(
          absl::StrCat(h.name, ": vgpud exited at start: ", ss.str()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(h.name + ": vgpud did not come up");
}

int Cluster::StopHost(int i, int sig) {
  Host& h = hosts_[i];
  if (h.pid <= 0) return -1;
  kill(h.pid, sig);
  int status = -1;
  for (int n = 0; n < 1000; ++n) {
    if (waitpid(h.pid, &status, WNOHANG) == h.pid) break;
    if (n == 500) kill(h.pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  h.pid = -1;
  return status;
}

bool Cluster::HostRunning(int i) {
  Host& h = hosts_[i];
  if (h.pid <= 0) return false;
  return waitpid(h.pid, nullptr, WNOHANG) == 0;
}

absl::Status Cluster::CutLink(int i) {
  if (!netns_) return absl::UnimplementedError("link cuts need netns mode");
  const std::string& ns = hosts_[i].ns;
  if (auto s = RunOk(absl::StrCat("ip netns exec ", ns, " iptables -I INPUT -i vh", getpid() % 100000, "-", i + 1, " -j DROP")); !s.ok()) {
    return s;
  }
  return RunOk(absl::StrCat("ip netns exec ", ns, " iptables -I OUTPUT -o vh",
                            getpid() % 100000, "-", i + 1, " -j DROP"));
}

absl::Status Cluster::HealLink(int i) {
  if (!netns_) return absl::UnimplementedError("link cuts need netns mode");
  return RunOk(absl::StrCat("ip netns exec ", hosts_[i].ns,
                            " iptables -F"));
}

absl::StatusOr<std::string> Cluster::StartDevice(const std::string& name,
                                                 const std::string& vram) {
  std::string sock = absl::StrCat(dir_, "/", name, ".sock");
  auto pid = Spawn({Runfile("agents/emulated/vgpu-emu-device"), "--socket",
                    sock, "--vram", vram, "--name", name},
                   absl::StrCat(dir_, "/", name, ".log"), "");
  if (!pid.ok()) return pid.status();
  children_.push_back(*pid);
  // The socket file appears at bind, a moment before the device listens:
  // wait until a connection is accepted.
  for (int n = 0; n < 1000; ++n) {
    if (access(sock.c_str(), F_OK) == 0) {
      int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un sa{};
      sa.sun_family = AF_UNIX;
      std::strncpy(sa.sun_path, sock.c_str(), sizeof(sa.sun_path) - 1);
      bool up = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
      close(fd);
      if (up) return sock;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("device did not start: " + name);
}

std::string Cluster::ClControl(int i) const {
  return absl::StrCat("unix:", hosts_[i].dir, "/clc.sock");
}

absl::StatusOr<std::string> Cluster::StartClBackend(int i) {
  const Host& h = hosts_[i];
  const std::string guests = netns_ ? absl::StrCat("tcp:", h.addr, ":7400")
                                    : absl::StrCat("unix:", h.dir, "/cl.sock");
  auto pid = Spawn({Runfile("agents/forwarding/backend/vgpu-cl-backend"),
                    "--listen", guests, "--control", ClControl(i),
                    "--run-dir", h.dir + "/cl"},
                   h.dir + "/cl-backend.log", h.ns);
  if (!pid.ok()) return pid.status();
  children_.push_back(*pid);
  const std::string sock = h.dir + "/clc.sock";
  for (int n = 0; n < 300; ++n) {
    if (access(sock.c_str(), F_OK) == 0) return guests;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "vgpu-cl-backend on ", h.name, " did not come up; see ", h.dir,
      "/cl-backend.log"));
}

absl::StatusOr<pid_t> Cluster::SpawnOnHost(
    int i, const std::vector<std::string>& argv,
    const std::vector<std::string>& env, const std::string& log) {
  std::vector<std::string> full = {"/usr/bin/env"};
  full.insert(full.end(), env.begin(), env.end());
  full.insert(full.end(), argv.begin(), argv.end());
  auto pid = Spawn(full, log, hosts_[i].ns);
  if (pid.ok()) children_.push_back(*pid);
  return pid;
}

absl::StatusOr<pid_t> Cluster::StartWorkload(const std::string& socket,
                                             uint32_t pages_per_second) {
  auto pid = Spawn({Runfile("agents/emulated/vgpu-emu-workload"), "--socket",
                    socket, "--pages-per-second",
                    absl::StrCat(pages_per_second)},
                   dir_ + "/workload.log", "");
  if (pid.ok()) children_.push_back(*pid);
  return pid;
}

void Cluster::KillProcess(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

absl::Status Cluster::Register(int host, const std::string& vm,
                               const std::vector<std::string>& sockets) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->registerVmRequest();
  req.initVm().setName(vm);
  auto devices = req.getVm().initDevices(sockets.size());
  for (size_t i = 0; i < sockets.size(); ++i) {
    devices[i].setStrategy("emulation");
    devices[i].setEndpoint(sockets[i]);
  }
  return ErrorOf(c->rpc->Wait(req.send(), kCallTimeout, "register"));
}

absl::Status Cluster::RegisterDevices(int host, const std::string& vm,
                                      const std::vector<std::string>& list) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->registerVmRequest();
  req.initVm().setName(vm);
  auto devices = req.getVm().initDevices(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const size_t colon = list[i].find(':');
    devices[i].setStrategy(list[i].substr(0, colon));
    devices[i].setEndpoint(list[i].substr(colon + 1));
  }
  return ErrorOf(c->rpc->Wait(req.send(), kCallTimeout, "register"));
}

absl::StatusOr<std::vector<VmView>> Cluster::List(int host) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto reply = c->rpc->Wait(c->api->listVmsRequest().send(), kCallTimeout, "list");
  if (!reply.ok()) return reply.status();
  std::vector<VmView> out;
  for (auto v : reply->getVms()) {
    VmView view;
    view.name = v.getName();
    view.job = v.getJob();
    for (auto d : v.getDevices()) {
      view.endpoints.push_back(d.getEndpoint());
      view.strategies.push_back(d.getStrategy());
      view.health.push_back(d.getHealth());
      view.problems.push_back(d.getProblem());
    }
    out.push_back(view);
  }
  return out;
}

absl::StatusOr<std::string> Cluster::Migrate(int host, const std::string& vm,
                                             int to, const MigrateOpts& opts) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->migrateRequest();
  req.setVm(vm);
  req.setTo(Name(to));
  auto o = req.initOptions();
  o.setDowntimeMs(opts.downtime_ms);
  o.setBandwidth(opts.bandwidth);
  o.setPauseAt(opts.pause_at);
  o.setCompress(opts.compress);
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "migrate");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  return std::string(reply->getJob().cStr());
}

absl::StatusOr<std::string> Cluster::Snapshot(int host, const std::string& vm,
                                              const std::string& tag) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->snapshotRequest();
  req.setVm(vm);
  req.setTag(tag);
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "snapshot");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  return std::string(reply->getJob().cStr());
}

absl::StatusOr<std::string> Cluster::Restore(int host,
                                             const std::string& snapshot,
                                             const std::string& as) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->restoreRequest();
  req.setSnapshot(snapshot);
  req.setAs(as);
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "restore");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  return std::string(reply->getJob().cStr());
}

absl::StatusOr<std::vector<std::string>> Cluster::Snapshots(
    int host, const std::string& vm) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->snapshotsRequest();
  req.setVm(vm);
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "snapshots");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  std::vector<std::string> ids;
  for (auto r : reply->getSnapshots()) ids.emplace_back(r.getId().cStr());
  return ids;
}

absl::Status Cluster::Cancel(int host, const std::string& job) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->cancelRequest();
  req.setJob(job);
  return ErrorOf(c->rpc->Wait(req.send(), kCallTimeout, "cancel"));
}

absl::Status Cluster::Continue(int host, const std::string& job) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->continueJobRequest();
  req.setJob(job);
  return ErrorOf(c->rpc->Wait(req.send(), kCallTimeout, "continue"));
}

absl::StatusOr<JobView> Cluster::Job(int host, const std::string& job) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->watchRequest();
  req.setJob(job);
  req.setAfterSeq(UINT64_MAX - 1);
  req.setWaitMs(0);
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "status");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  return ToView(reply->getStatus());
}

absl::StatusOr<JobView> Cluster::WaitJob(int host, const std::string& job,
                                         absl::Duration timeout,
                                         const std::string& phase) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto v = Job(host, job);
    if (!v.ok()) return v.status();
    if (v->state != "running") return v;
    if (!phase.empty() && v->phase == phase) return v;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("job ", job, " did not ", phase.empty() ? "end" : "reach " + phase,
                   " within ", absl::FormatDuration(timeout)));
}

absl::StatusOr<JobView> Cluster::Check(int host, const std::string& vm,
                                       int to) {
  auto c = Open(Control(host));
  if (!c.ok()) return c.status();
  auto req = c->api->checkRequest();
  req.setVm(vm);
  req.setTo(Name(to));
  auto reply = c->rpc->Wait(req.send(), kCallTimeout, "check");
  if (auto s = ErrorOf(reply); !s.ok()) return s;
  JobView v;
  for (auto row : reply->getReport().getRows()) {
    if (!row.getOk()) v.refused_rules.push_back(row.getRule());
  }
  v.state = v.refused_rules.empty() ? "compatible" : "refused";
  return v;
}

absl::StatusOr<JobView> Cluster::MigrateAndWait(int host, const std::string& vm,
                                                int to,
                                                const MigrateOpts& opts) {
  auto job = Migrate(host, vm, to, opts);
  if (!job.ok()) return job.status();
  return WaitJob(host, *job, absl::Seconds(120));
}

}  // namespace vgpu::e2e
