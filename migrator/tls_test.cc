// Tests for migrator/tls: demo certificate minting, PeerTls::Load's checks,
// and real mutual-TLS handshakes over loopback, most of them ones that must
// fail before any application byte crosses. Every exchange runs under a
// 5 s kj timer so a broken handshake fails the test instead of hanging it.
#include "migrator/tls.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "gtest/gtest.h"
#include "kj/async-io.h"
#include "kj/compat/tls.h"
#include "kj/timer.h"

namespace vgpu::migrator {
namespace {

constexpr char kPing[] = "ping from host1";
constexpr char kPong[] = "pong from host2";

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

TlsFiles FilesFor(const std::string& dir, const std::string& host) {
  return {dir + "/ca.pem", dir + "/" + host + ".pem",
          dir + "/" + host + ".key"};
}

std::unique_ptr<PeerTls> LoadOrDie(const TlsFiles& files) {
  absl::StatusOr<std::unique_ptr<PeerTls>> tls = PeerTls::Load(files);
  EXPECT_TRUE(tls.ok()) << tls.status();
  return tls.ok() ? *std::move(tls) : nullptr;
}

// A client context PeerTls::Load would refuse to build: it trusts `ca_pem`
// but presents `cert_pem`/`key_pem` (from any CA), or no certificate when
// those are empty.
struct RawClient {
  kj::TlsCertificate ca;
  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Own<kj::TlsContext> context;

  RawClient(const std::string& ca_pem, const std::string& cert_pem,
            const std::string& key_pem)
      : ca(kj::StringPtr(ca_pem.c_str())) {
    kj::TlsContext::Options options;
    options.useSystemTrustStore = false;
    options.trustedCertificates = kj::arrayPtr(&ca, 1);
    if (!cert_pem.empty()) {
      keypair =
          kj::TlsKeypair{kj::TlsPrivateKey(kj::StringPtr(key_pem.c_str())),
                         kj::TlsCertificate(kj::StringPtr(cert_pem.c_str()))};
      KJ_IF_MAYBE (k, keypair) {
        options.defaultKeypair = *k;
      }
    }
    context = kj::heap<kj::TlsContext>(kj::mv(options));
  }
};

// What happened on each side of one loopback connection.
struct Outcome {
  bool timed_out = false;
  bool server_handshake_ok = false;
  bool client_handshake_ok = false;
  std::string server_error;
  std::string client_error;
  std::string server_got;  // Application bytes the server read.
  std::string client_got;  // Bytes the client read (app data, or raw
                           // bytes when the client speaks plaintext).
};

// Accepts one connection with `server`; the client wraps with `client`
// expecting `expected_host` (or, when `client` is null, stays plaintext),
// writes kPing and reads; the server reads and answers kPong.
Outcome Exchange(kj::TlsContext& server, kj::TlsContext* client,
                 kj::StringPtr expected_host) {
  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::Network& network = io.provider->getNetwork();
  kj::Own<kj::ConnectionReceiver> listener =
      network.parseAddress("127.0.0.1", 0).wait(io.waitScope)->listen();
  kj::Own<kj::NetworkAddress> address =
      network.parseAddress("127.0.0.1", listener->getPort()).wait(io.waitScope);

  // State the promises below point into; declared first so it outlives them.
  Outcome out;
  kj::Own<kj::AsyncIoStream> server_stream;
  kj::Own<kj::AsyncIoStream> client_stream;
  char server_buf[64];
  char client_buf[64];

  kj::Promise<void> server_side =
      listener->accept()
          .then([&](kj::Own<kj::AsyncIoStream> raw) {
            return server.wrapServer(kj::mv(raw));
          })
          .then([&](kj::Own<kj::AsyncIoStream> tls) {
            out.server_handshake_ok = true;
            server_stream = kj::mv(tls);
            return server_stream->tryRead(server_buf, strlen(kPing),
                                          sizeof(server_buf));
          })
          .then([&](size_t n) {
            out.server_got.assign(server_buf, n);
            return server_stream->write(kPong, strlen(kPong));
          })
          .catch_([&](kj::Exception&& e) {
            out.server_error = e.getDescription().cStr();
            server_stream = nullptr;
          });

  kj::Promise<void> client_side =
      address->connect()
          .then([&](kj::Own<kj::AsyncIoStream> raw)
                    -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
            if (client == nullptr) return kj::mv(raw);
            return client->wrapClient(kj::mv(raw), expected_host);
          })
          .then([&](kj::Own<kj::AsyncIoStream> stream) {
            out.client_handshake_ok = client != nullptr;
            client_stream = kj::mv(stream);
            return client_stream->write(kPing, strlen(kPing));
          })
          .then([&]() {
            return client_stream->tryRead(client_buf, 1, sizeof(client_buf));
          })
          .then([&](size_t n) { out.client_got.assign(client_buf, n); })
          .catch_([&](kj::Exception&& e) {
            out.client_error = e.getDescription().cStr();
            client_stream = nullptr;
          });

  auto both = kj::heapArrayBuilder<kj::Promise<void>>(2);
  both.add(kj::mv(server_side));
  both.add(kj::mv(client_side));
  out.timed_out =
      !io.provider->getTimer()
           .timeoutAfter(5 * kj::SECONDS, kj::joinPromises(both.finish()))
           .then([]() { return true; }, [](kj::Exception&&) { return false; })
           .wait(io.waitScope);
  return out;
}

// A handshake refused by either side: no application byte reached the
// server, and the client got nothing back that it could take for an answer.
void ExpectRefused(const Outcome& out) {
  EXPECT_FALSE(out.timed_out);
  EXPECT_FALSE(out.server_handshake_ok) << "server accepted the peer";
  EXPECT_FALSE(out.server_error.empty());
  EXPECT_EQ(out.server_got, "");
  EXPECT_EQ(out.client_got.find(kPong), std::string::npos);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/tls_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/certs";  // Not there yet: MakeDemoCerts creates it.
    other_dir_ = root_ + "/other";
    ASSERT_TRUE(MakeDemoCerts(dir_, {"host1", "host2"}).ok());
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  // host1 and host2 again, under a second, unrelated CA.
  void MakeOtherCa() {
    ASSERT_TRUE(MakeDemoCerts(other_dir_, {"host1", "host2"}).ok());
  }

  std::string root_;
  std::string dir_;
  std::string other_dir_;
};

TEST_F(TlsTest, MutualHandshakeCarriesBytesBothWays) {
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(dir_, "host2"));
  std::unique_ptr<PeerTls> client = LoadOrDie(FilesFor(dir_, "host1"));
  ASSERT_TRUE(server && client);
  EXPECT_EQ(server->names(), std::vector<std::string>{"host2"});
  EXPECT_EQ(client->names(), std::vector<std::string>{"host1"});

  Outcome out = Exchange(server->context(), &client->context(), "host2");
  EXPECT_FALSE(out.timed_out);
  EXPECT_TRUE(out.server_handshake_ok) << out.server_error;
  EXPECT_TRUE(out.client_handshake_ok) << out.client_error;
  EXPECT_EQ(out.server_got, kPing);
  EXPECT_EQ(out.client_got, kPong);
}

TEST_F(TlsTest, ClientRefusesWrongServerName) {
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(dir_, "host2"));
  std::unique_ptr<PeerTls> client = LoadOrDie(FilesFor(dir_, "host1"));
  ASSERT_TRUE(server && client);
  Outcome out = Exchange(server->context(), &client->context(), "host3");
  ExpectRefused(out);
  EXPECT_FALSE(out.client_handshake_ok);
}

TEST_F(TlsTest, ServerRefusesClientFromAnotherCa) {
  MakeOtherCa();
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(dir_, "host2"));
  ASSERT_TRUE(server);
  // Trusts the server's CA, so only the server's check can stop it.
  RawClient client(ReadText(dir_ + "/ca.pem"),
                   ReadText(other_dir_ + "/host1.pem"),
                   ReadText(other_dir_ + "/host1.key"));
  ExpectRefused(Exchange(server->context(), client.context.get(), "host2"));
}

TEST_F(TlsTest, ServerRefusesClientWithoutCertificate) {
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(dir_, "host2"));
  ASSERT_TRUE(server);
  RawClient client(ReadText(dir_ + "/ca.pem"), "", "");
  ExpectRefused(Exchange(server->context(), client.context.get(), "host2"));
}

TEST_F(TlsTest, ServerRefusesPlaintextClient) {
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(dir_, "host2"));
  ASSERT_TRUE(server);
  Outcome out = Exchange(server->context(), nullptr, "host2");
  ExpectRefused(out);
}

TEST_F(TlsTest, ClientRefusesServerFromAnotherCa) {
  MakeOtherCa();
  std::unique_ptr<PeerTls> server = LoadOrDie(FilesFor(other_dir_, "host2"));
  std::unique_ptr<PeerTls> client = LoadOrDie(FilesFor(dir_, "host1"));
  ASSERT_TRUE(server && client);
  Outcome out = Exchange(server->context(), &client->context(), "host2");
  ExpectRefused(out);
  EXPECT_FALSE(out.client_handshake_ok);
  EXPECT_FALSE(out.client_error.empty());
}

TEST_F(TlsTest, LoadRefusesMissingFile) {
  TlsFiles files = FilesFor(dir_, "host1");
  files.key_file = dir_ + "/nope.key";
  absl::StatusOr<std::unique_ptr<PeerTls>> tls = PeerTls::Load(files);
  EXPECT_EQ(tls.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tls.status().message().find("nope.key"), std::string::npos)
      << tls.status();
}

TEST_F(TlsTest, LoadRefusesGarbagePem) {
  const std::string garbage = root_ + "/garbage.pem";
  WriteText(garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n"
            "-----END CERTIFICATE-----\n");
  for (int which = 0; which < 3; ++which) {
    TlsFiles files = FilesFor(dir_, "host1");
    std::string* slot = which == 0   ? &files.ca_file
                        : which == 1 ? &files.cert_file
                                     : &files.key_file;
    *slot = garbage;
    absl::StatusOr<std::unique_ptr<PeerTls>> tls = PeerTls::Load(files);
    EXPECT_EQ(tls.status().code(), absl::StatusCode::kInvalidArgument) << which;
    EXPECT_NE(tls.status().message().find("garbage.pem"), std::string::npos)
        << tls.status();
  }
}

TEST_F(TlsTest, LoadRefusesKeyOfAnotherCertificate) {
  TlsFiles files = FilesFor(dir_, "host2");
  files.key_file = dir_ + "/host1.key";
  absl::StatusOr<std::unique_ptr<PeerTls>> tls = PeerTls::Load(files);
  EXPECT_EQ(tls.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tls.status().message().find("does not match"), std::string::npos)
      << tls.status();
}

TEST_F(TlsTest, LoadRefusesCertificateOfAnotherCa) {
  MakeOtherCa();
  TlsFiles files = FilesFor(other_dir_, "host1");
  files.ca_file = dir_ + "/ca.pem";
  absl::StatusOr<std::unique_ptr<PeerTls>> tls = PeerTls::Load(files);
  EXPECT_EQ(tls.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tls.status().message().find("does not verify"), std::string::npos)
      << tls.status();
}

TEST_F(TlsTest, MakeDemoCertsReusesCa) {
  const std::string ca_pem = ReadText(dir_ + "/ca.pem");
  const std::string ca_key = ReadText(dir_ + "/ca.key");
  ASSERT_TRUE(MakeDemoCerts(dir_, {"host3"}).ok());
  EXPECT_EQ(ReadText(dir_ + "/ca.pem"), ca_pem);
  EXPECT_EQ(ReadText(dir_ + "/ca.key"), ca_key);
  // The later host and the earlier ones chain to the same CA.
  std::unique_ptr<PeerTls> host3 = LoadOrDie(FilesFor(dir_, "host3"));
  std::unique_ptr<PeerTls> host1 = LoadOrDie(FilesFor(dir_, "host1"));
  ASSERT_TRUE(host3 && host1);
  Outcome out = Exchange(host3->context(), &host1->context(), "host3");
  EXPECT_TRUE(out.server_handshake_ok) << out.server_error;
  EXPECT_TRUE(out.client_handshake_ok) << out.client_error;
}

TEST_F(TlsTest, MakeDemoCertsRefusesHalfACa) {
  ASSERT_EQ(unlink((dir_ + "/ca.key").c_str()), 0);
  EXPECT_EQ(MakeDemoCerts(dir_, {"host3"}).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TlsTest, KeysAndDirectoryArePrivate) {
  EXPECT_EQ(ModeOf(dir_), 0700u);
  EXPECT_EQ(ModeOf(dir_ + "/ca.key"), 0600u);
  EXPECT_EQ(ModeOf(dir_ + "/host1.key"), 0600u);
  EXPECT_EQ(ModeOf(dir_ + "/host2.key"), 0600u);
  EXPECT_EQ(ModeOf(dir_ + "/host1.pem"), 0644u);
}

TEST_F(TlsTest, MakeDemoCertsAddsIpSans) {
  ASSERT_TRUE(MakeDemoCerts(dir_, {"host4"}, {"127.0.0.1", "::1"}).ok());
  std::unique_ptr<PeerTls> tls = LoadOrDie(FilesFor(dir_, "host4"));
  ASSERT_TRUE(tls);
  EXPECT_EQ(tls->names(), std::vector<std::string>{"host4"});

  const std::string pem = ReadText(dir_ + "/host4.pem");
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_ip_asc(cert, "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert, "::1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert, "10.0.0.1", 0), 0);
  X509_free(cert);
}

TEST_F(TlsTest, MakeDemoCertsRefusesBadNames) {
  for (const std::string& host :
       {std::string(""), std::string("a/b"), std::string("host_1"),
        std::string("ca"), std::string(".."), std::string(254, 'a')}) {
    EXPECT_EQ(MakeDemoCerts(dir_, {host}).code(),
              absl::StatusCode::kInvalidArgument)
        << host;
  }
  EXPECT_EQ(MakeDemoCerts(dir_, {"host5"}, {"1.2.3"}).code(),
            absl::StatusCode::kInvalidArgument);
  // A long but valid name has no CN (X.509 caps it at 64) yet verifies.
  const std::string long_name =
      std::string(63, 'a') + "." + std::string(63, 'b');
  ASSERT_TRUE(MakeDemoCerts(dir_, {long_name}).ok());
  std::unique_ptr<PeerTls> tls = LoadOrDie(FilesFor(dir_, long_name));
  ASSERT_TRUE(tls);
  EXPECT_EQ(tls->names(), std::vector<std::string>{long_name});
}

}  // namespace
}  // namespace vgpu::migrator
