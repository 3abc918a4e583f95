#include "agents/emulated/internal/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agents/emulated/internal/proto_convert.h"
#include "agents/emulated/internal/state_blob.h"

namespace vgpu::agents::emulated::internal {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

void SetStatus(proto::Response::Builder out, const absl::Status& s) {
  out.setCode(static_cast<uint32_t>(s.code()));
  out.setMessage(std::string(s.message()));
}

const char* RequestName(proto::Request::Which which) {
  switch (which) {
    case proto::Request::HELLO:
      return "hello";
    case proto::Request::WRITE_REG:
      return "writeReg";
    case proto::Request::READ_REG:
      return "readReg";
    case proto::Request::SUBMIT:
      return "submit";
    case proto::Request::FENCE:
      return "fence";
    case proto::Request::WAIT_FENCE:
      return "waitFence";
    case proto::Request::TAKE_CHECKSUM:
      return "takeChecksum";
    case proto::Request::ENGINE_STATUS:
      return "engineStatus";
    case proto::Request::READ_VRAM:
      return "readVram";
    case proto::Request::INFO:
      return "info";
    case proto::Request::START_DIRTY_TRACKING:
      return "startDirtyTracking";
    case proto::Request::STOP_DIRTY_TRACKING:
      return "stopDirtyTracking";
    case proto::Request::FETCH_DIRTY_BITMAP:
      return "fetchDirtyBitmap";
    case proto::Request::QUIESCE:
      return "quiesce";
    case proto::Request::RESUME:
      return "resume";
    case proto::Request::SAVE_REGISTERS:
      return "saveRegisters";
    case proto::Request::SAVE_RING:
      return "saveRing";
    case proto::Request::LOAD_REGISTERS:
      return "loadRegisters";
    case proto::Request::LOAD_RING:
      return "loadRing";
    case proto::Request::MAP_VRAM_WRITABLE:
      return "mapVramWritable";
  }
  return "unknown";
}

// Client names come from the peer: keep log lines one line and short.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char ch : s.substr(0, 64)) {
    out.push_back(ch >= 0x20 && ch < 0x7f ? ch : '?');
  }
  return out;
}

void SetData(proto::Response::Builder out, const std::vector<uint8_t>& bytes) {
  out.setData(kj::arrayPtr(bytes.data(), bytes.size()));
}

}  // namespace

Server::Server(EmuGpu* gpu, std::string socket_path, Log log)
    : gpu_(gpu), socket_path_(std::move(socket_path)), log_(std::move(log)) {}

Server::~Server() {
  for (auto& c : clients_) {
    shutdown(c->fd.get(), SHUT_RDWR);
  }
  for (auto& c : clients_) {
    if (c->thread.joinable()) c->thread.join();
  }
}

absl::Status Server::Listen() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path_.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path too long: ", socket_path_));
  }
  std::memcpy(addr.sun_path, socket_path_.c_str(), socket_path_.size() + 1);
  struct stat st;
  if (lstat(socket_path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(socket_path_, " exists and is not a socket"));
    }
    unlink(socket_path_.c_str());  // a stale socket of an earlier run
  }
  listen_fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_fd_.valid()) return Errno("socket");
  // The socket grants full control of the device: owner only, from the
  // moment it exists (umask), not after a window (chmod alone).
  const mode_t old_mask = umask(0177);
  const int rc =
      bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old_mask);
  if (rc != 0) return Errno(absl::StrCat("bind ", socket_path_));
  if (chmod(socket_path_.c_str(), 0600) != 0) return Errno("chmod");
  if (listen(listen_fd_.get(), 16) != 0) return Errno("listen");
  return absl::OkStatus();
}

absl::Status Server::Serve(int stop_fd) {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
    const int n = poll(fds, 2, 1000);
    if (n < 0 && errno != EINTR) return Errno("poll");
    if (n > 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) break;
    if (n > 0 && (fds[0].revents & POLLIN)) {
      UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (fd.valid()) {
        auto client = std::make_unique<Client>();
        client->fd = std::move(fd);
        client->id = next_client_id_++;
        Client* raw = client.get();
        clients_.push_back(std::move(client));
        raw->thread = std::thread([this, raw] { ServeClient(raw); });
      } else if (errno != EINTR && errno != ECONNABORTED) {
        log_(absl::StrCat("accept: ", std::strerror(errno)));
      }
    }
    ReapFinished();
  }
  // Stop taking clients, fail every blocked call, then wake the readers.
  unlink(socket_path_.c_str());
  listen_fd_ = UniqueFd();
  gpu_->Shutdown();
  for (auto& c : clients_) shutdown(c->fd.get(), SHUT_RDWR);
  for (auto& c : clients_) {
    if (c->thread.joinable()) c->thread.join();
  }
  clients_.clear();
  return absl::OkStatus();
}

void Server::ReapFinished() {
  for (auto it = clients_.begin(); it != clients_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      it = clients_.erase(it);
    } else {
      ++it;
    }
  }
}

void Server::FillInfo(proto::Info::Builder info) {
  info.setName(gpu_->name());
  info.setVramBytes(gpu_->vram_bytes());
  info.setPageBytes(kDirtyPageBytes);
  info.setDispiId(gpu_->ReadReg(dispi::kIndexId));
  info.setAbiMajor(kBlobMajor);
  info.setAbiMinor(kBlobMinor);
  info.setQuiesced(gpu_->quiesced());
  info.setTracking(gpu_->tracking());
  info.setIncomingFresh(gpu_->incoming_fresh());
  info.setRingCapacity(gpu_->ring_capacity());
  auto [bytes, count] = gpu_->QueuedCommandBytes();
  info.setQueuedCommands(count);
  info.setQueuedCommandBytes(bytes);
}

void Server::ServeClient(Client* client) {
  const int fd = client->fd.get();
  const uint64_t id = client->id;
  auto finish = [client] { client->done.store(true); };

  absl::StatusOr<Frame> frame = RecvFrame(fd, kMaxHelloFrame);
  if (!frame.ok()) {
    if (!IsConnectionClosed(frame.status())) {
      log_(absl::StrFormat("client #%u: no hello: %s", id,
                           frame.status().ToString()));
    }
    return finish();
  }
  codec::Message<proto::Response> response;
  std::string who = absl::StrFormat("client #%u", id);
  auto refuse = [&](const absl::Status& s) {
    log_(absl::StrCat(who, " refused: ", s.ToString()));
    SetStatus(response.mutable_root(), s);
    (void)SendFrame(fd, codec::EncodeMessageBytes(response.builder()));
    finish();
  };
  auto hello_msg = codec::DecodeMessage<proto::Request>(
      frame->bytes, WireLimits(kMaxHelloFrame));
  if (!hello_msg.ok()) {
    return refuse(absl::DataLossError(
        absl::StrCat("hello: ", hello_msg.status().message())));
  }
  if (hello_msg->root().which() != proto::Request::HELLO) {
    return refuse(absl::InvalidArgumentError(
        "the first request must be hello (say guest or agent)"));
  }
  proto::Hello::Reader hello = hello_msg->root().getHello();
  if (hello.getProtocolMajor() != kProtocolMajor) {
    return refuse(absl::UnimplementedError(
        absl::StrFormat("client speaks protocol %u, device speaks %u",
                        hello.getProtocolMajor(), kProtocolMajor)));
  }
  Role role;
  switch (hello.getRole()) {
    case proto::Hello::Role::GUEST:
      role = Role::kGuest;
      break;
    case proto::Hello::Role::AGENT:
      role = Role::kAgent;
      break;
    default:
      return refuse(absl::InvalidArgumentError("unknown client role"));
  }
  const char* role_name = role == Role::kAgent ? "agent" : "guest";
  who = absl::StrFormat("%s #%u (%s)", role_name, id,
                        Printable(hello.getClient().cStr()));

  if (role == Role::kAgent) {
    bool refused = false;
    {
      absl::MutexLock lock(&mu_);
      if (agent_attached_) {
        refused = true;
      } else {
        agent_attached_ = true;
      }
    }
    if (refused) {
      return refuse(absl::FailedPreconditionError(
          "another agent is attached to this device"));
    }
  }
  // Every client gets VRAM read-only: a descriptor opened O_RDONLY cannot
  // be mapped (or mprotect'ed) writable, so all writes still go through the
  // engine and dirty tracking stays exact.
  const std::string self = absl::StrCat("/proc/self/fd/", gpu_->vram_fd());
  UniqueFd vram_fd(open(self.c_str(), O_RDONLY | O_CLOEXEC));
  if (!vram_fd.valid()) {
    if (role == Role::kAgent) {
      absl::MutexLock lock(&mu_);
      agent_attached_ = false;
    }
    return refuse(Errno("reopening the VRAM memfd read-only"));
  }
  FillInfo(response.mutable_root().initInfo());
  absl::Status sent = SendFrame(
      fd, codec::EncodeMessageBytes(response.builder()), vram_fd.get());
  vram_fd = UniqueFd();
  log_(absl::StrCat(who, " connected"));

  const uint32_t max_request =
      role == Role::kAgent ? kMaxAgentRequestFrame : kMaxGuestRequestFrame;
  std::string end = "disconnected";
  while (sent.ok()) {
    frame = RecvFrame(fd, max_request);
    if (!frame.ok()) {
      if (!IsConnectionClosed(frame.status())) {
        end = absl::StrCat("dropped: ", frame.status().ToString());
      }
      break;
    }
    codec::Message<proto::Response> reply;
    UniqueFd pass_fd;
    auto request = codec::DecodeMessage<proto::Request>(
        frame->bytes, WireLimits(max_request));
    const char* name = "undecodable request";
    if (!request.ok()) {
      SetStatus(reply.mutable_root(), request.status());
    } else {
      name = RequestName(request->root().which());
      Handle(role, request->root(), reply.mutable_root(), &pass_fd);
    }
    const absl::Status result = StatusFromResponse(reply.root());
    if (!result.ok()) {
      log_(absl::StrFormat("%s: %s: %s", who, name, result.ToString()));
    }
    sent = SendFrame(fd, codec::EncodeMessageBytes(reply.builder()),
                     pass_fd.get());
    if (!sent.ok()) end = absl::StrCat("dropped: ", sent.ToString());
  }
  if (role == Role::kAgent) {
    absl::MutexLock lock(&mu_);
    agent_attached_ = false;
  }
  log_(absl::StrCat(who, " ", end));
  finish();
}

void Server::Handle(Role role, proto::Request::Reader request,
                    proto::Response::Builder out, UniqueFd* pass_fd) {
  switch (request.which()) {
    // Either role may look.
    case proto::Request::INFO:
      FillInfo(out.initInfo());
      return;
    case proto::Request::ENGINE_STATUS:
      ToProto(gpu_->Status(), out.initEngineStatus());
      return;
    case proto::Request::READ_REG:
      out.setValue(gpu_->ReadReg(request.getReadReg()));
      return;
    case proto::Request::HELLO:
      SetStatus(out, absl::FailedPreconditionError("hello was already said"));
      return;
    default:
      break;
  }
  if (role == Role::kGuest) return HandleGuest(request, out);
  return HandleAgent(request, out, pass_fd);
}

void Server::HandleGuest(proto::Request::Reader request,
                         proto::Response::Builder out) {
  switch (request.which()) {
    case proto::Request::WRITE_REG: {
      auto w = request.getWriteReg();
      SetStatus(out, gpu_->WriteReg(w.getIndex(), w.getValue()));
      return;
    }
    case proto::Request::SUBMIT: {
      // All or nothing as far as validation goes: a batch with a malformed
      // command queues none of it.
      std::vector<Command> commands;
      for (proto::Command::Reader c : request.getSubmit()) {
        absl::StatusOr<Command> command = FromProto(c);
        if (!command.ok()) return SetStatus(out, command.status());
        commands.push_back(*std::move(command));
      }
      std::vector<uint64_t> seqs;
      for (Command& c : commands) {
        absl::StatusOr<uint64_t> seq = gpu_->Submit(std::move(c));
        if (!seq.ok()) return SetStatus(out, seq.status());
        seqs.push_back(*seq);
      }
      auto words = out.initWords(static_cast<unsigned>(seqs.size()));
      for (size_t i = 0; i < seqs.size(); ++i) words.set(i, seqs[i]);
      return;
    }
    case proto::Request::FENCE: {
      absl::StatusOr<uint64_t> v = gpu_->SubmitFence();
      if (!v.ok()) return SetStatus(out, v.status());
      out.setValue(*v);
      return;
    }
    case proto::Request::WAIT_FENCE: {
      auto w = request.getWaitFence();
      const absl::Duration timeout = w.getTimeoutMs() == 0
                                         ? absl::InfiniteDuration()
                                         : absl::Milliseconds(w.getTimeoutMs());
      SetStatus(out, gpu_->WaitFence(w.getValue(), timeout));
      return;
    }
    case proto::Request::TAKE_CHECKSUM: {
      absl::StatusOr<uint64_t> v =
          gpu_->TakeChecksum(request.getTakeChecksum());
      if (!v.ok()) return SetStatus(out, v.status());
      out.setValue(*v);
      return;
    }
    case proto::Request::READ_VRAM: {
      auto r = request.getReadVram();
      if (r.getLength() > kMaxVramRead) {
        return SetStatus(out, absl::InvalidArgumentError(absl::StrFormat(
                                  "VRAM read of %u bytes exceeds the %u-byte "
                                  "limit of one request",
                                  r.getLength(), kMaxVramRead)));
      }
      absl::StatusOr<std::vector<uint8_t>> bytes =
          gpu_->ReadVram(r.getOffset(), r.getLength());
      if (!bytes.ok()) return SetStatus(out, bytes.status());
      SetData(out, *bytes);
      return;
    }
    default:
      SetStatus(out,
                absl::PermissionDeniedError(absl::StrCat(
                    RequestName(request.which()), " is not a guest request")));
      return;
  }
}

void Server::HandleAgent(proto::Request::Reader request,
                         proto::Response::Builder out, UniqueFd* pass_fd) {
  switch (request.which()) {
    case proto::Request::START_DIRTY_TRACKING:
      gpu_->StartDirtyTracking();
      return;
    case proto::Request::STOP_DIRTY_TRACKING:
      gpu_->StopDirtyTracking();
      return;
    case proto::Request::FETCH_DIRTY_BITMAP: {
      absl::StatusOr<std::vector<uint64_t>> bitmap = gpu_->FetchDirtyBitmap();
      if (!bitmap.ok()) return SetStatus(out, bitmap.status());
      auto words = out.initWords(static_cast<unsigned>(bitmap->size()));
      for (size_t i = 0; i < bitmap->size(); ++i) words.set(i, (*bitmap)[i]);
      return;
    }
    case proto::Request::QUIESCE:
      gpu_->Quiesce();
      return;
    case proto::Request::RESUME:
      gpu_->Resume();
      return;
    case proto::Request::SAVE_REGISTERS: {
      absl::StatusOr<std::vector<uint8_t>> blob = gpu_->SaveRegisters();
      if (!blob.ok()) return SetStatus(out, blob.status());
      SetData(out, *blob);
      return;
    }
    case proto::Request::SAVE_RING: {
      absl::StatusOr<std::vector<uint8_t>> blob = gpu_->SaveRing();
      if (!blob.ok()) return SetStatus(out, blob.status());
      SetData(out, *blob);
      return;
    }
    case proto::Request::LOAD_REGISTERS: {
      capnp::Data::Reader d = request.getLoadRegisters();
      SetStatus(out,
                gpu_->LoadRegisters(absl::MakeConstSpan(d.begin(), d.size())));
      return;
    }
    case proto::Request::LOAD_RING: {
      capnp::Data::Reader d = request.getLoadRing();
      SetStatus(out, gpu_->LoadRing(absl::MakeConstSpan(d.begin(), d.size())));
      return;
    }
    case proto::Request::MAP_VRAM_WRITABLE: {
      absl::Status s = gpu_->CheckVramWritable();
      if (!s.ok()) return SetStatus(out, s);
      const std::string self = absl::StrCat("/proc/self/fd/", gpu_->vram_fd());
      UniqueFd fd(open(self.c_str(), O_RDWR | O_CLOEXEC));
      if (!fd.valid()) return SetStatus(out, Errno("reopening the VRAM memfd"));
      *pass_fd = std::move(fd);
      return;
    }
    default:
      SetStatus(out,
                absl::PermissionDeniedError(absl::StrCat(
                    RequestName(request.which()), " is not an agent request")));
      return;
  }
}

}  // namespace vgpu::agents::emulated::internal
