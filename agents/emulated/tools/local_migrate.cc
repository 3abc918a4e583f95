#include "agents/emulated/tools/local_migrate.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agents/emulated/emulated_agent.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace vgpu::agents::emulated {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

absl::StatusOr<LocalMigrateResult> MigrateLocally(
    const LocalMigrateOptions& options) {
  auto src_dc = DeviceControl::Connect(options.from_socket);
  if (!src_dc.ok()) return src_dc.status();
  auto source = NewEmulatedSource(std::move(*src_dc));
  if (!source.ok()) return source.status();
  auto dst_dc = DeviceControl::Connect(options.to_socket);
  if (!dst_dc.ok()) return dst_dc.status();
  auto dest = NewEmulatedDestination(std::move(*dst_dc), (*source)->descriptor());
  if (!dest.ok()) return dest.status();
  Agent& src = **source;
  Agent& dst = **dest;

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  // The pipe is the link: 1 MiB of buffering, like a socket's.
  fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
  auto sink = codec::FdSink(fds[1], "pipe to the destination", true);
  auto in = codec::FdSource(fds[0], "pipe from the source", true);

  // The destination loads sections as they arrive and activates at the end.
  absl::Status received;
  Clock::time_point activated;
  std::thread receiver([&] {
    received = dst.TransitionTo(State::kResuming);
    std::unique_ptr<codec::ImageReader> reader;
    if (received.ok()) {
      auto r = codec::ImageReader::Open(in.get(), {}, options.threads);
      if (r.ok()) {
        reader = std::move(*r);
      } else {
        received = r.status();
      }
    }
    while (received.ok()) {
      auto next = reader->NextSection();
      if (!next.ok()) {
        received = next.status();
        break;
      }
      if (!next->has_value()) break;
      received = dst.Load(**next, *reader);
    }
    if (received.ok()) received = dst.TransitionTo(State::kRunning);
    activated = Clock::now();
    in.reset();  // a writer still sending gets EPIPE rather than blocking
  });

  LocalMigrateResult result;
  const Clock::time_point start = Clock::now();
  Clock::time_point stopped;
  auto send = [&]() -> absl::Status {
    codec::Manifest m;
    auto root = m.mutable_root();
    root.setKind(schema::ImageKind::MIGRATION_STREAM);
    auto d = root.initDevices(1)[0];
    d.setIndex(0);
    d.setDescriptor(src.descriptor().root());
    codec::StampManifest(m, "vgpu-emu-migrate");
    codec::WriterOptions wo;
    wo.threads = options.threads;
    auto w = codec::ImageWriter::Create(sink.get(), m, wo);
    if (!w.ok()) return w.status();
    if (auto s = src.TransitionTo(State::kPreCopy); !s.ok()) return s;
    uint64_t previous = UINT64_MAX;
    for (uint32_t round = 0; round < options.max_rounds; ++round) {
      if (auto s = src.Save(**w, 0, round); !s.ok()) return s;
      result.rounds = round + 1;
      auto p = src.Pending();
      if (!p.ok()) return p.status();
      result.pending.push_back(p->total());
      if (options.on_round) {
        options.on_round(round, (*w)->stats().raw_bytes, p->total());
      }
      // Done when it fits the budget, or when rounds stop helping.
      if (p->total() <= options.downtime_bytes || p->total() >= previous) {
        break;
      }
      previous = p->total();
    }
    uint64_t before_final = (*w)->stats().raw_bytes;
    if (auto s = src.TransitionTo(State::kStopCopy); !s.ok()) return s;
    stopped = Clock::now();
    if (auto s = src.Save(**w, 0, result.rounds); !s.ok()) return s;
    result.final_bytes = (*w)->stats().raw_bytes - before_final;
    if (auto s = (*w)->Finish(); !s.ok()) return s;
    result.raw_bytes = (*w)->stats().raw_bytes;
    result.stream_bytes = (*w)->stats().stored_bytes;
    return absl::OkStatus();
  };
  absl::Status sent = send();
  sink.reset();  // EOF for the receiver if the stream was cut short
  receiver.join();

  if (!sent.ok() || !received.ok()) {
    // The source stays authoritative: resume it; discard the destination.
    if (src.state() == State::kPreCopy || src.state() == State::kStopCopy) {
      (void)src.TransitionTo(State::kRunning);
    }
    if (dst.state() == State::kResuming) {
      (void)dst.TransitionTo(State::kPrepared);
    }
    const absl::Status& why = !received.ok() ? received : sent;
    return absl::Status(why.code(),
                        absl::StrCat("migration failed, source resumed: ",
                                     why.message()));
  }
  if (auto s = src.TransitionTo(State::kReleased); !s.ok()) return s;
  result.total_seconds = Seconds(Clock::now() - start);
  result.downtime_seconds = Seconds(activated - stopped);
  return result;
}

}  // namespace vgpu::agents::emulated
