// vgpud's configuration: the defaults, a file using every key, each way a
// file can be wrong (the error must name the key), loading from disk, and
// the size and "ADDR[:PORT]" parsers.
#include "migrator/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace vgpu::migrator {
namespace {

using ::testing::HasSubstr;

constexpr char kOrigin[] = "/etc/vgpu/vgpud.json";

std::string HostName() {
  char name[256] = {};
  EXPECT_EQ(gethostname(name, sizeof(name) - 1), 0);
  return name;
}

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

TEST(ConfigTest, EmptyObjectGivesTheDefaults) {
  absl::StatusOr<Config> c = ParseConfig("{}", kOrigin);
  ASSERT_TRUE(c.ok()) << c.status();
  const Config d;
  EXPECT_EQ(c->host, HostName());
  EXPECT_FALSE(c->host.empty());
  EXPECT_EQ(c->control_socket, d.control_socket);
  EXPECT_EQ(c->listen, "0.0.0.0:7480");
  EXPECT_TRUE(c->peers.empty());
  EXPECT_EQ(c->store_path, "/var/lib/vgpu");
  EXPECT_EQ(c->run_dir, "/run/vgpud");
  EXPECT_EQ(c->downtime_ms, 30u);
  EXPECT_EQ(c->max_rounds, 30u);
  EXPECT_EQ(c->bandwidth_bytes_per_second, 0u);
  EXPECT_EQ(c->window_bytes, 32ull << 20);
  EXPECT_TRUE(c->compress);
  EXPECT_EQ(c->threads, 0);
  EXPECT_TRUE(c->tls.ca_file.empty());
  EXPECT_FALSE(c->tls.insecure);
  EXPECT_EQ(c->emulated_max_vram_bytes, 4ull << 30);
  EXPECT_TRUE(c->declared.gpus.empty());
  EXPECT_TRUE(c->vms.empty());
}

TEST(ConfigTest, EveryKey) {
  absl::StatusOr<Config> c = ParseConfig(R"({
    "host": "host1",
    "control_socket": "/tmp/vgpud.sock",
    "listen": "10.0.0.1:7481",
    "peers": {"host2": "10.0.0.2", "host3": "[fd00::3]:9000"},
    "store": "/srv/vgpu",
    "run_dir": "/tmp/run",
    "downtime_ms": 300,
    "max_rounds": 5,
    "bandwidth": "100M",
    "window": "8M",
    "compress": false,
    "threads": 4,
    "tls": {"ca": "ca.pem", "cert": "host1.pem", "key": "host1.key"},
    "emulation": {"device_binary": "/usr/bin/vgpu-emu-device",
                  "max_vram": "1.5G"},
    "profile": {"gpus": [{"vendor": "nvidia", "driver": "550.54.14",
                          "free_instances": {"A100-4C": 3}}]},
    "vms": [{"name": "vm-1", "uuid": "c7a5fdbd-edaf-9455-926a-d65c16db1809",
             "devices": [{"strategy": "emulation",
                          "endpoint": "/run/emu0.sock"}]},
            {"name": "vm.2"}]
  })",
                                         kOrigin);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->host, "host1");
  EXPECT_EQ(c->control_socket, "/tmp/vgpud.sock");
  EXPECT_EQ(c->listen, "10.0.0.1:7481");
  EXPECT_EQ(c->peers.at("host2"), "10.0.0.2");
  EXPECT_EQ(c->peers.at("host3"), "[fd00::3]:9000");
  EXPECT_EQ(c->store_path, "/srv/vgpu");
  EXPECT_EQ(c->run_dir, "/tmp/run");
  EXPECT_EQ(c->downtime_ms, 300u);
  EXPECT_EQ(c->max_rounds, 5u);
  EXPECT_EQ(c->bandwidth_bytes_per_second, 100ull << 20);
  EXPECT_EQ(c->window_bytes, 8ull << 20);
  EXPECT_FALSE(c->compress);
  EXPECT_EQ(c->threads, 4);
  EXPECT_EQ(c->tls.ca_file, "ca.pem");
  EXPECT_EQ(c->tls.cert_file, "host1.pem");
  EXPECT_EQ(c->tls.key_file, "host1.key");
  EXPECT_EQ(c->emulated_device_binary, "/usr/bin/vgpu-emu-device");
  EXPECT_EQ(c->emulated_max_vram_bytes, 3ull << 29);
  ASSERT_EQ(c->declared.gpus.size(), 1u);
  EXPECT_EQ(c->declared.gpus[0].driver.major, 550u);
  EXPECT_EQ(c->declared.gpus[0].free_instances.at("A100-4C"), 3u);
  ASSERT_EQ(c->vms.size(), 2u);
  EXPECT_EQ(c->vms[0].name, "vm-1");
  EXPECT_EQ(c->vms[0].uuid, "c7a5fdbd-edaf-9455-926a-d65c16db1809");
  ASSERT_EQ(c->vms[0].devices.size(), 1u);
  EXPECT_EQ(c->vms[0].devices[0].strategy, "emulation");
  EXPECT_EQ(c->vms[0].devices[0].endpoint, "/run/emu0.sock");
  EXPECT_EQ(c->vms[1].name, "vm.2");
  EXPECT_TRUE(c->vms[1].devices.empty());
}

TEST(ConfigTest, NumericSizesAndInsecureTls) {
  absl::StatusOr<Config> c = ParseConfig(
      R"({"bandwidth": 1000000, "window": 65536,
          "tls": {"insecure": true, "ca": "only-ca.pem"}})",
      kOrigin);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bandwidth_bytes_per_second, 1000000u);
  EXPECT_EQ(c->window_bytes, 65536u);
  EXPECT_TRUE(c->tls.insecure);
}

TEST(ConfigTest, ErrorsNameTheKey) {
  struct Case {
    const char* text;
    const char* message;  // after "<origin>: "
  } cases[] = {
      {R"({"colour": 1})", "colour: unknown key"},
      {R"({"host": 7})", "host: expected a string"},
      {R"({"host": ""})", "host: empty"},
      {R"({"listen": "0.0.0.0:0"})", "listen: port 0 out of range"},
      {R"({"peers": {"host2": "10.0.0.2:99999"}})",
       "peers.host2: port 99999 out of range"},
      {R"({"peers": {"host2": 7480}})", "peers.host2: expected a string"},
      {R"({"peers": {"host2": "h:x"}})",
       "peers.host2: port \"x\" is not a number"},
      {R"({"peers": []})", "peers: expected an object"},
      {R"({"downtime_ms": 0})", "downtime_ms: must be at least 1"},
      {R"({"downtime_ms": -5})",
       "downtime_ms: expected a non-negative integer"},
      {R"({"downtime_ms": "30"})",
       "downtime_ms: expected a non-negative integer"},
      {R"({"max_rounds": 0})", "max_rounds: 0 is outside 1..1000"},
      {R"({"max_rounds": 1001})", "max_rounds: 1001 is outside 1..1000"},
      {R"({"bandwidth": "fast"})",
       "bandwidth: size \"fast\": expected a number with an optional K, M, G "
       "or T"},
      {R"({"bandwidth": -1})",
       "bandwidth: expected a byte count or a size like \"64M\""},
      {R"({"window": "0"})", "window: must be at least 1 byte"},
      {R"({"window": "8Q"})",
       "window: size \"8Q\": unknown unit \"Q\" (use K, M, G or T, optionally "
       "with B or iB)"},
      {R"({"compress": 1})", "compress: expected true or false"},
      {R"({"threads": -1})",
       "threads: -1 is outside 0..1024 (0: one per core)"},
      {R"({"threads": 1.5})", "threads: expected an integer"},
      {R"({"tls": {"cafile": "x"}})", "tls.cafile: unknown key"},
      {R"({"tls": {"cert": "c.pem", "key": "k.pem"}})",
       "tls: ca, cert and key go together: cert and key set but ca missing"},
      {R"({"tls": {"insecure": "no"}})",
       "tls.insecure: expected true or false"},
      {R"({"emulation": {"max_vram": "lots"}})",
       "emulation.max_vram: size \"lots\": expected a number with an optional "
       "K, M, G or T"},
      {R"({"emulation": {"binary": "x"}})", "emulation.binary: unknown key"},
      {R"({"profile": {"gpus": [{"driver": "550"}]}})",
       "profile.gpus[0].driver: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"profile": {"hosts": 1}})", "profile.hosts: unknown key"},
      {R"({"profile": 1})", "profile: expected an object"},
      {R"({"vms": {}})", "vms: expected a list"},
      {R"({"vms": [{"uuid": ""}]})", "vms[0].name: missing"},
      {R"({"vms": [{"name": "a b"}]})",
       "vms[0].name: \"a b\" is not a VM name (1 to 64 of A-Z a-z 0-9 _ . -)"},
      {R"({"vms": [{"name": ""}]})",
       "vms[0].name: \"\" is not a VM name (1 to 64 of A-Z a-z 0-9 _ . -)"},
      {R"({"vms": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})",
       "vms[2].name: \"a\" is named twice"},
      {R"({"vms": [{"name": "a", "uuid": "not-a-uuid"}]})",
       "vms[0].uuid: \"not-a-uuid\" is not a UUID"},
      {R"({"vms": [{"name": "a", "gpus": []}]})", "vms[0].gpus: unknown key"},
      {R"({"vms": [{"name": "a", "devices": [
           {"strategy": "emulation", "endpoint": "/s"},
           {"strategy": "cudaForwarding", "endpoint": "/s"}]}]})",
       "vms[0].devices[1].strategy: strategy cudaForwarding not supported by "
       "this build"},
      {R"({"forwarding": {"control": "unix:/c", "memroy": "4G"}})",
       "forwarding.memroy: unknown key"},

      {R"({"vms": [{"name": "a", "devices": [{"endpoint": "/s"}]}]})",
       "vms[0].devices[0].strategy: missing"},
      {R"({"vms": [{"name": "a", "devices": [{"strategy": "emulation"}]}]})",
       "vms[0].devices[0].endpoint: missing (a device socket, mdev UUID or "
       "PCI address)"},
      {R"({"mediated": {"reference": {"instances": 0}}})",
       "mediated.reference.instances: 0 is outside 1..64"},
      {R"({"mediated": {"reference": {"vram": "1000"}}})",
       "mediated.reference.vram: must be a positive multiple of 4K"},
      {R"({"mediated": {"reference": {"colour": "red"}}})",
       "mediated.reference.colour: unknown key"},
      {R"({"mediated": {"refrence": {}}})", "mediated.refrence: unknown key"},
      {R"({"passthrough": {"sysroot": "/x"}})",
       "passthrough.sysroot: unknown key"},
      {R"({"libvirt": {"poll_ms": 5}})",
       "libvirt.poll_ms: 5 is outside 100..600000"},
      {R"({"libvirt": {"url": "qemu:///system"}})", "libvirt.url: unknown key"},
      {R"({"vms": [{"name": "a", "devices": [
           {"strategy": "emulation", "endpoint": "/s", "vram": 1}]}]})",
       "vms[0].devices[0].vram: unknown key"},
      {R"([])", "expected an object"},
  };
  // And the good forms.
  auto ok = ParseConfig(R"({"mediated": {"reference": {"type": "REF-8C",
      "instances": 2, "vram": "32M", "contexts": 8, "workload": "4M"}},
      "passthrough": {"sys_root": "/tmp/sys"},
      "libvirt": {"uri": "qemu:///system", "poll_ms": 500},
      "forwarding": {"control": "unix:/run/vgpu/cl-control.sock",
                     "memory": "2G", "architecture": "pthread"},
      "vms": [{"name": "a", "devices": [
        {"strategy": "mediated",
         "endpoint": "6f1c2a8e-3b7d-4c55-9a10-2d4e8b7f0a01"},
        {"strategy": "directPassthrough", "endpoint": "0000:3b:00.0"}]}]})",
                        kOrigin);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->reference_gpu);
  EXPECT_EQ(ok->reference_type, "REF-8C");
  EXPECT_EQ(ok->reference_instances, 2u);
  EXPECT_EQ(ok->reference_vram_bytes, 32u << 20);
  EXPECT_EQ(ok->reference_contexts, 8u);
  EXPECT_EQ(ok->reference_workload_bytes_per_second, 4u << 20);
  EXPECT_EQ(ok->sys_root, "/tmp/sys");
  EXPECT_EQ(ok->libvirt_uri, "qemu:///system");
  EXPECT_EQ(ok->libvirt_poll_ms, 500u);
  EXPECT_EQ(ok->vms[0].devices[1].strategy, "directPassthrough");
  EXPECT_EQ(ok->forwarding_control, "unix:/run/vgpu/cl-control.sock");
  EXPECT_EQ(ok->forwarding_memory_bytes, 2ull << 30);
  EXPECT_EQ(ok->forwarding_architecture, "pthread");
  EXPECT_EQ(ok->forwarding_vendor, "pocl");
  EXPECT_FALSE(ParseConfig("{}", kOrigin)->reference_gpu) << "off by default";
  for (const Case& c : cases) {
    absl::StatusOr<Config> config = ParseConfig(c.text, kOrigin);
    EXPECT_EQ(config.status(), absl::InvalidArgumentError(
                                   absl::StrCat(kOrigin, ": ", c.message)))
        << c.text;
  }
}

TEST(ConfigTest, VmNameLengthLimit) {
  const std::string ok(64, 'v');
  EXPECT_TRUE(
      ParseConfig(absl::StrCat(R"({"vms": [{"name": ")", ok, "\"}]}"), kOrigin)
          .ok());
  absl::StatusOr<Config> c = ParseConfig(
      absl::StrCat(R"({"vms": [{"name": ")", ok, "v\"}]}"), kOrigin);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("vms[0].name"));
}

TEST(ConfigTest, NotJsonSaysWhere) {
  absl::StatusOr<Config> c =
      ParseConfig("{\"host\": \"a\",\n  oops}", "x.json");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("x.json: not valid JSON: parse error at line 2"));
  EXPECT_EQ(ParseConfig("", "x.json").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- LoadConfig ---

TEST(LoadConfigTest, MissingDefaultFileGivesDefaults) {
  const std::string path = TempDir() + "/absent/vgpud.json";
  absl::StatusOr<Config> c = LoadConfig(path, /*explicit_path=*/false);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->host, HostName());
  EXPECT_EQ(c->listen, "0.0.0.0:7480");
}

TEST(LoadConfigTest, MissingExplicitFileIsNotFound) {
  const std::string path = TempDir() + "/absent/vgpud.json";
  absl::StatusOr<Config> c = LoadConfig(path, /*explicit_path=*/true);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
}

TEST(LoadConfigTest, ReadsTheFileAndNamesItInErrors) {
  const std::string path = TempDir() + "/vgpud.json";
  for (bool explicit_path : {false, true}) {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(R"({"host": "from-file", "max_rounds": 7})", f);
    std::fclose(f);
    absl::StatusOr<Config> c = LoadConfig(path, explicit_path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->host, "from-file");
    EXPECT_EQ(c->max_rounds, 7u);
  }
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(R"({"max_rounds": 0})", f);
  std::fclose(f);
  EXPECT_EQ(LoadConfig(path, false).status(),
            absl::InvalidArgumentError(
                absl::StrCat(path, ": max_rounds: 0 is outside 1..1000")));
  std::remove(path.c_str());
}

TEST(LoadConfigTest, DirectoryIsAnError) {
  absl::StatusOr<Config> c = LoadConfig(TempDir(), true);
  EXPECT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(TempDir()));
}

// --- ParseByteSize ---

TEST(ParseByteSizeTest, Accepted) {
  struct Case {
    const char* text;
    uint64_t bytes;
  } cases[] = {
      {"0", 0},
      {"4096", 4096},
      {"4096B", 4096},
      {"64K", 64ull << 10},
      {"64k", 64ull << 10},
      {"64KB", 64ull << 10},
      {"64M", 64ull << 20},
      {"64MiB", 64ull << 20},
      {"64mib", 64ull << 20},
      {"1G", 1ull << 30},
      {"1.5G", 3ull << 29},
      {"0.25K", 256},
      {"2T", 2ull << 40},
      {"16 M", 16ull << 20},
      {" 8M ", 8ull << 20},
      {"18446744073709551615", UINT64_MAX},
      {"16777215T", 16777215ull << 40},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> n = ParseByteSize(c.text);
    ASSERT_TRUE(n.ok()) << c.text << ": " << n.status();
    EXPECT_EQ(*n, c.bytes) << c.text;
  }
}

TEST(ParseByteSizeTest, RefusedWithTheTextQuoted) {
  struct Case {
    const char* text;
    const char* why;
  } cases[] = {
      {"", "empty"},
      {"-1G", "negative"},
      {"G", "expected a number"},
      {"abc", "expected a number"},
      {"+5", "expected a number"},
      {"1.G", "expected digits after '.'"},
      {".5G", "expected a number"},
      {"1.1K", "not a whole number of bytes"},
      {"1.5", "not a whole number of bytes"},
      {"12Q", "unknown unit \"Q\""},
      {"12KiBB", "unknown unit"},
      {"1e9", "unknown unit"},
      {"18446744073709551616", "too large"},
      {"16777216T", "too large"},
      {"99999999999999999999999", "too large"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> n = ParseByteSize(c.text);
    ASSERT_FALSE(n.ok()) << c.text;
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(n.status().message()),
                HasSubstr(absl::StrCat("size \"", c.text, "\": ", c.why)));
  }
}

// --- SplitHostPort ---

TEST(SplitHostPortTest, Accepted) {
  struct Case {
    const char* text;
    const char* addr;
    uint16_t port;
  } cases[] = {
      {"10.0.0.2", "10.0.0.2", 7480},
      {"10.0.0.2:7481", "10.0.0.2", 7481},
      {"host2:9000", "host2", 9000},
      {"host2", "host2", 7480},
      {"[::1]:7490", "::1", 7490},
      {"[::1]", "::1", 7480},
      {"::1", "::1", 7480},
      {"fd00::3", "fd00::3", 7480},
      {"h:1", "h", 1},
      {"h:65535", "h", 65535},
  };
  for (const Case& c : cases) {
    std::string addr;
    uint16_t port = 0;
    absl::Status s = SplitHostPort(c.text, kDefaultPeerPort, &addr, &port);
    ASSERT_TRUE(s.ok()) << c.text << ": " << s;
    EXPECT_EQ(addr, c.addr) << c.text;
    EXPECT_EQ(port, c.port) << c.text;
  }
}

TEST(SplitHostPortTest, Refused) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"", "empty address"},
      {"h:0", "port 0 out of range"},
      {"h:65536", "port 65536 out of range"},
      {"h:99999999999", "port \"99999999999\" is not a number"},
      {"h:", "missing port after ':' in \"h:\""},
      {"h:-1", "port \"-1\" is not a number"},
      {"h:80x", "port \"80x\" is not a number"},
      {":7480", "missing address in \":7480\""},
      {"[]:7480", "missing address in \"[]:7480\""},
      {"[::1", "missing ']' in \"[::1\""},
      {"[::1]7480", "unexpected \"7480\" after ']' in \"[::1]7480\""},
      {"my host:1", "\"my host\" is not a host name or address"},
  };
  for (const Case& c : cases) {
    std::string addr = "untouched";
    uint16_t port = 1;
    EXPECT_EQ(SplitHostPort(c.text, kDefaultPeerPort, &addr, &port),
              absl::InvalidArgumentError(c.message))
        << c.text;
    EXPECT_EQ(addr, "untouched");
    EXPECT_EQ(port, 1);
  }
}

}  // namespace
}  // namespace vgpu::migrator
