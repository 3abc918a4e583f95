// The compatibility checker, rule by rule: each rule of each strategy passing
// and refusing with both sides' values in its detail, devices that share a
// pool of vGPU instances or backend memory, the pass-through note, the
// table and JSON renderings, and the HostProfile's JSON form.
#include "migrator/compat.h"

#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_split.h"

namespace vgpu::migrator {
namespace {

using json = nlohmann::json;
using schema::DeviceDescriptor;
using schema::Strategy;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

// Owns the messages behind the descriptors of one VM.
class Vm {
 public:
  DeviceDescriptor::Builder Add(Strategy strategy, const std::string& id) {
    messages_.push_back(std::make_unique<capnp::MallocMessageBuilder>());
    DeviceDescriptor::Builder d =
        messages_.back()->initRoot<DeviceDescriptor>();
    d.setStrategy(strategy);
    d.setInstanceId(id);
    return d;
  }

  DeviceDescriptor::Builder AddEmulated(const std::string& id) {
    DeviceDescriptor::Builder d = Add(Strategy::EMULATION, id);
    d.setVendor("vgpu-migrate");
    d.setArchitecture("bochs-dispi");
    d.initWrapperAbi().setMajor(1);
    d.setVramBytes(64 * kMiB);
    return d;
  }

  DeviceDescriptor::Builder AddForwarded(const std::string& id) {
    DeviceDescriptor::Builder d = Add(Strategy::API_FORWARDING, id);
    d.setVendor("pocl");
    d.setArchitecture("pthread-cpu");
    d.setWrapperName("vgpu-opencl");
    auto abi = d.initWrapperAbi();
    abi.setMajor(2);
    abi.setMinor(1);
    auto req = d.initRequiredFeatures(2);
    req.set(0, "fp64");
    req.set(1, "images");
    d.setVramBytes(1 * kGiB);
    return d;
  }

  DeviceDescriptor::Builder AddMediated(const std::string& id,
                                        const std::string& type = "A100-4C") {
    DeviceDescriptor::Builder d = Add(Strategy::MEDIATED, id);
    d.setVendor("nvidia");
    d.setArchitecture("ampere");
    d.setBoardType(type);
    SetDriver(d, 550, 54, 14);
    d.setEccEnabled(true);
    d.setVramBytes(4 * kGiB);
    auto f = d.initFeatures(2);
    f.set(0, "vfio-migration-v2");
    f.set(1, "p2p");
    return d;
  }

  DeviceDescriptor::Builder AddPassthrough(const std::string& id,
                                           bool migration_capable) {
    DeviceDescriptor::Builder d = Add(Strategy::DIRECT_PASSTHROUGH, id);
    d.setVendor("nvidia");
    d.setArchitecture("hopper");
    d.setBoardType("H100-80GB-HBM3");
    SetDriver(d, 550, 54, 14);
    d.setEccEnabled(true);
    d.setVramBytes(80 * kGiB);
    d.setMigrationCapable(migration_capable);
    if (migration_capable) {
      auto f = d.initFeatures(2);
      f.set(0, "vfio-migration-v2");
      f.set(1, "p2p");
    }
    return d;
  }

  static void SetDriver(DeviceDescriptor::Builder d, uint32_t major,
                        uint32_t minor, uint32_t patch) {
    auto v = d.initDriverVersion();
    v.setMajor(major);
    v.setMinor(minor);
    v.setPatch(patch);
  }

  std::vector<DeviceDescriptor::Reader> devices() const {
    std::vector<DeviceDescriptor::Reader> out;
    for (const auto& m : messages_) {
      out.push_back(m->getRoot<DeviceDescriptor>().asReader());
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<capnp::MallocMessageBuilder>> messages_;
};

GpuOffer Ampere(uint32_t free_4c) {
  GpuOffer g;
  g.vendor = "nvidia";
  g.architecture = "ampere";
  g.board_type = "A100-SXM4-40GB";
  g.driver = {550, 90, 7};
  g.ecc_enabled = true;
  g.vram_bytes = 40 * kGiB;
  g.free_instances["A100-4C"] = free_4c;
  return g;
}

GpuOffer Hopper(bool migration_capable) {
  GpuOffer g;
  g.vendor = "nvidia";
  g.architecture = "hopper";
  g.board_type = "H100-80GB-HBM3";
  g.driver = {550, 90, 7};
  g.ecc_enabled = true;
  g.vram_bytes = 80 * kGiB;
  g.migration_capable = migration_capable;
  return g;
}

ApiForwardingOffer Pocl() {
  ApiForwardingOffer b;
  b.wrapper_name = "vgpu-opencl";
  b.abi = {2, 3, 0};
  b.features = {"fp64", "images", "svm"};
  b.vendor = "pocl";
  b.architecture = "pthread-cpu";
  b.memory_bytes = 4 * kGiB;
  return b;
}

HostProfile Host2() {
  HostProfile h;
  h.host = "host2";
  h.emulation.available = true;
  h.emulation.max_vram_bytes = 128 * kMiB;
  h.api_forwarding.push_back(Pocl());
  h.gpus.push_back(Ampere(4));
  h.gpus.push_back(Hopper(true));
  return h;
}

std::vector<std::string> Rules(const CompatReport& r, int device) {
  std::vector<std::string> out;
  for (const CompatRow& row : r.rows) {
    if (row.device == device) out.push_back(row.rule);
  }
  return out;
}

// The row of `rule` for `device`; fails the test when there is none.
CompatRow Row(const CompatReport& r, int device, const std::string& rule) {
  for (const CompatRow& row : r.rows) {
    if (row.device == device && row.rule == rule) return row;
  }
  ADD_FAILURE() << "no row " << rule << " for device " << device << " in\n"
                << FormatReportTable(r);
  return CompatRow{};
}

// --- emulation ---

TEST(EmulationTest, EveryRulePassesOnAMatchingHost) {
  Vm vm;
  vm.AddEmulated("emu0");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_THAT(Rules(r, 0), ElementsAre("emulation", "vendor-architecture",
                                       "device-abi", "vram"));
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
  EXPECT_TRUE(r.ToStatus().ok());
  EXPECT_EQ(r.destination, "host2");
  EXPECT_EQ(r.rows[0].instance, "emu0");
  EXPECT_EQ(r.rows[0].strategy, "emulation");
}

TEST(EmulationTest, HostWithoutEmulationEndsTheChecks) {
  Vm vm;
  vm.AddEmulated("emu0");
  HostProfile host = Host2();
  host.emulation.available = false;
  CompatReport r = CheckCompatibility(vm.devices(), host);
  ASSERT_THAT(Rules(r, 0), ElementsAre("emulation"));
  EXPECT_FALSE(r.rows[0].ok);
  EXPECT_THAT(r.rows[0].detail, HasSubstr("host2 offers no device emulation"));
}

TEST(EmulationTest, ZeroMaxVramMeansNoEmulation) {
  Vm vm;
  vm.AddEmulated("emu0");
  HostProfile host = Host2();
  host.emulation.max_vram_bytes = 0;
  CompatReport r = CheckCompatibility(vm.devices(), host);
  ASSERT_THAT(Rules(r, 0), ElementsAre("emulation"));
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.rows[0].detail, HasSubstr("max_vram_bytes 0"));
}

TEST(EmulationTest, OtherDeviceModelIsRefused) {
  Vm vm;
  vm.AddEmulated("emu0").setArchitecture("virtio-gpu");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  CompatRow row = Row(r, 0, "vendor-architecture");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "source device is vgpu-migrate/virtio-gpu; host2 emulates "
            "vgpu-migrate/bochs-dispi");
}

TEST(EmulationTest, DeviceAbiNeedsSameMajorAndNoOlderMinor) {
  struct Case {
    VersionTriple src, dst;
    bool ok;
  } cases[] = {
      {{1, 0, 0}, {1, 0, 0}, true},  {{1, 2, 0}, {1, 3, 0}, true},
      {{1, 2, 5}, {1, 2, 0}, true},  // patch does not matter
      {{1, 2, 0}, {1, 1, 9}, false}, {{1, 0, 0}, {2, 0, 0}, false},
      {{2, 0, 0}, {1, 9, 0}, false},
  };
  for (const Case& c : cases) {
    Vm vm;
    auto abi = vm.AddEmulated("emu0").initWrapperAbi();
    abi.setMajor(c.src.major);
    abi.setMinor(c.src.minor);
    abi.setPatch(c.src.patch);
    HostProfile host = Host2();
    host.emulation.device_abi = c.dst;
    CompatRow row =
        Row(CheckCompatibility(vm.devices(), host), 0, "device-abi");
    EXPECT_EQ(row.ok, c.ok) << row.detail;
  }
  Vm vm;
  vm.AddEmulated("emu0").getWrapperAbi().setMinor(2);
  HostProfile host = Host2();
  host.emulation.device_abi = {1, 1, 0};
  CompatRow row = Row(CheckCompatibility(vm.devices(), host), 0, "device-abi");
  EXPECT_EQ(row.detail,
            "source device state ABI 1.2.0; host2's device model reads 1.1.0 "
            "(needs major 1, minor >= 2)");
}

TEST(EmulationTest, VramAboveTheLimitIsRefusedWithBothSizes) {
  Vm vm;
  vm.AddEmulated("emu0").setVramBytes(256 * kMiB);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  CompatRow row = Row(r, 0, "vram");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "source needs 256 MiB of VRAM; host2 offers emulated devices up "
            "to 128 MiB");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.ToStatus(),
            absl::FailedPreconditionError(
                "device 0 (emu0): vram: source needs 256 MiB of VRAM; host2 "
                "offers emulated devices up to 128 MiB"));
}

TEST(EmulationTest, VramAtTheLimitFits) {
  Vm vm;
  vm.AddEmulated("emu0").setVramBytes(128 * kMiB);
  EXPECT_TRUE(Row(CheckCompatibility(vm.devices(), Host2()), 0, "vram").ok);
  Vm odd;
  odd.AddEmulated("emu0").setVramBytes(128 * kMiB + 1);
  CompatRow row = Row(CheckCompatibility(odd.devices(), Host2()), 0, "vram");
  EXPECT_FALSE(row.ok);
  EXPECT_THAT(row.detail, HasSubstr("134217729 bytes"));
}

// --- API forwarding ---

TEST(ApiForwardingTest, EveryRulePassesWithAMatchingBackend) {
  Vm vm;
  vm.AddForwarded("sess0");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_THAT(Rules(r, 0), ElementsAre("backend", "wrapper-abi", "features",
                                       "device-memory"));
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
  EXPECT_THAT(Row(r, 0, "backend").detail,
              HasSubstr("vgpu-opencl on pocl/pthread-cpu"));
}

TEST(ApiForwardingTest, NoBackendForTheWrapperEndsTheChecks) {
  Vm vm;
  vm.AddForwarded("sess0").setWrapperName("vgpu-cuda");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 0), ElementsAre("backend"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.rows[0].detail,
            "source session uses wrapper vgpu-cuda; host2 has no backend for "
            "it (backends: vgpu-opencl)");
}

TEST(ApiForwardingTest, WrapperAbiRule) {
  for (auto [major, minor, ok] : {std::tuple{2u, 3u, true},
                                  {2u, 1u, true},
                                  {2u, 4u, false},
                                  {1u, 0u, false},
                                  {3u, 0u, false}}) {
    Vm vm;
    auto abi = vm.AddForwarded("sess0").initWrapperAbi();
    abi.setMajor(major);
    abi.setMinor(minor);
    CompatRow row =
        Row(CheckCompatibility(vm.devices(), Host2()), 0, "wrapper-abi");
    EXPECT_EQ(row.ok, ok) << row.detail;
    EXPECT_THAT(row.detail, HasSubstr("host2's backend speaks 2.3.0"));
  }
}

TEST(ApiForwardingTest, MissingFeaturesAreListed) {
  Vm vm;
  auto req = vm.AddForwarded("sess0").initRequiredFeatures(4);
  req.set(0, "fp64");
  req.set(1, "svm");
  req.set(2, "fp16");
  req.set(3, "subgroups");
  CompatRow row = Row(CheckCompatibility(vm.devices(), Host2()), 0, "features");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "host2's backend lacks fp16, subgroups (the session requires "
            "fp64, svm, fp16, subgroups)");
}

// A program built from a binary replays only on the device the binary is
// for: the session requires "cl-binary:<device>", and a backend offers it
// for its own device (config forwarding.device).
TEST(ApiForwardingTest, ProgramBinariesNeedTheSameDevice) {
  Vm vm;
  vm.AddForwarded("sess0").initRequiredFeatures(1).set(
      0, "cl-binary:pthread-skylake");
  HostProfile host = Host2();
  host.api_forwarding[0].features.push_back("cl-binary:pthread-haswell");
  CompatRow row = Row(CheckCompatibility(vm.devices(), host), 0, "features");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "host2's backend lacks cl-binary:pthread-skylake (the session "
            "requires cl-binary:pthread-skylake)");
  host.api_forwarding[0].features.push_back("cl-binary:pthread-skylake");
  EXPECT_TRUE(Row(CheckCompatibility(vm.devices(), host), 0, "features").ok);
}

TEST(ApiForwardingTest, NoRequiredFeaturesPasses) {
  Vm vm;
  vm.AddForwarded("sess0").initRequiredFeatures(0);
  HostProfile host = Host2();
  host.api_forwarding[0].features.clear();
  CompatRow row = Row(CheckCompatibility(vm.devices(), host), 0, "features");
  EXPECT_TRUE(row.ok);
}

TEST(ApiForwardingTest, DeviceMemoryRule) {
  Vm vm;
  vm.AddForwarded("sess0").setVramBytes(6 * kGiB);
  HostProfile host = Host2();
  CompatRow row =
      Row(CheckCompatibility(vm.devices(), host), 0, "device-memory");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail, "session holds 6 GiB; host2's backend gives 4 GiB");
  // 0: the backend declares no limit.
  host.api_forwarding[0].memory_bytes = 0;
  row = Row(CheckCompatibility(vm.devices(), host), 0, "device-memory");
  EXPECT_TRUE(row.ok) << row.detail;
}

TEST(ApiForwardingTest, SessionsOnOneBackendShareItsMemory) {
  Vm vm;
  vm.AddForwarded("sess0").setVramBytes(3 * kGiB);
  vm.AddForwarded("sess1").setVramBytes(2 * kGiB);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_TRUE(Row(r, 0, "device-memory").ok);
  CompatRow second = Row(r, 1, "device-memory");
  EXPECT_FALSE(second.ok);
  EXPECT_EQ(second.detail,
            "session holds 2 GiB; host2's backend gives 4 GiB, 3 GiB of it "
            "taken by device 0");
  // A second backend of the same wrapper takes the overflow.
  HostProfile host = Host2();
  host.api_forwarding.push_back(Pocl());
  host.api_forwarding.back().vendor = "nvidia";
  r = CheckCompatibility(vm.devices(), host);
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
  EXPECT_THAT(Row(r, 1, "backend").detail,
              HasSubstr("on nvidia/pthread-cpu (2 of 2 for this wrapper)"));
}

TEST(ApiForwardingTest, PicksTheFirstBackendThatPassesEveryRule) {
  Vm vm;
  vm.AddForwarded("sess0");
  HostProfile host = Host2();
  ApiForwardingOffer poor = Pocl();
  poor.vendor = "poor";
  poor.features = {"fp64"};  // lacks "images"
  host.api_forwarding.insert(host.api_forwarding.begin(), poor);
  CompatReport r = CheckCompatibility(vm.devices(), host);
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
  EXPECT_THAT(Row(r, 0, "backend").detail, HasSubstr("on pocl/pthread-cpu"));

  // None passes: the first one's rows say what is missing.
  host.api_forwarding[1].abi = {3, 0, 0};
  r = CheckCompatibility(vm.devices(), host);
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(Row(r, 0, "backend").detail, HasSubstr("on poor/pthread-cpu"));
  EXPECT_TRUE(Row(r, 0, "wrapper-abi").ok);
  EXPECT_THAT(Row(r, 0, "features").detail, HasSubstr("lacks images"));
}

// --- mediated ---

TEST(MediatedTest, EveryRulePassesOnAMatchingGpu) {
  Vm vm;
  vm.AddMediated("mdev0");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_THAT(Rules(r, 0), ElementsAre("vendor-type", "driver-branch", "ecc",
                                       "instances", "vram"));
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
}

TEST(MediatedTest, NoGpuOfferingTheTypeEndsTheChecks) {
  Vm vm;
  vm.AddMediated("mdev0", "A100-8C");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 0), ElementsAre("vendor-type"));
  EXPECT_EQ(r.rows[0].detail,
            "source vGPU is nvidia/ampere A100-8C; host2 has no such vGPU "
            "type (types: nvidia/ampere A100-4C)");
}

TEST(MediatedTest, SameTypeNameOnAnotherArchitectureIsRefused) {
  Vm vm;
  vm.AddMediated("mdev0").setArchitecture("hopper");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 0), ElementsAre("vendor-type"));
  EXPECT_FALSE(r.ok());
}

TEST(MediatedTest, DriverBranchSameOrOneNewerNeverOlder) {
  struct Case {
    VersionTriple dst;
    bool ok;
    const char* words;
  } cases[] = {
      {{550, 54, 14}, true, "same branch"},
      {{550, 90, 7}, true, "same branch"},
      {{551, 0, 0}, true, "one branch newer"},
      {{552, 0, 0}, false, "more than one branch newer"},
      {{570, 86, 10}, false, "more than one branch newer"},
      {{550, 54, 13}, false, "older than the source"},
      {{535, 104, 5}, false, "older than the source"},
  };
  for (const Case& c : cases) {
    Vm vm;
    vm.AddMediated("mdev0");
    HostProfile host = Host2();
    host.gpus[0].driver = c.dst;
    CompatRow row =
        Row(CheckCompatibility(vm.devices(), host), 0, "driver-branch");
    EXPECT_EQ(row.ok, c.ok) << row.detail;
    EXPECT_THAT(row.detail, HasSubstr(c.words));
    EXPECT_THAT(row.detail, HasSubstr("source driver 550.54.14 (branch 550)"));
  }
  Vm vm;
  vm.AddMediated("mdev0");
  HostProfile host = Host2();
  host.gpus[0].driver = {570, 86, 10};
  EXPECT_EQ(
      Row(CheckCompatibility(vm.devices(), host), 0, "driver-branch").detail,
      "source driver 550.54.14 (branch 550), host2 570.86.10: more than "
      "one branch newer");
}

TEST(MediatedTest, EccMustMatch) {
  Vm vm;
  vm.AddMediated("mdev0");
  HostProfile host = Host2();
  host.gpus[0].ecc_enabled = false;
  CompatRow row = Row(CheckCompatibility(vm.devices(), host), 0, "ecc");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "source has ECC on; host2 GPU 0 (A100-SXM4-40GB) has ECC off");
}

TEST(MediatedTest, PicksAGpuWhoseEccMatches) {
  Vm vm;
  vm.AddMediated("mdev0");
  HostProfile host = Host2();
  host.gpus[0].ecc_enabled = false;
  host.gpus.push_back(Ampere(1));
  CompatReport r = CheckCompatibility(vm.devices(), host);
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
  EXPECT_THAT(Row(r, 0, "ecc").detail, HasSubstr("host2 GPU 2"));
}

TEST(MediatedTest, FramebufferLargerThanTheGpuIsRefused) {
  Vm vm;
  vm.AddMediated("mdev0").setVramBytes(48 * kGiB);
  CompatRow row = Row(CheckCompatibility(vm.devices(), Host2()), 0, "vram");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "vGPU needs 48 GiB of framebuffer; host2 GPU 0 (A100-SXM4-40GB) "
            "has 40 GiB");
}

TEST(MediatedTest, InstancesOfATypeAreCountedAcrossDevicesAndGpus) {
  Vm vm;
  vm.AddMediated("mdev0");
  vm.AddMediated("mdev1");
  vm.AddMediated("mdev2");
  HostProfile host = Host2();
  host.gpus[0] = Ampere(1);
  host.gpus.push_back(Ampere(1));
  CompatReport r = CheckCompatibility(vm.devices(), host);
  for (int d = 0; d < 3; ++d) {
    CompatRow row = Row(r, d, "instances");
    EXPECT_FALSE(row.ok);
    EXPECT_EQ(row.detail,
              "the VM needs 3 A100-4C instances (devices 0, 1, 2); host2 has "
              "2 free on 2 GPUs");
  }
  host.gpus.back() = Ampere(2);
  r = CheckCompatibility(vm.devices(), host);
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
}

TEST(MediatedTest, SeveralVfioDevicesEachNeedTheP2pStates) {
  Vm vm;
  vm.AddMediated("mdev0");
  CompatReport one = CheckCompatibility(vm.devices(), Host2());
  EXPECT_THAT(Rules(one, 0), Not(Contains("p2p"))) << "one device needs none";
  vm.AddMediated("mdev1").initFeatures(1).set(0, "vfio-migration-v2");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Row(r, 0, "p2p").ok);
  CompatRow refused = Row(r, 1, "p2p");
  EXPECT_FALSE(refused.ok);
  EXPECT_EQ(refused.detail,
            "the VM has 2 VFIO devices, which must all stop peer-to-peer DMA "
            "before any stops; this device's driver has no P2P states");
  EXPECT_THAT(r.ToStatus().message(), HasSubstr("device 1 (mdev1): p2p"));
}

TEST(MediatedTest, EachTypeHasItsOwnPool) {
  Vm vm;
  vm.AddMediated("mdev0");
  vm.AddMediated("mdev1");
  vm.AddMediated("mdev2", "A100-8C");
  HostProfile host = Host2();
  host.gpus[0] = Ampere(2);
  host.gpus[0].free_instances["A100-8C"] = 0;
  CompatReport r = CheckCompatibility(vm.devices(), host);
  EXPECT_TRUE(Row(r, 0, "instances").ok);
  EXPECT_TRUE(Row(r, 1, "instances").ok);
  CompatRow row = Row(r, 2, "instances");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "the VM needs 1 A100-8C instance (device 2); host2 has 0 free on "
            "1 GPU");
}

// --- direct pass-through ---

TEST(PassthroughTest, WithoutDriverMigrationIsRefusedWithASnapshotNote) {
  Vm vm;
  vm.AddEmulated("emu0");
  vm.AddForwarded("sess0");
  vm.AddPassthrough("0000:3b:00.0", false);
  vm.AddPassthrough("0000:3c:00.0", false);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 2), ElementsAre("migration-support"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(Row(r, 2, "migration-support").detail,
            "device 0000:3b:00.0 (nvidia H100-80GB-HBM3) is passed through "
            "whole and its driver offers no migration (VFIO migration v2)");
  // One note for the session, however many devices block the VM.
  EXPECT_THAT(r.notes,
              ElementsAre("the API-forwarding session on device 1 can still "
                          "be saved with `vgpu-migrate snapshot`"));
  EXPECT_EQ(r.ToStatus().message(),
            "device 2 (0000:3b:00.0): migration-support: device 0000:3b:00.0 "
            "(nvidia H100-80GB-HBM3) is passed through whole and its driver "
            "offers no migration (VFIO migration v2)");
}

TEST(PassthroughTest, NoNoteWithoutApiForwarding) {
  Vm vm;
  vm.AddPassthrough("0000:3b:00.0", false);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.notes.empty());
}

TEST(PassthroughTest, MigratableGpuFollowsTheGpuRules) {
  Vm vm;
  vm.AddPassthrough("0000:3b:00.0", true);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_THAT(Rules(r, 0),
              ElementsAre("board-type", "migration-support", "driver-branch",
                          "ecc", "instances", "vram"));
  EXPECT_TRUE(r.ok()) << FormatReportTable(r);
}

TEST(PassthroughTest, DestinationGpuMustOfferMigration) {
  Vm vm;
  vm.AddPassthrough("0000:3b:00.0", true);
  HostProfile host = Host2();
  host.gpus[1].migration_capable = false;
  CompatReport r = CheckCompatibility(vm.devices(), host);
  ASSERT_THAT(Rules(r, 0), ElementsAre("board-type", "migration-support"));
  CompatRow row = Row(r, 0, "migration-support");
  EXPECT_FALSE(row.ok);
  EXPECT_THAT(row.detail, HasSubstr("host2 has 0 of 1 H100-80GB-HBM3 GPU"));
}

TEST(PassthroughTest, OtherBoardOfTheSameArchitectureIsRefused) {
  Vm vm;
  vm.AddPassthrough("0000:3b:00.0", true).setBoardType("H100-NVL");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 0), ElementsAre("board-type"));
  EXPECT_EQ(r.rows[0].detail,
            "source GPU is nvidia/hopper H100-NVL; host2 has no such GPU "
            "(GPUs: nvidia/ampere A100-SXM4-40GB, nvidia/hopper "
            "H100-80GB-HBM3)");
}

TEST(PassthroughTest, EachWholeGpuNeedsItsOwnDestinationGpu) {
  Vm vm;
  vm.AddPassthrough("0000:3b:00.0", true);
  vm.AddPassthrough("0000:3c:00.0", true);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  CompatRow row = Row(r, 1, "instances");
  EXPECT_FALSE(row.ok);
  EXPECT_EQ(row.detail,
            "the VM passes through 2 whole H100-80GB-HBM3 GPUs (devices 0, "
            "1); host2 has 1 that can take one");
  HostProfile host = Host2();
  host.gpus.push_back(Hopper(true));
  EXPECT_TRUE(CheckCompatibility(vm.devices(), host).ok());
}

// --- whole VM ---

TEST(CompatTest, UnknownStrategyIsRefused) {
  Vm vm;
  vm.Add(Strategy::UNKNOWN, "x0");
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  ASSERT_THAT(Rules(r, 0), ElementsAre("strategy"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.rows[0].detail, "strategy unknown is not supported");
}

TEST(CompatTest, VmWithoutDevicesIsRefused) {
  CompatReport r = CheckCompatibility({}, Host2());
  ASSERT_EQ(r.rows.size(), 1u);
  EXPECT_EQ(r.rows[0].device, -1);
  EXPECT_EQ(r.rows[0].rule, "devices");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.ToStatus(), absl::FailedPreconditionError(
                              "vm: devices: the VM has no vGPUs registered"));
}

TEST(CompatTest, StatusNamesTheFirstRefusedRow) {
  Vm vm;
  vm.AddEmulated("emu0");
  vm.AddMediated("mdev0").setEccEnabled(false);
  vm.AddEmulated("emu1").setVramBytes(kGiB);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.ToStatus().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.ToStatus().message()),
              HasSubstr("device 1 (mdev0): ecc: source has ECC off"));
}

TEST(CompatTest, TableHasAlignedColumnsNotesAndVerdict) {
  Vm vm;
  vm.AddForwarded("sess0");
  vm.AddPassthrough("0000:3b:00.0", false);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  const std::string table = FormatReportTable(r);
  std::vector<std::string> lines = absl::StrSplit(table, '\n');
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines[0].rfind("DEVICE", 0), 0u) << table;
  const size_t rule_col = lines[0].find("RULE");
  const size_t result_col = lines[0].find("RESULT");
  EXPECT_EQ(lines[1].substr(rule_col, 7), "backend") << table;
  EXPECT_EQ(lines[1].substr(result_col, 3), "ok ") << table;
  EXPECT_EQ(lines[5].substr(0, 16), "1 (0000:3b:00.0)") << table;
  EXPECT_EQ(lines[5].substr(rule_col, 17), "migration-support") << table;
  EXPECT_EQ(lines[5].substr(result_col, 7), "REFUSED") << table;
  EXPECT_THAT(table, HasSubstr("\nnote: the API-forwarding session on device "
                               "0 can still be saved"));
  EXPECT_THAT(table, HasSubstr("\nrefused: 1 of 5 checks failed\n"));

  Vm good;
  good.AddEmulated("emu0");
  const std::string ok_table =
      FormatReportTable(CheckCompatibility(good.devices(), Host2()));
  EXPECT_THAT(ok_table, HasSubstr("\ncompatible: vm can move to host2\n"));
  EXPECT_THAT(ok_table, Not(HasSubstr("REFUSED")));
}

// --- JSON ---

void ExpectSameReport(const CompatReport& a, const CompatReport& b) {
  EXPECT_EQ(a.destination, b.destination);
  EXPECT_EQ(a.notes, b.notes);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  for (size_t i = 0; i < a.rows.size(); ++i) {
    EXPECT_EQ(a.rows[i].device, b.rows[i].device);
    EXPECT_EQ(a.rows[i].instance, b.rows[i].instance);
    EXPECT_EQ(a.rows[i].strategy, b.rows[i].strategy);
    EXPECT_EQ(a.rows[i].rule, b.rows[i].rule);
    EXPECT_EQ(a.rows[i].ok, b.rows[i].ok);
    EXPECT_EQ(a.rows[i].detail, b.rows[i].detail);
  }
}

TEST(ReportJsonTest, RoundTrips) {
  Vm vm;
  vm.AddForwarded("sess0");
  vm.AddPassthrough("0000:3b:00.0", false);
  CompatReport r = CheckCompatibility(vm.devices(), Host2());
  json j = ReportToJson(r);
  EXPECT_EQ(j["destination"], "host2");
  EXPECT_EQ(j["compatible"], false);
  EXPECT_EQ(j["rows"][4]["rule"], "migration-support");
  EXPECT_EQ(j["rows"][4]["device"], 1);
  EXPECT_EQ(j["rows"][4]["instance"], "0000:3b:00.0");
  EXPECT_EQ(j["rows"][4]["strategy"], "directPassthrough");
  EXPECT_EQ(j["rows"][4]["ok"], false);
  EXPECT_EQ(j["notes"].size(), 1u);

  CompatReport back;
  ASSERT_TRUE(ReportFromJson(json::parse(j.dump()), &back).ok());
  ExpectSameReport(r, back);
}

TEST(ReportJsonTest, ErrorsNameTheField) {
  Vm vm;
  vm.AddEmulated("emu0");
  const json good = ReportToJson(CheckCompatibility(vm.devices(), Host2()));
  struct Case {
    std::function<void(json&)> damage;
    const char* message;
  } cases[] = {
      {[](json& j) { j["rows"][1]["ok"] = "yes"; },
       "rows[1].ok: expected true or false"},
      {[](json& j) { j["rows"][0]["device"] = -2; },
       "rows[0].device: expected an integer in -1..1048576"},
      {[](json& j) { j["rows"][2]["colour"] = 1; },
       "rows[2].colour: unknown key"},
      {[](json& j) { j["rows"] = json::object(); }, "rows: expected a list"},
      {[](json& j) { j["notes"][0] = 7; }, "notes[0]: expected a string"},
      {[](json& j) { j["destination"] = 7; }, "destination: expected a string"},
      {[](json& j) { j["extra"] = true; }, "extra: unknown key"},
      {[](json& j) { j["compatible"] = false; },
       "compatible: says false but the rows say otherwise"},
      {[](json& j) { j = json::array(); }, "expected an object"},
  };
  for (const Case& c : cases) {
    json j = good;
    j["notes"] = {"n"};
    c.damage(j);
    CompatReport out;
    out.destination = "untouched";
    absl::Status s = ReportFromJson(j, &out);
    EXPECT_EQ(s, absl::InvalidArgumentError(c.message)) << j.dump();
    EXPECT_EQ(out.destination, "untouched");
  }
}

TEST(ProfileJsonTest, RoundTripsEveryField) {
  HostProfile p = Host2();
  p.emulation.device_abi = {1, 4, 2};
  p.api_forwarding.push_back(Pocl());
  p.api_forwarding.back().wrapper_name = "vgpu-cuda";
  p.api_forwarding.back().memory_bytes = 0;
  p.gpus[0].free_instances["A100-8C"] = 2;
  const json j = ProfileToJson(p);
  EXPECT_EQ(j["emulation"]["device_abi"], "1.4.2");
  EXPECT_EQ(j["gpus"][0]["driver"], "550.90.7");
  EXPECT_EQ(j["gpus"][0]["free_instances"]["A100-8C"], 2);
  EXPECT_EQ(j["api_forwarding"][0]["abi"], "2.3.0");

  HostProfile back;
  ASSERT_TRUE(ProfileFromJson(json::parse(j.dump()), &back).ok());
  EXPECT_EQ(ProfileToJson(back), j);
  EXPECT_EQ(back.host, "host2");
  EXPECT_EQ(back.emulation.max_vram_bytes, 128 * kMiB);
  EXPECT_EQ(back.api_forwarding[1].wrapper_name, "vgpu-cuda");
  EXPECT_EQ(back.gpus[1].migration_capable, true);
  EXPECT_EQ(back.gpus[0].driver.patch, 7u);
}

TEST(ProfileJsonTest, MissingKeysKeepDefaultsAndShortVersionsParse) {
  HostProfile p;
  ASSERT_TRUE(ProfileFromJson(json::parse(R"({
      "host": "h",
      "emulation": {"available": true, "device_abi": "2.1"},
      "gpus": [{"vendor": "nvidia", "driver": "535.104"}]})"),
                              &p)
                  .ok());
  EXPECT_EQ(p.host, "h");
  EXPECT_TRUE(p.emulation.available);
  EXPECT_EQ(p.emulation.vendor, "vgpu-migrate");
  EXPECT_EQ(p.emulation.max_vram_bytes, 0u);
  EXPECT_EQ(p.emulation.device_abi.major, 2u);
  EXPECT_EQ(p.emulation.device_abi.minor, 1u);
  EXPECT_EQ(p.emulation.device_abi.patch, 0u);
  ASSERT_EQ(p.gpus.size(), 1u);
  EXPECT_EQ(p.gpus[0].driver.major, 535u);
  EXPECT_EQ(p.gpus[0].driver.minor, 104u);
  EXPECT_FALSE(p.gpus[0].ecc_enabled);
  EXPECT_TRUE(p.api_forwarding.empty());
}

TEST(ProfileJsonTest, ErrorsNameThePath) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {R"({"gpus": [{}, {"driver": "550"}]})",
       "gpus[1].driver: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"gpus": [{"driver": "550.x.1"}]})",
       "gpus[0].driver: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"gpus": [{"driver": 550}]})",
       "gpus[0].driver: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"gpus": [{"driver": "1.2.3.4"}]})",
       "gpus[0].driver: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"gpus": [{"colour": "green"}]})", "gpus[0].colour: unknown key"},
      {R"({"gpus": [{"free_instances": {"A100-4C": -1}}]})",
       "gpus[0].free_instances.A100-4C: expected a non-negative integer"},
      {R"({"gpus": [{"free_instances": [1]}]})",
       "gpus[0].free_instances: expected an object of vGPU type -> count"},
      {R"({"gpus": [{"vram_bytes": 1.5}]})",
       "gpus[0].vram_bytes: expected a non-negative integer"},
      {R"({"emulation": {"max_vram_bytes": -1}})",
       "emulation.max_vram_bytes: expected a non-negative integer"},
      {R"({"emulation": {"available": "yes"}})",
       "emulation.available: expected true or false"},
      {R"({"emulation": []})", "emulation: expected an object"},
      {R"({"api_forwarding": [{"features": ["a", 2]}]})",
       "api_forwarding[0].features[1]: expected a string"},
      {R"({"api_forwarding": [{"abi": "x"}]})",
       "api_forwarding[0].abi: expected \"MAJOR.MINOR[.PATCH]\""},
      {R"({"hostname": "h"})", "hostname: unknown key"},
      {R"([])", "expected an object"},
  };
  for (const Case& c : cases) {
    HostProfile p;
    p.host = "untouched";
    EXPECT_EQ(ProfileFromJson(json::parse(c.text), &p),
              absl::InvalidArgumentError(c.message))
        << c.text;
    EXPECT_EQ(p.host, "untouched");
  }
}

}  // namespace
}  // namespace vgpu::migrator
