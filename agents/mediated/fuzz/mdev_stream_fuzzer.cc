// Fuzzes the reference mediated vGPU's RESUMING side: arbitrary bytes are
// written to a data session (in pieces of a size the first byte picks),
// then the device is asked to run. Every record is bounds-checked and
// checksummed before it touches the device; any outcome but a crash, a
// hang or a device that runs after refusing its input is fine.
//
// Random changes would almost all stop at a record checksum, so a custom
// mutator rewrites the checksums of the records it can still frame after
// seven mutations in eight: mutated lengths, indexes, shapes, ring heads
// and opcodes then reach the code behind the checks.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "agents/mediated/internal/stream_format.h"
#include "agents/mediated/reference_device.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size,
                                   size_t max_size);

namespace {

using vgpu::agents::mediated::MigState;
using vgpu::agents::mediated::RefVgpu;

// The shape the seeds were made for (make_stream_seeds.cc).
RefVgpu& Device() {
  static RefVgpu* device = [] {
    vgpu::agents::mediated::RefVgpuConfig c;
    c.name = "fuzz";
    c.contexts = 2;
    c.vram_bytes = 64 << 10;
    c.guest_memory_bytes = 64 << 10;
    return RefVgpu::Create(c)->release();
  }();
  return *device;
}

}  // namespace

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size,
                                          size_t max_size, unsigned seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 8 == 7 || size < 1) return size;
  namespace st = vgpu::agents::mediated::stream;
  size_t off = 1;
  while (size - off >= st::kHeaderBytes) {
    auto h = st::DecodeHeader(absl::MakeConstSpan(data + off, size - off));
    if (!h.ok() || h->length > size - off - st::kHeaderBytes) break;
    const uint64_t sum = st::Checksum(
        h->type, h->index,
        absl::MakeConstSpan(data + off + st::kHeaderBytes, h->length));
    for (int i = 0; i < 8; ++i) {
      data[off + 24 + i] = static_cast<uint8_t>(sum >> (8 * i));
    }
    off += st::kHeaderBytes + h->length;
  }
  return size;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RefVgpu& d = Device();
  if (!d.Reset().ok() || !d.SetState(MigState::kStop).ok()) std::abort();
  auto session = d.SetState(MigState::kResuming);
  if (!session.ok() || *session == nullptr) std::abort();
  const size_t piece = size > 0 ? (data[0] == 0 ? 1 : data[0]) : 1;
  bool refused = false;
  for (size_t off = size > 0 ? 1 : 0; off < size && !refused; off += piece) {
    const size_t n = piece < size - off ? piece : size - off;
    refused = !(*session)->Write(absl::MakeConstSpan(data + off, n)).ok();
  }
  auto ran = d.SetState(MigState::kRunning);
  // A refused write must never let the device run what it got.
  if (refused && ran.ok()) std::abort();
  if (!ran.ok()) {
    auto state = d.GetState();
    if (!state.ok() || *state == MigState::kRunning) std::abort();
  }
  return 0;
}
