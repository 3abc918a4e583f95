// Byte sinks and sources: the only way state-codecs touches files, sockets and
// memory, so that tests can swap in faulty ones. Not thread-safe: one image
// writer or reader drives one sink or source from one thread at a time.
#ifndef VGPU_STATE_CODECS_BYTE_IO_H_
#define VGPU_STATE_CODECS_BYTE_IO_H_

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vgpu::codec {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Writes all of `data` or fails.
  virtual absl::Status Write(absl::Span<const uint8_t> data) = 0;
  // Makes everything written so far visible (and durable, for synced files).
  // A file sink opened atomically appears under its final name only here.
  virtual absl::Status Close() = 0;
  // Used in error messages: a path, "socket fd 7", "memory".
  virtual const std::string& name() const = 0;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Fills `data` completely unless the source ends first; returns the number
  // of bytes read, which is short only at the end of the source.
  virtual absl::StatusOr<size_t> Read(absl::Span<uint8_t> data) = 0;
  virtual const std::string& name() const = 0;
};

// Accumulates into a vector the caller can inspect.
class MemorySink : public ByteSink {
 public:
  explicit MemorySink(std::string name = "memory") : name_(std::move(name)) {}
  absl::Status Write(absl::Span<const uint8_t> data) override;
  absl::Status Close() override { return absl::OkStatus(); }
  const std::string& name() const override { return name_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  std::vector<uint8_t>& mutable_bytes() { return bytes_; }

 private:
  std::string name_;
  std::vector<uint8_t> bytes_;
};

// Reads a caller-owned span, which must outlive the source.
class MemorySource : public ByteSource {
 public:
  explicit MemorySource(absl::Span<const uint8_t> bytes,
                        std::string name = "memory")
      : bytes_(bytes), name_(std::move(name)) {}
  absl::StatusOr<size_t> Read(absl::Span<uint8_t> data) override;
  const std::string& name() const override { return name_; }

 private:
  absl::Span<const uint8_t> bytes_;
  size_t pos_ = 0;
  std::string name_;
};

struct FileSinkOptions {
  // Write to "<path>.partial" and rename onto `path` in Close(), so that a
  // crash never leaves a half-written file under the final name.
  bool atomic = true;
  // fsync the file (and its directory, when atomic) in Close().
  bool sync = true;
};

absl::StatusOr<std::unique_ptr<ByteSink>> OpenFileSink(
    const std::string& path, const FileSinkOptions& options = {});
absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(
    const std::string& path);

// Wraps a file descriptor (socket, pipe, stdin/stdout). The fd is closed on
// destruction only if `owned`.
std::unique_ptr<ByteSink> FdSink(int fd, std::string name, bool owned);
std::unique_ptr<ByteSource> FdSource(int fd, std::string name, bool owned);

// Convenience for tools and tests.
absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path);

}  // namespace vgpu::codec

#endif  // VGPU_STATE_CODECS_BYTE_IO_H_
