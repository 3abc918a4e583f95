// vgpu-image: inspect, verify, extract from and re-encode vGPU state images.
#include <CLI/CLI.hpp>
#include <iostream>

#include "absl/strings/numbers.h"
#include "state-codecs/tools/image_commands.h"

namespace {

// Accepts "64M", "1G", "4096", "512K".
bool ParseSize(const std::string& text, uint64_t* out) {
  if (text.empty()) return false;
  uint64_t mult = 1;
  std::string digits = text;
  switch (text.back()) {
    case 'K': case 'k': mult = 1ull << 10; digits.pop_back(); break;
    case 'M': case 'm': mult = 1ull << 20; digits.pop_back(); break;
    case 'G': case 'g': mult = 1ull << 30; digits.pop_back(); break;
  }
  uint64_t n;
  if (!absl::SimpleAtoi(digits, &n)) return false;
  *out = n * mult;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vgpu-image: inspect and check vGPU state images (checkpoint files, "
      "exported snapshots, captured migration streams).\n"
      "Exit status: 0 ok, 1 the image is damaged or was refused, 2 usage or "
      "I/O error."};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  bool json = false;
  int threads = 0;
  bool no_progress = false;
  app.add_flag("--json", json, "Machine-readable output on stdout");
  app.add_option("--threads", threads,
                 "Worker threads for (de)compression; 0 = one per core")
      ->check(CLI::Range(0, 256));
  app.add_flag("--no-progress", no_progress,
               "Never draw the progress bar (it is drawn only on a terminal)");

  std::string image, section, out = "-", sample_out, size_text = "64M";
  uint64_t seed = 1;
  auto* show = app.add_subcommand(
      "show", "Print the manifest, devices and sections of an image");
  show->add_option("image", image, "Image file")->required();
  auto* verify = app.add_subcommand(
      "verify",
      "Check every bound, checksum and digest; exit 0 only if all hold");
  verify->add_option("image", image, "Image file")->required();
  auto* cat = app.add_subcommand(
      "cat", "Write one section's bytes (zero runs expanded)");
  cat->add_option("image", image, "Image file")->required();
  cat->add_option("section", section, "Section id or name")->required();
  cat->add_option("-o,--output", out,
                  "Output file (written atomically), '-' for stdout");
  auto* recode = app.add_subcommand(
      "recode",
      "Decode then re-encode with the image's recorded parameters; exit 0 "
      "only if the result is byte-identical");
  recode->add_option("image", image, "Image file")->required();
  recode->add_option("output", out, "Where to write the re-encoded image")
      ->required();
  auto* sample = app.add_subcommand(
      "sample",
      "Write a sample image: an emulated vGPU's registers, VRAM, session log, "
      "context image and vendor blob");
  sample->add_option("output", sample_out, "Image file to write")->required();
  sample->add_option("--vram", size_text, "VRAM size, e.g. 64M or 1G");
  sample->add_option("--seed", seed, "Seed of the synthetic contents");
  bool fixed_id = false;
  std::string chunk_text = "256K";
  sample->add_flag("--fixed-id", fixed_id,
                   "Fixed image id and creation time, so the same options "
                   "always give the same bytes (test images)");
  sample->add_option("--chunk-size", chunk_text,
                     "Chunk size, 4K..16M (default 256K)");

  CLI11_PARSE(app, argc, argv);
  vgpu::tools::CommandIo io{std::cout, std::cerr, json, !no_progress, threads};
  if (*show) return vgpu::tools::ShowImage(image, io);
  if (*verify) return vgpu::tools::VerifyImage(image, io);
  if (*cat) return vgpu::tools::CatSection(image, section, out, io);
  if (*recode) return vgpu::tools::RecodeImage(image, out, io);
  if (*sample) {
    uint64_t vram;
    if (!ParseSize(size_text, &vram) || vram == 0 || vram % 4096 != 0) {
      std::cerr << "vgpu-image: --vram must be a positive multiple of 4 KiB, "
                   "e.g. 64M\n";
      return vgpu::tools::kExitUsage;
    }
    uint64_t chunk;
    if (!ParseSize(chunk_text, &chunk) || chunk < 4096 || chunk > (16 << 20)) {
      std::cerr << "vgpu-image: --chunk-size must be within 4K..16M\n";
      return vgpu::tools::kExitUsage;
    }
    return vgpu::tools::WriteSample(sample_out, vram, seed,
                                    static_cast<uint32_t>(chunk), fixed_id,
                                    io);
  }
  return vgpu::tools::kExitUsage;
}
