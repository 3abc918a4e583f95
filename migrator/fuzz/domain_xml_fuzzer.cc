// Fuzzes the libvirt hook's reading of domain XML: libvirt hands the hook
// the domain XML on stdin, and the project's metadata in it was written by
// whoever may define domains. ReadDomain must refuse what it cannot read
// (within its bounds, without fetching or expanding anything); for what it
// accepts, rewriting every host-local name and the source host must give
// XML that reads back to the same devices under their new names. Any
// other outcome is a finding: a crash, a hang, a rewrite that fails, or
// one that changes what it should not.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "migrator/hook/domain_xml.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vgpu::hook::ReadDomain;
  using vgpu::hook::RewriteDomain;
  const std::string xml(reinterpret_cast<const char*>(data), size);
  auto info = ReadDomain(xml);
  if (!info.ok()) return 0;

  std::map<std::string, std::string> names;
  auto rename = [&](const std::string& old) {
    if (!names.count(old)) names[old] = absl::StrCat("renamed-", names.size());
  };
  if (info->vgpus.has_value()) {
    for (const auto& d : *info->vgpus) rename(d.endpoint);
  }
  for (const auto& m : info->mdevs) rename(m);
  const std::string here = "fuzz-host";
  auto out = RewriteDomain(xml, names, nullptr, &here);
  Check(out.ok());
  auto again = ReadDomain(*out);
  Check(again.ok());
  Check(again->name == info->name && again->uuid == info->uuid);
  Check(again->pci_hostdevs == info->pci_hostdevs);
  Check(again->mdevs.size() == info->mdevs.size());
  for (size_t i = 0; i < info->mdevs.size(); ++i) {
    Check(again->mdevs[i] == names.at(info->mdevs[i]));
  }
  Check(again->vgpus.has_value() == info->vgpus.has_value());
  if (info->vgpus.has_value()) {
    Check(again->source == here);
    Check(again->vgpus->size() == info->vgpus->size());
    for (size_t i = 0; i < info->vgpus->size(); ++i) {
      const auto& was = (*info->vgpus)[i];
      const auto& now = (*again->vgpus)[i];
      Check(now.strategy == was.strategy);
      Check(now.endpoint == names.at(was.endpoint));
      Check(now.descriptor.has_value() == was.descriptor.has_value());
    }
  }
  return 0;
}
