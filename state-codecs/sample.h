// Deterministic sample data and images: the test workloads, golden images,
// fuzz seeds, benchmark inputs and the demo all draw from here, so that
// every one of them describes the same kinds of bytes. Pure; any thread.
#ifndef VGPU_STATE_CODECS_SAMPLE_H_
#define VGPU_STATE_CODECS_SAMPLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "state-codecs/byte_io.h"
#include "state-codecs/image.h"

namespace vgpu::codec {

// Incompressible bytes.
std::vector<uint8_t> RandomBytes(uint64_t n, uint64_t seed);
// What a display/compute vGPU's VRAM tends to hold: framebuffer gradients,
// untouched zero pages, repeated tiles and noisier texture-like blocks.
std::vector<uint8_t> VramLikeBytes(uint64_t n, uint64_t seed);

// A one-device manifest (emulated Bochs-DISPI vGPU) with a fixed identity.
Manifest SampleManifest(uint64_t vram_bytes);

struct SampleImageOptions {
  uint64_t vram_bytes = 4 << 20;  // multiple of 4 KiB
  uint64_t seed = 1;
  WriterOptions writer;
  // Fixed image id and creation time, so the bytes depend only on options.
  bool deterministic = true;
};

// Writes an image holding one section of every kind: a register bank, a
// VRAM memory region (with a zero range), an API session log, a context
// image and a vendor blob. Returns the section contents in the order written.
absl::StatusOr<std::vector<std::vector<uint8_t>>> WriteSampleImage(
    ByteSink* sink, const SampleImageOptions& options);

}  // namespace vgpu::codec

#endif  // VGPU_STATE_CODECS_SAMPLE_H_
