#include "agents/emulated/guest_client.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/emulated/internal/proto_convert.h"
#include "agents/emulated/internal/wire.h"

namespace vgpu::agents::emulated {
namespace {

using internal::Connection;
using Request = codec::Message<proto::Request>;
using Response = codec::Message<proto::Response>;

absl::StatusOr<uint64_t> ValueOf(absl::StatusOr<Response> r) {
  if (!r.ok()) return r.status();
  if (r->root().which() != proto::Response::VALUE) {
    return absl::DataLossError("device response without a value");
  }
  return r->root().getValue();
}

}  // namespace

GuestClient::GuestClient(std::unique_ptr<Connection> conn, std::string name,
                         uint64_t vram_bytes, const uint8_t* vram)
    : conn_(std::move(conn)),
      device_name_(std::move(name)),
      vram_bytes_(vram_bytes),
      vram_(vram) {}

GuestClient::~GuestClient() {
  munmap(const_cast<uint8_t*>(vram_), vram_bytes_);
}

absl::StatusOr<std::unique_ptr<GuestClient>> GuestClient::Connect(
    const std::string& socket_path, absl::string_view client_name) {
  codec::Message<proto::Info> info;
  internal::UniqueFd vram_fd;
  auto conn = Connection::Open(socket_path, proto::Hello::Role::GUEST,
                               client_name, &info, &vram_fd);
  if (!conn.ok()) return conn.status();
  const uint64_t vram_bytes = info.root().getVramBytes();
  if (!vram_fd.valid() || vram_bytes == 0) {
    return absl::DataLossError(
        absl::StrCat(socket_path, ": device did not pass its VRAM memfd"));
  }
  void* p = mmap(nullptr, vram_bytes, PROT_READ, MAP_SHARED | MAP_POPULATE,
                 vram_fd.get(), 0);
  if (p == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("mmap of VRAM: ", std::strerror(errno)));
  }
  return std::unique_ptr<GuestClient>(
      new GuestClient(*std::move(conn), info.root().getName(), vram_bytes,
                      static_cast<const uint8_t*>(p)));
}

absl::Status GuestClient::WriteReg(uint16_t index, uint16_t value) {
  Request req;
  auto w = req.mutable_root().initWriteReg();
  w.setIndex(index);
  w.setValue(value);
  return conn_->Call(req).status();
}

absl::StatusOr<uint16_t> GuestClient::ReadReg(uint16_t index) {
  Request req;
  req.mutable_root().setReadReg(index);
  absl::StatusOr<uint64_t> v = ValueOf(conn_->Call(req));
  if (!v.ok()) return v.status();
  return static_cast<uint16_t>(*v);
}

absl::StatusOr<uint64_t> GuestClient::Submit(const Command& command) {
  absl::StatusOr<std::vector<uint64_t>> seqs =
      SubmitBatch(absl::MakeConstSpan(&command, 1));
  if (!seqs.ok()) return seqs.status();
  return seqs->front();
}

absl::StatusOr<std::vector<uint64_t>> GuestClient::SubmitBatch(
    absl::Span<const Command> commands) {
  Request req;
  auto list =
      req.mutable_root().initSubmit(static_cast<unsigned>(commands.size()));
  for (size_t i = 0; i < commands.size(); ++i) {
    internal::ToProto(commands[i], list[i]);
  }
  auto r = conn_->Call(req);
  if (!r.ok()) return r.status();
  if (r->root().which() != proto::Response::WORDS ||
      r->root().getWords().size() != commands.size()) {
    return absl::DataLossError("submit response without sequence numbers");
  }
  return internal::ToVector(r->root().getWords());
}

absl::StatusOr<uint64_t> GuestClient::Fence() {
  Request req;
  req.mutable_root().setFence();
  return ValueOf(conn_->Call(req));
}

absl::Status GuestClient::WaitFence(uint64_t value, absl::Duration timeout) {
  Request req;
  auto w = req.mutable_root().initWaitFence();
  w.setValue(value);
  if (timeout != absl::InfiniteDuration()) {
    // 0 means "no limit" on the wire: round a tiny timeout up to 1 ms.
    w.setTimeoutMs(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
  }
  return conn_->Call(req).status();
}

absl::StatusOr<uint64_t> GuestClient::Checksum(uint64_t offset,
                                               uint64_t length) {
  absl::StatusOr<uint64_t> seq = Submit(Command::Checksum(offset, length));
  if (!seq.ok()) return seq.status();
  absl::StatusOr<uint64_t> fence = Fence();
  if (!fence.ok()) return fence.status();
  absl::Status s = WaitFence(*fence);
  if (!s.ok()) return s;
  return TakeChecksum(*seq);
}

absl::StatusOr<uint64_t> GuestClient::TakeChecksum(uint64_t seq) {
  Request req;
  req.mutable_root().setTakeChecksum(seq);
  return ValueOf(conn_->Call(req));
}

absl::StatusOr<EngineStatus> GuestClient::Status() {
  Request req;
  req.mutable_root().setEngineStatus();
  auto r = conn_->Call(req);
  if (!r.ok()) return r.status();
  if (r->root().which() != proto::Response::ENGINE_STATUS) {
    return absl::DataLossError("engine status response without a status");
  }
  return internal::FromProto(r->root().getEngineStatus());
}

absl::StatusOr<std::vector<uint8_t>> GuestClient::ReadVram(uint64_t offset,
                                                           uint64_t length) {
  if (offset > vram_bytes_ || length > vram_bytes_ - offset) {
    return absl::OutOfRangeError(
        absl::StrFormat("VRAM read of %u bytes at %u passes the end (%u bytes)",
                        length, offset, vram_bytes_));
  }
  std::vector<uint8_t> out;
  out.reserve(length);
  for (uint64_t done = 0; done < length;) {
    const uint64_t n =
        std::min<uint64_t>(internal::kMaxVramRead, length - done);
    Request req;
    auto range = req.mutable_root().initReadVram();
    range.setOffset(offset + done);
    range.setLength(n);
    auto r = conn_->Call(req);
    if (!r.ok()) return r.status();
    if (r->root().which() != proto::Response::DATA ||
        r->root().getData().size() != n) {
      return absl::DataLossError("VRAM read returned the wrong length");
    }
    out.insert(out.end(), r->root().getData().begin(),
               r->root().getData().end());
    done += n;
  }
  return out;
}

}  // namespace vgpu::agents::emulated
