// vgpud's libvirt inventory against libvirt itself: the library's test
// driver (test:///FILE) serves domains from an XML file over a real
// read-only connection, no daemon needed.
#include "migrator/libvirt_inventory.h"

#include <libvirt/libvirt.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "migrator/hook/domain_xml.h"

namespace vgpu::migrator {
namespace {

using ::testing::HasSubstr;

constexpr char kU1[] = "5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01";
constexpr char kU2[] = "5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a02";

std::string DomainXml(const std::string& name, const std::string& inner,
                      int n) {
  return absl::StrFormat(
      "<domain type='test'><name>%s</name>"
      "<uuid>6f1c2a9e-3b7d-4c1e-9a55-0d2f4e8b7c%02d</uuid>"
      "<memory>131072</memory><os><type>hvm</type></os>%s</domain>",
      name, n, inner);
}

std::string Mdev(const std::string& uuid) {
  return absl::StrCat("<devices><hostdev mode='subsystem' type='mdev' "
                      "model='vfio-pci'><source><address uuid='",
                      uuid, "'/></source></hostdev></devices>");
}

std::string Meta(const std::string& strategy, const std::string& endpoint) {
  return absl::StrCat(
      "<metadata><vgpu:vm xmlns:vgpu='https://vgpu-migrate.dev/xmlns/"
      "libvirt/1'><vgpu:device strategy='",
      strategy, "' endpoint='", endpoint, "'/></vgpu:vm></metadata>");
}

// Writes a node file for libvirt's test driver; returns its URI.
std::string Node(const std::vector<std::string>& domains) {
  static int n = 0;
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/node-", ++n, ".xml");
  std::ofstream f(path);
  f << "<node>";
  for (const std::string& d : domains) f << d;
  f << "</node>";
  return "test://" + path;
}

TEST(LibvirtInventory, DomainXmlGivesTheVmsDevices) {
  auto vm = VmFromDomainXml(DomainXml(
      "vm1",
      absl::StrCat(Meta("emulation", "/run/emu.sock"),
                   "<devices><hostdev mode='subsystem' type='mdev'><source>"
                   "<address uuid='", kU1, "'/></source></hostdev>"
                   "<hostdev mode='subsystem' type='pci'><source><address "
                   "domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/>"
                   "</source></hostdev></devices>"),
      1));
  ASSERT_TRUE(vm.ok()) << vm.status();
  EXPECT_EQ(vm->name, "vm1");
  ASSERT_EQ(vm->devices.size(), 3u);
  EXPECT_EQ(vm->devices[0].strategy, "emulation");
  EXPECT_EQ(vm->devices[1].strategy, "mediated");
  EXPECT_EQ(vm->devices[1].endpoint, kU1);
  EXPECT_EQ(vm->devices[2].strategy, "directPassthrough");
  EXPECT_EQ(vm->devices[2].endpoint, "0000:3b:00.1");
  // An mdev the metadata already names is not counted twice.
  vm = VmFromDomainXml(DomainXml(
      "vm2", absl::StrCat(Meta("mediated", kU1), Mdev(kU1)), 2));
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->devices.size(), 1u);
  EXPECT_FALSE(VmFromDomainXml("<domain>").ok());
}

TEST(LibvirtInventory, ScansTheDomainsWithVgpus) {
  auto src = LibvirtSource::Open(Node({
      DomainXml("with-mdev", Mdev(kU1), 1),
      DomainXml("with-meta", Meta("emulation", "/run/x.sock"), 2),
      DomainXml("plain", "", 3),
  }));
  ASSERT_TRUE(src.ok()) << src.status();
  auto vms = (*src)->Scan();
  ASSERT_TRUE(vms.ok()) << vms.status();
  std::vector<std::string> names;
  for (const VmEntry& v : *vms) names.push_back(v.name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("with-mdev", "with-meta"));
}

// A defined but shut-off domain's vGPUs run nowhere: it is dormant, and a
// watcher does not register it (nor drop it, were it registered).
TEST(LibvirtInventory, ShutOffDomainsAreDormant) {
  // test:///default keeps one state per process, shared by connections.
  virConnectPtr rw = virConnectOpen("test:///default");
  ASSERT_NE(rw, nullptr);
  virDomainPtr idle = virDomainDefineXML(
      rw, DomainXml("idle", Meta("emulation", "/run/idle.sock"), 41).c_str());
  ASSERT_NE(idle, nullptr);
  virDomainPtr busy = virDomainCreateXML(
      rw, DomainXml("busy", Meta("emulation", "/run/busy.sock"), 42).c_str(), 0);
  ASSERT_NE(busy, nullptr);
  auto src = LibvirtSource::Open("test:///default", /*read_only=*/true);
  ASSERT_TRUE(src.ok()) << src.status();
  auto vms = (*src)->Scan();
  ASSERT_TRUE(vms.ok()) << vms.status();
  std::map<std::string, bool> dormant;
  for (const VmEntry& v : *vms) dormant[v.name] = v.dormant;
  EXPECT_EQ(dormant, (std::map<std::string, bool>{{"busy", false},
                                                  {"idle", true}}));

  Inventory inv;
  std::vector<std::string> lines;
  InventoryWatcher watcher(
      {"libvirt", "domain"},
      [] { return LibvirtSource::Open("test:///default"); }, absl::Hours(1),
      &inv, [](const VmEntry&) { return absl::OkStatus(); },
      [&](const std::string& l) { lines.push_back(l); });
  ASSERT_TRUE(watcher.SyncOnce().ok());
  EXPECT_TRUE(inv.Get("busy").ok());
  EXPECT_FALSE(inv.Get("idle").ok()) << "dormant: not registered";
  // busy shuts off but stays defined: still known (the hook saves and
  // releases a VM whose domain stopped).
  virDomainPtr kept = virDomainDefineXML(
      rw, DomainXml("busy", Meta("emulation", "/run/busy.sock"), 42).c_str());
  ASSERT_NE(kept, nullptr);
  ASSERT_EQ(virDomainDestroy(busy), 0);
  ASSERT_TRUE(watcher.SyncOnce().ok());
  EXPECT_TRUE(inv.Get("busy").ok()) << "a shut-off domain is not dropped";
  // Undefined: gone.
  ASSERT_EQ(virDomainUndefine(kept), 0);
  ASSERT_TRUE(watcher.SyncOnce().ok());
  EXPECT_FALSE(inv.Get("busy").ok());
  virDomainUndefine(idle);
  virDomainFree(kept);
  virDomainFree(busy);
  virDomainFree(idle);
  virConnectClose(rw);
}

// An incoming migration's domain waits paused for its state: its vGPUs
// arrive through vgpud (or not at all), so the watcher must not make
// blank ones for it, nor for a shut-off domain. A domain paused by a user
// is an ordinary VM. (An outgoing migration's last copy pauses the source
// domain the same way; dormant keeps a registered VM registered.)
TEST(LibvirtInventory, DormantDomains) {
  EXPECT_TRUE(DomainIsDormant(false, VIR_DOMAIN_SHUTOFF, 0));
  EXPECT_TRUE(DomainIsDormant(true, VIR_DOMAIN_PAUSED,
                              VIR_DOMAIN_PAUSED_STARTING_UP));
  EXPECT_TRUE(
      DomainIsDormant(true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_MIGRATION));
  EXPECT_FALSE(DomainIsDormant(true, VIR_DOMAIN_RUNNING, 1));
  EXPECT_FALSE(DomainIsDormant(true, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER));
}

TEST(LibvirtInventory, WritesTheMetadataWithDescriptors) {
  auto src = LibvirtSource::Open(Node({DomainXml("vm1", Mdev(kU1), 1)}),
                                 /*read_only=*/false);
  ASSERT_TRUE(src.ok()) << src.status();
  std::vector<hook::MetaDevice> devs(2);
  devs[0].strategy = "mediated";
  devs[0].endpoint = kU1;
  devs[0].descriptor.emplace();
  devs[0].descriptor->mutable_root().setBoardType("REF-4C & <odd>");
  devs[1].strategy = "emulation";
  devs[1].endpoint = "/run/a'b\"c.sock";
  ASSERT_TRUE((*src)->SetVgpuMetadata("vm1", hook::MetadataElement(devs)).ok());
  auto vms = (*src)->Scan();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  ASSERT_EQ((*vms)[0].devices.size(), 2u);
  EXPECT_EQ((*vms)[0].devices[1].endpoint, "/run/a'b\"c.sock");
  EXPECT_EQ((*src)->SetVgpuMetadata("nope", "<vm/>").code(),
            absl::StatusCode::kNotFound);
  // A read-only connection cannot write.
  auto ro = LibvirtSource::Open(Node({DomainXml("vm1", "", 1)}));
  EXPECT_FALSE((*ro)->SetVgpuMetadata("vm1", "<vm/>").ok());
}

TEST(LibvirtInventory, AnUnreachableLibvirtIsSaidPlainly) {
  auto src = LibvirtSource::Open("test:///no/such/node.xml");
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(src.status().message()),
              HasSubstr("libvirt test:///no/such/node.xml (read-only)"));
}

TEST(LibvirtInventory, WatcherFollowsDomainsThatComeChangeAndGo) {
  const std::string path = ::testing::TempDir() + "/watched.xml";
  auto write = [&](const std::vector<std::string>& domains) {
    std::ofstream f(path);
    f << "<node>";
    for (const std::string& d : domains) f << d;
    f << "</node>";
  };
  write({DomainXml("vm-a", Mdev(kU1), 1),
         DomainXml("vm-b", Meta("emulation", "/run/b"), 2)});
  Inventory inv;
  std::mutex mu;
  std::vector<std::string> log;
  auto logged = [&](const std::string& needle) {
    std::lock_guard<std::mutex> lock(mu);
    int n = 0;
    for (const std::string& l : log) n += l.find(needle) != std::string::npos;
    return n;
  };
  // The watcher's thread makes one pass at start and then sleeps for an
  // hour; the test drives the passes.
  LibvirtWatcher w(
      "test://" + path, absl::Hours(1), &inv,
      [](const VmEntry& vm) {
        for (const VmDevice& d : vm.devices) {
          if (d.endpoint == "/run/bad") {
            return absl::FailedPreconditionError("device /run/bad: no such");
          }
        }
        return absl::OkStatus();
      },
      [&](const std::string& line) {
        std::lock_guard<std::mutex> lock(mu);
        log.push_back(line);
      });
  ASSERT_TRUE(w.SyncOnce().ok());
  ASSERT_TRUE(inv.Get("vm-a").ok());
  ASSERT_TRUE(inv.Get("vm-b").ok());
  EXPECT_EQ(inv.Get("vm-a")->devices[0].endpoint, kU1);
  EXPECT_GE(logged("libvirt: vm=vm-a registered from its domain, 1 vGPU(s)"),
            1);

  // A VM registered by other means is never taken over.
  VmEntry c;
  c.name = "vm-c";
  c.devices.push_back(VmDevice{"emulation", "/run/c", false});
  ASSERT_TRUE(inv.Register(c).ok());

  // vm-a's mdev changes, vm-b goes, vm-c's domain appears, vm-bad cannot
  // be described.
  write({DomainXml("vm-a", Mdev(kU2), 1),
         DomainXml("vm-c", Meta("emulation", "/run/other"), 3),
         DomainXml("vm-bad", Meta("emulation", "/run/bad"), 4)});
  w.Reconnect();
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_EQ(inv.Get("vm-a")->devices[0].endpoint, kU2);
  EXPECT_FALSE(inv.Get("vm-b").ok());
  EXPECT_EQ(inv.Get("vm-c")->devices[0].endpoint, "/run/c");
  EXPECT_FALSE(inv.Get("vm-bad").ok());
  EXPECT_EQ(logged("domain vm-bad not registered: device /run/bad"), 1);
  EXPECT_EQ(logged("vm=vm-b unregistered: its domain is gone"), 1);
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_EQ(logged("domain vm-bad not registered"), 1) << "said once";

  // A VM a job holds is left alone until the job ends.
  ASSERT_TRUE(inv.Acquire("vm-a", "job1").ok());
  write({});
  w.Reconnect();
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_TRUE(inv.Get("vm-a").ok());
  inv.Release("vm-a", "job1");
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_FALSE(inv.Get("vm-a").ok());

  // A VM that vgpud moved away while libvirt still has its domain is not
  // registered again; once the domain is gone and comes back, it is.
  write({DomainXml("vm-d", Mdev(kU1), 5)});
  w.Reconnect();
  ASSERT_TRUE(w.SyncOnce().ok());
  ASSERT_TRUE(inv.Get("vm-d").ok());
  ASSERT_TRUE(inv.Acquire("vm-d", "job2").ok());
  inv.Remove("vm-d", "job2");
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_FALSE(inv.Get("vm-d").ok()) << "moved away: not taken back";
  write({});
  w.Reconnect();
  ASSERT_TRUE(w.SyncOnce().ok());
  write({DomainXml("vm-d", Mdev(kU1), 5)});
  w.Reconnect();
  ASSERT_TRUE(w.SyncOnce().ok());
  EXPECT_TRUE(inv.Get("vm-d").ok()) << "the domain came back";
}

}  // namespace
}  // namespace vgpu::migrator
