// TLS material for vgpud peers: MakeDemoCerts mints a demo CA and host
// certificates with libcrypto; PeerTls::Load checks a host's PEM files with
// libcrypto (chain to the CA, key matches certificate) before handing them
// to kj::TlsContext, so a misconfigured host fails at startup with a
// message naming the file instead of at its first handshake.
// Threading: no shared state; each call works on its own objects. A
// PeerTls is thread-compatible (see tls.h).
#include "migrator/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace vgpu::migrator {
namespace {

constexpr char kCaCertName[] = "ca.pem";
constexpr char kCaKeyName[] = "ca.key";
constexpr char kCaCommonName[] = "vgpu-migrate demo CA";
constexpr long kCaValidDays = 3650;  // ~10 years.
// 825 days is the longest validity that browsers and most TLS stacks
// accept for a leaf certificate.
constexpr long kHostValidDays = 825;
// Backdating absorbs clock skew between the host that mints and the hosts
// that verify.
constexpr long kBackdateSeconds = 60 * 60;
// X.509 caps a CN at 64 characters (ub_common_name); longer host names are
// carried by the SAN alone, which is what verifiers check anyway.
constexpr size_t kMaxCommonName = 64;

// One deleter for every OpenSSL type used here, so ownership is RAII.
struct OpenSslFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
  void operator()(STACK_OF(X509) * p) const { sk_X509_pop_free(p, X509_free); }
};
template <typename T>
using SslPtr = std::unique_ptr<T, OpenSslFree>;

// Drains OpenSSL's thread-local error queue into one status, so a stale
// error never leaks into the next, unrelated failure.
absl::Status OpenSslError(absl::StatusCode code, absl::string_view what) {
  std::string detail;
  unsigned long err;
  while ((err = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&detail, detail.empty() ? "" : "; ", buf);
  }
  if (detail.empty()) detail = "unknown OpenSSL error";
  return absl::Status(code, absl::StrCat(what, ": ", detail));
}

absl::Status InternalSslError(absl::string_view what) {
  return OpenSslError(absl::StatusCode::kInternal, what);
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     absl::string_view role) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot read ", role, " file ", path, ": ", strerror(errno)));
  }
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int saved = errno;
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot read ", role, " file ", path, ": ", strerror(saved)));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return data;
}

// Writes `data` to `path` so that readers see either the old file or the
// complete new one: a temp file in the same directory, fsync, rename.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp.XXXXXX";
  // mkstemp creates the file 0600, so a key is never readable by others,
  // not even between creation and the fchmod below.
  int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create temp file for ",
                                            path, ": ", strerror(errno)));
  }
  auto fail = [&](absl::string_view step) {
    int saved = errno;
    close(fd);
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot ", step, " ", path, ": ", strerror(saved)));
  };
  if (fchmod(fd, mode) != 0) return fail("chmod");
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write");
    done += static_cast<size_t>(n);
  }
  // Without fsync a crash after the rename can leave an empty file.
  if (fsync(fd) != 0) return fail("fsync");
  if (close(fd) != 0) {
    int saved = errno;
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot close ", path, ": ", strerror(saved)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int saved = errno;
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename into ", path, ": ", strerror(saved)));
  }
  return absl::OkStatus();
}

SslPtr<BIO> MemBio(absl::string_view data) {
  return SslPtr<BIO>(
      BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

// Refuses to prompt: with a null callback OpenSSL would ask for a
// passphrase on the terminal when a key is encrypted.
int NoPassword(char*, int, int, void*) { return 0; }

// All certificates in a PEM text, in file order.
absl::StatusOr<std::vector<SslPtr<X509>>> ParseCerts(absl::string_view pem,
                                                     const std::string& path,
                                                     absl::string_view role) {
  ERR_clear_error();
  SslPtr<BIO> bio = MemBio(pem);
  std::vector<SslPtr<X509>> certs;
  while (X509* cert =
             PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr)) {
    certs.emplace_back(cert);
  }
  // Reading stops with "no start line" at the end of the text; that is the
  // normal end once something was read, and "not PEM" when nothing was.
  if (certs.empty()) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("no PEM certificate in ", role, " file ", path));
  }
  ERR_clear_error();
  return certs;
}

absl::StatusOr<SslPtr<EVP_PKEY>> ParseKey(absl::string_view pem,
                                          const std::string& path) {
  ERR_clear_error();
  SslPtr<BIO> bio = MemBio(pem);
  SslPtr<EVP_PKEY> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (key == nullptr) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("no unencrypted PEM private key in key file ", path));
  }
  return key;
}

absl::StatusOr<std::string> ToPem(X509* cert) {
  SslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return InternalSslError("cannot encode certificate");
  }
  char* data;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<std::string> ToPem(EVP_PKEY* key) {
  SslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  // Unencrypted PKCS#8: vgpud reads it unattended at startup; the file
  // mode is what protects it.
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                               nullptr) != 1) {
    return InternalSslError("cannot encode private key");
  }
  char* data;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::Status ValidateHost(const std::string& host) {
  if (host.empty() || host.size() > 253) {
    return absl::InvalidArgumentError(
        absl::StrCat("host name must be 1..253 characters: \"", host, "\""));
  }
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "host name may hold only [A-Za-z0-9.-]: \"", host, "\""));
    }
  }
  // Empty labels are no DNS name; they would also allow ".", "..", which
  // make odd file names.
  if (host.front() == '.' || host.back() == '.' ||
      host.find("..") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("host name has an empty label: \"", host, "\""));
  }
  // "ca" would overwrite the CA's own ca.pem and ca.key.
  if (host == "ca") {
    return absl::InvalidArgumentError(
        "host name \"ca\" is reserved for the CA files");
  }
  return absl::OkStatus();
}

absl::Status ValidateIp(const std::string& ip) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1 ||
      inet_pton(AF_INET6, ip.c_str(), buf) == 1) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("not an IPv4 or IPv6 address: \"", ip, "\""));
}

absl::StatusOr<SslPtr<EVP_PKEY>> NewKey() {
  SslPtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (key == nullptr) return InternalSslError("cannot generate P-256 key");
  return key;
}

// A fresh X.509 v3 certificate with a random 128-bit serial (unique across
// CAs without bookkeeping), the subject CN and public key set, and validity
// from an hour ago to `valid_days` from now.
absl::StatusOr<SslPtr<X509>> NewCert(absl::string_view common_name,
                                     EVP_PKEY* key, long valid_days) {
  SslPtr<X509> cert(X509_new());
  SslPtr<BIGNUM> serial(BN_new());
  if (cert == nullptr || serial == nullptr ||
      X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      BN_rand(serial.get(), 128, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) ==
          nullptr ||
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) ==
          nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), valid_days, 0,
                       nullptr) == nullptr ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return InternalSslError("cannot build certificate");
  }
  if (!common_name.empty()) {
    std::string cn(common_name);
    if (X509_NAME_add_entry_by_txt(
            X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
            reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
            0) != 1) {
      return InternalSslError("cannot set certificate subject");
    }
  }
  return cert;
}

// Adds one extension in OpenSSL's config syntax (as in openssl.cnf). `ctx`
// names issuer and subject, which the key identifier extensions need.
absl::Status AddExt(X509* cert, X509V3_CTX* ctx, int nid,
                    const std::string& value) {
  SslPtr<X509_EXTENSION> ext(
      X509V3_EXT_nconf_nid(nullptr, ctx, nid, value.c_str()));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return InternalSslError(
        absl::StrCat("cannot add extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::Status Sign(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, EVP_sha256()) <= 0) {
    return InternalSslError("cannot sign certificate");
  }
  return absl::OkStatus();
}

struct CertAndKey {
  SslPtr<X509> cert;
  SslPtr<EVP_PKEY> key;
};

absl::StatusOr<CertAndKey> NewCa() {
  absl::StatusOr<SslPtr<EVP_PKEY>> key = NewKey();
  if (!key.ok()) return key.status();
  absl::StatusOr<SslPtr<X509>> cert =
      NewCert(kCaCommonName, key->get(), kCaValidDays);
  if (!cert.ok()) return cert.status();
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(c)) != 1) {
    return InternalSslError("cannot set CA issuer");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, c, c, nullptr, nullptr, 0);
  for (auto [nid, value] : {
           std::pair{NID_basic_constraints, "critical,CA:TRUE"},
           std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
           std::pair{NID_subject_key_identifier, "hash"},
       }) {
    if (absl::Status s = AddExt(c, &ctx, nid, value); !s.ok()) return s;
  }
  if (absl::Status s = Sign(c, key->get()); !s.ok()) return s;
  return CertAndKey{*std::move(cert), *std::move(key)};
}

absl::StatusOr<CertAndKey> NewHost(const std::string& host,
                                   const std::vector<std::string>& ip_sans,
                                   const CertAndKey& ca) {
  absl::StatusOr<SslPtr<EVP_PKEY>> key = NewKey();
  if (!key.ok()) return key.status();
  absl::StatusOr<SslPtr<X509>> cert = NewCert(
      host.size() <= kMaxCommonName ? host : "", key->get(), kHostValidDays);
  if (!cert.ok()) return cert.status();
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(ca.cert.get())) != 1) {
    return InternalSslError("cannot set issuer");
  }
  // Host and IPs were validated, so no ',' can smuggle in another name.
  std::string san = absl::StrCat("DNS:", host);
  for (const std::string& ip : ip_sans) absl::StrAppend(&san, ",IP:", ip);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), c, nullptr, nullptr, 0);
  for (auto [nid, value] : {
           std::pair{NID_basic_constraints, std::string("critical,CA:FALSE")},
           std::pair{NID_key_usage, std::string("critical,digitalSignature")},
           // Both: every vgpud is a TLS server to its peers and a client of
           // them.
           std::pair{NID_ext_key_usage, std::string("serverAuth,clientAuth")},
           std::pair{NID_subject_key_identifier, std::string("hash")},
           // "keyid,issuer": a CA brought from elsewhere may lack a subject
           // key identifier; then the issuer name and serial identify it.
           std::pair{NID_authority_key_identifier, std::string("keyid,issuer")},
           std::pair{NID_subject_alt_name, san},
       }) {
    if (absl::Status s = AddExt(c, &ctx, nid, value); !s.ok()) return s;
  }
  if (absl::Status s = Sign(c, ca.key.get()); !s.ok()) return s;
  return CertAndKey{*std::move(cert), *std::move(key)};
}

absl::StatusOr<CertAndKey> LoadCa(const std::string& cert_path,
                                  const std::string& key_path) {
  absl::StatusOr<std::string> cert_pem = ReadFile(cert_path, "CA certificate");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key_path, "CA key");
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::vector<SslPtr<X509>>> certs =
      ParseCerts(*cert_pem, cert_path, "CA certificate");
  if (!certs.ok()) return certs.status();
  absl::StatusOr<SslPtr<EVP_PKEY>> key = ParseKey(*key_pem, key_path);
  if (!key.ok()) return key.status();
  CertAndKey ca{std::move(certs->front()), *std::move(key)};
  if (X509_check_private_key(ca.cert.get(), ca.key.get()) != 1) {
    return OpenSslError(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("CA key ", key_path, " does not match CA certificate ",
                     cert_path));
  }
  return ca;
}

absl::Status WriteCertAndKey(const CertAndKey& pair,
                             const std::string& cert_path,
                             const std::string& key_path) {
  absl::StatusOr<std::string> key_pem = ToPem(pair.key.get());
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::string> cert_pem = ToPem(pair.cert.get());
  if (!cert_pem.ok()) return cert_pem.status();
  // Key first: a crash in between leaves a new key beside the old
  // certificate, which Load refuses as a mismatch, never a silent mix-up.
  if (absl::Status s = WriteFileAtomically(key_path, *key_pem, 0600); !s.ok()) {
    return s;
  }
  return WriteFileAtomically(cert_path, *cert_pem, 0644);
}

absl::Status EnsureDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) == 0) return absl::OkStatus();
  int saved = errno;
  struct stat st;
  if (saved == EEXIST && stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot create directory ", dir, ": ", strerror(saved)));
}

// The DNS names in a certificate's subjectAltName.
std::vector<std::string> DnsSans(X509* cert) {
  std::vector<std::string> names;
  SslPtr<GENERAL_NAMES> sans(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (sans == nullptr) return names;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans.get(), i);
    if (name->type != GEN_DNS) continue;
    const ASN1_IA5STRING* dns = name->d.dNSName;
    names.emplace_back(
        reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
        static_cast<size_t>(ASN1_STRING_length(dns)));
  }
  return names;
}

// Verifies `leaf` (with any intermediates in `chain`) against `cas` alone,
// for both TLS roles: each vgpud is server and client to its peers, so a
// certificate fit for only one would fail later, at a peer.
absl::Status VerifyChain(const std::vector<SslPtr<X509>>& cas, X509* leaf,
                         const std::vector<SslPtr<X509>>& chain,
                         const TlsFiles& files) {
  SslPtr<X509_STORE> store(X509_STORE_new());
  SslPtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  if (store == nullptr || untrusted == nullptr) {
    return InternalSslError("cannot allocate certificate store");
  }
  for (const SslPtr<X509>& ca : cas) {
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1) {
      return InternalSslError("cannot add CA to store");
    }
  }
  for (const SslPtr<X509>& cert : chain) {
    if (X509_up_ref(cert.get()) != 1 ||
        sk_X509_push(untrusted.get(), cert.get()) <= 0) {
      return InternalSslError("cannot build certificate chain");
    }
  }
  for (int purpose : {X509_PURPOSE_SSL_SERVER, X509_PURPOSE_SSL_CLIENT}) {
    SslPtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
    if (ctx == nullptr ||
        X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) !=
            1 ||
        X509_STORE_CTX_set_purpose(ctx.get(), purpose) != 1) {
      return InternalSslError("cannot set up certificate verification");
    }
    if (X509_verify_cert(ctx.get()) != 1) {
      int err = X509_STORE_CTX_get_error(ctx.get());
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat(
          "certificate ", files.cert_file, " does not verify against CA ",
          files.ca_file, " as TLS ",
          purpose == X509_PURPOSE_SSL_SERVER ? "server" : "client", ": ",
          X509_verify_cert_error_string(err)));
    }
  }
  return absl::OkStatus();
}

absl::Status KjError(const kj::Exception& e, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": ", e.getDescription().cStr()));
}

}  // namespace

absl::Status MakeDemoCerts(const std::string& dir,
                           const std::vector<std::string>& hosts,
                           const std::vector<std::string>& ip_sans) {
  // Validate everything before writing anything.
  for (const std::string& host : hosts) {
    if (absl::Status s = ValidateHost(host); !s.ok()) return s;
  }
  for (const std::string& ip : ip_sans) {
    if (absl::Status s = ValidateIp(ip); !s.ok()) return s;
  }
  if (absl::Status s = EnsureDir(dir); !s.ok()) return s;

  const std::string ca_cert_path = JoinPath(dir, kCaCertName);
  const std::string ca_key_path = JoinPath(dir, kCaKeyName);
  const bool have_cert = FileExists(ca_cert_path);
  const bool have_key = FileExists(ca_key_path);
  // A lone half of a CA is refused rather than replaced: minting a new CA
  // would silently orphan every host certificate the old one signed.
  if (have_cert != have_key) {
    return absl::FailedPreconditionError(
        absl::StrCat("found ", have_cert ? ca_cert_path : ca_key_path,
                     " without ", have_cert ? ca_key_path : ca_cert_path,
                     "; restore it or remove both to mint a new CA"));
  }
  absl::StatusOr<CertAndKey> ca =
      have_cert ? LoadCa(ca_cert_path, ca_key_path) : NewCa();
  if (!ca.ok()) return ca.status();
  if (!have_cert) {
    if (absl::Status s = WriteCertAndKey(*ca, ca_cert_path, ca_key_path);
        !s.ok()) {
      return s;
    }
  }

  for (const std::string& host : hosts) {
    absl::StatusOr<CertAndKey> pair = NewHost(host, ip_sans, *ca);
    if (!pair.ok()) {
      return absl::Status(
          pair.status().code(),
          absl::StrCat("host ", host, ": ", pair.status().message()));
    }
    if (absl::Status s = WriteCertAndKey(*pair, JoinPath(dir, host + ".pem"),
                                         JoinPath(dir, host + ".key"));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PeerTls>> PeerTls::Load(const TlsFiles& files) {
  absl::StatusOr<std::string> ca_pem = ReadFile(files.ca_file, "CA");
  if (!ca_pem.ok()) return ca_pem.status();
  absl::StatusOr<std::string> cert_pem =
      ReadFile(files.cert_file, "certificate");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(files.key_file, "key");
  if (!key_pem.ok()) return key_pem.status();

  absl::StatusOr<std::vector<SslPtr<X509>>> cas =
      ParseCerts(*ca_pem, files.ca_file, "CA");
  if (!cas.ok()) return cas.status();
  absl::StatusOr<std::vector<SslPtr<X509>>> chain =
      ParseCerts(*cert_pem, files.cert_file, "certificate");
  if (!chain.ok()) return chain.status();
  absl::StatusOr<SslPtr<EVP_PKEY>> key = ParseKey(*key_pem, files.key_file);
  if (!key.ok()) return key.status();

  // The certificate file holds the leaf first, then any intermediates.
  X509* leaf = chain->front().get();
  std::vector<SslPtr<X509>> intermediates;
  for (size_t i = 1; i < chain->size(); ++i) {
    intermediates.push_back(std::move((*chain)[i]));
  }
  if (absl::Status s = VerifyChain(*cas, leaf, intermediates, files); !s.ok()) {
    return s;
  }
  ERR_clear_error();
  if (X509_check_private_key(leaf, key->get()) != 1) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("key ", files.key_file, " does not match certificate ",
                     files.cert_file));
  }

  std::unique_ptr<PeerTls> tls(new PeerTls());
  tls->names_ = DnsSans(leaf);
  if (tls->names_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("certificate ", files.cert_file,
                     " has no DNS subjectAltName; peers "
                     "verify host names against it"));
  }

  // KJ parses the same material again for its own SSL_CTX. Each CA gets
  // its own kj::TlsCertificate (from DER) because kj::TlsContext trusts only
  // the first certificate of each entry.
  std::vector<std::vector<unsigned char>> ca_ders;
  for (const SslPtr<X509>& ca : *cas) {
    int len = i2d_X509(ca.get(), nullptr);
    if (len <= 0) return InternalSslError("cannot encode CA certificate");
    std::vector<unsigned char> der(static_cast<size_t>(len));
    unsigned char* out = der.data();
    if (i2d_X509(ca.get(), &out) != len) {
      return InternalSslError("cannot encode CA certificate");
    }
    ca_ders.push_back(std::move(der));
  }
  // Reserved up front: options.trustedCertificates points into ca_, and
  // kj::TlsCertificate has no default constructor for a sized vector.
  tls->ca_.reserve(ca_ders.size());
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 for (const std::vector<unsigned char>& der : ca_ders) {
                   tls->ca_.emplace_back(
                       kj::ArrayPtr<const kj::byte>(der.data(), der.size()));
                 }
               })) {
    return KjError(*e, absl::StrCat("CA file ", files.ca_file));
  }
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 tls->keypair_ = kj::heap<kj::TlsKeypair>(kj::TlsKeypair{
                     kj::TlsPrivateKey(kj::StringPtr(key_pem->c_str())),
                     kj::TlsCertificate(kj::StringPtr(cert_pem->c_str()))});
               })) {
    return KjError(*e, absl::StrCat("key ", files.key_file, " or certificate ",
                                    files.cert_file));
  }
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 kj::TlsContext::Options options;
                 // Peers are trusted because the cluster CA signed them, never
                 // because some public CA did.
                 options.useSystemTrustStore = false;
                 options.verifyClients = true;
                 options.trustedCertificates =
                     kj::ArrayPtr<const kj::TlsCertificate>(tls->ca_.data(),
                                                            tls->ca_.size());
                 options.defaultKeypair = *tls->keypair_;
                 options.minVersion = kj::TlsVersion::TLS_1_2;
                 tls->context_ = kj::heap<kj::TlsContext>(kj::mv(options));
               })) {
    return KjError(*e, "cannot build TLS context");
  }
  return tls;
}

PeerTls::~PeerTls() = default;

}  // namespace vgpu::migrator
