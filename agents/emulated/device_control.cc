// DeviceControl over the vgpu-emu-device socket (protocol in
// docs/formats/emulated-device.md). VRAM is the device's memfd, which the
// device hands over read-only at hello and read-write only on request while
// it is a fresh, quiesced --incoming device.
#include "agents/emulated/device_control.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agents/emulated/internal/wire.h"

namespace vgpu::agents::emulated {
namespace {

using internal::Connection;
using internal::UniqueFd;
using Request = codec::Message<proto::Request>;

class SocketDeviceControl : public DeviceControl {
 public:
  SocketDeviceControl(std::unique_ptr<Connection> conn, uint64_t vram_bytes,
                      uint8_t* ro_map)
      : conn_(std::move(conn)), vram_bytes_(vram_bytes), ro_map_(ro_map) {}

  ~SocketDeviceControl() override {
    munmap(ro_map_, vram_bytes_);
    if (rw_map_ != nullptr) munmap(rw_map_, vram_bytes_);
  }

  absl::StatusOr<DeviceInfo> Info() override {
    Request req;
    req.mutable_root().setInfo();
    auto r = conn_->Call(req);
    if (!r.ok()) return r.status();
    if (r->root().which() != proto::Response::INFO) {
      return absl::DataLossError("info response without info");
    }
    auto in = r->root().getInfo();
    DeviceInfo info;
    info.name = in.getName();
    info.vram_bytes = in.getVramBytes();
    info.page_bytes = in.getPageBytes();
    info.dispi_id = in.getDispiId();
    info.abi_major = in.getAbiMajor();
    info.abi_minor = in.getAbiMinor();
    info.quiesced = in.getQuiesced();
    info.tracking = in.getTracking();
    info.queued_commands = in.getQueuedCommands();
    info.queued_command_bytes = in.getQueuedCommandBytes();
    return info;
  }

  absl::Span<const uint8_t> vram() const override {
    return absl::MakeConstSpan(ro_map_, vram_bytes_);
  }

  absl::StatusOr<absl::Span<uint8_t>> mutable_vram() override {
    // Asked every time: the device is the one that knows whether it has run.
    Request req;
    req.mutable_root().setMapVramWritable();
    UniqueFd fd;
    auto r = conn_->Call(req, &fd);
    if (!r.ok()) return r.status();
    if (rw_map_ == nullptr) {
      if (!fd.valid()) {
        return absl::DataLossError("device granted VRAM without a descriptor");
      }
      void* p = mmap(nullptr, vram_bytes_, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, fd.get(), 0);
      if (p == MAP_FAILED) {
        return absl::InternalError(
            absl::StrCat("mmap of writable VRAM: ", std::strerror(errno)));
      }
      rw_map_ = static_cast<uint8_t*>(p);
    }
    return absl::MakeSpan(rw_map_, vram_bytes_);
  }

  absl::Status StartDirtyTracking() override {
    return Simple([](proto::Request::Builder b) { b.setStartDirtyTracking(); });
  }
  absl::Status StopDirtyTracking() override {
    return Simple([](proto::Request::Builder b) { b.setStopDirtyTracking(); });
  }

  absl::StatusOr<std::vector<uint64_t>> FetchDirtyBitmap() override {
    Request req;
    req.mutable_root().setFetchDirtyBitmap();
    auto r = conn_->Call(req);
    if (!r.ok()) return r.status();
    const uint64_t words = (vram_bytes_ / kPageBytes + 63) / 64;
    if (r->root().which() != proto::Response::WORDS ||
        r->root().getWords().size() != words) {
      return absl::DataLossError("dirty bitmap of the wrong size");
    }
    return internal::ToVector(r->root().getWords());
  }

  absl::Status Quiesce() override {
    return Simple([](proto::Request::Builder b) { b.setQuiesce(); });
  }

  absl::Status Resume() override {
    absl::Status s = Simple([](proto::Request::Builder b) { b.setResume(); });
    // The device now runs and owns VRAM again; it refuses mutable_vram()
    // from here on. The old writable mapping is not write-protected here:
    // walking the page tables of a written VRAM costs milliseconds of the
    // guest's downtime (11 ms for 256 MiB). It goes with this object.
    return s;
  }

  absl::StatusOr<std::vector<uint8_t>> SaveRegisters() override {
    return Blob([](proto::Request::Builder b) { b.setSaveRegisters(); });
  }
  absl::StatusOr<std::vector<uint8_t>> SaveRing() override {
    return Blob([](proto::Request::Builder b) { b.setSaveRing(); });
  }

  absl::Status LoadRegisters(absl::Span<const uint8_t> blob) override {
    return Simple([blob](proto::Request::Builder b) {
      b.setLoadRegisters(kj::arrayPtr(blob.data(), blob.size()));
    });
  }
  absl::Status LoadRing(absl::Span<const uint8_t> blob) override {
    return Simple([blob](proto::Request::Builder b) {
      b.setLoadRing(kj::arrayPtr(blob.data(), blob.size()));
    });
  }

 private:
  template <typename F>
  absl::Status Simple(F fill) {
    Request req;
    fill(req.mutable_root());
    return conn_->Call(req).status();
  }

  template <typename F>
  absl::StatusOr<std::vector<uint8_t>> Blob(F fill) {
    Request req;
    fill(req.mutable_root());
    auto r = conn_->Call(req);
    if (!r.ok()) return r.status();
    if (r->root().which() != proto::Response::DATA) {
      return absl::DataLossError("state response without a blob");
    }
    capnp::Data::Reader d = r->root().getData();
    return std::vector<uint8_t>(d.begin(), d.end());
  }

  std::unique_ptr<Connection> conn_;
  const uint64_t vram_bytes_;
  uint8_t* const ro_map_;
  uint8_t* rw_map_ = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceControl>> DeviceControl::Connect(
    const std::string& socket_path) {
  codec::Message<proto::Info> info;
  UniqueFd vram_fd;
  auto conn = Connection::Open(socket_path, proto::Hello::Role::AGENT,
                               "device-control", &info, &vram_fd);
  if (!conn.ok()) return conn.status();
  if (!vram_fd.valid()) {
    return absl::DataLossError(
        absl::StrCat(socket_path, ": device did not pass its VRAM memfd"));
  }
  const uint64_t vram_bytes = info.root().getVramBytes();
  if (vram_bytes == 0 || vram_bytes % (64 * 1024) != 0) {
    return absl::DataLossError("device reports an impossible VRAM size");
  }
  if (info.root().getPageBytes() != kPageBytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        socket_path, ": device tracks dirty pages of ",
        info.root().getPageBytes(), " bytes; this agent expects ", kPageBytes));
  }
  // MAP_POPULATE: one batched fault-in instead of one fault per page on
  // first touch, which is what a pass over all pages would otherwise cost.
  void* p = mmap(nullptr, vram_bytes, PROT_READ, MAP_SHARED | MAP_POPULATE,
                 vram_fd.get(), 0);
  if (p == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("mmap of VRAM: ", std::strerror(errno)));
  }
  return std::unique_ptr<DeviceControl>(new SocketDeviceControl(
      *std::move(conn), vram_bytes, static_cast<uint8_t*>(p)));
}

}  // namespace vgpu::agents::emulated
