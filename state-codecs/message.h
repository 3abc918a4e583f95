// Message<T>: an owned Cap'n Proto message with root type T, and the bounded
// decoder every Cap'n Proto payload of an image goes through. A decoded
// message has been deep-copied out of the untrusted bytes, so reading it
// later can neither throw nor touch the original buffer.
#ifndef VGPU_STATE_CODECS_MESSAGE_H_
#define VGPU_STATE_CODECS_MESSAGE_H_

#include <capnp/message.h>
#include <capnp/schema.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vgpu::codec {

struct MessageLimits {
  uint32_t max_bytes = 8 << 20;  // encoded size
  uint32_t max_segments = 64;
  int nesting_limit = 16;
  // Words the decoder may visit, as a multiple of the encoded size: bounds
  // the amplification that aliased pointers could cause.
  uint32_t traversal_factor = 4;
};

template <typename T>
class Message {
 public:
  Message() : builder_(std::make_unique<capnp::MallocMessageBuilder>()) {
    builder_->initRoot<T>();
  }
  typename T::Builder mutable_root() { return builder_->getRoot<T>(); }
  typename T::Reader root() const {
    return builder_->getRoot<T>().asReader();
  }
  capnp::MallocMessageBuilder& builder() { return *builder_; }

 private:
  std::unique_ptr<capnp::MallocMessageBuilder> builder_;
};

// The flat, unpacked Cap'n Proto serialisation (segment table + segments).
std::vector<uint8_t> EncodeMessageBytes(capnp::MessageBuilder& builder);

namespace internal {
// Validates the segment table, copies the message into `out` within the
// limits, then reads every field of the copy through `schema` so that a
// pointer of the wrong type (a list where text belongs, text without its
// NUL) fails here and not at some later typed access. Used by DecodeMessage.
absl::Status DecodeIntoBuilder(
    absl::Span<const uint8_t> bytes, const MessageLimits& limits,
    capnp::StructSchema schema,
    void (*copy)(capnp::MessageReader&, capnp::MallocMessageBuilder&),
    capnp::MallocMessageBuilder& out);
}  // namespace internal

// Decodes `bytes` as a message of type T within `limits`. Errors are
// DATA_LOSS with a message saying what is wrong (callers add where).
template <typename T>
absl::StatusOr<Message<T>> DecodeMessage(absl::Span<const uint8_t> bytes,
                                         const MessageLimits& limits) {
  Message<T> msg;
  absl::Status s = internal::DecodeIntoBuilder(
      bytes, limits, capnp::Schema::from<T>(),
      [](capnp::MessageReader& in, capnp::MallocMessageBuilder& out) {
        out.setRoot(in.getRoot<T>());
      },
      msg.builder());
  if (!s.ok()) return s;
  return msg;
}

}  // namespace vgpu::codec

#endif  // VGPU_STATE_CODECS_MESSAGE_H_
