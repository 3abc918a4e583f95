// The subcommands of `vgpu-image`, as functions that write to the given
// streams and return the process exit code, so tests can run them without
// spawning the binary. Exit codes: 0 ok, 1 the image is damaged or refused,
// 2 usage or I/O error.
#ifndef VGPU_STATE_CODECS_TOOLS_IMAGE_COMMANDS_H_
#define VGPU_STATE_CODECS_TOOLS_IMAGE_COMMANDS_H_

#include <cstdint>
#include <ostream>
#include <string>

namespace vgpu::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDamaged = 1;
inline constexpr int kExitUsage = 2;

struct CommandIo {
  std::ostream& out;
  std::ostream& err;
  bool json = false;
  bool progress = true;  // drawn only when stderr is a terminal
  int threads = 0;       // 0 = one per core
};

int ShowImage(const std::string& path, const CommandIo& io);
int VerifyImage(const std::string& path, const CommandIo& io);
// `section` is a section id or name; the bytes go to `out_path`, or to
// io.out when out_path is "-".
int CatSection(const std::string& path, const std::string& section,
               const std::string& out_path, const CommandIo& io);
// Decodes `in` and encodes it again into `out_path` with the encoder
// parameters recorded in its manifest; exit 0 only if byte-identical.
int RecodeImage(const std::string& in, const std::string& out_path,
                const CommandIo& io);
// Writes codec::WriteSampleImage's image; `fixed_id` makes it reproducible.
int WriteSample(const std::string& out_path, uint64_t vram_bytes,
                uint64_t seed, uint32_t chunk_size, bool fixed_id,
                const CommandIo& io);

}  // namespace vgpu::tools

#endif  // VGPU_STATE_CODECS_TOOLS_IMAGE_COMMANDS_H_
