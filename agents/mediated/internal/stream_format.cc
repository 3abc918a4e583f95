#include "agents/mediated/internal/stream_format.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"

namespace vgpu::agents::mediated::stream {
namespace {

void Put16(std::vector<uint8_t>* out, uint16_t v) {
  uint8_t b[2];
  absl::little_endian::Store16(b, v);
  out->insert(out->end(), b, b + 2);
}
void Put32(std::vector<uint8_t>* out, uint32_t v) {
  uint8_t b[4];
  absl::little_endian::Store32(b, v);
  out->insert(out->end(), b, b + 4);
}
void Put64(std::vector<uint8_t>* out, uint64_t v) {
  uint8_t b[8];
  absl::little_endian::Store64(b, v);
  out->insert(out->end(), b, b + 8);
}

constexpr size_t kShapeFixedBytes = 4 + 8 + 4 * 6 + 2;
constexpr size_t kMaxTypeName = 64;

}  // namespace

const char* RecordTypeName(RecordType t) {
  switch (t) {
    case RecordType::kDevice:
      return "device";
    case RecordType::kContext:
      return "context";
    case RecordType::kVramPages:
      return "vram-pages";
    case RecordType::kVramZero:
      return "vram-zero";
    case RecordType::kEnd:
      return "end";
  }
  return "?";
}

uint64_t DeviceShape::context_image_bytes() const {
  // registers, ring head and tail, ring slots, GTT, save area.
  return uint64_t{registers} * 8 + 8 + uint64_t{ring_slots} * 32 +
         uint64_t{gtt_entries} * 8 + save_area_bytes;
}

bool DeviceShape::operator==(const DeviceShape& o) const {
  return type == o.type && contexts == o.contexts &&
         vram_bytes == o.vram_bytes && page_size == o.page_size &&
         registers == o.registers && ring_slots == o.ring_slots &&
         gtt_entries == o.gtt_entries && save_area_bytes == o.save_area_bytes;
}

std::vector<uint8_t> EncodeShape(const DeviceShape& s) {
  std::vector<uint8_t> out;
  Put32(&out, s.contexts);
  Put64(&out, s.vram_bytes);
  Put32(&out, s.page_size);
  Put32(&out, s.registers);
  Put32(&out, s.ring_slots);
  Put32(&out, s.gtt_entries);
  Put32(&out, s.save_area_bytes);
  Put32(&out, 0);  // reserved
  Put16(&out, static_cast<uint16_t>(s.type.size()));
  out.insert(out.end(), s.type.begin(), s.type.end());
  return out;
}

absl::StatusOr<DeviceShape> DecodeShape(absl::Span<const uint8_t> p) {
  if (p.size() < kShapeFixedBytes) {
    return absl::DataLossError(
        absl::StrCat("device record: ", p.size(), " bytes, need at least ",
                     kShapeFixedBytes));
  }
  const uint8_t* b = p.data();
  DeviceShape s;
  s.contexts = absl::little_endian::Load32(b);
  s.vram_bytes = absl::little_endian::Load64(b + 4);
  s.page_size = absl::little_endian::Load32(b + 12);
  s.registers = absl::little_endian::Load32(b + 16);
  s.ring_slots = absl::little_endian::Load32(b + 20);
  s.gtt_entries = absl::little_endian::Load32(b + 24);
  s.save_area_bytes = absl::little_endian::Load32(b + 28);
  const uint16_t n = absl::little_endian::Load16(b + 36);
  if (n > kMaxTypeName || p.size() != kShapeFixedBytes + n) {
    return absl::DataLossError(absl::StrCat(
        "device record: type name of ", n, " bytes in a ", p.size(),
        "-byte record"));
  }
  s.type.assign(reinterpret_cast<const char*>(b + kShapeFixedBytes), n);
  if (s.page_size < 4096 || (s.page_size & (s.page_size - 1)) != 0 ||
      s.vram_bytes % s.page_size != 0 || s.contexts == 0 ||
      s.contexts > 64 || s.registers > 4096 || s.ring_slots > 65536 ||
      s.gtt_entries > (1u << 20) || s.save_area_bytes > (16u << 20)) {
    return absl::DataLossError("device record: shape out of bounds");
  }
  return s;
}

uint64_t Checksum(RecordType type, uint32_t index,
                  absl::Span<const uint8_t> payload) {
  const uint64_t seed = (uint64_t{static_cast<uint16_t>(type)} << 32) | index;
  return XXH3_64bits_withSeed(payload.data(), payload.size(), seed);
}

void AppendRecordParts(RecordType type, uint32_t index,
                       std::initializer_list<absl::Span<const uint8_t>> parts,
                       std::vector<uint8_t>* out) {
  uint64_t length = 0;
  for (auto p : parts) length += p.size();
  const size_t header = out->size();
  Put32(out, kRecordMagic);
  Put16(out, static_cast<uint16_t>(type));
  Put16(out, kRecordVersion);
  Put32(out, index);
  Put32(out, 0);
  Put64(out, length);
  Put64(out, 0);  // checksum, once the payload is in place
  for (auto p : parts) out->insert(out->end(), p.begin(), p.end());
  // Hashing the copy, not the source, covers exactly the bytes sent.
  absl::little_endian::Store64(
      out->data() + header + 24,
      Checksum(type, index,
               absl::MakeConstSpan(*out).subspan(header + kHeaderBytes)));
}

void AppendRecord(RecordType type, uint32_t index,
                  absl::Span<const uint8_t> payload, std::vector<uint8_t>* out) {
  AppendRecordParts(type, index, {payload}, out);
}

absl::StatusOr<RecordHeader> DecodeHeader(absl::Span<const uint8_t> b) {
  if (b.size() < kHeaderBytes) {
    return absl::DataLossError("record header cut short");
  }
  const uint32_t magic = absl::little_endian::Load32(b.data());
  if (magic != kRecordMagic) {
    return absl::DataLossError(
        absl::StrCat("bad record magic 0x", absl::Hex(magic)));
  }
  const uint16_t type = absl::little_endian::Load16(b.data() + 4);
  const uint16_t version = absl::little_endian::Load16(b.data() + 6);
  if (version != kRecordVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "record version ", version, "; this device reads ", kRecordVersion));
  }
  if (type < static_cast<uint16_t>(RecordType::kDevice) ||
      type > static_cast<uint16_t>(RecordType::kEnd)) {
    return absl::DataLossError(absl::StrCat("unknown record type ", type));
  }
  RecordHeader h;
  h.type = static_cast<RecordType>(type);
  h.index = absl::little_endian::Load32(b.data() + 8);
  h.length = absl::little_endian::Load64(b.data() + 16);
  h.checksum = absl::little_endian::Load64(b.data() + 24);
  if (absl::little_endian::Load32(b.data() + 12) != 0) {
    return absl::DataLossError("record reserved field is not zero");
  }
  if (h.length > kMaxPayload) {
    return absl::DataLossError(absl::StrCat(RecordTypeName(h.type),
                                            " record of ", h.length,
                                            " bytes exceeds ", kMaxPayload));
  }
  return h;
}

absl::Status RecordParser::Feed(absl::Span<const uint8_t> data) {
  if (!failed_.ok()) return failed_;
  // Drop what was consumed before growing the buffer.
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > (1u << 20)) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<ptrdiff_t>(pos_));
    pos_ = 0;
  }
  buf_.insert(buf_.end(), data.begin(), data.end());
  failed_ = Parse();
  return failed_;
}

absl::Status RecordParser::Parse() {
  while (buf_.size() - pos_ >= kHeaderBytes) {
    auto h = DecodeHeader(absl::MakeConstSpan(buf_).subspan(pos_));
    if (!h.ok()) {
      return absl::Status(h.status().code(),
                          absl::StrCat("stream offset ", consumed_, ": ",
                                       h.status().message()));
    }
    if (buf_.size() - pos_ < kHeaderBytes + h->length) break;
    auto payload = absl::MakeConstSpan(buf_).subspan(pos_ + kHeaderBytes,
                                                     h->length);
    if (Checksum(h->type, h->index, payload) != h->checksum) {
      return absl::DataLossError(absl::StrCat(
          "stream offset ", consumed_, ": ", RecordTypeName(h->type),
          " record ", h->index, ": checksum mismatch"));
    }
    ready_.push_back({*h, std::vector<uint8_t>(payload.begin(), payload.end())});
    pos_ += kHeaderBytes + h->length;
    consumed_ += kHeaderBytes + h->length;
  }
  return absl::OkStatus();
}

std::optional<RecordParser::Record> RecordParser::Next() {
  if (ready_pos_ >= ready_.size()) {
    ready_.clear();
    ready_pos_ = 0;
    return std::nullopt;
  }
  return std::move(ready_[ready_pos_++]);
}

}  // namespace vgpu::agents::mediated::stream
