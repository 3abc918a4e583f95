// Fuzz target: a session log as a restore reads it from an image (the
// cllog section), which may come from a damaged or hostile snapshot. The
// decoder must refuse what it cannot read, bounded, and what it accepts
// must be exactly what encoding the accepted calls gives back (the format
// has one spelling for each log).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "agents/forwarding/backend/session_log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vgpu::forwarding::backend::SessionLog;
  auto calls = SessionLog::Decode(absl::MakeConstSpan(data, size), 4096);
  if (!calls.ok()) return 0;
  const std::vector<uint8_t> again = SessionLog::Encode(*calls);
  if (again.size() != size || !std::equal(again.begin(), again.end(), data)) {
    abort();
  }
  return 0;
}
