#include "agents/forwarding/backend/checkpoint.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agents/forwarding/backend/control_client.h"
#include "agents/forwarding/backend/forwarding_agent.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace vgpu::forwarding::backend {

using agents::State;

absl::StatusOr<CheckpointStats> CheckpointToFile(
    const std::string& session_control, const std::string& path,
    int zstd_level) {
  const absl::Time start = absl::Now();
  auto control = ControlClient::Connect(session_control);
  if (!control.ok()) return control.status();
  auto info = (*control)->Describe();
  if (!info.ok()) return info.status();
  auto agent = OpenForwardingSource(session_control);
  if (!agent.ok()) return agent.status();
  auto sink = codec::OpenFileSink(path);
  if (!sink.ok()) return sink.status();
  codec::Manifest m;
  auto root = m.mutable_root();
  root.setKind(schema::ImageKind::CHECKPOINT);
  root.initVm().setName(info->root().getGuest().getVm());
  auto dev = root.initDevices(1)[0];
  dev.setIndex(0);
  dev.setDescriptor((*agent)->descriptor().root());
  codec::StampManifest(m, "vgpu-cl-backend checkpoint");
  codec::WriterOptions wo;
  wo.zstd_level = zstd_level;
  auto writer = codec::ImageWriter::Create(sink->get(), m, wo);
  if (!writer.ok()) return writer.status();
  // A live round first: every object is read while the session runs (each
  // piece holds its calls only briefly); then freeze and save what changed
  // since, with the log. The session runs on whatever happens.
  if (auto s = (*agent)->TransitionTo(State::kPreCopy); !s.ok()) return s;
  if (auto s = (*agent)->Save(**writer, 0, 0); !s.ok()) {
    (void)(*agent)->TransitionTo(State::kRunning);
    return s;
  }
  const absl::Time frozen = absl::Now();
  if (auto s = (*agent)->TransitionTo(State::kStopCopy); !s.ok()) return s;
  absl::Status saved = (*agent)->Save(**writer, 0, 1);
  const double frozen_ms = absl::ToDoubleMilliseconds(absl::Now() - frozen);
  absl::Status resumed = (*agent)->TransitionTo(State::kRunning);
  if (!saved.ok()) return saved;
  if (!resumed.ok()) return resumed;
  if (auto s = (*writer)->Finish(); !s.ok()) return s;
  CheckpointStats st;
  st.raw_bytes = (*writer)->stats().raw_bytes;
  st.stored_bytes = (*writer)->stats().stored_bytes;
  st.sections = (*writer)->stats().sections;
  st.frozen_ms = frozen_ms;
  st.total_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  return st;
}

absl::StatusOr<RestoreResult> RestoreFromFile(
    const std::string& supervisor_control, const std::string& path) {
  const absl::Time start = absl::Now();
  auto source = codec::OpenFileSource(path);
  if (!source.ok()) return source.status();
  auto reader = codec::ImageReader::Open(source->get());
  if (!reader.ok()) {
    return absl::Status(reader.status().code(),
                        absl::StrCat(path, ": ", reader.status().message()));
  }
  auto manifest = (*reader)->manifest().root();
  if (manifest.getDevices().size() != 1 ||
      manifest.getDevices()[0].getDescriptor().getStrategy() !=
          schema::Strategy::API_FORWARDING) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": not the image of one forwarded OpenCL session"));
  }
  agents::Descriptor descriptor;
  descriptor.builder().setRoot(manifest.getDevices()[0].getDescriptor());
  auto supervisor = ControlClient::Connect(supervisor_control);
  if (!supervisor.ok()) return supervisor.status();
  auto target = (*supervisor)->CreateTarget();
  if (!target.ok()) return target.status();
  const std::string worker = target->root().getControl();
  auto agent = OpenForwardingDestination(target->root(), descriptor,
                                         manifest.getVm().getName());
  absl::Status s = agent.status();
  if (s.ok()) s = (*agent)->TransitionTo(State::kResuming);
  while (s.ok()) {
    auto next = (*reader)->NextSection();
    if (!next.ok()) {
      s = next.status();
      break;
    }
    if (!next->has_value()) break;
    s = (*agent)->Load(**next, **reader);
  }
  if (s.ok()) s = agents::TransitionGroup({agent->get()}, State::kRunning);
  if (!s.ok()) {
    // Nothing half-restored stays behind.
    agent = absl::CancelledError("");
    if (auto c = ControlClient::Connect(worker); c.ok()) (void)(*c)->Quit();
    return absl::Status(s.code(), absl::StrCat("restore of ", path, ": ",
                                               s.message()));
  }
  auto c = ControlClient::Connect(worker);
  if (!c.ok()) return c.status();
  auto info = (*c)->Describe();
  if (!info.ok()) return info.status();
  RestoreResult r;
  r.session = info->root().getSession();
  r.control = worker;
  r.stats.raw_bytes = (*reader)->stats().raw_bytes;
  r.stats.stored_bytes = (*reader)->stats().stored_bytes;
  r.stats.sections = (*reader)->stats().sections;
  r.stats.total_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  return r;
}

}  // namespace vgpu::forwarding::backend
