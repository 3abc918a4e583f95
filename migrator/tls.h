// TLS between vgpud peers: a cluster CA signs one certificate per host
// (its SAN carries the host name), both sides present their certificate
// and verify the other's against the CA only (never the system trust
// store). MakeDemoCerts writes such a CA and host certificates for demos
// and tests; production clusters bring their own PEM files.
// Thread-compatible: build one TlsContext per thread that uses it.
#ifndef VGPU_MIGRATOR_TLS_H_
#define VGPU_MIGRATOR_TLS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kj/compat/tls.h"

namespace vgpu::migrator {

// Writes, into `dir` (created 0700 if missing): ca.pem and ca.key (the CA,
// self-signed, ECDSA P-256, 10 years), and for each host H: H.pem (signed
// by the CA, SAN DNS:H, plus IP SANs from `ip_sans` when given,
// clientAuth+serverAuth) and H.key (mode 0600). Reuses an existing
// ca.pem/ca.key pair in `dir`, so hosts can be added later. Existing host
// files are overwritten.
absl::Status MakeDemoCerts(const std::string& dir,
                           const std::vector<std::string>& hosts,
                           const std::vector<std::string>& ip_sans = {});

// Loaded TLS material for one host.
struct TlsFiles {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

// Owns a kj::TlsContext and the certificate/key objects it points into.
class PeerTls {
 public:
  // Loads and checks the files: each missing or unparsable file is
  // INVALID_ARGUMENT naming the file; a certificate that does not chain to
  // the CA, or a key that does not match the certificate, is refused too.
  // The context requires and verifies client certificates (mutual TLS),
  // trusts only the CA, and uses TLS 1.2 or later.
  static absl::StatusOr<std::unique_ptr<PeerTls>> Load(const TlsFiles& files);

  kj::TlsContext& context() { return *context_; }
  // The host name(s) in this host's own certificate's SANs.
  const std::vector<std::string>& names() const { return names_; }

  ~PeerTls();

 private:
  PeerTls() = default;
  // context_ was built from pointers into ca_ and *keypair_; it is declared
  // last so it is destroyed first.
  std::vector<kj::TlsCertificate> ca_;
  kj::Own<kj::TlsKeypair> keypair_;
  kj::Own<kj::TlsContext> context_;
  std::vector<std::string> names_;
};

}  // namespace vgpu::migrator

#endif  // VGPU_MIGRATOR_TLS_H_
