#pragma once
// Cooperative cancellation for the long t-SNE kernels (kNN, the optimisation loop, the O(n²)
// sums). The poll (Ctrl-C in Python) may take the GIL, so only thread 0 of a team calls it: the
// thread that started the kernel. It is called at most once per `every`; every thread reads the
// flag, so a parallel loop skips its remaining work within one poll interval.
#include <atomic>
#include <chrono>
#include <functional>

#include "core/common/errors.hpp"
#include "core/common/parallel.hpp"

namespace llmdbg::tsne {

using CancelPoll = std::function<bool()>;  // true: stop (the caller's exception is pending)

class Cancel {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Cancel(const CancelPoll& poll,
                  std::chrono::milliseconds every = std::chrono::milliseconds(20))
      : poll_(poll), every_(every), last_(Clock::now()) {}

  // True once the poll asked to stop. A relaxed load on every thread, a clock read on thread 0.
  bool stopped() {
    if (stop_.load(std::memory_order_relaxed)) return true;
    if (!poll_ || thread_id() != 0) return false;
    const auto now = Clock::now();
    if (now - last_ < every_) return false;
    last_ = now;
    if (poll_()) stop_.store(true);
    return stop_.load();
  }
  // Polls now (outside any time limit) and throws llmdbg::Interrupted when asked to stop.
  void check_now() {
    if (!stop_.load() && poll_ && poll_()) stop_.store(true);
    throw_if_stopped();
  }
  void throw_if_stopped() const {
    if (stop_.load()) throw Interrupted();
  }

 private:
  const CancelPoll& poll_;
  std::chrono::milliseconds every_;
  Clock::time_point last_;
  std::atomic<bool> stop_{false};
};

}  // namespace llmdbg::tsne
