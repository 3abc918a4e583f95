// Fuzzes the reference mediated vGPU's RESUMING side: arbitrary bytes are
// written to a data session (in pieces of a size the first byte picks),
// then the device is asked to run. Every record is bounds-checked and
// checksummed before it touches the device; any outcome but a crash, a
// hang or a device that runs after refusing its input is fine.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "agents/mediated/reference_device.h"

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
