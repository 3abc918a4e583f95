// Authentication between vgpud hosts and on the control socket
// (RELIABILITY.md scenario 10): a peer whose certificate comes from another
// CA, a peer answering under the wrong name, a plaintext client at the peer
// port, and a non-root user at the control socket are all refused, and
// nothing is transferred.
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "gtest/gtest.h"
#include "migrator/internal/rpc_link.h"
#include "migrator/internal/rpc_util.h"
#include "migrator/tls.h"
#include "migrator/schema/peer.capnp.h"
#include "tests/e2e/checks.h"
#include "tests/e2e/cluster.h"

namespace vgpu::e2e {
namespace {

struct Peers {
  std::unique_ptr<Cluster> c;
  std::string dev;
  uint64_t hash = 0;
};

Peers Make(ClusterOptions o) {
  Peers s;
  auto c = Cluster::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return s;
  s.c = std::move(*c);
  auto dev = s.c->StartDevice("vm1-gpu0", "16M");
  EXPECT_TRUE(dev.ok());
  s.dev = *dev;
  EXPECT_TRUE(FillRandom(s.dev, 16 << 20, 3).ok());
  EXPECT_TRUE(s.c->Register(0, "vm1", {s.dev}).ok());
  s.hash = *VramHash(s.dev);
  return s;
}

void ExpectRefusedUntouched(Peers& s, const JobView& job, int dest) {
  EXPECT_EQ(job.state, "failed");
  EXPECT_EQ(job.raw_bytes, 0u) << "state moved before authentication";
  EXPECT_TRUE(job.source_resumed);
  EXPECT_TRUE(DeviceRuns(s.dev));
  EXPECT_EQ(*VramHash(s.dev), s.hash);
  EXPECT_EQ(Cluster::CountProcesses(s.c->Dir() + "/" + s.c->Name(dest) + "/run/"),
            0);
}

TEST(Security, PeerFromAnotherCaIsRefused) {
  ClusterOptions o = Hosts(2);
  o.foreign_ca = {1};
  Peers s = Make(o);
  ASSERT_NE(s.c, nullptr);
  auto job = s.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_NE(job->error.find("TLS"), std::string::npos) << job->error;
  ExpectRefusedUntouched(s, *job, 1);
}

TEST(Security, PeerAnsweringUnderAnotherNameIsRefused) {
  Peers s = Make(Hosts(3));
  ASSERT_NE(s.c, nullptr);
  // host1 believes host2 lives where host3 answers.
  s.c->StopHost(0, SIGTERM);
  s.c->OverridePeer(0, 1, s.c->PeerAddress(2));
  ASSERT_TRUE(s.c->StartHost(0).ok());
  ASSERT_TRUE(s.c->Register(0, "vm1", {s.dev}).ok());
  auto job = s.c->MigrateAndWait(0, "vm1", 1);
  ASSERT_TRUE(job.ok());
  EXPECT_NE(job->error.find("TLS"), std::string::npos) << job->error;
  ExpectRefusedUntouched(s, *job, 2);
  auto list = s.c->List(2);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST(Security, PlaintextClientAtThePeerPortIsRefused) {
  Peers s = Make(Hosts(2));
  ASSERT_NE(s.c, nullptr);
  std::string addr = s.c->PeerAddress(1);
  std::string host = addr.substr(0, addr.rfind(':'));
  uint16_t port = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
  auto rpc = migrator::internal::RpcClient::ConnectTcp(
      host, port, nullptr, "host2", absl::Seconds(5), absl::Seconds(5));
  ASSERT_TRUE(rpc.ok()) << rpc.status();  // TCP itself connects
  auto peer = (*rpc)->Bootstrap<schema::Peer>();
  auto req = peer.helloRequest();
  req.setHost("intruder");
  req.setProtocol(schema::PEER_PROTOCOL);
  auto reply = (*rpc)->Wait(req.send(), absl::Seconds(15), "hello");
  EXPECT_FALSE(reply.ok()) << "a plaintext peer got an answer";
}

TEST(Security, PeerClaimingAnotherHostsNameIsRefused) {
  Peers s = Make(Hosts(3));
  ASSERT_NE(s.c, nullptr);
  // host3's own, valid certificate, but it says it is host1.
  std::string addr = s.c->PeerAddress(1);
  std::string host = addr.substr(0, addr.rfind(':'));
  uint16_t port = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
  const std::string certs = s.c->Dir() + "/certs";
  migrator::TlsFiles files{certs + "/ca.pem", certs + "/host3.pem",
                           certs + "/host3.key"};
  auto rpc = migrator::internal::RpcClient::ConnectTcp(
      host, port, &files, "host2", absl::Seconds(5), absl::Seconds(5));
  ASSERT_TRUE(rpc.ok()) << rpc.status();  // the TLS handshake itself passes
  auto peer = (*rpc)->Bootstrap<schema::Peer>();
  {
    auto req = peer.helloRequest();
    req.setHost("host1");
    req.setProtocol(schema::PEER_PROTOCOL);
    auto reply = (*rpc)->Wait(req.send(), absl::Seconds(10), "hello");
    ASSERT_TRUE(reply.ok()) << reply.status();
    absl::Status e = migrator::internal::GetError(reply->getError());
    EXPECT_EQ(e.code(), absl::StatusCode::kUnauthenticated) << e;
    EXPECT_NE(e.message().find("does not name host 'host1'"), std::string::npos)
        << e;
  }
  {
    // Nothing else is served on that link.
    auto req = peer.prepareRequest();
    req.setJob("forged");
    req.initVm().setName("vm9");
    auto reply = (*rpc)->Wait(req.send(), absl::Seconds(10), "prepare");
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(migrator::internal::GetError(reply->getError()).code(),
              absl::StatusCode::kUnauthenticated);
  }
  {
    // Under its own name it is welcome.
    auto req = peer.helloRequest();
    req.setHost("host3");
    req.setProtocol(schema::PEER_PROTOCOL);
    auto reply = (*rpc)->Wait(req.send(), absl::Seconds(10), "hello");
    ASSERT_TRUE(reply.ok());
    EXPECT_TRUE(migrator::internal::GetError(reply->getError()).ok());
  }
  peer = nullptr;
  rpc->reset();  // one event loop per thread: close this link first
  auto list = s.c->List(1);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty()) << "a forged prepare reserved a VM";
}

TEST(Security, ControlSocketRefusesNonRoot) {
  if (geteuid() != 0) GTEST_FAIL() << "needs root to drop to another user";
  Peers s = Make(Hosts(1));
  ASSERT_NE(s.c, nullptr);
  const std::string path = s.c->Control(0);
  pid_t pid = fork();
  if (pid == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      _exit(errno == EACCES ? 0 : 3);  // refused by the socket's mode
    }
    _exit(4);  // connected: not refused
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a non-root user reached the control socket";
  // Root still gets in.
  EXPECT_TRUE(s.c->List(0).ok());
}

}  // namespace
}  // namespace vgpu::e2e
