// What the libvirt hook reads from and writes into a domain's XML: the
// project's metadata element (which vGPUs the VM has, by strategy and
// endpoint, with the source's DeviceDescriptors when a migration carries
// them) and the mdev host devices whose UUIDs are host-local. libvirt
// passes the full domain XML on the hook's stdin; the hook may print a
// rewritten XML. Parsing is libxml2 with network access and entity
// expansion off, and the input bounded. Pure functions; any thread.
//
// The metadata element, in the domain's <metadata>:
//
//   <vgpu:vm xmlns:vgpu="https://vgpu-migrate.dev/xmlns/libvirt/1"
//            source="host1">
//     <vgpu:device strategy="mediated" endpoint="5a7c0f3e-...">
//       <vgpu:descriptor>BASE64 of a DeviceDescriptor message</vgpu:descriptor>
//     </vgpu:device>
//   </vgpu:vm>
//
// `source` names the host whose vgpud holds the vGPUs (its peer name):
// the destination's hook asks its vgpud to pull them from there when
// libvirt migrates the domain, and names itself for the next move.
#ifndef VGPU_MIGRATOR_HOOK_DOMAIN_XML_H_
#define VGPU_MIGRATOR_HOOK_DOMAIN_XML_H_

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/descriptor.capnp.h"

namespace vgpu::hook {

inline constexpr char kNamespace[] = "https://vgpu-migrate.dev/xmlns/libvirt/1";
// Domain XML longer than this is refused before parsing.
inline constexpr size_t kMaxXmlBytes = 4 << 20;

using Descriptor = codec::Message<schema::DeviceDescriptor>;

struct MetaDevice {
  std::string strategy;  // "emulation", "mediated", "directPassthrough", ...
  std::string endpoint;
  std::optional<Descriptor> descriptor;  // when the source wrote one
};

struct DomainInfo {
  std::string name;
  std::string uuid;
  // Present only when the domain carries the project's element.
  std::optional<std::vector<MetaDevice>> vgpus;
  // The metadata's source attribute: the vgpud host holding the vGPUs
  // (empty when the source did not say).
  std::string source;
  // UUIDs of <hostdev mode='subsystem' type='mdev'> devices, in order.
  std::vector<std::string> mdevs;
  // PCI addresses ("0000:3b:00.0") of <hostdev mode='subsystem'
  // type='pci'> devices: whole devices passed through.
  std::vector<std::string> pci_hostdevs;
};

// INVALID_ARGUMENT for XML that does not parse (with libxml2's line and
// message), that is not a <domain>, or whose vGPU element is malformed
// (naming the device and attribute); DATA_LOSS for a descriptor that does
// not decode.
absl::StatusOr<DomainInfo> ReadDomain(const std::string& xml);

// The domain XML with host-local names replaced as `uuid_map` says (mdev
// UUIDs in the hostdev sources, and every metadata endpoint: mdev UUIDs,
// device model sockets, forwarding session controls) and the
// metadata's descriptors set to `descriptors` (by device index) and its
// source attribute to `source`, each when given. UUIDs the map does not
// name stay. Errors as ReadDomain.
absl::StatusOr<std::string> RewriteDomain(
    const std::string& xml, const std::map<std::string, std::string>& uuid_map,
    const std::vector<Descriptor>* descriptors,
    const std::string* source = nullptr);

// The project's metadata element for these devices held by host `source`
// (omitted when empty), without namespace prefixes (virDomainSetMetadata
// puts it in kNamespace), escaped.
std::string MetadataElement(const std::vector<MetaDevice>& devices,
                            const std::string& source = "");

// Whether `name` may be a host name in the metadata: 1-253 of [A-Za-z0-9.-_].
bool IsHostName(const std::string& name);

// Base64 of a descriptor's message, as the metadata carries it, and back
// (bounded by the codec's message limits).
std::string EncodeDescriptor(const Descriptor& d);
absl::StatusOr<Descriptor> DecodeDescriptor(const std::string& base64);

}  // namespace vgpu::hook

#endif  // VGPU_MIGRATOR_HOOK_DOMAIN_XML_H_
