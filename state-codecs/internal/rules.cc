#include "state-codecs/internal/rules.h"

#include <set>

#include "absl/strings/str_format.h"

namespace vgpu::codec::internal {
namespace {

// Ranges must be sorted, non-empty, non-overlapping and inside the region.
absl::Status CheckRanges(capnp::List<schema::PageRange>::Reader ranges,
                         uint64_t total_pages, const char* what,
                         uint64_t* pages) {
  uint64_t next_free = 0;
  *pages = 0;
  for (uint32_t i = 0; i < ranges.size(); ++i) {
    uint64_t first = ranges[i].getFirst();
    uint64_t count = ranges[i].getCount();
    if (count == 0 || first < next_free || first > total_pages ||
        count > total_pages - first) {
      return absl::DataLossError(absl::StrFormat(
          "%s range %u (pages %u+%u) is empty, unsorted, overlapping or "
          "outside the region's %u pages",
          what, i, first, count, total_pages));
    }
    next_free = first + count;
    *pages += count;
  }
  return absl::OkStatus();
}

// Present and zero ranges are both sorted: walk them together.
absl::Status CheckDisjoint(capnp::List<schema::PageRange>::Reader a,
                           capnp::List<schema::PageRange>::Reader b) {
  uint32_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    uint64_t a_end = a[i].getFirst() + a[i].getCount();
    uint64_t b_end = b[j].getFirst() + b[j].getCount();
    if (a[i].getFirst() < b_end && b[j].getFirst() < a_end) {
      return absl::DataLossError(absl::StrFormat(
          "present range %u and zero range %u overlap", i, j));
    }
    if (a_end <= b[j].getFirst()) {
      ++i;
    } else {
      ++j;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckManifest(schema::Manifest::Reader m, const Limits& limits) {
  if (m.getMagic() != kImageMagic) {
    return absl::DataLossError(
        absl::StrFormat("manifest magic %016x is wrong", m.getMagic()));
  }
  if (m.getFormatMajor() != kFormatMajor) {
    return absl::UnimplementedError(absl::StrFormat(
        "manifest says format %u.%u; this reader reads %u.x",
        m.getFormatMajor(), m.getFormatMinor(), kFormatMajor));
  }
  if (m.getImageId().size() != 16) {
    return absl::DataLossError(absl::StrFormat(
        "image id has %u bytes, expected 16", m.getImageId().size()));
  }
  if (m.hasParent() && m.getParent().getImageId().size() != 0 &&
      m.getParent().getImageId().size() != 16) {
    return absl::DataLossError("parent image id is not 16 bytes");
  }
  if (m.getChunkSize() < 4096 || m.getChunkSize() > limits.max_chunk_bytes) {
    return absl::DataLossError(absl::StrFormat(
        "chunk size %u outside 4096..%u", m.getChunkSize(),
        limits.max_chunk_bytes));
  }
  std::set<uint32_t> seen;
  for (schema::DeviceEntry::Reader d : m.getDevices()) {
    if (!seen.insert(d.getIndex()).second) {
      return absl::DataLossError(
          absl::StrFormat("device index %u appears twice", d.getIndex()));
    }
  }
  return absl::OkStatus();
}

bool IsKnownSectionKind(schema::SectionHeader::Reader h) {
  switch (h.which()) {
    case schema::SectionHeader::REGISTER_BANK:
    case schema::SectionHeader::MEMORY_REGION:
    case schema::SectionHeader::API_SESSION_LOG:
    case schema::SectionHeader::CONTEXT_IMAGE:
    case schema::SectionHeader::VENDOR_BLOB:
      return true;
  }
  return false;
}

absl::Status CheckSectionHeader(schema::SectionHeader::Reader h,
                                schema::Manifest::Reader m,
                                const Limits& limits) {
  bool device_found = false;
  for (schema::DeviceEntry::Reader d : m.getDevices()) {
    if (d.getIndex() == h.getDevice()) device_found = true;
  }
  if (!device_found) {
    return absl::DataLossError(absl::StrFormat(
        "section refers to device %u, which the manifest does not list",
        h.getDevice()));
  }
  if (h.getDeclaredBytes() > limits.max_section_bytes) {
    return absl::DataLossError(absl::StrFormat(
        "section declares %u bytes, limit %u", h.getDeclaredBytes(),
        limits.max_section_bytes));
  }
  if (!IsKnownSectionKind(h)) {
    return absl::UnimplementedError(absl::StrFormat(
        "section kind %u is unknown to this reader",
        static_cast<unsigned>(h.which())));
  }
  switch (h.which()) {
    case schema::SectionHeader::REGISTER_BANK: {
      auto bank = h.getRegisterBank();
      uint8_t w = bank.getRegisterWidth();
      if (w != 1 && w != 2 && w != 4 && w != 8) {
        return absl::DataLossError(
            absl::StrFormat("register width %u is not 1, 2, 4 or 8", w));
      }
      if (h.getDeclaredBytes() != uint64_t{w} * bank.getRegisterCount()) {
        return absl::DataLossError(absl::StrFormat(
            "register bank declares %u bytes for %u registers of %u bytes",
            h.getDeclaredBytes(), bank.getRegisterCount(), w));
      }
      break;
    }
    case schema::SectionHeader::MEMORY_REGION: {
      auto region = h.getMemoryRegion();
      uint32_t page = region.getPageSize();
      if (page < 512 || page > (1u << 30) || (page & (page - 1)) != 0) {
        return absl::DataLossError(absl::StrFormat(
            "page size %u is not a power of two in 512..1 GiB", page));
      }
      uint64_t total = region.getTotalPages();
      if (total > limits.max_section_bytes / page) {
        return absl::DataLossError(absl::StrFormat(
            "region of %u pages of %u bytes exceeds the section limit",
            total, page));
      }
      uint64_t present = 0, zero = 0;
      absl::Status s =
          CheckRanges(region.getPresentRanges(), total, "present", &present);
      if (s.ok()) s = CheckRanges(region.getZeroRanges(), total, "zero", &zero);
      if (s.ok()) s = CheckDisjoint(region.getPresentRanges(),
                                    region.getZeroRanges());
      if (!s.ok()) return s;
      if (h.getDeclaredBytes() != present * page) {
        return absl::DataLossError(absl::StrFormat(
            "memory region declares %u bytes but its present ranges hold %u",
            h.getDeclaredBytes(), present * page));
      }
      break;
    }
    case schema::SectionHeader::CONTEXT_IMAGE:
    case schema::SectionHeader::API_SESSION_LOG:
    case schema::SectionHeader::VENDOR_BLOB:
      break;
  }
  return absl::OkStatus();
}

}  // namespace vgpu::codec::internal
