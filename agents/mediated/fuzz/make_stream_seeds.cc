// Writes seed inputs for mdev_stream_fuzzer: complete STOP_COPY streams of a
// small reference vGPU (idle, and after some work), each prefixed with the
// fuzzer's piece-size byte.
//   make_stream_seeds OUT_DIR
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "agents/mediated/reference_device.h"

using vgpu::agents::mediated::MigState;
using vgpu::agents::mediated::RefCommand;
using vgpu::agents::mediated::RefVgpu;

static std::vector<uint8_t> Stream(int work) {
  vgpu::agents::mediated::RefVgpuConfig c;
  c.name = "seed";
  c.contexts = 2;
  c.vram_bytes = 64 << 10;
  c.guest_memory_bytes = 64 << 10;
  auto d = RefVgpu::Create(c);
  for (int i = 0; i < work; ++i) {
    RefCommand cmd;
    cmd.op = RefCommand::kStamp;
    cmd.arg1 = static_cast<uint64_t>(i % 16);
    (void)(*d)->Submit(static_cast<uint32_t>(i % 2), cmd);
  }
  (*d)->WaitIdle();
  auto s = (*d)->SetState(MigState::kStopCopy);
  std::vector<uint8_t> out = {61};  // write in 61-byte pieces
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    auto n = (*s)->Read(absl::MakeSpan(buf));
    if (!n.ok() || *n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + *n);
  }
  return out;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_stream_seeds OUT_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  for (int work : {0, 10}) {
    std::vector<uint8_t> b = Stream(work);
    std::ofstream(dir + "/stream-" + std::to_string(work) + ".bin",
                  std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()),
               static_cast<std::streamsize>(b.size()));
  }
  return 0;
}
