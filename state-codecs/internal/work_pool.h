// A fixed set of worker threads for chunk compression and decompression.
// Each task receives the index of the worker running it, so callers can keep
// one codec context per worker without thread-locals. Created and destroyed
// by one owner thread (an ImageWriter/ImageReader); Schedule may be called
// from that thread only.
#ifndef VGPU_STATE_CODECS_INTERNAL_WORK_POOL_H_
#define VGPU_STATE_CODECS_INTERNAL_WORK_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace vgpu::codec::internal {

class WorkPool {
 public:
  explicit WorkPool(int threads) {
    for (int i = 0; i < threads; ++i) {
      workers_.emplace_back([this, i] { Loop(i); });
    }
  }
  ~WorkPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }

  void Schedule(std::function<void(int worker)> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Loop(int index) {
    for (;;) {
      std::function<void(int)> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, and nothing left to run
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task(index);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void(int)>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// A one-shot result slot a task fills and the owner waits on.
template <typename T>
class Slot {
 public:
  void Set(T value) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      value_ = std::move(value);
      done_ = true;
    }
    cv_.notify_all();
  }
  T& Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    return value_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  T value_{};
};

}  // namespace vgpu::codec::internal

#endif  // VGPU_STATE_CODECS_INTERNAL_WORK_POOL_H_
