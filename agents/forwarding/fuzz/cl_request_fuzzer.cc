// Fuzz target: what a guest sends a backend. The input is a byte stream cut
// into frames exactly as the session's reader cuts it (frame header,
// bounded Cap'n Proto message, payload); every request that decodes is
// recorded into a SessionLog, as a backend records the calls that succeed,
// and the log's replay must always encode to a blob its own decoder
// accepts call for call. Traps on a crash, a leak, or a log that cannot
// read back what it wrote.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "agents/forwarding/backend/session_log.h"
#include "agents/forwarding/frame.h"

namespace {

using vgpu::forwarding::backend::ReplayCall;
using vgpu::forwarding::backend::SessionLog;

void CheckRoundTrip(const SessionLog& log) {
  const std::vector<ReplayCall> calls = log.Replay();
  const std::vector<uint8_t> blob = SessionLog::Encode(calls);
  auto back = SessionLog::Decode(blob);
  if (!back.ok() || back->size() != calls.size()) abort();
  for (size_t i = 0; i < calls.size(); ++i) {
    if ((*back)[i].request != calls[i].request ||
        (*back)[i].payload_bytes != calls[i].payload_bytes) {
      abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SessionLog log;
  size_t off = 0;
  int frames = 0;
  while (size - off >= vgpu::forwarding::kFrameHeaderBytes && frames < 256) {
    auto h = vgpu::forwarding::DecodeFrameHeader(data + off);
    if (!h.ok()) break;  // the session closes the connection here
    off += vgpu::forwarding::kFrameHeaderBytes;
    if (h->message_bytes > size - off) break;
    auto msg = vgpu::codec::DecodeMessage<vgpu::forwarding::proto::Request>(
        absl::MakeConstSpan(data + off, h->message_bytes),
        vgpu::forwarding::FrameLimits());
    off += h->message_bytes;
    // The payload follows; what is left of the input stands in for it.
    const uint64_t payload =
        std::min<uint64_t>(h->payload_bytes, size - off);
    off += payload;
    ++frames;
    if (!msg.ok()) continue;  // refused, the stream stays in step
    log.Record(msg->root(), payload);
    (void)log.KernelMemArgs(0x10000);
    (void)log.StorageOf(0x10001);
    if (frames % 16 == 0) CheckRoundTrip(log);
  }
  CheckRoundTrip(log);
  return 0;
}
