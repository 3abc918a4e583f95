#include "migrator/daemon.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/forwarding_backend.h"
#include "migrator/libvirt_inventory.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/control.capnp.h"

namespace vgpu::migrator {
namespace {

using internal::SetError;

bool IsLoopback(const std::string& addr) {
  return addr == "localhost" || absl::StartsWith(addr, "127.") ||
         addr == "::1";
}

absl::StatusOr<int> ListenTcp(const std::string& text) {
  std::string addr;
  uint16_t port = 0;
  if (auto s = SplitHostPort(text, kDefaultPeerPort, &addr, &port); !s.ok()) {
    return s;
  }
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (addr.find(':') != std::string::npos) {
    family = AF_INET6;
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    if (inet_pton(AF_INET6, addr.c_str(), &a6->sin6_addr) != 1) {
      return absl::InvalidArgumentError("listen: bad address " + addr);
    }
    len = sizeof(*a6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    if (inet_pton(AF_INET, addr.c_str(), &a4->sin_addr) != 1) {
      return absl::InvalidArgumentError("listen: bad address " + addr);
    }
    len = sizeof(*a4);
  }
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
      listen(fd, 64) != 0) {
    int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", text, ": ", strerror(err)));
  }
  return fd;
}

absl::StatusOr<int> ListenUnix(const std::string& path) {
  std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty()) mkdir(dir.c_str(), 0755);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa.sun_path)) {
    return absl::InvalidArgumentError("control socket path too long: " + path);
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size());
  unlink(path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  // Created 0600 from the start: no window in which others may connect.
  mode_t old = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  umask(old);
  if (rc != 0 || listen(fd, 64) != 0) {
    int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", path, ": ", strerror(err)));
  }
  return fd;
}

void FillStatus(const JobData& d, schema::JobStatus::Builder out) {
  out.setId(d.id);
  out.setKind(d.kind);
  out.setVm(d.vm);
  out.setPeer(d.peer);
  out.setPhase(PhaseName(d.phase));
  out.setState(JobStateName(d.state));
  out.setSeq(d.seq);
  out.setRound(d.round);
  out.setRawBytes(d.raw_bytes);
  out.setWireBytes(d.wire_bytes);
  out.setPendingBytes(d.pending_bytes);
  out.setRateBytesPerSec(d.rate);
  out.setEstDowntimeMs(d.est_downtime_ms);
  out.setEtaSeconds(d.eta_seconds);
  out.setElapsedSeconds(d.elapsed_seconds);
  out.setDowntimeMs(d.downtime_ms);
  SetError(d.error, out.initError());
  out.setSnapshot(d.snapshot);
  out.setSourceResumed(d.source_resumed);
  internal::SetReport(d.report, out.initReport());
  out.setTotalSeconds(d.total_seconds);
  out.setRoundBytes(d.round_bytes);
  out.setRoundTotal(d.round_total);
  out.setWaiting(d.waiting);
  auto endpoints = out.initEndpoints(static_cast<unsigned>(d.endpoints.size()));
  for (size_t i = 0; i < d.endpoints.size(); ++i) {
    endpoints.set(static_cast<unsigned>(i), d.endpoints[i]);
  }
  out.setRemoteJob(d.remote_job);
  auto rounds = out.initRounds(d.rounds.size());
  for (size_t i = 0; i < d.rounds.size(); ++i) rounds.set(i, d.rounds[i]);
}

void FillSnapshot(const store::SnapshotInfo& s,
                  schema::SnapshotRecord::Builder out) {
  out.setId(s.id);
  out.setVm(s.vm_name);
  out.setVmUuid(s.vm_uuid);
  out.setTag(s.tag);
  out.setParent(s.parent);
  out.setCreatedUnixNanos(s.created_unix_nanos);
  out.setLogicalBytes(s.logical_bytes);
  out.setStoredBytes(s.stored_bytes);
  out.setSections(s.sections);
  auto devices = out.initDevices(s.devices.size());
  for (size_t i = 0; i < s.devices.size(); ++i) devices.set(i, s.devices[i]);
}

class DaemonImpl;

// The control API. One instance per control connection; calls run on that
// connection's thread and may block (watch).
class ControlServer final : public schema::Control::Server {
 public:
  explicit ControlServer(DaemonImpl* d) : d_(d) {}

  kj::Promise<void> hostInfo(HostInfoContext context) override;
  kj::Promise<void> listVms(ListVmsContext context) override;
  kj::Promise<void> registerVm(RegisterVmContext context) override;
  kj::Promise<void> unregisterVm(UnregisterVmContext context) override;
  kj::Promise<void> check(CheckContext context) override;
  kj::Promise<void> checkHere(CheckHereContext context) override;
  kj::Promise<void> pull(PullContext context) override;
  kj::Promise<void> migrate(MigrateContext context) override;
  kj::Promise<void> snapshot(SnapshotContext context) override;
  kj::Promise<void> restore(RestoreContext context) override;
  kj::Promise<void> watch(WatchContext context) override;
  kj::Promise<void> jobs(JobsContext context) override;
  kj::Promise<void> cancel(CancelContext context) override;
  kj::Promise<void> continueJob(ContinueJobContext context) override;
  kj::Promise<void> snapshots(SnapshotsContext context) override;
  kj::Promise<void> deleteSnapshot(DeleteSnapshotContext context) override;
  kj::Promise<void> verify(VerifyContext context) override;
  kj::Promise<void> exportSnapshot(ExportSnapshotContext context) override;
  kj::Promise<void> importSnapshot(ImportSnapshotContext context) override;

 private:
  DaemonImpl* d_;
};

class DaemonImpl : public Daemon {
 public:
  DaemonImpl(Config config, BackendRegistry backends, LogFn log)
      : config_(std::move(config)),
        backends_(std::move(backends)),
        log_(std::move(log)),
        jobs_(config_.host) {}

  ~DaemonImpl() override { Shutdown(); }

  absl::Status Init() {
    if (!config_.tls.insecure) {
      if (config_.tls.ca_file.empty()) {
        return absl::FailedPreconditionError(
            "no TLS material for peers: set tls.ca, tls.cert and tls.key in "
            "the config (`vgpu-migrate certs DIR HOST...` makes a demo CA), "
            "or pass --insecure for a loopback-only demo");
      }
      tls_files_ = TlsFiles{config_.tls.ca_file, config_.tls.cert_file,
                            config_.tls.key_file};
      // Load once now, so bad material stops the daemon at start.
      auto loaded = PeerTls::Load(tls_files_);
      if (!loaded.ok()) return loaded.status();
    } else {
      std::string addr;
      uint16_t port;
      (void)SplitHostPort(config_.listen, kDefaultPeerPort, &addr, &port);
      if (!IsLoopback(addr)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--insecure (plaintext peers) is only for loopback demos, but "
            "the peer port listens on ", config_.listen));
      }
      for (const auto& [name, where] : config_.peers) {
        (void)SplitHostPort(where, kDefaultPeerPort, &addr, &port);
        if (!IsLoopback(addr)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "--insecure (plaintext peers) is only for loopback demos, but "
              "peer ", name, " is at ", where));
        }
      }
    }
    store::StoreOptions so;
    so.path = config_.store_path;
    auto store = store::Store::Open(so);
    if (!store.ok()) return store.status();
    store_ = std::move(*store);

    env_.config = &config_;
    env_.inventory = &inventory_;
    env_.backends = &backends_;
    env_.store = store_.get();
    env_.tls = config_.tls.insecure ? nullptr : &tls_files_;
    env_.profile = [this] { return Profile(); };
    env_.log = log_;
    env_.peer_timeout = absl::Milliseconds(config_.peer_timeout_ms);
    env_.launch = [this](std::function<void()> body) {
      return Launch(std::move(body));
    };
    if (!config_.libvirt_uri.empty()) {
      env_.guest_gate = [this](const std::string& vm, GuestSide side) {
        return NewLibvirtGate(config_.libvirt_uri, vm, side);
      };
    }

    for (const StaticVm& vm : config_.vms) {
      VmEntry e;
      e.name = vm.name;
      e.uuid = vm.uuid;
      for (const StaticDevice& d : vm.devices) {
        e.devices.push_back(VmDevice{d.strategy, d.endpoint, false});
      }
      if (auto s = inventory_.Register(std::move(e)); !s.ok()) return s;
    }

    if (!config_.libvirt_uri.empty()) {
      // Domains that carry vGPUs become VMs here, as if registered.
      libvirt_ = std::make_unique<LibvirtWatcher>(
          config_.libvirt_uri, absl::Milliseconds(config_.libvirt_poll_ms),
          &inventory_, [this](const VmEntry& vm) { return Describable(vm); },
          [this](const std::string& line) { Log(line); });
    }

    if (!config_.forwarding_control.empty()) {
      // Forwarded sessions become VMs here, under the VM their library
      // names.
      forwarding_ = NewForwardingWatcher(
          config_.forwarding_control,
          absl::Milliseconds(config_.forwarding_poll_ms), &inventory_,
          [this](const VmEntry& vm) { return Describable(vm); },
          [this](const std::string& line) { Log(line); });
    }

    auto control = ListenUnix(config_.control_socket);
    if (!control.ok()) return control.status();
    control_fd_ = *control;
    auto peer = ListenTcp(config_.listen);
    if (!peer.ok()) return peer.status();
    peer_fd_ = *peer;

    control_thread_ = std::thread([this] { AcceptControl(); });
    peer_thread_ = std::thread([this] { AcceptPeers(); });
    Log(absl::StrFormat("serving: control %s, peers %s (%s), store %s",
                        config_.control_socket, config_.listen,
                        config_.tls.insecure ? "PLAINTEXT" : "mutual TLS",
                        config_.store_path));
    return absl::OkStatus();
  }

  void Shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    Log("stopping: no new connections; cancelling running jobs");
    libvirt_.reset();
    for (int fd : {control_fd_, peer_fd_}) {
      if (fd >= 0) shutdown(fd, SHUT_RDWR);
    }
    if (control_thread_.joinable()) control_thread_.join();
    if (peer_thread_.joinable()) peer_thread_.join();
    for (int fd : {control_fd_, peer_fd_}) {
      if (fd >= 0) close(fd);
    }
    unlink(config_.control_socket.c_str());
    jobs_.CancelAll();
    incoming_.AbortAll("vgpud is stopping");
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(job_threads_);
    }
    for (auto& t : threads) t.join();
    Log("stopped");
  }

  void Log(const std::string& line) {
    log_(absl::StrCat("host=", config_.host, ": ", line));
  }

  // Whether every device of `vm` has a backend here that can describe it,
  // as registration requires.
  absl::Status Describable(const VmEntry& vm) {
    for (const VmDevice& d : vm.devices) {
      auto it = backends_.find(d.strategy);
      if (it == backends_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "strategy '", d.strategy, "' has no agent on this host"));
      }
      auto desc = it->second->Describe(d.endpoint);
      if (!desc.ok()) {
        return absl::Status(desc.status().code(),
                            absl::StrCat("device ", d.endpoint, ": ",
                                         desc.status().message()));
      }
    }
    return absl::OkStatus();
  }

  HostProfile Profile() {
    HostProfile p = config_.declared;
    p.host = config_.host;
    for (auto& [name, backend] : backends_) backend->Offer(&p);
    return p;
  }

  // Starts `body` on a job thread. FAILED_PRECONDITION once stopping.
  absl::Status Launch(std::function<void()> body) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return absl::UnavailableError("vgpud is stopping");
    job_threads_.emplace_back(std::move(body));
    return absl::OkStatus();
  }

  const Config& config() const { return config_; }
  const Env& env() const { return env_; }
  Inventory& inventory() { return inventory_; }
  JobTable& jobs() { return jobs_; }
  BackendRegistry& backends() { return backends_; }
  store::Store& store() { return *store_; }

 private:
  void AcceptControl() {
    while (true) {
      int fd = accept4(control_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // shut down
      }
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
          (cred.uid != 0 && cred.uid != geteuid())) {
        Log(absl::StrFormat(
            "refused a control connection from uid %d pid %d: root only",
            cred.uid, cred.pid));
        close(fd);
        continue;
      }
      std::thread([this, fd] {
        internal::ServeConnection(
            fd, nullptr, absl::Seconds(5),
            [this](internal::PeerNameCheck) {
              return capnp::Capability::Client(kj::heap<ControlServer>(this));
            },
            [](const std::string&) {});
      }).detach();
    }
  }

  void AcceptPeers() {
    while (true) {
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      int fd = accept4(peer_fd_, reinterpret_cast<sockaddr*>(&ss), &len,
                       SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;
      }
      internal::TunePeerSocket(fd, env_.peer_timeout);
      char host[INET6_ADDRSTRLEN] = "?";
      if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr,
                  host, sizeof(host));
      } else if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr,
                  host, sizeof(host));
      }
      std::string from = host;
      const TlsFiles* tls = config_.tls.insecure ? nullptr : &tls_files_;
      std::thread([this, fd, tls, from] {
        internal::ServeConnection(
            fd, tls, absl::Seconds(10),
            [this](internal::PeerNameCheck check) {
              return NewPeerService(env_, &jobs_, &incoming_, std::move(check));
            },
            [this, from](const std::string& line) {
              Log(absl::StrCat("peer ", from, ": ", line));
            });
      }).detach();
    }
  }

  Config config_;
  BackendRegistry backends_;
  LogFn log_;
  Inventory inventory_;
  std::unique_ptr<LibvirtWatcher> libvirt_;
  std::unique_ptr<InventoryWatcher> forwarding_;
  JobTable jobs_;
  IncomingRegistry incoming_;
  std::unique_ptr<store::Store> store_;
  TlsFiles tls_files_;
  Env env_;
  int control_fd_ = -1;
  int peer_fd_ = -1;
  std::thread control_thread_;
  std::thread peer_thread_;
  std::mutex mu_;
  bool stopped_ = false;
  std::vector<std::thread> job_threads_;
};

kj::Promise<void> ControlServer::hostInfo(HostInfoContext context) {
  auto r = context.getResults();
  r.setHost(d_->config().host);
  auto peers = r.initPeers(d_->config().peers.size());
  size_t i = 0;
  for (const auto& [name, where] : d_->config().peers) {
    peers.set(i++, absl::StrCat(name, "=", where));
  }
  r.setVersion("vgpud 0.1 (peer protocol 1)");
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::listVms(ListVmsContext context) {
  std::vector<VmEntry> vms = d_->inventory().List();
  auto out = context.getResults().initVms(vms.size());
  for (size_t i = 0; i < vms.size(); ++i) {
    const VmEntry& vm = vms[i];
    out[i].setName(vm.name);
    out[i].setUuid(vm.uuid);
    out[i].setJob(vm.job);
    auto devices = out[i].initDevices(vm.devices.size());
    for (size_t j = 0; j < vm.devices.size(); ++j) {
      const VmDevice& dev = vm.devices[j];
      devices[j].setStrategy(dev.strategy);
      devices[j].setEndpoint(dev.endpoint);
      devices[j].setOwned(dev.owned);
      if (!vm.job.empty()) {
        devices[j].setProblem("busy: held by job " + vm.job);
        continue;
      }
      auto it = d_->backends().find(dev.strategy);
      if (it == d_->backends().end()) {
        devices[j].setProblem("no agent for strategy " + dev.strategy);
        continue;
      }
      auto desc = it->second->Describe(dev.endpoint);
      devices[j].setHealth(it->second->Health(dev.endpoint));
      if (desc.ok()) {
        devices[j].setDescriptor(desc->root());
      } else {
        devices[j].setProblem(std::string(desc.status().message()));
      }
    }
  }
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::registerVm(RegisterVmContext context) {
  auto in = context.getParams().getVm();
  VmEntry vm;
  vm.name = in.getName();
  vm.uuid = in.getUuid();
  absl::Status s;
  for (auto dev : in.getDevices()) {
    std::string strategy = dev.getStrategy();
    auto it = d_->backends().find(strategy);
    if (it == d_->backends().end()) {
      s = absl::InvalidArgumentError(absl::StrCat(
          "strategy '", strategy, "' has no agent on this host"));
      break;
    }
    // A device that cannot be described now would fail every migration.
    auto desc = it->second->Describe(dev.getEndpoint());
    if (!desc.ok()) {
      s = absl::Status(desc.status().code(),
                       absl::StrCat("device ", dev.getEndpoint().cStr(), ": ",
                                    desc.status().message()));
      break;
    }
    vm.devices.push_back(VmDevice{strategy, dev.getEndpoint(), false});
  }
  if (s.ok()) s = d_->inventory().Register(vm);
  if (s.ok()) {
    d_->Log(absl::StrFormat("vm=%s: registered with %u vGPU(s)", vm.name,
                            vm.devices.size()));
  }
  SetError(s, context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::unregisterVm(UnregisterVmContext context) {
  std::string name = context.getParams().getName();
  auto vm = d_->inventory().Get(name);
  absl::Status s = d_->inventory().Unregister(name);
  if (s.ok() && vm.ok()) {
    for (const VmDevice& dev : vm->devices) {
      auto it = d_->backends().find(dev.strategy);
      if (dev.owned && it != d_->backends().end()) it->second->Destroy(dev.endpoint);
    }
  }
  SetError(s, context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::check(CheckContext context) {
  auto p = context.getParams();
  // The check opens a peer connection with an event loop of its own, which
  // this connection's thread cannot host next to its own loop.
  absl::StatusOr<CompatReport> report = absl::UnknownError("not run");
  std::string vm = p.getVm(), to = p.getTo();
  std::thread([&] { report = CheckMove(d_->env(), vm, to); }).join();
  if (report.ok()) {
    internal::SetReport(*report, context.getResults().initReport());
  }
  SetError(report.status(), context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::checkHere(CheckHereContext context) {
  auto in = context.getParams().getDevices();
  absl::Status s;
  if (in.size() == 0) {
    s = absl::InvalidArgumentError("checkHere: no devices to check");
  } else if (in.size() > 64) {
    s = absl::InvalidArgumentError(absl::StrCat(
        "checkHere: ", in.size(), " devices; a VM has at most 64 vGPUs"));
  }
  if (s.ok()) {
    std::vector<schema::DeviceDescriptor::Reader> list;
    for (auto d : in) list.push_back(d);
    CompatReport report = CheckCompatibility(list, d_->Profile());
    internal::SetReport(report, context.getResults().initReport());
    s = report.ToStatus();
  }
  SetError(s, context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::migrate(MigrateContext context) {
  auto p = context.getParams();
  MigrateRequest req;
  req.vm = p.getVm();
  req.to = p.getTo();
  auto o = p.getOptions();
  req.downtime_ms = o.getDowntimeMs();
  req.bandwidth = o.getBandwidth();
  req.max_rounds = o.getMaxRounds();
  req.compress = o.getCompress();
  auto results = context.getResults();
  absl::Status s;
  if (req.to == d_->config().host) {
    s = absl::InvalidArgumentError(
        absl::StrCat(req.vm, " is already on ", req.to));
  } else if (auto vm = d_->inventory().Get(req.vm); !vm.ok()) {
    s = vm.status();
  }
  Phase pause;
  bool has_pause = o.hasPauseAt() && o.getPauseAt().size() > 0;
  if (s.ok() && has_pause && !ParsePhase(o.getPauseAt(), &pause)) {
    s = absl::InvalidArgumentError(
        absl::StrCat("pauseAt: unknown phase '", o.getPauseAt().cStr(), "'"));
  }
  if (s.ok()) {
    auto job = d_->jobs().Create("migrate", req.vm, req.to);
    if (has_pause) job->PauseAt(pause);
    const Env& env = d_->env();
    s = d_->Launch([&env, job, req] { RunMigration(env, *job, req); });
    if (s.ok()) results.setJob(job->id());
  }
  SetError(s, results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::pull(PullContext context) {
  auto p = context.getParams();
  PullRequest req;
  req.vm = p.getVm();
  req.from = p.getFrom();
  auto results = context.getResults();
  absl::Status s;
  if (req.from == d_->config().host) req.from.clear();  // ask the peers
  if (d_->inventory().Get(req.vm).ok()) {
    s = absl::AlreadyExistsError(
        absl::StrCat(req.vm, " is already on ", d_->config().host));
  }
  if (s.ok()) {
    auto job = d_->jobs().Create("pull", req.vm, req.from);
    const Env& env = d_->env();
    JobTable* jobs = &d_->jobs();
    s = d_->Launch([&env, job, jobs, req] { RunPull(env, *job, jobs, req); });
    if (s.ok()) results.setJob(job->id());
  }
  SetError(s, results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::snapshot(SnapshotContext context) {
  auto p = context.getParams();
  std::string vm = p.getVm();
  std::string tag = p.getTag();
  auto results = context.getResults();
  absl::Status s = d_->inventory().Get(vm).status();
  if (s.ok()) {
    auto job = d_->jobs().Create("snapshot", vm, "store");
    const Env& env = d_->env();
    s = d_->Launch([&env, job, vm, tag] { RunSnapshot(env, *job, vm, tag); });
    if (s.ok()) results.setJob(job->id());
  }
  SetError(s, results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::restore(RestoreContext context) {
  auto p = context.getParams();
  std::string id = p.getSnapshot();
  std::string as = p.getAs();
  auto results = context.getResults();
  auto info = d_->store().Get(id);
  absl::Status s = info.status();
  if (s.ok()) {
    auto job = d_->jobs().Create("restore", as.empty() ? info->vm_name : as,
                                 "store");
    const Env& env = d_->env();
    s = d_->Launch([&env, job, id, as] { RunRestore(env, *job, id, as); });
    if (s.ok()) results.setJob(job->id());
  }
  SetError(s, results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::watch(WatchContext context) {
  auto p = context.getParams();
  auto job = d_->jobs().Find(p.getJob());
  auto results = context.getResults();
  if (job == nullptr) {
    SetError(absl::NotFoundError(
                 absl::StrCat("no job ", p.getJob().cStr(), " on this host")),
             results.initError());
    return kj::READY_NOW;
  }
  uint32_t wait_ms = std::min<uint32_t>(p.getWaitMs(), 10000);
  JobData data = job->Watch(p.getAfterSeq(), absl::Milliseconds(wait_ms));
  FillStatus(data, results.initStatus());
  results.initError();
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::jobs(JobsContext context) {
  auto all = d_->jobs().List();
  auto out = context.getResults().initJobs(all.size());
  for (size_t i = 0; i < all.size(); ++i) FillStatus(all[i]->Get(), out[i]);
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::cancel(CancelContext context) {
  std::string id = context.getParams().getJob();
  auto job = d_->jobs().Find(id);
  absl::Status s = job == nullptr
                       ? absl::NotFoundError("no job " + id + " on this host")
                       : job->RequestCancel();
  if (s.ok()) d_->Log(absl::StrCat("job=", id, ": cancel requested"));
  SetError(s, context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::continueJob(ContinueJobContext context) {
  std::string id = context.getParams().getJob();
  auto job = d_->jobs().Find(id);
  absl::Status s = job == nullptr
                       ? absl::NotFoundError("no job " + id + " on this host")
                       : job->Continue();
  SetError(s, context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::snapshots(SnapshotsContext context) {
  auto list = d_->store().List(context.getParams().getVm());
  auto results = context.getResults();
  if (list.ok()) {
    auto out = results.initSnapshots(list->size());
    for (size_t i = 0; i < list->size(); ++i) FillSnapshot((*list)[i], out[i]);
  }
  SetError(list.status(), results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::deleteSnapshot(DeleteSnapshotContext context) {
  SetError(d_->store().Delete(context.getParams().getId()),
           context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::verify(VerifyContext context) {
  auto report = d_->store().Verify(context.getParams().getId());
  auto results = context.getResults();
  if (report.ok()) {
    results.setSnapshots(report->snapshots);
    results.setChunks(report->chunks_checked);
    results.setBytes(report->bytes_checked);
    auto out = results.initDamage(report->damage.size());
    for (size_t i = 0; i < report->damage.size(); ++i) {
      const store::Damage& dmg = report->damage[i];
      out[i].setSnapshot(dmg.snapshot);
      out[i].setSection(dmg.section);
      out[i].setChunk(dmg.chunk);
      out[i].setWhat(dmg.what);
    }
  }
  SetError(report.status(), results.initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::exportSnapshot(ExportSnapshotContext context) {
  auto p = context.getParams();
  SetError(store::ExportSnapshot(d_->store(), p.getId(), p.getPath()),
           context.getResults().initError());
  return kj::READY_NOW;
}

kj::Promise<void> ControlServer::importSnapshot(ImportSnapshotContext context) {
  auto p = context.getParams();
  store::PutOptions po;
  po.tag = p.getTag();
  auto info = store::ImportSnapshot(d_->store(), p.getPath(), po);
  auto results = context.getResults();
  if (info.ok()) FillSnapshot(*info, results.initSnapshot());
  SetError(info.status(), results.initError());
  return kj::READY_NOW;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(Config config,
                                                      BackendRegistry backends,
                                                      LogFn log) {
  auto d = std::make_unique<DaemonImpl>(std::move(config), std::move(backends),
                                        std::move(log));
  if (auto s = d->Init(); !s.ok()) return s;
  return std::unique_ptr<Daemon>(std::move(d));
}

}  // namespace vgpu::migrator
