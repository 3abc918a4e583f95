// Shared by the fuzz targets: reads every field of a decoded message and
// checks what must hold for any message DecodeMessage accepted. Only .cc
// files live in this directory, so each target declares the functions it
// uses; a mismatch is a link error, not a silent one.
#include <capnp/any.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/types/span.h"
#include "state-codecs/image.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::fuzz {

// Keeps the reads from being optimised away.
volatile uint64_t g_sink = 0;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

namespace {

uint64_t Mix(uint64_t acc, uint64_t v) { return (acc ^ v) * 0x100000001b3ull; }

uint64_t WalkText(capnp::Text::Reader t) {
  uint64_t acc = t.size();
  for (char c : t) acc = Mix(acc, static_cast<uint8_t>(c));
  // Every Text a decoded message hands out is NUL-terminated in place.
  Check(t.cStr()[t.size()] == '\0', "text is not NUL-terminated");
  return acc;
}

uint64_t WalkData(capnp::Data::Reader d) {
  uint64_t acc = d.size();
  for (uint8_t b : d) acc = Mix(acc, b);
  return acc;
}

uint64_t WalkVersion(schema::Version::Reader v) {
  return Mix(Mix(Mix(0, v.getMajor()), v.getMinor()), v.getPatch());
}

uint64_t WalkTextList(capnp::List<capnp::Text>::Reader list) {
  uint64_t acc = list.size();
  for (capnp::Text::Reader t : list) acc = Mix(acc, WalkText(t));
  return acc;
}

uint64_t WalkDescriptor(schema::DeviceDescriptor::Reader d) {
  uint64_t acc = static_cast<uint64_t>(d.getStrategy());
  acc = Mix(acc, WalkText(d.getInstanceId()));
  acc = Mix(acc, WalkText(d.getVendor()));
  acc = Mix(acc, d.getPciVendorId());
  acc = Mix(acc, d.getPciDeviceId());
  acc = Mix(acc, WalkText(d.getArchitecture()));
  acc = Mix(acc, WalkText(d.getBoardType()));
  acc = Mix(acc, WalkVersion(d.getDriverVersion()));
  acc = Mix(acc, WalkText(d.getWrapperName()));
  acc = Mix(acc, WalkVersion(d.getWrapperAbi()));
  acc = Mix(acc, WalkTextList(d.getFeatures()));
  acc = Mix(acc, WalkTextList(d.getRequiredFeatures()));
  acc = Mix(acc, d.getVramBytes());
  acc = Mix(acc, d.getBar0Bytes());
  acc = Mix(acc, d.getContextCount());
  acc = Mix(acc, d.getEccEnabled());
  acc = Mix(acc, d.getMigrationCapable());
  return acc;
}

uint64_t WalkRanges(capnp::List<schema::PageRange>::Reader ranges) {
  uint64_t acc = ranges.size();
  for (schema::PageRange::Reader r : ranges) {
    acc = Mix(Mix(acc, r.getFirst()), r.getCount());
  }
  return acc;
}

template <typename Reader>
uint64_t TotalWords(Reader r) {
  capnp::MessageSize size = r.totalSize();
  Check(size.capCount == 0, "decoded message holds capabilities");
  return size.wordCount;
}

// Re-encodes a decoded message and decodes the bytes again with no practical
// limits: EncodeMessageBytes output must always decode, to an equal message.
template <typename T>
void RoundTripT(codec::Message<T>& msg) {
  std::vector<uint8_t> bytes = codec::EncodeMessageBytes(msg.builder());
  codec::MessageLimits loose;
  loose.max_bytes = UINT32_MAX;
  loose.max_segments = 1 << 16;
  loose.nesting_limit = 1 << 10;
  // The copy may be much smaller than the input it came from (padding,
  // zero-sized list elements), so bound nothing by its size.
  loose.traversal_factor = 1u << 30;
  absl::StatusOr<codec::Message<T>> again =
      codec::DecodeMessage<T>(bytes, loose);
  if (!again.ok()) {
    std::fprintf(stderr, "re-decode failed: %s\n",
                 again.status().ToString().c_str());
  }
  Check(again.ok(), "re-encoded message does not decode");
  Check(capnp::AnyStruct::Reader(msg.root()) ==
            capnp::AnyStruct::Reader(again->root()),
        "re-encoded message decodes to a different message");
}

}  // namespace

uint64_t WalkManifest(schema::Manifest::Reader m) {
  uint64_t acc = TotalWords(m);
  acc = Mix(acc, m.getMagic());
  acc = Mix(acc, m.getFormatMajor());
  acc = Mix(acc, m.getFormatMinor());
  acc = Mix(acc, WalkData(m.getImageId()));
  acc = Mix(acc, static_cast<uint64_t>(m.getKind()));
  if (m.hasCreation()) {
    auto c = m.getCreation();
    acc = Mix(acc, WalkText(c.getTool()));
    acc = Mix(acc, WalkText(c.getHostName()));
    acc = Mix(acc, static_cast<uint64_t>(c.getCreatedUnixNanos()));
  }
  auto vm = m.getVm();  // the default struct when unset
  acc = Mix(acc, WalkText(vm.getName()));
  acc = Mix(acc, WalkText(vm.getUuid()));
  auto devices = m.getDevices();
  acc = Mix(acc, devices.size());
  for (schema::DeviceEntry::Reader d : devices) {
    acc = Mix(acc, d.getIndex());
    acc = Mix(acc, d.hasDescriptor());
    acc = Mix(acc, WalkDescriptor(d.getDescriptor()));
  }
  auto parent = m.getParent();
  acc = Mix(acc, WalkData(parent.getImageId()));
  acc = Mix(acc, WalkText(parent.getName()));
  acc = Mix(acc, m.getChunkSize());
  acc = Mix(acc, static_cast<uint64_t>(m.getZstdLevel()));
  g_sink = g_sink + acc;
  return acc;
}

uint64_t WalkSectionHeader(schema::SectionHeader::Reader h) {
  uint64_t acc = TotalWords(h);
  acc = Mix(acc, h.getId());
  acc = Mix(acc, h.getDevice());
  acc = Mix(acc, WalkText(h.getName()));
  acc = Mix(acc, h.getCritical());
  acc = Mix(acc, h.getRound());
  acc = Mix(acc, h.getDeclaredBytes());
  const char* kind = codec::SectionKindName(h.which());
  Check(kind != nullptr, "SectionKindName returned null");
  acc = Mix(acc, static_cast<uint64_t>(kind[0]));
  switch (h.which()) {
    case schema::SectionHeader::REGISTER_BANK: {
      auto b = h.getRegisterBank();
      acc = Mix(Mix(acc, b.getRegisterWidth()), b.getRegisterCount());
      break;
    }
    case schema::SectionHeader::MEMORY_REGION: {
      auto r = h.getMemoryRegion();
      acc = Mix(acc, r.getPageSize());
      acc = Mix(acc, r.getTotalPages());
      acc = Mix(acc, WalkRanges(r.getPresentRanges()));
      acc = Mix(acc, WalkRanges(r.getZeroRanges()));
      break;
    }
    case schema::SectionHeader::API_SESSION_LOG: {
      auto l = h.getApiSessionLog();
      acc = Mix(acc, static_cast<uint64_t>(l.getApi()));
      acc = Mix(acc, WalkVersion(l.getAbi()));
      acc = Mix(acc, l.getEntryCount());
      break;
    }
    case schema::SectionHeader::CONTEXT_IMAGE: {
      auto c = h.getContextImage();
      acc = Mix(acc, c.getContextId());
      acc = Mix(acc, WalkText(c.getEngine()));
      acc = Mix(acc, c.getImageFormat());
      break;
    }
    case schema::SectionHeader::VENDOR_BLOB: {
      auto v = h.getVendorBlob();
      acc = Mix(acc, WalkText(v.getVendor()));
      acc = Mix(acc, WalkText(v.getBlobType()));
      break;
    }
    default:  // a discriminant from a newer schema
      acc = Mix(acc, static_cast<uint64_t>(h.which()));
      break;
  }
  g_sink = g_sink + acc;
  return acc;
}

uint64_t WalkSectionIndex(schema::SectionIndex::Reader index) {
  uint64_t acc = TotalWords(index);
  auto entries = index.getEntries();
  acc = Mix(acc, entries.size());
  for (schema::IndexEntry::Reader e : entries) {
    acc = Mix(acc, e.getId());
    acc = Mix(acc, e.getDevice());
    acc = Mix(acc, WalkText(e.getName()));
    acc = Mix(acc, e.getKind());
    acc = Mix(acc, e.getBeginOffset());
    acc = Mix(acc, e.getRawBytes());
    acc = Mix(acc, e.getStoredBytes());
    acc = Mix(acc, e.getChunkCount());
    acc = Mix(acc, e.getDigest());
  }
  g_sink = g_sink + acc;
  return acc;
}

void RoundTrip(codec::Message<schema::Manifest>& m) { RoundTripT(m); }
void RoundTrip(codec::Message<schema::SectionHeader>& m) { RoundTripT(m); }
void RoundTrip(codec::Message<schema::SectionIndex>& m) { RoundTripT(m); }

}  // namespace vgpu::fuzz
