#include "migrator/internal/byte_pipe.h"

#include <algorithm>
#include <cstring>

namespace vgpu::migrator::internal {

BytePipe::BytePipe(size_t capacity, std::string name)
    : capacity_(capacity), name_(std::move(name)) {}

absl::Status BytePipe::Write(absl::Span<const uint8_t> data) {
  if (data.empty()) return absl::OkStatus();
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] {
    return read_closed_ || write_closed_ || queued_ == 0 ||
           queued_ + data.size() <= capacity_;
  });
  if (read_closed_) return read_status_;
  if (write_closed_) {
    return absl::FailedPreconditionError(name_ + ": write after close");
  }
  queue_.emplace_back(data.begin(), data.end());
  queued_ += data.size();
  written_ += data.size();
  changed_.notify_all();
  return absl::OkStatus();
}

void BytePipe::CloseWrite(absl::Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (write_closed_) return;
  write_closed_ = true;
  write_status_ = std::move(why);
  if (!write_status_.ok()) {
    queue_.clear();
    queued_ = 0;
    front_offset_ = 0;
  }
  changed_.notify_all();
}

absl::StatusOr<size_t> BytePipe::Read(absl::Span<uint8_t> out) {
  // Fills `out` completely unless the stream ends first (the ByteSource
  // contract), taking bytes as they arrive so the writer never waits on a
  // reader that holds a half-filled buffer.
  std::unique_lock<std::mutex> lock(mu_);
  size_t n = 0;
  while (n < out.size()) {
    if (queued_ == 0 && !write_closed_ && !read_closed_) {
      reader_waiting_ = true;
      changed_.notify_all();
      changed_.wait(lock, [&] {
        return queued_ > 0 || write_closed_ || read_closed_;
      });
      reader_waiting_ = false;
    }
    if (read_closed_) return read_status_;
    if (queued_ == 0) {
      if (!write_status_.ok()) return write_status_;
      break;  // clean end of stream
    }
    size_t before = n;
    while (n < out.size() && !queue_.empty()) {
      std::vector<uint8_t>& front = queue_.front();
      size_t take = std::min(out.size() - n, front.size() - front_offset_);
      std::memcpy(out.data() + n, front.data() + front_offset_, take);
      n += take;
      front_offset_ += take;
      if (front_offset_ == front.size()) {
        queue_.pop_front();
        front_offset_ = 0;
      }
    }
    queued_ -= n - before;
    changed_.notify_all();
  }
  return n;
}

void BytePipe::CloseRead(absl::Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_closed_) return;
  read_closed_ = true;
  read_status_ = why.ok() ? absl::CancelledError(name_ + ": reader closed")
                          : std::move(why);
  queue_.clear();
  queued_ = 0;
  front_offset_ = 0;
  changed_.notify_all();
}

void BytePipe::WaitDrained() {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] {
    return (queued_ == 0 && reader_waiting_) || write_closed_ || read_closed_;
  });
}

uint64_t BytePipe::bytes_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return written_;
}

namespace {

class PipeSink : public codec::ByteSink {
 public:
  explicit PipeSink(BytePipe* pipe) : pipe_(pipe) {}
  absl::Status Write(absl::Span<const uint8_t> data) override {
    return pipe_->Write(data);
  }
  absl::Status Close() override {
    pipe_->CloseWrite();
    return absl::OkStatus();
  }
  const std::string& name() const override { return pipe_->name(); }

 private:
  BytePipe* pipe_;
};

class PipeSource : public codec::ByteSource {
 public:
  explicit PipeSource(BytePipe* pipe) : pipe_(pipe) {}
  absl::StatusOr<size_t> Read(absl::Span<uint8_t> data) override {
    return pipe_->Read(data);
  }
  const std::string& name() const override { return pipe_->name(); }

 private:
  BytePipe* pipe_;
};

}  // namespace

std::unique_ptr<codec::ByteSink> BytePipe::Sink() {
  return std::make_unique<PipeSink>(this);
}
std::unique_ptr<codec::ByteSource> BytePipe::Source() {
  return std::make_unique<PipeSource>(this);
}

}  // namespace vgpu::migrator::internal
