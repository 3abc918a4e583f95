// vgpu-bench-fill: fills a vgpu-emu-device's VRAM through the guest's
// command ring, so that a migration benchmark moves known kinds of bytes.
//
//   vgpu-bench-fill --socket PATH --pattern random|vram [--seed N]
//                   [--zero-heads]
//
// random: every byte is uploaded with WRITE commands from a xorshift
//   generator: incompressible, no two pages alike (1 GiB crosses the socket).
// vram: codec::VramLikeBytes (the bytes the codec, store and agent benches
//   use), one piece of up to 64 MiB uploaded with WRITE and repeated over
//   the rest of VRAM with COPY inside the device.
// --zero-heads: the first 8 bytes of every 4 KiB page are zero, so the
//   counter workload (vgpu-emu-workload) can start on top of the bytes.
//
// Waits until the engine has executed everything, then prints one line.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agents/emulated/command.h"
#include "agents/emulated/guest_client.h"
#include "state-codecs/sample.h"

namespace {

using vgpu::agents::emulated::Command;
using vgpu::agents::emulated::GuestClient;
using vgpu::agents::emulated::kMaxWriteBytes;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMib = 1 << 20;

absl::Status Drain(GuestClient& g) {
  absl::StatusOr<uint64_t> fence = g.Fence();
  if (!fence.ok()) return fence.status();
  return g.WaitFence(*fence, absl::Seconds(600));
}

void ZeroHeads(std::vector<uint8_t>& bytes) {
  for (uint64_t p = 0; p + 8 <= bytes.size(); p += kPage) {
    std::memset(bytes.data() + p, 0, 8);
  }
}

// Uploads `bytes` at `offset` as WRITE commands, 64 to a request (4 MiB).
absl::Status Upload(GuestClient& g, uint64_t offset,
                    const std::vector<uint8_t>& bytes) {
  std::vector<Command> batch;
  for (uint64_t done = 0; done < bytes.size();) {
    const uint64_t n = std::min<uint64_t>(kMaxWriteBytes, bytes.size() - done);
    batch.push_back(Command::Write(
        offset + done, absl::MakeConstSpan(bytes.data() + done, n)));
    done += n;
    if (batch.size() == 64 || done == bytes.size()) {
      absl::StatusOr<std::vector<uint64_t>> s = g.SubmitBatch(batch);
      if (!s.ok()) return s.status();
      batch.clear();
    }
  }
  return absl::OkStatus();
}

absl::Status FillRandom(GuestClient& g, uint64_t seed, bool zero_heads) {
  const uint64_t total = g.vram_bytes();
  std::vector<uint8_t> piece;
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
  for (uint64_t off = 0; off < total;) {
    const uint64_t n = std::min<uint64_t>(16 * kMib, total - off);
    piece.resize(n);
    for (uint64_t i = 0; i + 8 <= n; i += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const uint64_t v = x * 0x2545f4914f6cdd1dull;
      std::memcpy(piece.data() + i, &v, 8);
    }
    if (zero_heads) ZeroHeads(piece);
    if (absl::Status s = Upload(g, off, piece); !s.ok()) return s;
    off += n;
    // Keep the device's queue (and its copies of our bytes) bounded.
    if (absl::Status s = Drain(g); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status FillVramLike(GuestClient& g, uint64_t seed, bool zero_heads) {
  const uint64_t total = g.vram_bytes();
  const uint64_t piece_bytes = std::min<uint64_t>(64 * kMib, total);
  std::vector<uint8_t> piece = vgpu::codec::VramLikeBytes(piece_bytes, seed);
  if (zero_heads) ZeroHeads(piece);
  if (absl::Status s = Upload(g, 0, piece); !s.ok()) return s;
  std::vector<Command> copies;
  for (uint64_t off = piece_bytes; off < total; off += piece_bytes) {
    copies.push_back(
        Command::Copy(0, off, std::min<uint64_t>(piece_bytes, total - off)));
  }
  if (!copies.empty()) {
    absl::StatusOr<std::vector<uint64_t>> s = g.SubmitBatch(copies);
    if (!s.ok()) return s.status();
  }
  return Drain(g);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vgpu-bench-fill: fill an emulated vGPU's VRAM as a guest"};
  std::string socket_path, pattern;
  uint64_t seed = 1;
  bool zero_heads = false;
  app.add_option("--socket", socket_path, "the device's socket")->required();
  app.add_option("--pattern", pattern, "random | vram")
      ->required()
      ->check(CLI::IsMember({"random", "vram"}));
  app.add_option("--seed", seed, "generator seed")->capture_default_str();
  app.add_flag("--zero-heads", zero_heads,
               "zero the first 8 bytes of every page (counter workload)");
  CLI11_PARSE(app, argc, argv);

  auto guest = GuestClient::Connect(socket_path, "vgpu-bench-fill");
  if (!guest.ok()) {
    std::fprintf(stderr, "vgpu-bench-fill: %s\n",
                 guest.status().ToString().c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = pattern == "random"
                       ? FillRandom(**guest, seed, zero_heads)
                       : FillVramLike(**guest, seed, zero_heads);
  if (s.ok()) {
    absl::StatusOr<vgpu::agents::emulated::EngineStatus> st = (*guest)->Status();
    if (!st.ok()) {
      s = st.status();
    } else if (st->error_count != 0) {
      s = absl::InternalError("the engine skipped " +
                              std::to_string(st->error_count) +
                              " command(s): " + st->last_error_message);
    }
  }
  if (!s.ok()) {
    std::fprintf(stderr, "vgpu-bench-fill: %s\n", s.ToString().c_str());
    return 1;
  }
  const double secs = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - start)
                          .count();
  std::printf("filled %llu MiB of VRAM with %s bytes%s in %.2f s\n",
              static_cast<unsigned long long>((*guest)->vram_bytes() / kMib),
              pattern.c_str(), zero_heads ? " (page heads zeroed)" : "", secs);
  return 0;
}
