#include "state-codecs/message.h"

#include <capnp/dynamic.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::codec {

std::vector<uint8_t> EncodeMessageBytes(capnp::MessageBuilder& builder) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

namespace internal {
namespace {

bool IsPointerField(capnp::StructSchema::Field field) {
  if (!field.getProto().isSlot()) return false;  // a group lives inline
  switch (field.getType().which()) {
    case capnp::schema::Type::TEXT:
    case capnp::schema::Type::DATA:
    case capnp::schema::Type::LIST:
    case capnp::schema::Type::STRUCT:
    case capnp::schema::Type::ANY_POINTER:
    case capnp::schema::Type::INTERFACE:
      return true;
    default:
      return false;
  }
}

// Touches every field the schema knows, the way typed accessors would; Cap'n
// Proto throws on any pointer whose target does not fit the field's type.
// Null pointers read as defaults and need no walk. `budget` counts structs
// and list elements visited: a list of millions of empty structs is cheap
// to encode and must not be expensive to check.
void Walk(const capnp::DynamicValue::Reader& value, int64_t* budget) {
  KJ_REQUIRE(--*budget >= 0, "message is too complex to check");
  switch (value.getType()) {
    case capnp::DynamicValue::STRUCT: {
      capnp::DynamicStruct::Reader s = value.as<capnp::DynamicStruct>();
      auto visit = [&](capnp::StructSchema::Field field) {
        if (IsPointerField(field) && !s.has(field)) return;
        Walk(s.get(field), budget);
      };
      KJ_IF_MAYBE(field, s.which()) { visit(*field); }
      for (capnp::StructSchema::Field field : s.getSchema().getNonUnionFields()) {
        visit(field);
      }
      break;
    }
    case capnp::DynamicValue::LIST: {
      capnp::DynamicList::Reader list = value.as<capnp::DynamicList>();
      KJ_REQUIRE(static_cast<int64_t>(list.size()) <= *budget,
                 "message is too complex to check");
      for (capnp::DynamicValue::Reader element : list) Walk(element, budget);
      break;
    }
    default:  // text and data were checked by get(); scalars need nothing
      break;
  }
}

}  // namespace

absl::Status DecodeIntoBuilder(
    absl::Span<const uint8_t> bytes, const MessageLimits& limits,
    capnp::StructSchema schema,
    void (*copy)(capnp::MessageReader&, capnp::MallocMessageBuilder&),
    capnp::MallocMessageBuilder& out) {
  if (bytes.size() > limits.max_bytes) {
    return absl::DataLossError(absl::StrFormat(
        "message of %u bytes exceeds the %u-byte limit", bytes.size(),
        limits.max_bytes));
  }
  if (bytes.size() < 8 || bytes.size() % 8 != 0) {
    return absl::DataLossError(absl::StrFormat(
        "message length %u is not a positive multiple of 8", bytes.size()));
  }
  // Check the segment table ourselves first, so that a count like
  // 0xFFFFFFFF is refused before Cap'n Proto sizes anything from it.
  uint32_t count_minus_one;
  std::memcpy(&count_minus_one, bytes.data(), 4);
  uint64_t segments = uint64_t{count_minus_one} + 1;
  if (segments > limits.max_segments) {
    return absl::DataLossError(absl::StrFormat(
        "message has %u segments, limit %u", segments, limits.max_segments));
  }
  uint64_t table_words = (4 + 4 * segments + 7) / 8;
  if (table_words * 8 > bytes.size()) {
    return absl::DataLossError("message ends inside its segment table");
  }
  uint64_t body_words = 0;
  for (uint64_t i = 0; i < segments; ++i) {
    uint32_t seg;
    std::memcpy(&seg, bytes.data() + 4 + 4 * i, 4);
    body_words += seg;
  }
  if ((table_words + body_words) * 8 != bytes.size()) {
    return absl::DataLossError(absl::StrFormat(
        "segment table declares %u bytes, message has %u",
        (table_words + body_words) * 8, bytes.size()));
  }

  // Cap'n Proto reads words in place: give it an aligned copy.
  kj::Array<capnp::word> aligned =
      kj::heapArray<capnp::word>(bytes.size() / 8);
  std::memcpy(aligned.begin(), bytes.data(), bytes.size());
  capnp::ReaderOptions options;
  options.nestingLimit = limits.nesting_limit;
  options.traversalLimitInWords =
      uint64_t{limits.traversal_factor} * (bytes.size() / 8) + 64;

  kj::Maybe<kj::Exception> error = kj::runCatchingExceptions([&] {
    capnp::FlatArrayMessageReader reader(aligned, options);
    copy(reader, out);
    // The walk's budget follows the size of the copy, not of the input:
    // the copy is what gets encoded again (a session log, an image), and
    // its bytes must pass this same check when they are read back. Slack
    // in the input must not buy a message a budget its own encoding lacks.
    uint64_t copied_words = 0;
    for (auto segment : out.getSegmentsForOutput()) {
      copied_words += segment.size();
    }
    int64_t budget = static_cast<int64_t>(
        uint64_t{limits.traversal_factor} * copied_words + 64);
    Walk(out.getRoot<capnp::DynamicStruct>(schema).asReader(), &budget);
  });
  KJ_IF_MAYBE(e, error) {
    return absl::DataLossError(
        absl::StrCat("malformed message: ", e->getDescription().cStr()));
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace vgpu::codec
