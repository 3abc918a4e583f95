#include "migrator/hook/domain_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstdlib>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace vgpu::hook {
namespace {

struct DocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

std::string Attr(xmlNode* n, const char* name) {
  xmlChar* v = xmlGetProp(n, X(name));
  if (v == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return out;
}

bool Named(xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE &&
         xmlStrcmp(n->name, X(name)) == 0;
}

bool Ours(xmlNode* n, const char* name) {
  return Named(n, name) && n->ns != nullptr && n->ns->href != nullptr &&
         xmlStrcmp(n->ns->href, X(kNamespace)) == 0;
}

std::string Text(xmlNode* n) {
  xmlChar* v = xmlNodeGetContent(n);
  if (v == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return out;
}

xmlNode* Child(xmlNode* n, const char* name) {
  for (xmlNode* c = n->children; c != nullptr; c = c->next) {
    if (Named(c, name)) return c;
  }
  return nullptr;
}

// Parses without touching the network, without expanding entities and
// without DTD loading; libxml2's own limits on depth and sizes stay on.
absl::StatusOr<Doc> Parse(const std::string& xml) {
  if (xml.size() > kMaxXmlBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "domain XML of %d bytes exceeds %d", xml.size(), kMaxXmlBytes));
  }
  xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
  if (ctxt == nullptr) return absl::ResourceExhaustedError("libxml2 context");
  Doc doc(xmlCtxtReadMemory(ctxt, xml.data(), static_cast<int>(xml.size()),
                            "domain.xml", nullptr,
                            XML_PARSE_NONET | XML_PARSE_NOERROR |
                                XML_PARSE_NOWARNING));
  std::string why;
  if (doc == nullptr) {
    xmlErrorPtr e = xmlCtxtGetLastError(ctxt);
    why = e != nullptr && e->message != nullptr
              ? absl::StrFormat("line %d: %s", e->line,
                                absl::StripTrailingAsciiWhitespace(e->message))
              : "not XML";
  }
  xmlFreeParserCtxt(ctxt);
  if (doc == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("domain XML does not parse: ", why));
  }
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !Named(root, "domain")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a libvirt domain: the root element is <",
        root != nullptr ? reinterpret_cast<const char*>(root->name) : "", ">"));
  }
  return doc;
}

xmlNode* VgpuElement(xmlNode* root) {
  xmlNode* meta = Child(root, "metadata");
  if (meta == nullptr) return nullptr;
  for (xmlNode* c = meta->children; c != nullptr; c = c->next) {
    if (Ours(c, "vm")) return c;
  }
  return nullptr;
}

// <hostdev mode='subsystem' type='mdev'><source><address uuid='...'/>
std::vector<xmlNode*> MdevAddresses(xmlNode* root) {
  std::vector<xmlNode*> out;
  xmlNode* devices = Child(root, "devices");
  if (devices == nullptr) return out;
  for (xmlNode* h = devices->children; h != nullptr; h = h->next) {
    if (!Named(h, "hostdev") || Attr(h, "type") != "mdev") continue;
    xmlNode* source = Child(h, "source");
    xmlNode* address = source != nullptr ? Child(source, "address") : nullptr;
    if (address != nullptr) out.push_back(address);
  }
  return out;
}

// <hostdev mode='subsystem' type='pci'><source><address domain= bus=
// slot= function=/>, as the sysfs name "dddd:bb:ss.f".
absl::StatusOr<std::vector<std::string>> PciHostdevs(xmlNode* root) {
  std::vector<std::string> out;
  xmlNode* devices = Child(root, "devices");
  if (devices == nullptr) return out;
  for (xmlNode* h = devices->children; h != nullptr; h = h->next) {
    if (!Named(h, "hostdev") || Attr(h, "type") != "pci") continue;
    xmlNode* source = Child(h, "source");
    xmlNode* a = source != nullptr ? Child(source, "address") : nullptr;
    if (a == nullptr) continue;
    unsigned long v[4];
    const char* names[4] = {"domain", "bus", "slot", "function"};
    for (int i = 0; i < 4; ++i) {
      const std::string text = Attr(a, names[i]);
      char* end = nullptr;
      v[i] = text.empty() ? (i == 0 ? 0 : ~0ul) : std::strtoul(text.c_str(), &end, 0);
      if (v[i] == ~0ul || (end != nullptr && *end != 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pci hostdev: bad or missing ", names[i], " '", text, "'"));
      }
    }
    if (v[0] > 0xffff || v[1] > 0xff || v[2] > 0x1f || v[3] > 7) {
      return absl::InvalidArgumentError("pci hostdev: address out of range");
    }
    out.push_back(absl::StrFormat("%04x:%02x:%02x.%x", v[0], v[1], v[2], v[3]));
  }
  return out;
}

}  // namespace

std::string EncodeDescriptor(const Descriptor& d) {
  auto& builder = const_cast<Descriptor&>(d).builder();
  std::vector<uint8_t> bytes = codec::EncodeMessageBytes(builder);
  return absl::Base64Escape(absl::string_view(
      reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

absl::StatusOr<Descriptor> DecodeDescriptor(const std::string& base64) {
  std::string bytes;
  if (!absl::Base64Unescape(
          absl::StripAsciiWhitespace(base64), &bytes)) {
    return absl::DataLossError("descriptor is not base64");
  }
  codec::MessageLimits limits;
  limits.max_bytes = 64 << 10;  // a descriptor is a few hundred bytes
  auto d = codec::DecodeMessage<schema::DeviceDescriptor>(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()),
                          bytes.size()),
      limits);
  if (!d.ok()) {
    return absl::DataLossError(
        absl::StrCat("descriptor does not decode: ", d.status().message()));
  }
  return d;
}

bool IsHostName(const std::string& name) {
  if (name.empty() || name.size() > 253) return false;
  for (char ch : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '.' &&
        ch != '-' && ch != '_') {
      return false;
    }
  }
  return true;
}

std::string MetadataElement(const std::vector<MetaDevice>& devices,
                            const std::string& source) {
  Doc doc(xmlNewDoc(X("1.0")));
  xmlNode* vm = xmlNewNode(nullptr, X("vm"));
  xmlDocSetRootElement(doc.get(), vm);
  if (!source.empty()) xmlNewProp(vm, X("source"), X(source.c_str()));
  for (const MetaDevice& d : devices) {
    xmlNode* dev = xmlNewChild(vm, nullptr, X("device"), nullptr);
    xmlNewProp(dev, X("strategy"), X(d.strategy.c_str()));
    xmlNewProp(dev, X("endpoint"), X(d.endpoint.c_str()));
    if (d.descriptor.has_value()) {
      xmlNewTextChild(dev, nullptr, X("descriptor"),
                      X(EncodeDescriptor(*d.descriptor).c_str()));
    }
  }
  xmlBuffer* buf = xmlBufferCreate();
  xmlNodeDump(buf, doc.get(), vm, 0, 0);
  std::string out(reinterpret_cast<const char*>(xmlBufferContent(buf)),
                  xmlBufferLength(buf));
  xmlBufferFree(buf);
  return out;
}

absl::StatusOr<DomainInfo> ReadDomain(const std::string& xml) {
  auto doc = Parse(xml);
  if (!doc.ok()) return doc.status();
  xmlNode* root = xmlDocGetRootElement(doc->get());
  DomainInfo info;
  if (xmlNode* n = Child(root, "name")) info.name = Text(n);
  if (xmlNode* u = Child(root, "uuid")) info.uuid = Text(u);
  for (xmlNode* a : MdevAddresses(root)) info.mdevs.push_back(Attr(a, "uuid"));
  auto pci = PciHostdevs(root);
  if (!pci.ok()) return pci.status();
  info.pci_hostdevs = std::move(*pci);
  xmlNode* vm = VgpuElement(root);
  if (vm == nullptr) return info;
  info.source = Attr(vm, "source");
  if (!info.source.empty() && !IsHostName(info.source)) {
    return absl::InvalidArgumentError(
        "vgpu metadata: the source attribute is not a host name");
  }
  std::vector<MetaDevice> devices;
  int index = 0;
  for (xmlNode* c = vm->children; c != nullptr; c = c->next) {
    if (c->type != XML_ELEMENT_NODE) continue;
    if (!Ours(c, "device")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vgpu metadata: unknown element <",
          reinterpret_cast<const char*>(c->name), ">"));
    }
    MetaDevice d;
    d.strategy = Attr(c, "strategy");
    d.endpoint = Attr(c, "endpoint");
    if (d.strategy.empty() || d.endpoint.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "vgpu metadata: device %d lacks its %s attribute", index,
          d.strategy.empty() ? "strategy" : "endpoint"));
    }
    for (xmlNode* e = c->children; e != nullptr; e = e->next) {
      if (!Ours(e, "descriptor")) continue;
      auto desc = DecodeDescriptor(Text(e));
      if (!desc.ok()) {
        return absl::Status(desc.status().code(),
                            absl::StrFormat("vgpu metadata: device %d: %s",
                                            index, desc.status().message()));
      }
      d.descriptor = std::move(*desc);
    }
    devices.push_back(std::move(d));
    ++index;
  }
  info.vgpus = std::move(devices);
  return info;
}

absl::StatusOr<std::string> RewriteDomain(
    const std::string& xml, const std::map<std::string, std::string>& uuid_map,
    const std::vector<Descriptor>* descriptors, const std::string* source) {
  auto doc = Parse(xml);
  if (!doc.ok()) return doc.status();
  xmlNode* root = xmlDocGetRootElement(doc->get());
  for (xmlNode* a : MdevAddresses(root)) {
    auto it = uuid_map.find(Attr(a, "uuid"));
    if (it != uuid_map.end()) xmlSetProp(a, X("uuid"), X(it->second.c_str()));
  }
  if (xmlNode* vm = VgpuElement(root)) {
    if (source != nullptr) xmlSetProp(vm, X("source"), X(source->c_str()));
    size_t index = 0;
    for (xmlNode* c = vm->children; c != nullptr; c = c->next) {
      if (!Ours(c, "device")) continue;
      auto it = uuid_map.find(Attr(c, "endpoint"));
      if (it != uuid_map.end()) {
        xmlSetProp(c, X("endpoint"), X(it->second.c_str()));
      }
      if (descriptors != nullptr && index < descriptors->size()) {
        // Replace any descriptor with the given one.
        for (xmlNode* e = c->children; e != nullptr;) {
          xmlNode* next = e->next;
          if (Ours(e, "descriptor")) {
            xmlUnlinkNode(e);
            xmlFreeNode(e);
          }
          e = next;
        }
        const std::string b64 = EncodeDescriptor((*descriptors)[index]);
        xmlNewChild(c, c->ns, X("descriptor"), X(b64.c_str()));
      }
      ++index;
    }
  }
  xmlChar* out = nullptr;
  int size = 0;
  xmlDocDumpMemory(doc->get(), &out, &size);
  if (out == nullptr) return absl::InternalError("libxml2 could not write");
  std::string text(reinterpret_cast<const char*>(out), size);
  xmlFree(out);
  return text;
}

}  // namespace vgpu::hook
