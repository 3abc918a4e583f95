#include "migrator/coordinator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "capnp/message.h"
#include "migrator/internal/byte_pipe.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/schema/peer.capnp.h"
#include "state-codecs/image.h"

namespace vgpu::migrator {
namespace {

using agents::Agent;
using agents::State;
using Clock = std::chrono::steady_clock;
using internal::BytePipe;
using internal::GetError;
using internal::RpcClient;
using internal::SetError;

constexpr size_t kMessageBytes = 1 << 20;   // state bytes per write call
constexpr size_t kPipeBytes = 4 << 20;  // staged between threads

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// The strategy's name as config files and backends spell it.
std::string StrategyName(schema::Strategy s) {
  switch (s) {
    case schema::Strategy::EMULATION:
      return "emulation";
    case schema::Strategy::API_FORWARDING:
      return "apiForwarding";
    case schema::Strategy::MEDIATED:
      return "mediated";
    case schema::Strategy::DIRECT_PASSTHROUGH:
      return "directPassthrough";
    default:
      return "unknown";
  }
}

// "host=h1 job=h1-migrate-3 vm=vm1: ..." on every line of a job.
LogFn JobLogger(const Env& env, const std::string& job, const std::string& vm) {
  std::string prefix = absl::StrFormat("host=%s job=%s vm=%s: ",
                                       env.config->host, job, vm);
  LogFn log = env.log;
  return [log, prefix](const std::string& line) { log(prefix + line); };
}

void Fail(Job& job, const absl::Status& why, bool resumed) {
  job.Update([&](JobData& d) {
    d.state = why.code() == absl::StatusCode::kCancelled ? JobState::kCancelled
                                                         : JobState::kFailed;
    d.error = why;
    d.source_resumed = resumed;
    d.total_seconds = d.elapsed_seconds;
  });
}

// --- source side -----------------------------------------------------------

// The source's agents for one VM, released back to RUNNING unless the job
// committed.
struct SourceSet {
  std::vector<std::unique_ptr<Agent>> agents;
  std::vector<std::string> names;  // "gpu0 (emulation /run/x.sock)"

  std::vector<Agent*> Pointers() const {
    std::vector<Agent*> out;
    for (auto& a : agents) out.push_back(a.get());
    return out;
  }

  // What every agent has left to send.
  absl::StatusOr<uint64_t> Pending() {
    uint64_t total = 0;
    for (auto& a : agents) {
      auto p = a->Pending();
      if (!p.ok()) return p.status();
      total += p->total();
    }
    return total;
  }

  // Any agent not RUNNING or RELEASED goes back to RUNNING. True if every
  // one runs afterwards.
  bool Resume(const LogFn& log) {
    bool all = true;
    for (size_t i = 0; i < agents.size(); ++i) {
      Agent& a = *agents[i];
      if (a.state() == State::kPreCopy || a.state() == State::kStopCopy) {
        absl::Status s = a.TransitionTo(State::kRunning);
        if (!s.ok()) {
          log(absl::StrCat("device ", i, ": could not resume: ", s.ToString()));
          all = false;
        } else {
          log(absl::StrCat("device ", i, ": source resumed"));
        }
      }
      if (a.state() != State::kRunning && a.state() != State::kReleased) {
        all = false;
      }
    }
    return all;
  }
};

absl::StatusOr<SourceSet> OpenSources(const Env& env, const VmEntry& vm) {
  SourceSet set;
  for (size_t i = 0; i < vm.devices.size(); ++i) {
    const VmDevice& d = vm.devices[i];
    auto it = env.backends->find(d.strategy);
    if (it == env.backends->end()) {
      return absl::UnimplementedError(absl::StrCat(
          "device ", i, ": strategy '", d.strategy, "' has no agent here"));
    }
    auto agent = it->second->OpenSource(d.endpoint);
    if (!agent.ok()) {
      return absl::Status(agent.status().code(),
                          absl::StrCat("device ", i, " (", d.endpoint,
                                       "): ", agent.status().message()));
    }
    set.agents.push_back(std::move(*agent));
    set.names.push_back(absl::StrCat("gpu", i));
  }
  return set;
}

codec::Manifest MakeManifest(const VmEntry& vm, const SourceSet& set,
                             schema::ImageKind kind) {
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(kind);
  root.initVm().setName(vm.name);
  root.getVm().setUuid(vm.uuid);
  auto devices = root.initDevices(set.agents.size());
  for (size_t i = 0; i < set.agents.size(); ++i) {
    devices[i].setIndex(i);
    devices[i].setDescriptor(set.agents[i]->descriptor().root());
  }
  codec::StampManifest(m, "vgpud");
  return m;
}

absl::Status ResolvePeer(const Config& config, const std::string& to,
                         std::string* addr, uint16_t* port) {
  auto it = config.peers.find(to);
  std::string text = it != config.peers.end() ? it->second : to;
  return SplitHostPort(text, kDefaultPeerPort, addr, port);
}

struct PeerLink {
  std::unique_ptr<RpcClient> rpc;
  std::unique_ptr<schema::Peer::Client> peer;
};

absl::StatusOr<PeerLink> ConnectPeer(const Env& env, const std::string& to) {
  std::string addr;
  uint16_t port = 0;
  if (auto s = ResolvePeer(*env.config, to, &addr, &port); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown host '", to, "': ", s.message()));
  }
  auto rpc = RpcClient::ConnectTcp(addr, port, env.tls, to,
                                   env.peer_timeout, env.peer_timeout);
  if (!rpc.ok()) {
    return absl::Status(rpc.status().code(),
                        absl::StrCat("peer ", to, ": ", rpc.status().message()));
  }
  PeerLink link;
  link.rpc = std::move(*rpc);
  link.peer = std::make_unique<schema::Peer::Client>(
      link.rpc->Bootstrap<schema::Peer>());
  auto req = link.peer->helloRequest();
  req.setHost(env.config->host);
  req.setProtocol(schema::PEER_PROTOCOL);
  auto reply = link.rpc->Wait(req.send(), env.peer_timeout,
                              absl::StrCat("hello to ", to));
  if (!reply.ok()) {
    return absl::Status(reply.status().code(),
                        absl::StrCat("peer ", to, ": ", reply.status().message()));
  }
  if (auto s = GetError(reply->getError()); !s.ok()) return s;
  return link;
}

// The migration stream as Incoming.write calls: state bytes are gathered
// into 1 MiB messages and sent without waiting for each answer; at most
// `window` bytes are unanswered at a time (the flow control), and a
// bandwidth cap paces sends. Cancel is noticed at every message.
class RpcSink : public codec::ByteSink {
 public:
  RpcSink(RpcClient* rpc, schema::Incoming::Client incoming, uint64_t window,
          uint64_t bandwidth, absl::Duration timeout, const Job* job,
          std::function<void()> on_flush)
      : rpc_(rpc),
        incoming_(std::make_unique<schema::Incoming::Client>(kj::mv(incoming))),
        window_(std::max<uint64_t>(window, kMessageBytes)),
        bandwidth_(bandwidth),
        timeout_(timeout),
        job_(job),
        on_flush_(std::move(on_flush)),
        start_(Clock::now()) {
    buffer_.reserve(kMessageBytes);
  }

  absl::Status Write(absl::Span<const uint8_t> data) override {
    while (!data.empty()) {
      size_t take = std::min(data.size(), kMessageBytes - buffer_.size());
      buffer_.insert(buffer_.end(), data.begin(), data.begin() + take);
      data.remove_prefix(take);
      if (buffer_.size() == kMessageBytes) {
        if (auto s = Flush(); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Close() override {
    if (auto s = Flush(); !s.ok()) return s;
    return Drain(0);
  }

  // Sends what is buffered and waits until every write is answered.
  absl::Status Sync() {
    if (auto s = Flush(); !s.ok()) return s;
    return Drain(0);
  }

  const std::string& name() const override { return name_; }
  const uint64_t* sent_counter() const { return &sent_; }

 private:
  absl::Status Flush() {
    if (buffer_.empty()) return absl::OkStatus();
    if (job_->cancelled()) return absl::CancelledError("cancelled");
    if (auto s = Drain(window_ - buffer_.size()); !s.ok()) return s;
    Pace(buffer_.size());
    auto req = incoming_->writeRequest();
    req.setData(kj::arrayPtr(buffer_.data(), buffer_.size()));
    inflight_.push_back({req.send(), buffer_.size()});
    inflight_bytes_ += buffer_.size();
    sent_ += buffer_.size();
    buffer_.clear();
    rpc_->Poll();  // get the bytes moving while we produce the next ones
    if (on_flush_) on_flush_();
    return absl::OkStatus();
  }

  // Waits for answers until at most `limit` bytes are in flight.
  absl::Status Drain(uint64_t limit) {
    while (!inflight_.empty() && inflight_bytes_ > limit) {
      auto reply = rpc_->Wait(kj::mv(inflight_.front().promise), timeout_,
                              "streaming state to the destination");
      inflight_bytes_ -= inflight_.front().bytes;
      inflight_.pop_front();
      if (!reply.ok()) return reply.status();
      if (auto s = GetError(reply->getError()); !s.ok()) return s;
      if (job_->cancelled()) return absl::CancelledError("cancelled");
    }
    return absl::OkStatus();
  }

  void Pace(size_t next) {
    if (bandwidth_ == 0) return;
    double due = static_cast<double>(sent_ + next) / bandwidth_;
    double now = Seconds(Clock::now() - start_);
    if (due > now) {
      std::this_thread::sleep_for(std::chrono::duration<double>(due - now));
    }
  }

  struct InFlight {
    capnp::RemotePromise<schema::Incoming::WriteResults> promise;
    size_t bytes;
  };

  RpcClient* rpc_;
  // Held by pointer: KJ's destructors may throw, which a ByteSink's may not.
  std::unique_ptr<schema::Incoming::Client> incoming_;
  const uint64_t window_;
  const uint64_t bandwidth_;
  const absl::Duration timeout_;
  const Job* job_;
  std::function<void()> on_flush_;
  const Clock::time_point start_;
  const std::string name_ = "migration stream";
  std::vector<uint8_t> buffer_;
  std::deque<InFlight> inflight_;
  uint64_t inflight_bytes_ = 0;
  uint64_t sent_ = 0;
};

// Progress bookkeeping shared by the pre-copy loop and the sink callback.
struct Meter {
  Clock::time_point window_start = Clock::now();
  uint64_t window_raw = 0;
  double rate = 0;  // raw bytes/s, smoothed

  void Sample(uint64_t raw) {
    auto now = Clock::now();
    double dt = Seconds(now - window_start);
    if (dt >= 0.25) {
      double r = (raw - window_raw) / dt;
      rate = rate == 0 ? r : 0.5 * rate + 0.5 * r;
      window_start = now;
      window_raw = raw;
    }
  }
};

}  // namespace

absl::StatusOr<CompatReport> CheckMove(const Env& env, const std::string& vm,
                                       const std::string& to) {
  auto entry = env.inventory->Get(vm);
  if (!entry.ok()) return entry.status();
  capnp::MallocMessageBuilder scratch;
  std::vector<agents::Descriptor> descriptors;
  for (size_t i = 0; i < entry->devices.size(); ++i) {
    const VmDevice& d = entry->devices[i];
    auto it = env.backends->find(d.strategy);
    if (it == env.backends->end()) {
      return absl::UnimplementedError(
          absl::StrCat("device ", i, ": strategy '", d.strategy, "' unknown"));
    }
    auto desc = it->second->Describe(d.endpoint);
    if (!desc.ok()) {
      return absl::Status(desc.status().code(),
                          absl::StrCat("device ", i, " (", d.endpoint,
                                       "): ", desc.status().message()));
    }
    descriptors.push_back(std::move(*desc));
  }
  auto link = ConnectPeer(env, to);
  if (!link.ok()) return link.status();
  auto req = link->peer->checkRequest();
  req.initVm().setName(entry->name);
  req.getVm().setUuid(entry->uuid);
  auto list = req.initDevices(descriptors.size());
  for (size_t i = 0; i < descriptors.size(); ++i) {
    list.setWithCaveats(i, descriptors[i].root());
  }
  auto reply = link->rpc->Wait(req.send(), env.peer_timeout,
                               absl::StrCat("check on ", to));
  if (!reply.ok()) return reply.status();
  return internal::GetReport(reply->getReport());
}

// Asks `from` for the VM; its migration job there, once this host is
// prepared. A refusal for compatibility leaves its report in `report`.
absl::StatusOr<std::string> AskToPull(const Env& env, const std::string& vm,
                                      const std::string& from,
                                      CompatReport* report) {
  auto link = ConnectPeer(env, from);
  if (!link.ok()) return link.status();
  auto req = link->peer->pullRequest();
  req.setVm(vm);
  // The source attaches its agents, then this host prepares the devices.
  auto reply = link->rpc->Wait(req.send(), env.peer_timeout + absl::Seconds(40),
                               absl::StrCat("pull from ", from));
  if (!reply.ok()) return reply.status();
  if (auto s = GetError(reply->getError()); !s.ok()) {
    *report = internal::GetReport(reply->getReport());
    return s;
  }
  return std::string(reply->getJob().cStr());
}

void RunPull(const Env& env, Job& job, JobTable* jobs,
             const PullRequest& request) {
  LogFn log = JobLogger(env, job.id(), request.vm);
  job.Update([](JobData& d) { d.phase = Phase::kPrepare; });
  // The host the domain's metadata names first, then every other peer: a
  // source sends the VM only while its libvirt migrates the guest away, so
  // exactly one accepts, and stale metadata (a domain started from an old
  // definition) does not stand in the way.
  std::vector<std::string> hosts;
  if (!request.from.empty()) hosts.push_back(request.from);
  for (const auto& [name, where] : env.config->peers) {
    if (name != request.from && name != env.config->host) hosts.push_back(name);
  }
  if (hosts.empty()) {
    return Fail(job,
                absl::FailedPreconditionError(
                    "no host to pull from: the domain's metadata names none "
                    "and vgpud has no peers"),
                false);
  }
  std::vector<std::string> refusals;
  absl::StatusOr<std::string> asked = absl::UnknownError("not asked");
  std::string from;
  for (const std::string& host : hosts) {
    CompatReport report;
    asked = AskToPull(env, request.vm, host, &report);
    if (asked.ok()) {
      from = host;
      break;
    }
    refusals.push_back(absl::StrCat(host, ": ", asked.status().message()));
    // A source that refused for compatibility is the source: no other
    // host has the VM.
    if (!report.rows.empty()) {
      job.Update([&](JobData& d) { d.report = report; });
      return Fail(job, asked.status(), false);
    }
  }
  if (!asked.ok()) {
    return Fail(job,
                absl::Status(hosts.size() == 1 ? asked.status().code()
                                               : absl::StatusCode::kNotFound,
                             absl::StrCat("no host sends ", request.vm, ": ",
                                          absl::StrJoin(refusals, "; "))),
                false);
  }
  const std::string remote = *asked;
  std::vector<std::string> endpoints;
  bool found = false;
  for (const auto& j : jobs->List()) {
    JobData d = j->Get();
    if (d.kind == "incoming" && d.remote_job == remote) {
      endpoints = d.endpoints;
      found = true;
    }
  }
  if (!found) {
    return Fail(job,
                absl::InternalError(absl::StrCat(
                    from, " says its job ", remote,
                    " prepared this host, but no incoming job here has it")),
                false);
  }
  log(absl::StrFormat("pull: %s's job %s prepared %u device(s) here",
                      from, remote, endpoints.size()));
  job.Update([&](JobData& d) {
    d.endpoints = endpoints;
    d.remote_job = remote;
    d.peer = from;
    d.phase = Phase::kDone;
    d.state = JobState::kDone;
    d.total_seconds = d.elapsed_seconds;
  });
}

void RunMigration(const Env& env, Job& job, const MigrateRequest& request) {
  LogFn log = JobLogger(env, job.id(), request.vm);
  const Clock::time_point job_start = Clock::now();
  const Config& cfg = *env.config;
  const uint32_t downtime_ms =
      request.downtime_ms ? request.downtime_ms : cfg.downtime_ms;
  const uint32_t max_rounds =
      request.max_rounds ? request.max_rounds : cfg.max_rounds;
  const uint64_t bandwidth =
      request.bandwidth ? request.bandwidth : cfg.bandwidth_bytes_per_second;

  // Begin.
  if (auto s = job.Checkpoint(Phase::kBegin); !s.ok()) return Fail(job, s, true);
  auto entry = env.inventory->Acquire(request.vm, job.id());
  if (!entry.ok()) return Fail(job, entry, true);
  auto release_vm = [&] { env.inventory->Release(request.vm, job.id()); };
  auto vm = env.inventory->Get(request.vm);
  if (!vm.ok()) {
    release_vm();
    return Fail(job, vm.status(), true);
  }
  log(absl::StrFormat("begin: migrate to %s, %u vGPU(s), downtime budget %u ms",
                      request.to, vm->devices.size(), downtime_ms));
  auto sources = OpenSources(env, *vm);
  if (!sources.ok()) {
    release_vm();
    return Fail(job, sources.status(), true);
  }
  SourceSet& set = *sources;

  // Everything below fails through here: resume the source, tell the
  // destination to tear down, record the outcome.
  // Declared after the link: capabilities must go before its event loop.
  PeerLink link;
  std::unique_ptr<schema::Incoming::Client> incoming;
  // What the guest does, when the migration follows it (libvirt's).
  GuestMove guest = GuestMove::kRunning;
  auto abort = [&](absl::Status why) {
    log(absl::StrCat("aborting: ", why.ToString()));
    bool resumed = set.Resume(log);
    if (request.follow != nullptr && guest != GuestMove::kLeft &&
        guest != GuestMove::kStayed) {
      // The vGPUs stay here, so the guest must too: cancel its migration.
      absl::Status c = request.follow->CancelGuestMove();
      log(c.ok() ? std::string("the guest's migration is cancelled: it stays "
                               "here with its vGPUs")
                 : absl::StrCat("could not cancel the guest's migration (",
                                c.message(), "): if it completes, the guest "
                                "runs there without its vGPUs, which run here"));
    }
    if (incoming != nullptr && link.rpc != nullptr) {
      auto req = incoming->abortRequest();
      req.setReason(std::string(why.message()));
      (void)link.rpc->Wait(req.send(), absl::Seconds(2), "abort");
    }
    release_vm();
    Fail(job, why, resumed);
  };

  // Prepare.
  job.Update([](JobData& d) { d.phase = Phase::kPrepare; });
  if (auto s = job.Checkpoint(Phase::kPrepare); !s.ok()) return abort(s);
  auto connected = ConnectPeer(env, request.to);
  if (!connected.ok()) return abort(connected.status());
  link = std::move(*connected);
  {
    auto req = link.peer->prepareRequest();
    req.setJob(job.id());
    req.initVm().setName(vm->name);
    req.getVm().setUuid(vm->uuid);
    auto list = req.initDevices(set.agents.size());
    for (size_t i = 0; i < set.agents.size(); ++i) {
      list.setWithCaveats(i, set.agents[i]->descriptor().root());
    }
    // Creating devices takes a moment; allow more than a plain call.
    auto reply = link.rpc->Wait(req.send(), env.peer_timeout + absl::Seconds(20),
                                absl::StrCat("prepare on ", request.to));
    if (!reply.ok()) return abort(reply.status());
    if (auto s = GetError(reply->getError()); !s.ok()) {
      CompatReport report = internal::GetReport(reply->getReport());
      job.Update([&](JobData& d) { d.report = report; });
      return abort(s);
    }
    incoming = std::make_unique<schema::Incoming::Client>(reply->getIncoming());
    auto hints = reply->getHints();
    for (size_t i = 0; i < set.agents.size() && i < hints.size(); ++i) {
      set.agents[i]->SetDestinationHint(hints[i]);
    }
  }
  log("prepare: destination ready");

  // Perform: pre-copy.
  job.Update([](JobData& d) { d.phase = Phase::kPreCopy; });
  if (auto s = job.Checkpoint(Phase::kPreCopy); !s.ok()) return abort(s);
  Meter meter;
  std::unique_ptr<codec::ImageWriter> writer;
  const uint64_t* wire_sent = nullptr;  // the sink's count, once it exists
  uint64_t pending_now = 0;
  uint32_t round_now = 0;
  uint64_t round_start_raw = 0, round_total = 0;
  auto publish = [&] {
    if (writer == nullptr) return;
    const codec::StreamStats& st = writer->stats();
    meter.Sample(st.raw_bytes);
    job.Update([&](JobData& d) {
      d.raw_bytes = st.raw_bytes;
      d.wire_bytes = wire_sent != nullptr ? *wire_sent : st.stored_bytes;
      d.rate = meter.rate;
      d.round = round_now;
      d.pending_bytes = pending_now;
      d.round_total = round_total;
      d.round_bytes = std::min(round_total, st.raw_bytes - round_start_raw);
      if (meter.rate > 0) {
        d.eta_seconds = (round_total - d.round_bytes) / meter.rate;
      }
      if (meter.rate > 0) {
        d.est_downtime_ms = 1000.0 * pending_now / meter.rate;
      }
    });
  };
  RpcSink sink(link.rpc.get(), *incoming, cfg.window_bytes, bandwidth,
               env.peer_timeout, &job, publish);
  wire_sent = sink.sent_counter();
  codec::WriterOptions wo;
  wo.threads = cfg.threads;
  wo.zstd_level = request.compress && cfg.compress ? 1 : 0;
  {
    auto w = codec::ImageWriter::Create(
        &sink, MakeManifest(*vm, set, schema::ImageKind::MIGRATION_STREAM), wo);
    if (!w.ok()) return abort(w.status());
    writer = std::move(*w);
  }
  for (auto& a : set.agents) {
    if (auto s = a->TransitionTo(State::kPreCopy); !s.ok()) return abort(s);
  }
  uint64_t previous = UINT64_MAX;
  uint32_t rounds = 0;
  std::vector<uint64_t> round_pending;
  {
    auto initial = set.Pending();
    if (!initial.ok()) return abort(initial.status());
    pending_now = round_total = *initial;
  }
  auto budget = [&] { return meter.rate * downtime_ms / 2000.0; };
  // One pre-copy round: every agent's changes since the last, then the
  // pending bytes left behind (and the rate measured on the way).
  auto run_round = [&](uint32_t round) -> absl::Status {
    round_now = round;
    Clock::time_point round_start = Clock::now();
    uint64_t raw_before = writer->stats().raw_bytes;
    // The downtime estimate needs the rate of bytes that cost something:
    // elided zero pages move at memory speed and would flatter it.
    const uint64_t costly_before = raw_before - writer->stats().zero_bytes;
    round_start_raw = raw_before;
    round_total = pending_now;
    for (size_t i = 0; i < set.agents.size(); ++i) {
      if (auto s = set.agents[i]->Save(*writer, i, round); !s.ok()) return s;
    }
    // The round counts once the destination has it: its bytes are answered.
    if (auto s = sink.Sync(); !s.ok()) return s;
    rounds = round + 1;
    auto pending_or = set.Pending();
    if (!pending_or.ok()) return pending_or.status();
    const uint64_t pending = *pending_or;
    double dt = Seconds(Clock::now() - round_start);
    uint64_t moved = writer->stats().raw_bytes - raw_before;
    uint64_t costly =
        writer->stats().raw_bytes - writer->stats().zero_bytes - costly_before;
    if (dt > 0 && costly > 0) meter.rate = costly / dt;
    pending_now = pending;
    round_pending.push_back(pending);
    publish();
    job.Update([&](JobData& d) {
      d.rounds = round_pending;
      d.eta_seconds = meter.rate > 0 ? pending / meter.rate : 0;
    });
    log(absl::StrFormat(
        "precopy round %u: %u bytes in %.3f s, %u pending (budget %.0f)",
        round, moved, dt, pending, budget()));
    return absl::OkStatus();
  };
  // Lets the destination's loader catch up while the vGPUs still run: its
  // backlog would otherwise be paid for in the downtime. Also the word
  // that keeps the destination from giving up on a quiet source.
  auto drain = [&]() -> absl::Status {
    if (auto s = sink.Sync(); !s.ok()) return s;
    auto reply = link.rpc->Wait(incoming->drainRequest().send(),
                                env.peer_timeout + absl::Seconds(30),
                                absl::StrCat("drain on ", request.to));
    return reply.ok() ? GetError(reply->getError()) : reply.status();
  };
  // Rounds until the pending bytes fit, then a drain of the destination's
  // loader. The guest keeps dirtying state while the loader catches up, so
  // the pending bytes are measured again after it: if they no longer fit,
  // more rounds follow (within the round limit, and only while drains
  // leave less behind each time).
  uint64_t after_previous_drain = UINT64_MAX;
  for (;;) {
    for (uint32_t round = rounds; round < max_rounds; ++round) {
      if (auto s = run_round(round); !s.ok()) return abort(s);
      // Half the budget is for the final copy; the rest is headroom for
      // finish and activation, and for the rate estimate being optimistic
      // (the dirty set keeps growing while the last round is measured).
      if (pending_now <= budget() || pending_now >= previous) break;
      previous = pending_now;
      if (job.cancelled()) return abort(absl::CancelledError("cancelled"));
    }
    if (auto s = drain(); !s.ok()) return abort(s);

    if (rounds >= max_rounds || job.cancelled()) break;
    auto after = set.Pending();
    if (!after.ok()) return abort(after.status());
    if (*after <= budget() || *after >= after_previous_drain) break;
    log(absl::StrFormat(
        "after the drain %u bytes are pending (budget %.0f): more rounds",
        *after, budget()));
    after_previous_drain = *after;
    previous = UINT64_MAX;
    pending_now = *after;
  }

  // Following the guest's own migration: the vGPUs run on (kept nearly
  // copied by a round whenever the pending bytes outgrow the budget) until
  // the guest stops for its final copy.
  auto poll_guest = [&](absl::Duration keepalive, bool keep_copying,
                        const std::function<bool(GuestMove)>& done)
      -> absl::Status {
    Clock::time_point last_word = Clock::now();
    for (;;) {
      if (job.cancelled()) return absl::CancelledError("cancelled");
      std::string why;
      auto move = request.follow->Poll(&why);
      if (!move.ok()) return move.status();
      if (*move != guest) log(absl::StrCat("guest: ", why));
      guest = *move;
      if (guest == GuestMove::kStayed) {
        return absl::AbortedError(absl::StrCat(
            "the guest's own migration did not move it: ", why));
      }
      if (done(guest)) return absl::OkStatus();
      if (Clock::now() - last_word >= absl::ToChronoNanoseconds(keepalive)) {
        if (keep_copying) {
          auto pending = set.Pending();
          if (!pending.ok()) return pending.status();
          pending_now = *pending;
          if (pending_now > budget()) {
            if (auto s = run_round(rounds); !s.ok()) return s;
          }
        }
        if (auto s = drain(); !s.ok()) return s;
        last_word = Clock::now();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  if (request.follow != nullptr) {
    log("precopy: following the guest's migration; the vGPUs stop with it");
    job.Update([](JobData& d) { d.waiting = "the guest to stop"; });
    absl::Status s = poll_guest(absl::Milliseconds(250), true,
                                [](GuestMove m) { return m != GuestMove::kRunning; });
    job.Update([](JobData& d) { d.waiting.clear(); });
    if (!s.ok()) return abort(s);
  }

  // Perform: stop-copy. From here the guest's vGPUs are stopped.
  round_now = rounds;
  round_start_raw = writer->stats().raw_bytes;
  round_total = pending_now;
  job.Update([&](JobData& d) {
    d.phase = Phase::kStopCopy;
    d.round = rounds;
  });
  if (auto s = job.Checkpoint(Phase::kStopCopy); !s.ok()) return abort(s);
  Clock::time_point stopped = Clock::now();
  if (auto s = agents::TransitionGroup(set.Pointers(), State::kStopCopy);
      !s.ok()) {
    return abort(s);
  }
  for (size_t i = 0; i < set.agents.size(); ++i) {
    if (auto s = set.agents[i]->Save(*writer, i, rounds); !s.ok()) {
      return abort(s);
    }
  }
  if (auto s = writer->Finish(); !s.ok()) return abort(s);
  if (auto s = sink.Sync(); !s.ok()) return abort(s);
  Clock::time_point copied = Clock::now();
  publish();

  // Finish: the destination checks it has every section, verified.
  job.Update([](JobData& d) { d.phase = Phase::kFinish; });
  if (auto s = job.Checkpoint(Phase::kFinish); !s.ok()) return abort(s);
  {
    auto reply = link.rpc->Wait(incoming->finishRequest().send(),
                                env.peer_timeout + absl::Seconds(30),
                                absl::StrCat("finish on ", request.to));
    absl::Status s = reply.ok() ? GetError(reply->getError()) : reply.status();
    if (!s.ok()) return abort(s);
  }
  Clock::time_point finished = Clock::now();

  // Following the guest: commit only once it has left this host. If its
  // migration fails now it resumes here, and so do its vGPUs. The
  // destination sees the guest resume there the moment it does; this
  // host's libvirt says it left only after its own confirm phase (and
  // holds queries on the domain meanwhile), so the destination is asked
  // first, and this host's view is the fallback.
  if (request.follow != nullptr && guest != GuestMove::kLeft) {
    job.Update([](JobData& d) { d.waiting = "the guest to leave"; });
    absl::Status s;
    bool destination_knows = true;
    std::string last_why;
    for (;;) {
      if (job.cancelled()) {
        s = absl::CancelledError("cancelled");
        break;
      }
      auto reply = link.rpc->Wait(incoming->guestRequest().send(),
                                  env.peer_timeout,
                                  absl::StrCat("guest on ", request.to));
      if (!reply.ok()) {
        s = reply.status();
        break;
      }
      const std::string why = reply->getWhy();
      if (why != last_why) log(absl::StrCat("guest on ", request.to, ": ", why));
      last_why = why;
      const auto view = reply->getMove();
      if (view == schema::GuestView::LEFT) break;
      if (view == schema::GuestView::STAYED) {
        s = absl::AbortedError(absl::StrCat(
            "the guest's migration failed on ", request.to, ": ", why));
        break;
      }
      if (view == schema::GuestView::UNKNOWN) {
        destination_knows = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (s.ok() && !destination_knows) {
      s = poll_guest(absl::Seconds(1), false,
                     [](GuestMove m) { return m == GuestMove::kLeft; });
    }
    job.Update([](JobData& d) { d.waiting.clear(); });
    if (!s.ok()) return abort(s);
    log(absl::StrFormat("the guest left %.1f ms after the vGPUs stopped",
                        1000 * Seconds(Clock::now() - stopped)));
  }

  // Confirm: the point of no return. The source stays stopped from here
  // on (unless the destination provably did not activate), then the
  // destination activates.
  job.Update([](JobData& d) { d.phase = Phase::kConfirm; });
  if (auto s = job.Checkpoint(Phase::kConfirm); !s.ok()) return abort(s);
  if (!job.CommitOrCancelled()) {
    return abort(absl::CancelledError("cancelled before confirm"));
  }
  absl::Status confirmed;
  {
    auto reply = link.rpc->Wait(incoming->confirmRequest().send(),
                                env.peer_timeout + absl::Seconds(10),
                                absl::StrCat("confirm on ", request.to));
    if (reply.ok()) {
      confirmed = GetError(reply->getError());
      if (!confirmed.ok()) {
        // Activation failed there and it tore down: the source resumes.
        return abort(confirmed);
      }
    } else {
      confirmed = reply.status();
    }
  }
  if (!confirmed.ok()) {
    // The answer was lost: ask on a fresh connection whether the
    // destination activated. It tears down a job still waiting, so the
    // answer is final.
    log(absl::StrCat("confirm unanswered (", confirmed.ToString(),
                     "); asking the destination for the outcome"));
    bool known = false, activated = false;
    Clock::time_point deadline =
        Clock::now() + absl::ToChronoMilliseconds(env.peer_timeout * 3);
    while (!known && Clock::now() < deadline) {
      auto again = ConnectPeer(env, request.to);
      if (again.ok()) {
        auto req = again->peer->outcomeRequest();
        req.setJob(job.id());
        auto reply = again->rpc->Wait(req.send(), env.peer_timeout, "outcome");
        if (reply.ok()) {
          known = true;
          activated = reply->getKnown() && reply->getActivated();
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    if (known && !activated) {
      return abort(absl::UnavailableError(absl::StrCat(
          "the destination did not activate: ", confirmed.message())));
    }
    if (!known) {
      // Neither side runs the vGPUs; the source keeps their state stopped.
      env.inventory->Release(request.vm, job.id());
      return Fail(job,
                  absl::DataLossError(absl::StrCat(
                      "outcome unknown: ", request.to,
                      " cannot be reached to learn whether it activated; "
                      "the source vGPUs stay stopped with their state. "
                      "Check `vgpu-migrate list` on ", request.to,
                      ", then unregister the VM on one side")),
                  false);
    }
  }
  Clock::time_point activated = Clock::now();
  const double downtime = 1000.0 * Seconds(activated - stopped);
  for (size_t i = 0; i < set.agents.size(); ++i) {
    absl::Status s = set.agents[i]->TransitionTo(State::kReleased);
    if (!s.ok()) log(absl::StrCat("device ", i, ": release: ", s.ToString()));
  }
  for (const VmDevice& d : vm->devices) {
    if (d.owned) {
      auto it = env.backends->find(d.strategy);
      if (it != env.backends->end()) it->second->Destroy(d.endpoint);
    }
  }
  env.inventory->Remove(request.vm, job.id());
  const codec::StreamStats st = writer->stats();
  log(absl::StrFormat(
      "done: %u rounds, %u state bytes, %u on the wire, downtime %.1f ms "
      "(final copy %.1f ms, finish %.1f ms, confirm %.1f ms)",
      rounds, st.raw_bytes, st.stored_bytes, downtime,
      1000 * Seconds(copied - stopped), 1000 * Seconds(finished - copied),
      1000 * Seconds(activated - finished)));
  job.Update([&](JobData& d) {
    d.phase = Phase::kDone;
    d.state = JobState::kDone;
    d.downtime_ms = downtime;
    d.raw_bytes = st.raw_bytes;
    d.wire_bytes = st.stored_bytes;
    d.pending_bytes = 0;
    d.total_seconds = Seconds(Clock::now() - job_start);
  });
}

}  // namespace vgpu::migrator

// --- store side ----------------------------------------------------------------

namespace vgpu::migrator {

void RunSnapshot(const Env& env, Job& job, const std::string& vm_name,
                 const std::string& tag) {
  LogFn log = JobLogger(env, job.id(), vm_name);
  if (auto s = job.Checkpoint(Phase::kBegin); !s.ok()) return Fail(job, s, true);
  if (auto s = env.inventory->Acquire(vm_name, job.id()); !s.ok()) {
    return Fail(job, s, true);
  }
  auto release_vm = [&] { env.inventory->Release(vm_name, job.id()); };
  auto vm = env.inventory->Get(vm_name);
  if (!vm.ok()) {
    release_vm();
    return Fail(job, vm.status(), true);
  }
  auto sources = OpenSources(env, *vm);
  if (!sources.ok()) {
    release_vm();
    return Fail(job, sources.status(), true);
  }
  SourceSet& set = *sources;

  // The store ingests on its own thread while the agents produce the
  // image, so extraction, compression and storing overlap.
  BytePipe pipe(kPipeBytes, absl::StrCat("snapshot of ", vm_name));
  absl::StatusOr<store::SnapshotInfo> stored =
      absl::InternalError("not stored");
  std::thread ingest([&] {
    auto source = pipe.Source();
    store::PutOptions po;
    po.tag = tag;
    stored = env.store->Put(source.get(), po);
    if (!stored.ok()) pipe.CloseRead(stored.status());
  });
  Clock::time_point start = Clock::now();
  double downtime = 0;
  auto produce = [&]() -> absl::Status {
    auto sink = pipe.Sink();
    codec::WriterOptions wo;
    wo.threads = env.config->threads;
    auto writer = codec::ImageWriter::Create(
        sink.get(), MakeManifest(*vm, set, schema::ImageKind::CHECKPOINT), wo);
    if (!writer.ok()) return writer.status();
    // Pre-copy into the store, as into a peer: rounds while the vGPUs run,
    // each overlaying the previous in the snapshot (docs/formats/store.md),
    // so the vGPUs stop only for what the last round left.
    job.Update([](JobData& d) { d.phase = Phase::kPreCopy; });
    if (auto s = job.Checkpoint(Phase::kPreCopy); !s.ok()) return s;
    for (auto& a : set.agents) {
      if (auto s = a->TransitionTo(State::kPreCopy); !s.ok()) return s;
    }
    uint64_t previous = UINT64_MAX;
    uint32_t round = 0;
    for (; round < env.config->max_rounds; ++round) {
      Clock::time_point round_start = Clock::now();
      const uint64_t before =
          (*writer)->stats().raw_bytes - (*writer)->stats().zero_bytes;
      for (size_t i = 0; i < set.agents.size(); ++i) {
        if (auto s = set.agents[i]->Save(**writer, i, round); !s.ok()) return s;
      }
      const double dt = Seconds(Clock::now() - round_start);
      const uint64_t costly =
          (*writer)->stats().raw_bytes - (*writer)->stats().zero_bytes - before;
      auto pending_or = set.Pending();
      if (!pending_or.ok()) return pending_or.status();
      const uint64_t pending = *pending_or;
      const codec::StreamStats& st = (*writer)->stats();
      job.Update([&](JobData& d) {
        d.round = round;
        d.raw_bytes = st.raw_bytes;
        d.wire_bytes = st.stored_bytes;
        d.pending_bytes = pending;
        d.rounds.push_back(pending);
      });
      const double rate = dt > 0 ? costly / dt : 0;
      if (pending <= rate * env.config->downtime_ms / 2000.0 ||
          pending >= previous) {
        ++round;
        break;
      }
      previous = pending;
      if (job.cancelled()) return absl::CancelledError("cancelled");
    }
    job.Update([](JobData& d) { d.phase = Phase::kStopCopy; });
    if (auto s = job.Checkpoint(Phase::kStopCopy); !s.ok()) return s;
    Clock::time_point stopped = Clock::now();
    if (auto s = agents::TransitionGroup(set.Pointers(), State::kStopCopy);
        !s.ok()) {
      return s;
    }
    for (size_t i = 0; i < set.agents.size(); ++i) {
      if (auto s = set.agents[i]->Save(**writer, i, round); !s.ok()) return s;
      const codec::StreamStats& st = (*writer)->stats();
      job.Update([&](JobData& d) {
        d.raw_bytes = st.raw_bytes;
        d.wire_bytes = st.stored_bytes;
      });
    }
    if (auto s = (*writer)->Finish(); !s.ok()) return s;
    // Everything is read: the vGPUs run again while the store commits.
    set.Resume(log);
    downtime = 1000.0 * Seconds(Clock::now() - stopped);
    const codec::StreamStats& st = (*writer)->stats();
    job.Update([&](JobData& d) {
      d.raw_bytes = st.raw_bytes;
      d.wire_bytes = st.stored_bytes;
      d.phase = Phase::kFinish;
    });
    return sink->Close();
  };
  absl::Status produced = produce();
  if (!produced.ok()) pipe.CloseWrite(produced);  // Put fails: nothing lands
  ingest.join();
  bool resumed = set.Resume(log);
  release_vm();
  if (!produced.ok()) return Fail(job, produced, resumed);
  if (!stored.ok()) return Fail(job, stored.status(), resumed);
  log(absl::StrFormat("snapshot %s stored: %u bytes of state, %u new bytes, "
                      "vGPUs stopped for %.1f ms",
                      stored->id, stored->logical_bytes, stored->stored_bytes,
                      downtime));
  job.Update([&](JobData& d) {
    d.phase = Phase::kDone;
    d.state = JobState::kDone;
    d.snapshot = stored->id;
    d.downtime_ms = downtime;
    d.total_seconds = Seconds(Clock::now() - start);
  });
}

void RunRestore(const Env& env, Job& job, const std::string& snapshot,
                const std::string& as_name) {
  Clock::time_point start = Clock::now();
  auto info = env.store->Get(snapshot);
  if (!info.ok()) return Fail(job, info.status(), false);
  const std::string vm_name = as_name.empty() ? info->vm_name : as_name;
  LogFn log = JobLogger(env, job.id(), vm_name);
  job.Update([&](JobData& d) {
    d.vm = vm_name;
    d.phase = Phase::kPrepare;
  });
  if (auto s = job.Checkpoint(Phase::kPrepare); !s.ok()) {
    return Fail(job, s, false);
  }
  if (auto s = env.inventory->Reserve(vm_name, info->vm_uuid, job.id());
      !s.ok()) {
    return Fail(job, s, false);
  }
  BytePipe pipe(kPipeBytes, absl::StrCat("snapshot ", snapshot));
  std::thread reader_thread([&] {
    auto sink = pipe.Sink();
    codec::WriterOptions wo;
    wo.threads = env.config->threads;
    absl::Status s = env.store->Read(snapshot, sink.get(), wo);
    pipe.CloseWrite(s);
  });
  std::vector<std::unique_ptr<TargetDevice>> targets;
  auto restore = [&]() -> absl::Status {
    auto source = pipe.Source();
    auto reader = codec::ImageReader::Open(source.get(), {}, env.config->threads);
    if (!reader.ok()) return reader.status();
    auto devices = (*reader)->manifest().root().getDevices();
    std::vector<schema::DeviceDescriptor::Reader> list;
    for (auto d : devices) list.push_back(d.getDescriptor());
    CompatReport report = CheckCompatibility(list, env.profile());
    report.destination = env.config->host;
    if (!report.ok()) {
      job.Update([&](JobData& d) { d.report = report; });
      return report.ToStatus();
    }
    for (uint32_t i = 0; i < list.size(); ++i) {
      agents::Descriptor descriptor;
      descriptor.builder().setRoot(list[i]);
      const std::string strategy = StrategyName(list[i].getStrategy());
      auto it = env.backends->find(strategy);
      if (it == env.backends->end()) {
        return absl::UnimplementedError(absl::StrCat(
            "device ", i, ": no agent for strategy ", strategy, " here"));
      }
      auto target = it->second->CreateTarget(descriptor, vm_name, i);
      if (!target.ok()) return target.status();
      targets.push_back(std::move(*target));
      if (auto s = targets.back()->agent().TransitionTo(State::kResuming);
          !s.ok()) {
        return s;
      }
    }
    job.Update([](JobData& d) { d.phase = Phase::kFinish; });
    while (true) {
      auto next = (*reader)->NextSection();
      if (!next.ok()) return next.status();
      if (!next->has_value()) break;
      uint32_t device = (**next).root().getDevice();
      if (device >= targets.size()) {
        return absl::DataLossError(absl::StrFormat(
            "section '%s' names device %u of %u",
            (**next).root().getName().cStr(), device, targets.size()));
      }
      if (auto s = targets[device]->agent().Load(**next, **reader); !s.ok()) {
        return s;
      }
      const codec::StreamStats& st = (*reader)->stats();
      job.Update([&](JobData& d) { d.raw_bytes = st.raw_bytes; });
    }
    if (auto s = job.Checkpoint(Phase::kConfirm); !s.ok()) return s;
    std::vector<Agent*> group;
    for (auto& t : targets) group.push_back(&t->agent());
    if (auto s = agents::TransitionGroup(group, State::kRunning); !s.ok()) {
      return s;
    }
    return absl::OkStatus();
  };
  absl::Status restored = restore();
  if (!restored.ok()) pipe.CloseRead(restored);
  reader_thread.join();
  if (!restored.ok()) {
    targets.clear();
    env.inventory->CancelReservation(vm_name, job.id());
    return Fail(job, restored, false);
  }
  std::vector<VmDevice> devices;
  for (auto& t : targets) {
    devices.push_back(VmDevice{
        StrategyName(t->agent().descriptor().root().getStrategy()),
        t->endpoint(), true});
    t->Keep();
  }
  targets.clear();
  env.inventory->Commit(vm_name, job.id(), std::move(devices));
  log(absl::StrFormat("restored snapshot %s: %u vGPU(s) running", snapshot,
                      info->devices.size()));
  job.Update([&](JobData& d) {
    d.phase = Phase::kDone;
    d.state = JobState::kDone;
    d.snapshot = snapshot;
    d.total_seconds = Seconds(Clock::now() - start);
  });
}

}  // namespace vgpu::migrator

// --- destination side --------------------------------------------------------

namespace vgpu::migrator {
namespace {

// One incoming migration. The connection thread calls Write/Finish/
// Activate; the receiver thread loads; TearDown may come from any thread
// (the connection dropping, abort, an outcome query, shutdown).
class IncomingState {
 public:
  enum class Stage { kReceiving, kActive, kTornDown };

  IncomingState(const Env& env, std::shared_ptr<Job> job, std::string vm,
                std::string peer,
                std::vector<std::unique_ptr<TargetDevice>> targets)
      : env_(env),
        job_(std::move(job)),
        vm_(std::move(vm)),
        log_(JobLogger(env, job_->id(), vm_)),
        targets_(std::move(targets)),
        pipe_(kPipeBytes, absl::StrCat("migration stream from ", peer)) {}

  ~IncomingState() {
    TearDown(absl::AbortedError("daemon dropped the job"));
    if (watchdog_.joinable()) watchdog_.join();
  }

  void Start() {
    Touch();
    receiver_ = std::thread([this] { Receive(); });
    watchdog_ = std::thread([this] { Watch(); });
  }

  absl::Status Write(capnp::Data::Reader data) {
    Touch();
    absl::Status s = pipe_.Write(absl::MakeConstSpan(data.begin(), data.size()));
    uint64_t total = pipe_.bytes_written();
    job_->Update([&](JobData& d) {
      d.phase = Phase::kPreCopy;
      d.wire_bytes = total;
    });
    return s;
  }

  // What the guest of this migration does here (a pull's confirm waits
  // for it to run here).
  schema::GuestView Guest(std::string* why) {
    Touch();
    std::lock_guard<std::mutex> lock(guest_mu_);
    if (!env_.guest_gate) {
      *why = absl::StrCat(env_.config->host, " has no libvirt connection");
      return schema::GuestView::UNKNOWN;
    }
    if (arrival_ == nullptr) {
      auto gate = env_.guest_gate(vm_, GuestSide::kDestination);
      if (!gate.ok()) {
        *why = std::string(gate.status().message());
        return schema::GuestView::UNKNOWN;
      }
      arrival_ = std::move(*gate);
    }
    auto move = arrival_->Poll(why);
    if (!move.ok()) {
      *why = std::string(move.status().message());
      return schema::GuestView::UNKNOWN;
    }
    switch (*move) {
      case GuestMove::kLeft: return schema::GuestView::LEFT;
      case GuestMove::kStayed: return schema::GuestView::STAYED;
      default: return schema::GuestView::STOPPED;
    }
  }

  absl::Status Drain() {
    Touch();
    pipe_.WaitDrained();
    Touch();
    std::lock_guard<std::mutex> lock(mu_);
    if (stage_ == Stage::kTornDown) return torn_down_why_;
    return absl::OkStatus();
  }

  absl::Status Finish() {
    Touch();
    const Clock::time_point start = Clock::now();
    pipe_.CloseWrite();
    JoinReceiver();
    const double waited = 1000 * Seconds(Clock::now() - start);
    std::lock_guard<std::mutex> lock(mu_);
    if (stage_ == Stage::kTornDown) return torn_down_why_;
    if (!received_.ok()) return received_;
    job_->Update([](JobData& d) { d.phase = Phase::kFinish; });
    log_(absl::StrFormat(
        "finish: every section loaded and verified (waited %.1f ms for the "
        "loader)",
        waited));
    return absl::OkStatus();
  }

  absl::Status Activate() {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point start = Clock::now();
    if (stage_ == Stage::kTornDown) return torn_down_why_;
    if (!finished_ok_) {
      return absl::FailedPreconditionError("confirm before a good finish");
    }
    std::vector<agents::Agent*> group;
    for (auto& t : targets_) group.push_back(&t->agent());
    absl::Status activated =
        agents::TransitionGroup(group, agents::State::kRunning);
    if (!activated.ok()) {
      absl::Status why(activated.code(),
                       absl::StrCat("activate: ", activated.message()));
      TearDownLocked(why);
      return why;
    }
    std::vector<VmDevice> devices;
    for (auto& t : targets_) {
      devices.push_back(VmDevice{
          StrategyName(t->agent().descriptor().root().getStrategy()),
          t->endpoint(), true});
      t->Keep();
    }
    env_.inventory->Commit(vm_, job_->id(), std::move(devices));
    stage_ = Stage::kActive;
    targets_.clear();  // kept: the backend owns the devices now
    log_(absl::StrFormat("confirm: vGPUs activated in %.1f ms; the VM runs here",
                         1000 * Seconds(Clock::now() - start)));
    job_->Update([](JobData& d) {
      d.phase = Phase::kDone;
      d.state = JobState::kDone;
      d.total_seconds = d.elapsed_seconds;
    });
    return absl::OkStatus();
  }

  // Returns true if the vGPUs were activated (then nothing is torn down).
  bool TearDown(const absl::Status& why) {
    pipe_.CloseRead(why);
    JoinReceiver();
    std::lock_guard<std::mutex> lock(mu_);
    if (stage_ == Stage::kActive) return true;
    TearDownLocked(why);
    return false;
  }

  void MarkFinished() {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ok_ = true;
  }

 private:
  void TearDownLocked(const absl::Status& why) {
    if (stage_ == Stage::kTornDown) return;
    stage_ = Stage::kTornDown;
    torn_down_why_ = why;
    log_(absl::StrCat("tearing down the incoming vGPUs: ", why.ToString()));
    env_.inventory->CancelReservation(vm_, job_->id());
    targets_.clear();  // ends the device models vgpud started
    job_->Update([&](JobData& d) {
      d.state = why.code() == absl::StatusCode::kCancelled ? JobState::kCancelled
                                                           : JobState::kFailed;
      d.error = why;
      d.total_seconds = d.elapsed_seconds;
    });
  }

  void Touch() { last_word_ns_ = Clock::now().time_since_epoch().count(); }

  // A source that goes silent (a link that drops everything, a proxy that
  // keeps TCP alive) must not hold the prepared devices forever: after the
  // peer timeout without a word before confirm, tear down.
  void Watch() {
    const auto limit = absl::ToChronoNanoseconds(env_.peer_timeout).count();
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stage_ != Stage::kReceiving) return;
      }
      if (Clock::now().time_since_epoch().count() - last_word_ns_.load() >
          limit) {
        TearDown(absl::DeadlineExceededError(absl::StrCat(
            "no word from the source for ",
            absl::FormatDuration(env_.peer_timeout))));
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  void JoinReceiver() {
    std::lock_guard<std::mutex> lock(join_mu_);
    if (receiver_.joinable()) receiver_.join();
  }

  void Receive() {
    absl::Status s = ReceiveAll();
    if (!s.ok()) {
      log_(absl::StrCat("stream refused: ", s.ToString()));
      pipe_.CloseRead(s);  // the source's next write fails with the reason
    }
    std::lock_guard<std::mutex> lock(mu_);
    received_ = s;
    // Nothing of a refused stream is kept, even if the source never says
    // goodbye.
    if (!s.ok()) TearDownLocked(s);
  }

  absl::Status ReceiveAll() {
    for (auto& t : targets_) {
      if (auto s = t->agent().TransitionTo(agents::State::kResuming); !s.ok()) {
        return s;
      }
    }
    auto source = pipe_.Source();
    auto reader = codec::ImageReader::Open(source.get(), {}, env_.config->threads);
    if (!reader.ok()) return reader.status();
    auto manifest = (*reader)->manifest().root();
    if (manifest.getDevices().size() != targets_.size()) {
      return absl::DataLossError(absl::StrFormat(
          "stream describes %u devices, %u were prepared",
          manifest.getDevices().size(), targets_.size()));
    }
    while (true) {
      auto next = (*reader)->NextSection();
      if (!next.ok()) return next.status();
      if (!next->has_value()) break;
      uint32_t device = (**next).root().getDevice();
      if (device >= targets_.size()) {
        return absl::DataLossError(absl::StrFormat(
            "section '%s' names device %u of %u",
            (**next).root().getName().cStr(), device, targets_.size()));
      }
      if (auto s = targets_[device]->agent().Load(**next, **reader); !s.ok()) {
        return s;
      }
    }
    MarkFinished();
    return absl::OkStatus();
  }

  const Env env_;
  std::shared_ptr<Job> job_;
  const std::string vm_;
  LogFn log_;
  std::mutex mu_;
  Stage stage_ = Stage::kReceiving;
  absl::Status torn_down_why_;
  bool finished_ok_ = false;
  std::mutex guest_mu_;
  std::unique_ptr<GuestGate> arrival_;
  std::vector<std::unique_ptr<TargetDevice>> targets_;
  BytePipe pipe_;
  std::mutex join_mu_;
  std::thread receiver_;
  std::thread watchdog_;
  std::atomic<int64_t> last_word_ns_{0};
  absl::Status received_;
};

}  // namespace

struct IncomingRegistry::Impl {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<IncomingState>> by_source_job;
};

IncomingRegistry::IncomingRegistry() : impl_(std::make_unique<Impl>()) {}
IncomingRegistry::~IncomingRegistry() = default;

void IncomingRegistry::AbortAll(const std::string& why) {
  std::vector<std::shared_ptr<IncomingState>> all;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& [id, state] : impl_->by_source_job) all.push_back(state);
  }
  for (auto& state : all) state->TearDown(absl::AbortedError(why));
}

namespace {

class IncomingServer final : public schema::Incoming::Server {
 public:
  explicit IncomingServer(std::shared_ptr<IncomingState> state)
      : state_(std::move(state)) {}
  ~IncomingServer() {
    state_->TearDown(absl::UnavailableError(
        "the link to the source closed before confirm"));
  }

  kj::Promise<void> write(WriteContext context) override {
    absl::Status s = state_->Write(context.getParams().getData());
    SetError(s, context.getResults().initError());
    return kj::READY_NOW;
  }
  kj::Promise<void> drain(DrainContext context) override {
    SetError(state_->Drain(), context.getResults().initError());
    return kj::READY_NOW;
  }
  kj::Promise<void> finish(FinishContext context) override {
    SetError(state_->Finish(), context.getResults().initError());
    return kj::READY_NOW;
  }
  kj::Promise<void> confirm(ConfirmContext context) override {
    SetError(state_->Activate(), context.getResults().initError());
    return kj::READY_NOW;
  }
  kj::Promise<void> guest(GuestContext context) override {
    std::string why;
    auto view = state_->Guest(&why);
    context.getResults().setMove(view);
    context.getResults().setWhy(why);
    return kj::READY_NOW;
  }
  kj::Promise<void> abort(AbortContext context) override {
    state_->TearDown(absl::CancelledError(absl::StrCat(
        "the source aborted: ", context.getParams().getReason().cStr())));
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<IncomingState> state_;
};

class PeerServer final : public schema::Peer::Server {
 public:
  PeerServer(const Env& env, JobTable* jobs, IncomingRegistry* registry,
             std::function<bool(const std::string&)> peer_is)
      : env_(env), jobs_(jobs), registry_(registry), peer_is_(std::move(peer_is)) {}

  kj::Promise<void> hello(HelloContext context) override {
    auto params = context.getParams();
    const std::string claimed = params.getHost();
    auto results = context.getResults();
    results.setHost(env_.config->host);
    results.setProtocol(schema::PEER_PROTOCOL);
    if (!peer_is_(claimed)) {
      // A valid cluster certificate for one host must not let it act as
      // another (and pick up that host's migrations' outcomes).
      env_.log(absl::StrFormat(
          "host=%s: refused a peer calling itself '%s': its certificate "
          "does not name that host",
          env_.config->host, claimed));
      SetError(absl::UnauthenticatedError(absl::StrFormat(
                   "%s: your certificate does not name host '%s'",
                   env_.config->host, claimed)),
               results.initError());
      return kj::READY_NOW;
    }
    if (params.getProtocol() != schema::PEER_PROTOCOL) {
      SetError(absl::FailedPreconditionError(absl::StrFormat(
                   "%s speaks peer protocol %u; %s speaks %u", claimed,
                   params.getProtocol(), env_.config->host,
                   schema::PEER_PROTOCOL)),
               results.initError());
      return kj::READY_NOW;
    }
    peer_ = claimed;
    greeted_ = true;
    env_.log(absl::StrFormat("host=%s: peer %s connected", env_.config->host,
                             peer_));
    return kj::READY_NOW;
  }

  kj::Promise<void> check(CheckContext context) override {
    if (!greeted_) {
      return KJ_EXCEPTION(DISCONNECTED, "no accepted hello on this link");
    }
    internal::SetReport(Check(context.getParams().getDevices()),
                        context.getResults().initReport());
    return kj::READY_NOW;
  }

  kj::Promise<void> prepare(PrepareContext context) override {
    auto params = context.getParams();
    auto results = context.getResults();
    if (!greeted_) {
      SetError(absl::UnauthenticatedError("prepare before an accepted hello"),
               results.initError());
      return kj::READY_NOW;
    }
    const std::string vm = params.getVm().getName();
    const std::string source_job = params.getJob();
    auto job = jobs_->Create("incoming", vm, peer_);
    LogFn log = JobLogger(env_, job->id(), vm);
    job->Update([](JobData& d) { d.phase = Phase::kPrepare; });
    auto refuse = [&](const absl::Status& why) {
      log(absl::StrCat("prepare refused: ", why.ToString()));
      SetError(why, results.initError());
      Fail(*job, why, false);
      return kj::READY_NOW;
    };

    CompatReport report = Check(params.getDevices());
    internal::SetReport(report, results.initReport());
    if (!report.ok()) return refuse(report.ToStatus());
    if (auto s = env_.inventory->Reserve(vm, params.getVm().getUuid(), job->id());
        !s.ok()) {
      return refuse(s);
    }
    std::vector<std::unique_ptr<TargetDevice>> targets;
    auto devices = params.getDevices();
    for (uint32_t i = 0; i < devices.size(); ++i) {
      absl::Status s;
      agents::Descriptor descriptor;
      descriptor.builder().setRoot(devices[i]);
      const std::string strategy = StrategyName(devices[i].getStrategy());
      auto it = env_.backends->find(strategy);
      if (it == env_.backends->end()) {
        s = absl::UnimplementedError(absl::StrCat(
            "device ", i, ": no agent for strategy ", strategy, " here"));
      } else {
        auto target = it->second->CreateTarget(descriptor, vm, i);
        if (target.ok()) {
          targets.push_back(std::move(*target));
        } else {
          s = absl::Status(target.status().code(),
                           absl::StrCat("device ", i, ": ",
                                        target.status().message()));
        }
      }
      if (!s.ok()) {
        targets.clear();
        env_.inventory->CancelReservation(vm, job->id());
        return refuse(s);
      }
    }
    log(absl::StrFormat("prepare: %u target device(s) created for %s's job %s",
                        targets.size(), peer_, source_job));
    job->Update([&](JobData& d) {
      d.remote_job = source_job;
      for (const auto& t : targets) d.endpoints.push_back(t->endpoint());
    });
    auto hints = results.initHints(static_cast<unsigned>(targets.size()));
    for (size_t i = 0; i < targets.size(); ++i) {
      hints.set(static_cast<unsigned>(i), targets[i]->hint());
    }
    auto state = std::make_shared<IncomingState>(env_, job, vm, peer_,
                                                 std::move(targets));
    state->Start();
    {
      std::lock_guard<std::mutex> lock(registry_->impl().mu);
      registry_->impl().by_source_job[source_job] = state;
    }
    results.setIncoming(kj::heap<IncomingServer>(state));
    return kj::READY_NOW;
  }

  kj::Promise<void> pull(PullContext context) override {
    auto results = context.getResults();
    if (!greeted_) {
      SetError(absl::UnauthenticatedError("pull before an accepted hello"),
               results.initError());
      return kj::READY_NOW;
    }
    MigrateRequest req;
    req.vm = context.getParams().getVm();
    req.to = peer_;
    absl::Status s = env_.inventory->Get(req.vm).status();
    if (s.ok() && (!env_.guest_gate || !env_.launch)) {
      s = absl::FailedPreconditionError(absl::StrCat(
          env_.config->host, " cannot follow the guest of ", req.vm,
          ": it has no libvirt connection (libvirt.uri in vgpud's config)"));
    }
    if (s.ok()) {
      auto gate = env_.guest_gate(req.vm, GuestSide::kSource);
      if (gate.ok()) {
        req.follow = std::shared_ptr<GuestGate>(std::move(*gate));
      } else {
        s = gate.status();
      }
    }
    std::shared_ptr<Job> job;
    if (s.ok()) {
      job = jobs_->Create("migrate", req.vm, req.to);
      env_.log(absl::StrFormat("host=%s job=%s vm=%s: %s pulls it, following "
                               "its guest's migration",
                               env_.config->host, job->id(), req.vm, peer_));
      // By value: the job outlives this connection.
      s = env_.launch([env = env_, job, req] { RunMigration(env, *job, req); });
    }
    if (s.ok()) {
      // Answer once the caller is prepared (or the migration failed
      // before): the caller's hook then knows the devices it will have.
      JobData d = job->Get();
      while (d.state == JobState::kRunning && d.phase < Phase::kPreCopy) {
        d = job->Watch(d.seq, absl::Seconds(1));
      }
      results.setJob(job->id());
      if (d.state != JobState::kRunning && d.state != JobState::kDone) {
        s = d.error.ok() ? absl::AbortedError("the migration ended") : d.error;
        internal::SetReport(d.report, results.initReport());
      }
    }
    SetError(s, results.initError());
    return kj::READY_NOW;
  }

  kj::Promise<void> outcome(OutcomeContext context) override {
    if (!greeted_) {
      return KJ_EXCEPTION(DISCONNECTED, "no accepted hello on this link");
    }
    std::shared_ptr<IncomingState> state;
    {
      std::lock_guard<std::mutex> lock(registry_->impl().mu);
      auto it = registry_->impl().by_source_job.find(
          context.getParams().getJob());
      if (it != registry_->impl().by_source_job.end()) state = it->second;
    }
    auto results = context.getResults();
    results.setKnown(state != nullptr);
    if (state != nullptr) {
      results.setActivated(state->TearDown(absl::UnavailableError(
          "the source asked for the outcome before confirm arrived")));
    }
    return kj::READY_NOW;
  }

 private:
  CompatReport Check(capnp::List<schema::DeviceDescriptor>::Reader devices) {
    std::vector<schema::DeviceDescriptor::Reader> list;
    for (auto d : devices) list.push_back(d);
    CompatReport report = CheckCompatibility(list, env_.profile());
    report.destination = env_.config->host;
    return report;
  }

  const Env env_;
  JobTable* jobs_;
  IncomingRegistry* registry_;
  std::function<bool(const std::string&)> peer_is_;
  std::string peer_ = "an unnamed peer";
  bool greeted_ = false;
};

}  // namespace

capnp::Capability::Client NewPeerService(
    const Env& env, JobTable* jobs, IncomingRegistry* incoming,
    std::function<bool(const std::string&)> peer_is) {
  return kj::heap<PeerServer>(env, jobs, incoming, std::move(peer_is));
}

}  // namespace vgpu::migrator
