// The libvirt hook's view of domain XML: the project's metadata, mdev host
// devices, rewriting for a destination, and every kind of bad input.
#include "migrator/hook/domain_xml.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace vgpu::hook {
namespace {

using ::testing::HasSubstr;

Descriptor MakeDescriptor(const std::string& id) {
  Descriptor d;
  auto r = d.mutable_root();
  r.setStrategy(schema::Strategy::MEDIATED);
  r.setInstanceId(id);
  r.setVendor("vgpu-migrate");
  r.setBoardType("REF-4C");
  r.setVramBytes(64 << 20);
  return d;
}

std::string Domain(const std::string& metadata) {
  return absl::StrCat(R"(<domain type='kvm'>
  <name>vm1</name>
  <uuid>6f1c2a9e-3b7d-4c1e-9a55-0d2f4e8b7c31</uuid>
  <memory unit='MiB'>128</memory>
  )", metadata, R"(
  <devices>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <source><address uuid='5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='pci'>
      <source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>)");
}

std::string Meta(const std::string& devices) {
  return absl::StrCat(
      "<metadata><other:thing xmlns:other='urn:x'/>"
      "<vgpu:vm xmlns:vgpu='https://vgpu-migrate.dev/xmlns/libvirt/1'>",
      devices, "</vgpu:vm></metadata>");
}

TEST(DomainXml, ReadsTheMetadataAndMdevs) {
  const std::string b64 = EncodeDescriptor(MakeDescriptor("mdev-a"));
  auto info = ReadDomain(Domain(Meta(absl::StrCat(
      "<vgpu:device strategy='mediated' "
      "endpoint='5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01'><vgpu:descriptor>",
      b64, "</vgpu:descriptor></vgpu:device>"
      "<vgpu:device strategy='emulation' endpoint='/run/emu.sock'/>"))));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name, "vm1");
  EXPECT_EQ(info->uuid, "6f1c2a9e-3b7d-4c1e-9a55-0d2f4e8b7c31");
  EXPECT_EQ(info->mdevs,
            std::vector<std::string>{"5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01"});
  EXPECT_EQ(info->pci_hostdevs, std::vector<std::string>{"0000:3b:00.0"});
  ASSERT_TRUE(info->vgpus.has_value());
  ASSERT_EQ(info->vgpus->size(), 2u);
  const MetaDevice& d0 = (*info->vgpus)[0];
  EXPECT_EQ(d0.strategy, "mediated");
  ASSERT_TRUE(d0.descriptor.has_value());
  EXPECT_EQ(std::string(d0.descriptor->root().getInstanceId().cStr()), "mdev-a");
  EXPECT_EQ(d0.descriptor->root().getVramBytes(), 64u << 20);
  EXPECT_FALSE((*info->vgpus)[1].descriptor.has_value());
}

TEST(DomainXml, NoMetadataIsNotOurs) {
  auto info = ReadDomain(Domain(""));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->vgpus.has_value());
  // An element of the same name in another namespace is not ours either.
  info = ReadDomain(Domain("<metadata><vm xmlns='urn:other'/></metadata>"));
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->vgpus.has_value());
}

TEST(DomainXml, BadInputSaysWhatAndWhere) {
  struct Case {
    std::string xml;
    absl::StatusCode code;
    std::string message;
  };
  const Case cases[] = {
      {"<domain><name>vm1</name>", absl::StatusCode::kInvalidArgument,
       "does not parse: line 1"},
      {"", absl::StatusCode::kInvalidArgument, "does not parse"},
      {"<network><name>n</name></network>",
       absl::StatusCode::kInvalidArgument, "root element is <network>"},
      {Domain(Meta("<vgpu:device endpoint='x'/>")),
       absl::StatusCode::kInvalidArgument,
       "device 0 lacks its strategy attribute"},
      {Domain(Meta("<vgpu:device strategy='mediated'/>")),
       absl::StatusCode::kInvalidArgument,
       "device 0 lacks its endpoint attribute"},
      {Domain(Meta("<vgpu:gpu/>")), absl::StatusCode::kInvalidArgument,
       "unknown element <gpu>"},
      {Domain(Meta("<vgpu:device strategy='m' endpoint='e'>"
                   "<vgpu:descriptor>!!!</vgpu:descriptor></vgpu:device>")),
       absl::StatusCode::kDataLoss, "device 0: descriptor is not base64"},
      {Domain(Meta("<vgpu:device strategy='m' endpoint='e'>"
                   "<vgpu:descriptor>AAAAAP////8=</vgpu:descriptor>"
                   "</vgpu:device>")),
       absl::StatusCode::kDataLoss, "device 0: descriptor does not decode"},
      {std::string(kMaxXmlBytes + 1, ' '), absl::StatusCode::kInvalidArgument,
       "exceeds"},
      {absl::StrReplaceAll(Domain(""), {{"bus='0x3b'", "bus='0x3b7'"}}),
       absl::StatusCode::kInvalidArgument, "pci hostdev: address out of range"},
      {absl::StrReplaceAll(Domain(""), {{"slot='0x00'", "slot='x'"}}),
       absl::StatusCode::kInvalidArgument, "bad or missing slot 'x'"},
  };
  for (const Case& c : cases) {
    auto info = ReadDomain(c.xml);
    ASSERT_FALSE(info.ok()) << c.message;
    EXPECT_EQ(info.status().code(), c.code) << info.status();
    EXPECT_THAT(std::string(info.status().message()), HasSubstr(c.message));
  }
}

TEST(DomainXml, EntitiesAreNotExpandedAndNothingIsFetched) {
  // An external entity would read a file; with entity expansion off the
  // reference stays a reference and the name keeps no file content.
  auto info = ReadDomain(
      "<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
      "<domain><name>&x;</name></domain>");
  if (info.ok()) {
    EXPECT_THAT(info->name, Not(HasSubstr("root:")));
  }
}

TEST(DomainXml, RewriteMapsMdevUuidsAndSetsDescriptors) {
  const std::string xml = Domain(Meta(
      "<vgpu:device strategy='mediated' "
      "endpoint='5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01'/>"
      "<vgpu:device strategy='emulation' endpoint='/run/emu.sock'/>"));
  std::map<std::string, std::string> map = {
      {"5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01",
       "11111111-2222-4333-8444-555555555555"}};
  std::vector<Descriptor> descs;
  descs.push_back(MakeDescriptor("on-src-0"));
  descs.push_back(MakeDescriptor("on-src-1"));
  auto out = RewriteDomain(xml, map, &descs);
  ASSERT_TRUE(out.ok()) << out.status();
  auto info = ReadDomain(*out);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->mdevs,
            std::vector<std::string>{"11111111-2222-4333-8444-555555555555"});
  ASSERT_EQ(info->vgpus->size(), 2u);
  EXPECT_EQ((*info->vgpus)[0].endpoint, "11111111-2222-4333-8444-555555555555");
  EXPECT_EQ((*info->vgpus)[1].endpoint, "/run/emu.sock") << "not in the map";
  EXPECT_EQ(std::string(
                (*info->vgpus)[1].descriptor->root().getInstanceId().cStr()),
            "on-src-1");
  // Everything else is kept: the PCI hostdev, the other namespace.
  EXPECT_THAT(*out, HasSubstr("bus=\"0x3b\""));
  EXPECT_THAT(*out, HasSubstr("urn:x"));
  // Rewriting again replaces the descriptors rather than adding more.
  auto again = RewriteDomain(*out, {}, &descs);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->size(), out->size());
  EXPECT_FALSE(RewriteDomain("<domain>", map, nullptr).ok());
  // A device model's socket is host-local too.
  auto emu = RewriteDomain(xml, {{"/run/emu.sock", "/run/vgpud/vm1-gpu1.sock"}},
                           nullptr);
  ASSERT_TRUE(emu.ok()) << emu.status();
  EXPECT_EQ((*ReadDomain(*emu)->vgpus)[1].endpoint, "/run/vgpud/vm1-gpu1.sock");
  EXPECT_EQ(ReadDomain(*emu)->mdevs,
            std::vector<std::string>{"5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01"});
}

TEST(DomainXml, TheSourceHostTravelsInTheMetadata) {
  std::vector<MetaDevice> devs(1);
  devs[0].strategy = "mediated";
  devs[0].endpoint = "5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01";
  const std::string element = MetadataElement(devs, "hostA");
  // As virDomainSetMetadata stores it: the element in the namespace.
  const std::string stored = absl::StrReplaceAll(
      element, {{"<vm ", "<vgpu:vm xmlns:vgpu='https://vgpu-migrate.dev/xmlns/"
                          "libvirt/1' "},
                {"<device ", "<vgpu:device "},
                {"</vm>", "</vgpu:vm>"}});
  auto info = ReadDomain(Domain("<metadata>" + stored + "</metadata>"));
  ASSERT_TRUE(info.ok()) << info.status() << "\n" << stored;
  EXPECT_EQ(info->source, "hostA");
  EXPECT_EQ(ReadDomain(Domain(Meta("")))->source, "") << "not said";

  // The destination names itself for the next move.
  const std::string here = "hostB";
  auto out = RewriteDomain(Domain("<metadata>" + stored + "</metadata>"), {},
                           nullptr, &here);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(ReadDomain(*out)->source, "hostB");

  for (const char* bad : {"host A", "a/b", "a:b", "h\xc3\xa9"}) {
    auto refused = ReadDomain(Domain(absl::StrCat(
        "<metadata><vgpu:vm xmlns:vgpu='https://vgpu-migrate.dev/xmlns/"
        "libvirt/1' source='", bad, "'/></metadata>")));
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_THAT(std::string(refused.status().message()),
                HasSubstr("source attribute is not a host name"));
  }
  EXPECT_FALSE(IsHostName(std::string(254, 'a')));
  EXPECT_TRUE(IsHostName("node-7.rack_2.example"));
}

}  // namespace
}  // namespace vgpu::hook
