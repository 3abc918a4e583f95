#include "state-codecs/byte_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vgpu::codec {
namespace {

absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

absl::Status WriteAll(int fd, absl::Span<const uint8_t> data,
                      absl::string_view name) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("write to ", name));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

class FdSinkImpl : public ByteSink {
 public:
  FdSinkImpl(int fd, std::string name, bool owned)
      : fd_(fd), name_(std::move(name)), owned_(owned) {}
  ~FdSinkImpl() override {
    if (owned_ && fd_ >= 0) ::close(fd_);
  }
  absl::Status Write(absl::Span<const uint8_t> data) override {
    return WriteAll(fd_, data, name_);
  }
  absl::Status Close() override { return absl::OkStatus(); }
  const std::string& name() const override { return name_; }

 protected:
  int fd_;
  std::string name_;
  bool owned_;
};

// Small buffered writes (frame headers) would otherwise cost a syscall each.
class FileSinkImpl : public FdSinkImpl {
 public:
  FileSinkImpl(int fd, std::string path, std::string partial,
               FileSinkOptions options)
      : FdSinkImpl(fd, path, true),
        partial_(std::move(partial)),
        options_(options) {
    buffer_.reserve(kBufferBytes);
  }
  ~FileSinkImpl() override {
    // Not closed: an atomic sink leaves nothing under either name.
    if (!closed_ && options_.atomic) ::unlink(partial_.c_str());
  }
  absl::Status Write(absl::Span<const uint8_t> data) override {
    if (buffer_.size() + data.size() > kBufferBytes) {
      if (absl::Status s = FlushBuffer(); !s.ok()) return s;
    }
    if (data.size() >= kBufferBytes) return WriteAll(fd_, data, name_);
    buffer_.insert(buffer_.end(), data.begin(), data.end());
    return absl::OkStatus();
  }
  absl::Status Close() override {
    if (closed_) return absl::OkStatus();
    if (absl::Status s = FlushBuffer(); !s.ok()) return s;
    if (options_.sync && ::fsync(fd_) != 0) {
      return ErrnoStatus(errno, absl::StrCat("fsync ", name_));
    }
    if (options_.atomic) {
      if (::rename(partial_.c_str(), name_.c_str()) != 0) {
        return ErrnoStatus(errno, absl::StrCat("rename ", partial_, " to ",
                                               name_));
      }
      if (options_.sync) SyncParentDir();
    }
    closed_ = true;
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kBufferBytes = 1 << 20;

  absl::Status FlushBuffer() {
    absl::Status s = WriteAll(fd_, buffer_, name_);
    buffer_.clear();
    return s;
  }
  void SyncParentDir() {
    std::string dir = name_;
    size_t slash = dir.rfind('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash + 1);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

  std::string partial_;
  FileSinkOptions options_;
  std::vector<uint8_t> buffer_;
  bool closed_ = false;
};

class FdSourceImpl : public ByteSource {
 public:
  FdSourceImpl(int fd, std::string name, bool owned)
      : fd_(fd), name_(std::move(name)), owned_(owned) {}
  ~FdSourceImpl() override {
    if (owned_ && fd_ >= 0) ::close(fd_);
  }
  absl::StatusOr<size_t> Read(absl::Span<uint8_t> data) override {
    size_t done = 0;
    // Serve from the buffer first; refill it for small reads, read large
    // ones straight into the caller's memory.
    while (done < data.size()) {
      if (pos_ < len_) {
        size_t n = std::min(len_ - pos_, data.size() - done);
        std::memcpy(data.data() + done, buffer_.data() + pos_, n);
        pos_ += n;
        done += n;
        continue;
      }
      if (eof_) break;
      size_t want = data.size() - done;
      uint8_t* dst = want >= kBufferBytes ? data.data() + done : nullptr;
      if (dst == nullptr) {
        buffer_.resize(kBufferBytes);
        dst = buffer_.data();
        want = kBufferBytes;
      }
      ssize_t n = ::read(fd_, dst, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, absl::StrCat("read from ", name_));
      }
      if (n == 0) {
        eof_ = true;
        break;
      }
      if (dst == buffer_.data()) {
        pos_ = 0;
        len_ = static_cast<size_t>(n);
      } else {
        done += static_cast<size_t>(n);
      }
    }
    return done;
  }
  const std::string& name() const override { return name_; }

 private:
  static constexpr size_t kBufferBytes = 256 << 10;
  int fd_;
  std::string name_;
  bool owned_;
  std::vector<uint8_t> buffer_;
  size_t pos_ = 0;
  size_t len_ = 0;
  bool eof_ = false;
};

}  // namespace

absl::Status MemorySink::Write(absl::Span<const uint8_t> data) {
  bytes_.insert(bytes_.end(), data.begin(), data.end());
  return absl::OkStatus();
}

absl::StatusOr<size_t> MemorySource::Read(absl::Span<uint8_t> data) {
  size_t n = std::min(data.size(), bytes_.size() - pos_);
  if (n > 0) std::memcpy(data.data(), bytes_.data() + pos_, n);
  pos_ += n;
  return n;
}

absl::StatusOr<std::unique_ptr<ByteSink>> OpenFileSink(
    const std::string& path, const FileSinkOptions& options) {
  std::string target = options.atomic ? path + ".partial" : path;
  int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", target));
  return std::unique_ptr<ByteSink>(
      new FileSinkImpl(fd, path, std::move(target), options));
}

absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  return std::unique_ptr<ByteSource>(new FdSourceImpl(fd, path, true));
}

std::unique_ptr<ByteSink> FdSink(int fd, std::string name, bool owned) {
  return std::make_unique<FdSinkImpl>(fd, std::move(name), owned);
}

std::unique_ptr<ByteSource> FdSource(int fd, std::string name, bool owned) {
  return std::make_unique<FdSourceImpl>(fd, std::move(name), owned);
}

absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path) {
  absl::StatusOr<std::unique_ptr<ByteSource>> src = OpenFileSource(path);
  if (!src.ok()) return src.status();
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    absl::StatusOr<size_t> n = (*src)->Read(absl::MakeSpan(buf));
    if (!n.ok()) return n.status();
    out.insert(out.end(), buf.begin(), buf.begin() + *n);
    if (*n < buf.size()) break;
  }
  return out;
}

}  // namespace vgpu::codec
