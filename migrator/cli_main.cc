// vgpu-migrate: the command line of the vGPU migration service. It talks
// to the local vgpud over its control socket (root only), except `certs`,
// which works offline. See `vgpu-migrate --help` and docs/OPERATIONS.md.
//
//   vgpu-migrate --to host2 vm1            live-migrate vm1's vGPUs
//   vgpu-migrate --check --to host2 vm1    compatibility report only
//   vgpu-migrate list | jobs | status JOB | cancel JOB
//   vgpu-migrate snapshot VM [--tag T] | snapshots [VM]
//   vgpu-migrate restore VM SNAPSHOT | delete SNAPSHOT | verify [SNAPSHOT]
//   vgpu-migrate export SNAPSHOT FILE | import FILE [--tag T]
//   vgpu-migrate register VM --device emulation:SOCKET... | unregister VM
//   vgpu-migrate annotate VM [--libvirt-uri URI]   (descriptors into libvirt)
//   vgpu-migrate certs DIR HOST...
//
// Exit status: 0 done, 1 failed, 2 usage, 3 refused by the compatibility
// check, 4 cancelled.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "migrator/compat.h"
#include "migrator/config.h"
#include "migrator/hook/domain_xml.h"
#include "migrator/libvirt_inventory.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/control.capnp.h"
#include "migrator/tls.h"
#include "nlohmann/json.hpp"
#include "state-codecs/tools/progress.h"

namespace {

using vgpu::migrator::internal::GetError;
using vgpu::migrator::internal::GetReport;
using vgpu::migrator::internal::RpcClient;
using vgpu::schema::Control;
using vgpu::tools::HumanBytes;
using json = nlohmann::json;

constexpr int kExitFailed = 1;
constexpr int kExitRefused = 3;
constexpr int kExitCancelled = 4;

std::atomic<bool> g_interrupted{false};

int Die(const absl::Status& s) {
  std::fprintf(stderr, "vgpu-migrate: %s\n", std::string(s.message()).c_str());
  return kExitFailed;
}

struct Session {
  std::unique_ptr<RpcClient> rpc;
  std::unique_ptr<Control::Client> api;

  template <typename T>
  absl::StatusOr<T> Call(kj::Promise<T>&& p, const std::string& doing,
                         absl::Duration timeout = absl::Seconds(120)) {
    return rpc->Wait(kj::mv(p), timeout, doing);
  }
};

absl::StatusOr<Session> Connect(const std::string& socket) {
  auto rpc = RpcClient::ConnectUnix(socket);
  if (!rpc.ok()) return rpc.status();
  Session s;
  s.rpc = std::move(*rpc);
  s.api = std::make_unique<Control::Client>(s.rpc->Bootstrap<Control>());
  return s;
}

json StatusJson(vgpu::schema::JobStatus::Reader s) {
  json j = {{"id", s.getId().cStr()},
            {"kind", s.getKind().cStr()},
            {"vm", s.getVm().cStr()},
            {"peer", s.getPeer().cStr()},
            {"phase", s.getPhase().cStr()},
            {"state", s.getState().cStr()},
            {"round", s.getRound()},
            {"rawBytes", s.getRawBytes()},
            {"wireBytes", s.getWireBytes()},
            {"pendingBytes", s.getPendingBytes()},
            {"rateBytesPerSec", s.getRateBytesPerSec()},
            {"estDowntimeMs", s.getEstDowntimeMs()},
            {"elapsedSeconds", s.getElapsedSeconds()},
            {"totalSeconds", s.getTotalSeconds()},
            {"downtimeMs", s.getDowntimeMs()},
            {"sourceResumed", s.getSourceResumed()}};
  if (s.getSnapshot().size() > 0) j["snapshot"] = s.getSnapshot().cStr();
  if (s.getWaiting().size() > 0) j["waiting"] = s.getWaiting().cStr();
  if (s.getRemoteJob().size() > 0) j["remoteJob"] = s.getRemoteJob().cStr();
  if (s.getEndpoints().size() > 0) {
    json eps = json::array();
    for (auto e : s.getEndpoints()) eps.push_back(e.cStr());
    j["endpoints"] = eps;
  }
  absl::Status err = GetError(s.getError());
  if (!err.ok()) {
    j["error"] = std::string(err.message());
    j["errorCode"] = absl::StatusCodeToString(err.code());
  }
  json rounds = json::array();
  for (auto r : s.getRounds()) rounds.push_back(r);
  j["pendingAfterRound"] = rounds;
  if (s.getReport().getRows().size() > 0) {
    j["report"] = vgpu::migrator::ReportToJson(GetReport(s.getReport()));
  }
  return j;
}

// Follows a job to its end, drawing progress on a terminal. Returns the
// final status in `out` (owned by `holder`).
absl::Status Follow(Session& session, const std::string& id, bool json_mode,
                    const std::string& label,
                    std::unique_ptr<capnp::Response<Control::WatchResults>>* holder) {
  const bool tty = !json_mode && isatty(STDERR_FILENO);
  uint64_t seq = 0;
  bool cancel_sent = false;
  std::string last_phase;
  while (true) {
    if (g_interrupted && !cancel_sent) {
      cancel_sent = true;
      auto req = session.api->cancelRequest();
      req.setJob(id);
      auto r = session.Call(req.send(), "cancel");
      if (!json_mode) {
        std::fprintf(stderr, "\ninterrupted: cancelling %s (%s)\n", id.c_str(),
                     r.ok() && GetError(r->getError()).ok()
                         ? "the source resumes"
                         : "too late to cancel");
      }
    }
    auto req = session.api->watchRequest();
    req.setJob(id);
    req.setAfterSeq(seq);
    req.setWaitMs(250);
    auto reply = session.Call(req.send(), "watch " + id);
    if (!reply.ok()) return reply.status();
    if (auto s = GetError(reply->getError()); !s.ok()) return s;
    auto st = reply->getStatus();
    seq = st.getSeq();
    std::string phase = st.getPhase();
    // A migration following its guest (libvirt) says what it waits for.
    if (st.getWaiting().size() > 0) {
      phase = absl::StrCat(phase, ", waiting for ", st.getWaiting().cStr());
    }
    if (tty) {
      // [####......] is the current round: what it set out to send.
      double rate = st.getRateBytesPerSec();
      const uint64_t total = st.getRoundTotal();
      const double frac =
          total > 0 ? std::min(1.0, static_cast<double>(st.getRoundBytes()) / total)
                    : 0.0;
      std::string bar(static_cast<size_t>(frac * 20), '#');
      bar.resize(20, '.');
      std::string eta = rate > 0 && total > st.getRoundBytes()
                            ? absl::StrFormat("%.1fs", st.getEtaSeconds())
                            : "-";
      std::fprintf(stderr,
                   "\r\033[K%s %-8s round %u [%s] %s sent (%s wire) %s/s | "
                   "pending %s, est. downtime %.1f ms | ETA %s",
                   label.c_str(), phase.c_str(), st.getRound(), bar.c_str(),
                   HumanBytes(st.getRawBytes()).c_str(),
                   HumanBytes(st.getWireBytes()).c_str(),
                   HumanBytes(rate).c_str(),
                   HumanBytes(st.getPendingBytes()).c_str(),
                   st.getEstDowntimeMs(), eta.c_str());
    } else if (!json_mode && phase != last_phase) {
      std::fprintf(stderr, "%s %s\n", label.c_str(), phase.c_str());
    }
    last_phase = phase;
    if (std::string(st.getState().cStr()) != "running") {
      if (tty) std::fprintf(stderr, "\n");
      *holder = std::make_unique<capnp::Response<Control::WatchResults>>(
          kj::mv(*reply));
      return absl::OkStatus();
    }
  }
}

int ExitFor(vgpu::schema::JobStatus::Reader st) {
  std::string state = st.getState();
  if (state == "done") return 0;
  if (state == "cancelled") return kExitCancelled;
  if (st.getReport().getRows().size() > 0) return kExitRefused;
  return kExitFailed;
}

void PrintFailure(vgpu::schema::JobStatus::Reader st) {
  absl::Status err = GetError(st.getError());
  std::fprintf(stderr, "%s %s: %s\n", st.getId().cStr(), st.getState().cStr(),
               std::string(err.message()).c_str());
  if (st.getReport().getRows().size() > 0) {
    std::fprintf(stderr, "%s",
                 vgpu::migrator::FormatReportTable(GetReport(st.getReport())).c_str());
  }
  if (std::string(st.getKind().cStr()) == "migrate") {
    std::fprintf(stderr, "%s\n",
                 st.getSourceResumed()
                     ? "the source vGPUs are running again on this host"
                     : "WARNING: the source vGPUs did not resume; see vgpud's log");
  }
}

int RunJob(Session& session, const std::string& id, bool json_mode,
           const std::string& label,
           const std::function<void(vgpu::schema::JobStatus::Reader)>& summary) {
  std::unique_ptr<capnp::Response<Control::WatchResults>> final_status;
  if (auto s = Follow(session, id, json_mode, label, &final_status); !s.ok()) {
    return Die(s);
  }
  auto st = final_status->getStatus();
  if (json_mode) {
    std::printf("%s\n", StatusJson(st).dump(2).c_str());
  } else if (std::string(st.getState().cStr()) == "done") {
    summary(st);
  } else {
    PrintFailure(st);
  }
  return ExitFor(st);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-migrate: live-migrate, snapshot and restore the vGPUs of VMs.\n"
      "Talks to the local vgpud (root only). Examples:\n"
      "  vgpu-migrate --to host2 vm1          live migration with progress\n"
      "  vgpu-migrate --check --to host2 vm1  may vm1 move? (exit 3 if not)\n"
      "  vgpu-migrate snapshot vm1 --tag nightly\n"
      "  vgpu-migrate restore vm1 SNAPSHOT_ID"};
  app.name("vgpu-migrate");
  app.footer(
      "Exit status: 0 done, 1 failed, 2 usage, 3 refused by the "
      "compatibility check, 4 cancelled. Ctrl-C during a migration cancels "
      "it (the source resumes). More: docs/OPERATIONS.md");
  app.require_subcommand(0, 1);
  std::string socket = "/run/vgpud/control.sock";
  bool json_mode = false;
  app.add_option("--socket", socket, "vgpud's control socket")
      ->capture_default_str();
  app.add_flag("--json", json_mode, "machine-readable output on stdout");

  // The main form: vgpu-migrate --to HOST VM
  std::string to, vm;
  bool check_only = false, no_compress = false;
  uint32_t downtime_ms = 0, max_rounds = 0;
  std::string bandwidth_text;
  app.add_option("--to", to, "destination host (a name from vgpud's peers)");
  app.add_flag("--check", check_only,
               "only print the compatibility report (exit 3 if refused)");
  app.add_option("--downtime", downtime_ms,
                 "downtime budget in ms (default: vgpud's, 30)");
  app.add_option("--bandwidth", bandwidth_text,
                 "cap, bytes/s with K/M/G suffixes (e.g. 100M)");
  app.add_option("--max-rounds", max_rounds, "pre-copy round limit");
  app.add_flag("--no-compress", no_compress, "send chunks uncompressed");
  std::string pause_at;
  app.add_option("--pause-at", pause_at,
                 "testing: hold the job at the start of a phase")
      ->group("");
  app.add_option("vm", vm, "the VM to migrate");

  auto* list = app.add_subcommand("list", "VMs on this host and their vGPUs");
  auto* jobs = app.add_subcommand("jobs", "jobs of this vgpud");
  std::string job_id;
  auto* status = app.add_subcommand("status", "a job's status (follows it with --follow)");
  bool follow = false;
  status->add_option("job", job_id, "job id")->required();
  status->add_flag("--follow", follow, "draw progress until it ends");
  auto* cancel = app.add_subcommand("cancel", "cancel a job (the source resumes)");
  cancel->add_option("job", job_id, "job id")->required();
  auto* cont = app.add_subcommand("continue", "testing: release a --pause-at job");
  cont->group("");
  cont->add_option("job", job_id, "job id")->required();
  std::string tag;
  auto* snapshot = app.add_subcommand("snapshot", "snapshot a VM's vGPUs into the store");
  snapshot->add_option("vm", vm, "VM")->required();
  snapshot->add_option("--tag", tag, "a label for the snapshot");
  auto* snapshots = app.add_subcommand("snapshots", "list snapshots (of one VM)");
  snapshots->add_option("vm", vm, "VM");
  std::string snap;
  auto* restore = app.add_subcommand(
      "restore", "restore a snapshot as VM (which must not run here)");
  restore->add_option("vm", vm, "VM name to restore as")->required();
  restore->add_option("snapshot", snap, "snapshot id")->required();
  auto* del = app.add_subcommand("delete", "delete a snapshot");
  del->add_option("snapshot", snap, "snapshot id")->required();
  auto* verify = app.add_subcommand("verify", "re-check snapshots' chunks (all by default)");
  verify->add_option("snapshot", snap, "snapshot id");
  std::string file;
  auto* exp = app.add_subcommand("export", "write a snapshot as one image file");
  exp->add_option("snapshot", snap, "snapshot id")->required();
  exp->add_option("file", file, "image file to write")->required();
  auto* imp = app.add_subcommand("import", "add an image file to the store");
  imp->add_option("file", file, "image file")->required();
  imp->add_option("--tag", tag, "a label for the snapshot");
  std::vector<std::string> devices;
  std::string uuid;
  auto* reg = app.add_subcommand("register", "announce a VM and its vGPUs to vgpud");
  reg->add_option("vm", vm, "VM name")->required();
  reg->add_option("--device", devices, "STRATEGY:ENDPOINT: emulation:SOCKET, mediated:MDEV-UUID, directPassthrough:PCI-ADDRESS or apiForwarding:SESSION-CONTROL (vgpu-cl-backend sessions lists them)")
      ->required();
  reg->add_option("--uuid", uuid, "the VM's UUID");
  auto* unreg = app.add_subcommand("unregister", "forget a VM");
  unreg->add_option("vm", vm, "VM name")->required();
  std::string libvirt_uri = "qemu:///system";
  auto* annotate = app.add_subcommand(
      "annotate",
      "write VM's vGPUs, with their descriptors and this host's name, into "
      "the libvirt domain of the same name: a destination's hook then checks "
      "them before an incoming migration and pulls them from this host, so "
      "that `virsh migrate --live` moves the vGPUs with the guest "
      "(docs/LIBVIRT.md)");
  annotate->add_option("vm", vm, "VM (and domain) name")->required();
  annotate->add_option("--libvirt-uri", libvirt_uri,
                       "libvirt connection (read-write)")
      ->capture_default_str();
  std::string dir;
  std::vector<std::string> hosts, ips;
  auto* certs = app.add_subcommand(
      "certs", "make a demo cluster CA and host certificates (offline)");
  certs->add_option("dir", dir, "output directory (an existing CA there is reused)")
      ->required();
  certs->add_option("hosts", hosts, "host names")->required();
  certs->add_option("--ip", ips, "IP addresses to add to every certificate");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a "parse error" that exits 0; real usage errors exit 2.
    return app.exit(e) == 0 ? 0 : 2;
  }
  signal(SIGPIPE, SIG_IGN);

  if (certs->parsed()) {
    absl::Status s = vgpu::migrator::MakeDemoCerts(dir, hosts, ips);
    if (!s.ok()) return Die(s);
    std::printf("wrote %s/ca.pem and a certificate and key for %s\n",
                dir.c_str(), absl::StrJoin(hosts, ", ").c_str());
    return 0;
  }

  auto session = Connect(socket);
  if (!session.ok()) return Die(session.status());
  Session& S = *session;

  if (list->parsed()) {
    auto reply = S.Call(S.api->listVmsRequest().send(), "list");
    if (!reply.ok()) return Die(reply.status());
    json out = json::array();
    if (!json_mode) {
      std::printf("%-16s %-6s %-14s %-10s %-14s %s\n", "VM", "GPU", "STRATEGY",
                  "VRAM", "ARCH", "ENDPOINT / STATE");
    }
    for (auto v : reply->getVms()) {
      json jv = {{"name", v.getName().cStr()},
                 {"uuid", v.getUuid().cStr()},
                 {"job", v.getJob().cStr()},
                 {"devices", json::array()}};
      uint32_t i = 0;
      for (auto d : v.getDevices()) {
        auto desc = d.getDescriptor();
        jv["devices"].push_back({{"strategy", d.getStrategy().cStr()},
                                 {"endpoint", d.getEndpoint().cStr()},
                                 {"owned", d.getOwned()},
                                 {"vramBytes", desc.getVramBytes()},
                                 {"vendor", desc.getVendor().cStr()},
                                 {"architecture", desc.getArchitecture().cStr()},
                                 {"problem", d.getProblem().cStr()},
                                 {"health", d.getHealth().cStr()}});
        if (!json_mode) {
          std::string state = d.getProblem().size() > 0
                                  ? absl::StrCat("(", d.getProblem().cStr(), ")")
                                  : std::string(d.getEndpoint().cStr());
          std::printf("%-16s %-6s %-14s %-10s %-14s %s\n",
                      i == 0 ? v.getName().cStr() : "",
                      absl::StrCat("gpu", i).c_str(), d.getStrategy().cStr(),
                      desc.getVramBytes() ? HumanBytes(desc.getVramBytes()).c_str() : "-",
                      desc.getArchitecture().size() ? desc.getArchitecture().cStr() : "-",
                      state.c_str());
          if (d.getHealth().size() > 0) {
            std::printf("%-16s %-6s %s\n", "", "", d.getHealth().cStr());
          }
        }
        ++i;
      }
      if (!json_mode && i == 0) {
        std::printf("%-16s %-6s %s\n", v.getName().cStr(), "-",
                    v.getJob().size() ? ("arriving: " + std::string(v.getJob().cStr())).c_str()
                                      : "(no vGPUs)");
      }
      out.push_back(jv);
    }
    if (json_mode) std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  if (jobs->parsed()) {
    auto reply = S.Call(S.api->jobsRequest().send(), "jobs");
    if (!reply.ok()) return Die(reply.status());
    json out = json::array();
    if (!json_mode) {
      std::printf("%-28s %-9s %-12s %-8s %-10s %s\n", "JOB", "KIND", "VM",
                  "PHASE", "STATE", "DOWNTIME");
    }
    for (auto j : reply->getJobs()) {
      out.push_back(StatusJson(j));
      if (!json_mode) {
        std::printf("%-28s %-9s %-12s %-8s %-10s %s\n", j.getId().cStr(),
                    j.getKind().cStr(), j.getVm().cStr(), j.getPhase().cStr(),
                    j.getState().cStr(),
                    j.getDowntimeMs() > 0
                        ? absl::StrFormat("%.1f ms", j.getDowntimeMs()).c_str()
                        : "-");
      }
    }
    if (json_mode) std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  if (status->parsed()) {
    if (follow) {
      return RunJob(S, job_id, json_mode, job_id,
                    [](vgpu::schema::JobStatus::Reader st) {
                      std::printf("%s done\n", st.getId().cStr());
                    });
    }
    auto req = S.api->watchRequest();
    req.setJob(job_id);
    req.setAfterSeq(UINT64_MAX - 1);  // answer at once
    req.setWaitMs(0);
    auto reply = S.Call(req.send(), "status");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    json j = StatusJson(reply->getStatus());
    if (json_mode) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      for (auto it = j.begin(); it != j.end(); ++it) {
        std::printf("%-16s %s\n", it.key().c_str(),
                    it->is_string() ? it->get<std::string>().c_str()
                                    : it->dump().c_str());
      }
    }
    return 0;
  }

  auto simple = [&](auto&& promise, const std::string& doing,
                    const std::string& ok_text) -> int {
    auto reply = S.Call(kj::mv(promise), doing);
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    if (json_mode) {
      std::printf("%s\n", json({{"ok", true}}).dump().c_str());
    } else if (!ok_text.empty()) {
      std::printf("%s\n", ok_text.c_str());
    }
    return 0;
  };

  if (cancel->parsed()) {
    auto req = S.api->cancelRequest();
    req.setJob(job_id);
    return simple(req.send(), "cancel",
                  job_id + ": cancel requested (the source resumes)");
  }
  if (cont->parsed()) {
    auto req = S.api->continueJobRequest();
    req.setJob(job_id);
    return simple(req.send(), "continue", "");
  }
  if (del->parsed()) {
    auto req = S.api->deleteSnapshotRequest();
    req.setId(snap);
    return simple(req.send(), "delete", "deleted " + snap);
  }
  if (annotate->parsed()) {
    auto reply = S.Call(S.api->listVmsRequest().send(), "list");
    if (!reply.ok()) return Die(reply.status());
    std::vector<vgpu::hook::MetaDevice> devs;
    bool found = false;
    for (auto v : reply->getVms()) {
      if (vm != v.getName().cStr()) continue;
      found = true;
      for (auto d : v.getDevices()) {
        if (d.getProblem().size() > 0) {
          return Die(absl::FailedPreconditionError(absl::StrCat(
              vm, ": device ", d.getEndpoint().cStr(), ": ",
              d.getProblem().cStr())));
        }
        vgpu::hook::MetaDevice m;
        m.strategy = d.getStrategy();
        m.endpoint = d.getEndpoint();
        m.descriptor.emplace();
        m.descriptor->builder().setRoot(d.getDescriptor());
        devs.push_back(std::move(m));
      }
    }
    if (!found) {
      return Die(absl::NotFoundError(absl::StrCat("no VM named ", vm, " here")));
    }
    // The metadata names this host as the one holding the vGPUs: a
    // destination's hook pulls them from here when libvirt migrates the
    // domain.
    auto info = S.Call(S.api->hostInfoRequest().send(), "hostInfo");
    if (!info.ok()) return Die(info.status());
    const std::string host = info->getHost();
    auto lv = vgpu::migrator::LibvirtSource::Open(libvirt_uri,
                                                 /*read_only=*/false);
    if (!lv.ok()) return Die(lv.status());
    absl::Status s =
        (*lv)->SetVgpuMetadata(vm, vgpu::hook::MetadataElement(devs, host));
    if (!s.ok()) return Die(s);
    std::printf("wrote the metadata of %s (%zu vGPU(s) held by %s, with "
                "descriptors) to its domain on %s\n",
                vm.c_str(), devs.size(), host.c_str(), libvirt_uri.c_str());
    return 0;
  }
  if (unreg->parsed()) {
    auto req = S.api->unregisterVmRequest();
    req.setName(vm);
    return simple(req.send(), "unregister", "unregistered " + vm);
  }
  if (reg->parsed()) {
    auto req = S.api->registerVmRequest();
    auto v = req.initVm();
    v.setName(vm);
    v.setUuid(uuid);
    auto list_out = v.initDevices(devices.size());
    for (size_t i = 0; i < devices.size(); ++i) {
      size_t colon = devices[i].find(':');
      if (colon == std::string::npos) {
        std::fprintf(stderr, "vgpu-migrate: --device %s: expected STRATEGY:ENDPOINT\n",
                     devices[i].c_str());
        return 2;
      }
      list_out[i].setStrategy(devices[i].substr(0, colon));
      list_out[i].setEndpoint(devices[i].substr(colon + 1));
    }
    return simple(req.send(), "register",
                  absl::StrFormat("registered %s with %u vGPU(s)", vm, devices.size()));
  }
  if (exp->parsed()) {
    char abs[PATH_MAX];
    std::string path = file;
    if (!file.empty() && file[0] != '/' && getcwd(abs, sizeof(abs)) != nullptr) {
      path = std::string(abs) + "/" + file;
    }
    auto req = S.api->exportSnapshotRequest();
    req.setId(snap);
    req.setPath(path);
    return simple(req.send(), "export", "exported " + snap + " to " + path);
  }
  if (imp->parsed()) {
    char abs[PATH_MAX];
    std::string path = file;
    if (!file.empty() && file[0] != '/' && getcwd(abs, sizeof(abs)) != nullptr) {
      path = std::string(abs) + "/" + file;
    }
    auto req = S.api->importSnapshotRequest();
    req.setPath(path);
    req.setTag(tag);
    auto reply = S.Call(req.send(), "import");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    auto rec = reply->getSnapshot();
    if (json_mode) {
      std::printf("%s\n", json({{"snapshot", rec.getId().cStr()}}).dump().c_str());
    } else {
      std::printf("imported %s as snapshot %s (vm %s)\n", path.c_str(),
                  rec.getId().cStr(), rec.getVm().cStr());
    }
    return 0;
  }
  if (snapshots->parsed()) {
    auto req = S.api->snapshotsRequest();
    req.setVm(vm);
    auto reply = S.Call(req.send(), "snapshots");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    json out = json::array();
    if (!json_mode) {
      std::printf("%-32s %-12s %-10s %-20s %-10s %s\n", "SNAPSHOT", "VM", "TAG",
                  "CREATED", "SIZE", "NEW BYTES");
    }
    for (auto r : reply->getSnapshots()) {
      out.push_back({{"id", r.getId().cStr()},
                     {"vm", r.getVm().cStr()},
                     {"tag", r.getTag().cStr()},
                     {"createdUnixNanos", r.getCreatedUnixNanos()},
                     {"logicalBytes", r.getLogicalBytes()},
                     {"storedBytes", r.getStoredBytes()},
                     {"sections", r.getSections()}});
      if (!json_mode) {
        std::printf("%-32s %-12s %-10s %-20s %-10s %s\n", r.getId().cStr(),
                    r.getVm().cStr(), r.getTag().size() ? r.getTag().cStr() : "-",
                    vgpu::tools::IsoTime(r.getCreatedUnixNanos()).c_str(),
                    HumanBytes(r.getLogicalBytes()).c_str(),
                    HumanBytes(r.getStoredBytes()).c_str());
      }
    }
    if (json_mode) std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  if (verify->parsed()) {
    auto req = S.api->verifyRequest();
    req.setId(snap);
    auto reply = S.Call(req.send(), "verify", absl::Hours(2));
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    json damage = json::array();
    for (auto d : reply->getDamage()) {
      damage.push_back({{"snapshot", d.getSnapshot().cStr()},
                        {"section", d.getSection().cStr()},
                        {"chunk", d.getChunk().cStr()},
                        {"what", d.getWhat().cStr()}});
    }
    if (json_mode) {
      std::printf("%s\n", json({{"snapshots", reply->getSnapshots()},
                                {"chunks", reply->getChunks()},
                                {"bytes", reply->getBytes()},
                                {"damage", damage}})
                              .dump(2)
                              .c_str());
    } else {
      std::printf("checked %lu snapshot(s), %lu chunks, %s: %s\n",
                  static_cast<unsigned long>(reply->getSnapshots()),
                  static_cast<unsigned long>(reply->getChunks()),
                  HumanBytes(reply->getBytes()).c_str(),
                  damage.empty() ? "all intact" : "DAMAGED");
      for (auto& d : damage) {
        std::printf("  snapshot %s section %s chunk %s: %s\n",
                    d["snapshot"].get<std::string>().c_str(),
                    d["section"].get<std::string>().c_str(),
                    d["chunk"].get<std::string>().c_str(),
                    d["what"].get<std::string>().c_str());
      }
    }
    return damage.empty() ? 0 : kExitFailed;
  }

  signal(SIGINT, [](int) { g_interrupted = true; });

  if (snapshot->parsed()) {
    auto req = S.api->snapshotRequest();
    req.setVm(vm);
    req.setTag(tag);
    auto reply = S.Call(req.send(), "snapshot");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    return RunJob(S, reply->getJob(), json_mode, "snapshot " + vm,
                  [&](vgpu::schema::JobStatus::Reader st) {
                    std::printf(
                        "snapshot %s of %s: %s of state in %.2f s, vGPUs "
                        "stopped for %.1f ms\n",
                        st.getSnapshot().cStr(), vm.c_str(),
                        HumanBytes(st.getRawBytes()).c_str(),
                        st.getTotalSeconds(), st.getDowntimeMs());
                  });
  }
  if (restore->parsed()) {
    auto req = S.api->restoreRequest();
    req.setSnapshot(snap);
    req.setAs(vm);
    auto reply = S.Call(req.send(), "restore");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    return RunJob(S, reply->getJob(), json_mode, "restore " + vm,
                  [&](vgpu::schema::JobStatus::Reader st) {
                    std::printf("restored %s from snapshot %s in %.2f s; its "
                                "vGPUs run on this host\n",
                                vm.c_str(), snap.c_str(), st.getTotalSeconds());
                  });
  }

  // The main form.
  if (vm.empty() || to.empty()) {
    std::fprintf(stderr, "%s\n", app.help().c_str());
    return 2;
  }
  if (check_only) {
    auto req = S.api->checkRequest();
    req.setVm(vm);
    req.setTo(to);
    auto reply = S.Call(req.send(), "check");
    if (!reply.ok()) return Die(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
    auto report = GetReport(reply->getReport());
    if (json_mode) {
      std::printf("%s\n", vgpu::migrator::ReportToJson(report).dump(2).c_str());
    } else {
      std::printf("%s", vgpu::migrator::FormatReportTable(report).c_str());
    }
    return report.ok() ? 0 : kExitRefused;
  }
  auto req = S.api->migrateRequest();
  req.setVm(vm);
  req.setTo(to);
  auto o = req.initOptions();
  o.setDowntimeMs(downtime_ms);
  o.setMaxRounds(max_rounds);
  o.setCompress(!no_compress);
  o.setPauseAt(pause_at);
  if (!bandwidth_text.empty()) {
    auto bw = vgpu::migrator::ParseByteSize(bandwidth_text);
    if (!bw.ok()) return Die(bw.status());
    o.setBandwidth(*bw);
  }
  auto reply = S.Call(req.send(), "migrate");
  if (!reply.ok()) return Die(reply.status());
  if (auto s = GetError(reply->getError()); !s.ok()) return Die(s);
  std::string id = reply->getJob();
  if (!json_mode) std::fprintf(stderr, "job %s: %s -> %s\n", id.c_str(), vm.c_str(), to.c_str());
  return RunJob(S, id, json_mode, vm + " -> " + to,
                [&](vgpu::schema::JobStatus::Reader st) {
                  double ratio = st.getWireBytes() > 0
                                     ? static_cast<double>(st.getRawBytes()) /
                                           st.getWireBytes()
                                     : 0;
                  std::printf(
                      "migrated %s to %s in %.2f s: downtime %.1f ms, %u "
                      "pre-copy round(s), %s of state sent as %s (%.1fx "
                      "compression)\n",
                      vm.c_str(), to.c_str(), st.getTotalSeconds(),
                      st.getDowntimeMs(), st.getRounds().size(),
                      HumanBytes(st.getRawBytes()).c_str(),
                      HumanBytes(st.getWireBytes()).c_str(), ratio);
                });
}
