// libFuzzer target: the first byte picks the message type (even:
// SectionHeader, odd: SectionIndex), the rest is decoded as that message
// with the default MessageLimits. Whatever the decoder accepts must be safe
// to read in full and must re-encode and decode to the same message.
#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::fuzz {
// walk.cc
uint64_t WalkSectionHeader(schema::SectionHeader::Reader h);
uint64_t WalkSectionIndex(schema::SectionIndex::Reader index);
void RoundTrip(codec::Message<schema::SectionHeader>& m);
void RoundTrip(codec::Message<schema::SectionIndex>& m);
}  // namespace vgpu::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vgpu;
  if (size < 1) return 0;
  const bool index = (data[0] & 1) != 0;
  absl::Span<const uint8_t> bytes = absl::MakeConstSpan(data + 1, size - 1);
  if (index) {
    absl::StatusOr<codec::Message<schema::SectionIndex>> m =
        codec::DecodeMessage<schema::SectionIndex>(bytes,
                                                   codec::MessageLimits{});
    if (!m.ok()) return 0;
    fuzz::WalkSectionIndex(m->root());
    fuzz::RoundTrip(*m);
  } else {
    absl::StatusOr<codec::Message<schema::SectionHeader>> m =
        codec::DecodeMessage<schema::SectionHeader>(bytes,
                                                    codec::MessageLimits{});
    if (!m.ok()) return 0;
    fuzz::WalkSectionHeader(m->root());
    fuzz::RoundTrip(*m);
  }
  return 0;
}
