// The reference mediated vGPU's migration data stream: the bytes its
// data_fd yields in PRE_COPY/STOP_COPY and takes in RESUMING (spec:
// docs/formats/mediated-stream.md). A stream is a sequence of records, each
// a fixed 32-byte header and a bounded payload whose XXH3 (seeded with the
// record's type and index) is in the header. Shared by the reference device,
// which writes and applies records, and the mediated agent, which splits a
// stream into image sections and frames sections back into records.
// Pure functions and one incremental parser object (one thread).
#ifndef VGPU_AGENTS_MEDIATED_INTERNAL_STREAM_FORMAT_H_
#define VGPU_AGENTS_MEDIATED_INTERNAL_STREAM_FORMAT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vgpu::agents::mediated::stream {

// "VMDR" as little-endian bytes: V(ref) M(ediated) D(ata) R(ecord).
inline constexpr uint32_t kRecordMagic = 0x52444d56;
inline constexpr uint16_t kRecordVersion = 1;
inline constexpr size_t kHeaderBytes = 32;
// A VRAM run is at most 1 MiB of pages; a context image is far smaller.
inline constexpr uint64_t kMaxPayload = (1u << 20) + 64;

enum class RecordType : uint16_t {
  kDevice = 1,     // the vGPU's shape; first in every stream
  kContext = 2,    // one context image; index = context id
  kVramPages = 3,  // u64 first page, then whole pages
  kVramZero = 4,   // u64 first page, u64 page count: pages now all zero
  kEnd = 5,        // u64 digest of the context images; last in STOP_COPY
};
const char* RecordTypeName(RecordType t);

struct RecordHeader {
  RecordType type = RecordType::kDevice;
  uint32_t index = 0;
  uint64_t length = 0;
  uint64_t checksum = 0;
};

// The shape of one reference vGPU, carried by kDevice.
struct DeviceShape {
  std::string type;          // vGPU type name, "REF-4C"
  uint32_t contexts = 0;
  uint64_t vram_bytes = 0;
  uint32_t page_size = 4096;
  uint32_t registers = 0;    // per context, u64 each
  uint32_t ring_slots = 0;   // per context, 32-byte commands
  uint32_t gtt_entries = 0;  // per context, u64 each
  uint32_t save_area_bytes = 0;

  uint64_t pages() const { return vram_bytes / page_size; }
  // Bytes of one context image.
  uint64_t context_image_bytes() const;
  bool operator==(const DeviceShape& o) const;
};

std::vector<uint8_t> EncodeShape(const DeviceShape& shape);
absl::StatusOr<DeviceShape> DecodeShape(absl::Span<const uint8_t> payload);

uint64_t Checksum(RecordType type, uint32_t index,
                  absl::Span<const uint8_t> payload);
// Appends a complete record (header and payload) to `out`.
void AppendRecord(RecordType type, uint32_t index,
                  absl::Span<const uint8_t> payload, std::vector<uint8_t>* out);
// Appends the header of a record whose payload is `payload_parts` joined,
// then the parts; for VRAM runs without an extra copy of the pages.
void AppendRecordParts(RecordType type, uint32_t index,
                       std::initializer_list<absl::Span<const uint8_t>> parts,
                       std::vector<uint8_t>* out);

// Decodes and bounds-checks a header (not the payload).
absl::StatusOr<RecordHeader> DecodeHeader(absl::Span<const uint8_t> bytes);

// Starts a record in `out` (a header to be filled in) and returns where
// it begins; append the payload to `out`, then FinishRecord fills in the
// length and the checksum. Lets a caller build a payload in place.
size_t BeginRecord(std::vector<uint8_t>* out);
void FinishRecord(RecordType type, uint32_t index, size_t begin,
                  std::vector<uint8_t>* out);

// A record whose header and checksum have been checked; `payload` lives
// until the visitor returns.
struct RecordView {
  RecordHeader header;
  absl::Span<const uint8_t> payload;
};
using RecordVisitor = std::function<absl::Status(const RecordView&)>;

// Reassembles records from bytes in any segmentation and hands each to a
// visitor once its checksum matched. Whole records inside one Feed are
// visited where they lie; only a record split across Feeds is buffered.
class RecordParser {
 public:
  // A bad header or checksum is an error naming the record's position (the
  // stream offset of its header), as is an error from `visit`; the parser
  // then stays failed.
  absl::Status Feed(absl::Span<const uint8_t> data,
                    const RecordVisitor& visit);
  // Bytes held that do not make a whole record yet.
  size_t partial_bytes() const { return partial_.size(); }
  uint64_t offset() const { return consumed_; }

 private:
  // Visits the whole records at the start of `data`; returns the bytes
  // used, or an error.
  absl::StatusOr<size_t> Consume(absl::Span<const uint8_t> data,
                                 const RecordVisitor& visit);
  std::vector<uint8_t> partial_;
  uint64_t consumed_ = 0;  // stream offset of the first unvisited byte
  absl::Status failed_;
};

}  // namespace vgpu::agents::mediated::stream

#endif  // VGPU_AGENTS_MEDIATED_INTERNAL_STREAM_FORMAT_H_
