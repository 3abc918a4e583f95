// libFuzzer target: arbitrary bytes as an encoded Manifest message, decoded
// with the default MessageLimits the image reader starts from. Whatever the
// decoder accepts must be safe to read in full and must re-encode and decode
// to the same message.
#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

namespace vgpu::fuzz {
// walk.cc
uint64_t WalkManifest(schema::Manifest::Reader m);
void RoundTrip(codec::Message<schema::Manifest>& m);
}  // namespace vgpu::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vgpu;
  absl::StatusOr<codec::Message<schema::Manifest>> m =
      codec::DecodeMessage<schema::Manifest>(absl::MakeConstSpan(data, size),
                                             codec::MessageLimits{});
  if (!m.ok()) return 0;
  fuzz::WalkManifest(m->root());
  fuzz::RoundTrip(*m);
  return 0;
}
