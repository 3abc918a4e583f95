#include "agents/mediated/internal/stream_format.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>
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

size_t BeginRecord(std::vector<uint8_t>* out) {
  const size_t begin = out->size();
  out->resize(begin + kHeaderBytes);
  return begin;
}

void FinishRecord(RecordType type, uint32_t index, size_t begin,
                  std::vector<uint8_t>* out) {
  uint8_t* h = out->data() + begin;
  const uint64_t length = out->size() - begin - kHeaderBytes;
  absl::little_endian::Store32(h, kRecordMagic);
  absl::little_endian::Store16(h + 4, static_cast<uint16_t>(type));
  absl::little_endian::Store16(h + 6, kRecordVersion);
  absl::little_endian::Store32(h + 8, index);
  absl::little_endian::Store32(h + 12, 0);
  absl::little_endian::Store64(h + 16, length);
  // Hashing the copy, not the source, covers exactly the bytes sent.
  absl::little_endian::Store64(
      h + 24, Checksum(type, index,
                       absl::MakeConstSpan(h + kHeaderBytes, length)));
}

void AppendRecordParts(RecordType type, uint32_t index,
                       std::initializer_list<absl::Span<const uint8_t>> parts,
                       std::vector<uint8_t>* out) {
  const size_t begin = BeginRecord(out);
  for (auto p : parts) out->insert(out->end(), p.begin(), p.end());
  FinishRecord(type, index, begin, out);
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

absl::StatusOr<size_t> RecordParser::Consume(absl::Span<const uint8_t> data,
                                             const RecordVisitor& visit) {
  size_t pos = 0;
  while (data.size() - pos >= kHeaderBytes) {
    auto h = DecodeHeader(data.subspan(pos));
    if (!h.ok()) {
      return absl::Status(h.status().code(),
                          absl::StrCat("stream offset ", consumed_, ": ",
                                       h.status().message()));
    }
    if (data.size() - pos - kHeaderBytes < h->length) break;
    auto payload = data.subspan(pos + kHeaderBytes, h->length);
    if (Checksum(h->type, h->index, payload) != h->checksum) {
      return absl::DataLossError(absl::StrCat(
          "stream offset ", consumed_, ": ", RecordTypeName(h->type),
          " record ", h->index, ": checksum mismatch"));
    }
    if (absl::Status s = visit(RecordView{*h, payload}); !s.ok()) return s;
    pos += kHeaderBytes + h->length;
    consumed_ += kHeaderBytes + h->length;
  }
  return pos;
}

absl::Status RecordParser::Feed(absl::Span<const uint8_t> data,
                                const RecordVisitor& visit) {
  if (!failed_.ok()) return failed_;
  // Complete a record split across feeds first: take just enough bytes
  // for its header, then for its payload.
  while (!partial_.empty() && !data.empty()) {
    size_t want = kHeaderBytes;
    if (partial_.size() >= kHeaderBytes) {
      auto h = DecodeHeader(partial_);
      if (!h.ok()) break;  // Consume reports it below
      want = kHeaderBytes + h->length;
    }
    const size_t take = std::min(want - partial_.size(), data.size());
    partial_.insert(partial_.end(), data.begin(), data.begin() + take);
    data.remove_prefix(take);
    if (partial_.size() < want) continue;
    if (partial_.size() > kHeaderBytes || want == kHeaderBytes) {
      auto used = Consume(partial_, visit);
      if (!used.ok()) return failed_ = used.status();
      if (*used == partial_.size()) partial_.clear();
    }
  }
  if (partial_.empty()) {
    auto used = Consume(data, visit);
    if (!used.ok()) return failed_ = used.status();
    data.remove_prefix(*used);
  } else if (partial_.size() >= kHeaderBytes) {
    // A header that does not decode fails here, not on the next feed.
    auto used = Consume(partial_, visit);
    if (!used.ok()) return failed_ = used.status();
  }
  partial_.insert(partial_.end(), data.begin(), data.end());
  return absl::OkStatus();
}

}  // namespace vgpu::agents::mediated::stream
