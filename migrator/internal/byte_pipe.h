// BytePipe: a bounded, thread-safe byte queue between one producer and one
// consumer, with ByteSink and ByteSource ends for the image writer and
// reader. The migrator puts one between a thread that produces an image
// (an agent saving, the store reading a snapshot, RPC writes arriving) and
// the thread that consumes it, so that the two overlap and at most
// `capacity` bytes wait in between. Either end can close with an error;
// the other end's next call returns it.
#ifndef VGPU_MIGRATOR_INTERNAL_BYTE_PIPE_H_
#define VGPU_MIGRATOR_INTERNAL_BYTE_PIPE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "state-codecs/byte_io.h"

namespace vgpu::migrator::internal {

class BytePipe {
 public:
  BytePipe(size_t capacity, std::string name);

  // Producer. Blocks while `capacity` bytes are queued (a write into an
  // empty pipe is always taken whole, so a large write cannot deadlock).
  // Fails with the reader's reason once the reader closed.
  absl::Status Write(absl::Span<const uint8_t> data);
  // End of stream for the reader: OK is a clean EOF after the queued
  // bytes; an error reaches the reader at once, queued bytes dropped, so a
  // failed producer's tail is never applied.
  void CloseWrite(absl::Status why = absl::OkStatus());

  // Consumer. Fills `out` unless the stream ends first (short only then;
  // 0 at a clean end).
  absl::StatusOr<size_t> Read(absl::Span<uint8_t> out);
  // The reader gives up; pending and future writes fail with `why`.
  void CloseRead(absl::Status why);

  // Blocks until everything written has been read and the reader waits
  // for more, or either end closed.
  void WaitDrained();

  uint64_t bytes_written() const;

  // Adapters; they borrow the pipe. The sink's Close is CloseWrite(OK).
  std::unique_ptr<codec::ByteSink> Sink();
  std::unique_ptr<codec::ByteSource> Source();

  const std::string& name() const { return name_; }

 private:
  const size_t capacity_;
  const std::string name_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::vector<uint8_t>> queue_;
  size_t front_offset_ = 0;  // bytes of queue_.front() already read
  size_t queued_ = 0;
  uint64_t written_ = 0;
  bool write_closed_ = false;
  absl::Status write_status_;  // why the writer closed
  bool read_closed_ = false;
  bool reader_waiting_ = false;  // blocked in Read for more bytes
  absl::Status read_status_;
};

}  // namespace vgpu::migrator::internal

#endif  // VGPU_MIGRATOR_INTERNAL_BYTE_PIPE_H_
