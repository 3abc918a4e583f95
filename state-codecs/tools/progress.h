// Output helpers for the command-line tools (sizes, times), and a one-line
// progress bar for long work: bytes done of total,
// rate, round (where there are rounds) and ETA, redrawn at most 10 times a
// second on stderr, and only when stderr is a terminal (so logs and --json
// output stay clean). Used from one thread.
#ifndef VGPU_STATE_CODECS_TOOLS_PROGRESS_H_
#define VGPU_STATE_CODECS_TOOLS_PROGRESS_H_

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"

namespace vgpu::tools {

inline std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f %s", b, units[u])
                : absl::StrFormat("%.1f %s", b, units[u]);
}

// "2026-11-25T12:00:00Z" for a time in nanoseconds since the epoch.
inline std::string IsoTime(int64_t unix_nanos) {
  time_t secs = static_cast<time_t>(unix_nanos / 1000000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total, bool enabled)
      : label_(std::move(label)),
        total_(total),
        enabled_(enabled && isatty(STDERR_FILENO)),
        start_(Clock::now()),
        last_(start_ - std::chrono::seconds(1)) {}

  void Update(uint64_t done, int round = -1) {
    if (!enabled_) return;
    auto now = Clock::now();
    if (now - last_ < std::chrono::milliseconds(100) && done < total_) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? done / secs : 0;
    double frac = total_ > 0 ? static_cast<double>(done) / total_ : 0;
    if (frac > 1) frac = 1;
    int filled = static_cast<int>(frac * 24);
    std::string bar(filled, '#');
    bar.resize(24, '.');
    std::string eta = rate > 0 && total_ > done
                          ? absl::StrFormat("%.0fs", (total_ - done) / rate)
                          : "-";
    std::string r = round >= 0 ? absl::StrFormat(" round %d", round) : "";
    std::fprintf(stderr, "\r%s [%s] %s / %s  %s/s%s  ETA %s   ", label_.c_str(),
                 bar.c_str(), HumanBytes(done).c_str(),
                 HumanBytes(total_).c_str(), HumanBytes(rate).c_str(),
                 r.c_str(), eta.c_str());
    drawn_ = true;
  }

  void Done() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point start_, last_;
};

}  // namespace vgpu::tools

#endif  // VGPU_STATE_CODECS_TOOLS_PROGRESS_H_
