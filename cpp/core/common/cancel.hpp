#pragma once
// Cancellation and error capture for one kernel call, shared by the threads of its OpenMP
// regions.
//
// Two rules every kernel follows: no exception may leave an OpenMP region (the runtime calls
// std::terminate, which aborts the Python process), and a long kernel notices Ctrl-C within a
// fraction of a second. A Guard does both:
//   - work inside a region runs through guard.run(f): the first exception is recorded and the
//     remaining work is skipped (loops keep their shape, so every thread still reaches every
//     barrier);
//   - guard.poll() is cheap and may be called from any thread; on the thread that created the
//     guard (the caller, which released the GIL; OpenMP thread 0 of the kernel's regions) it
//     calls the `cancelled` callback at most every 10 ms and stops the work when it returns true;
//   - after the region, guard.finish() rethrows the recorded exception, or llmdbg::Interrupted.
// TaskQueue hands out independent tasks dynamically; once none is left, the creating thread keeps
// polling while the others finish their last task, so a Ctrl-C is not held up by the slowest one.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace llmdbg {

// A kernel's cancellation callback: returns true to stop. Empty: never stop. Called only on the
// thread that created the Guard (the bindings' callback takes the GIL and runs Python's signal
// handlers, which only the main thread can).
using CancelFn = std::function<bool()>;

class Guard {
 public:
  explicit Guard(CancelFn cancelled = {});
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

  // True once a thread recorded an exception or the callback asked to stop.
  bool stopped() const noexcept { return stop_.load(std::memory_order_relaxed); }

  // Returns stopped(); on the creating thread, first calls the callback if 10 ms have passed
  // since the last call. Safe (and cheap) from any thread, inside or outside a region.
  bool poll() noexcept;

  // Run f unless stopped, recording whatever it throws. For use inside OpenMP regions.
  template <typename F>
  void run(F&& f) noexcept {
    if (stopped()) return;
    try {
      f();
    } catch (...) {
      record(std::current_exception());
    }
  }

  // Keep the first exception and stop the work.
  void record(std::exception_ptr e) noexcept;

  // After the regions: rethrow the recorded exception, else throw Interrupted if the callback
  // stopped the work; return normally otherwise.
  void finish();

  // Outside a region: poll, and throw (as finish) when stopped.
  void checkpoint() {
    if (poll()) finish();
  }

  // Whether the calling thread is the one that created the guard.
  bool is_owner() const noexcept { return std::this_thread::get_id() == owner_; }

 private:
  CancelFn cancelled_;
  std::thread::id owner_;
  std::chrono::steady_clock::time_point next_poll_;  // read and written by the owner only
  std::atomic<bool> stop_{false};
  std::atomic<bool> interrupted_{false};
  std::mutex mu_;
  std::exception_ptr error_;
};

// Tasks 0..n-1 handed out one at a time in increasing order to the threads of a team. Create it
// before the region; every thread of the team then calls run() once.
class TaskQueue {
 public:
  explicit TaskQueue(int64_t n) : n_(n) {}

  // body(i) for each task this thread takes, through guard.run (tasks are skipped once the guard
  // stopped). The guard's creating thread polls between its tasks and, when no task is left,
  // keeps polling until every other thread of the team has returned. No barrier at the end.
  template <typename F>
  void run(Guard& guard, F&& body) noexcept {
    for (;;) {
      guard.poll();
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) break;
      guard.run([&] { body(i); });
    }
    finish_team(guard);
  }

 private:
  void finish_team(Guard& guard) noexcept;

  int64_t n_;
  std::atomic<int64_t> next_{0};
  std::atomic<int> done_{0};
};

}  // namespace llmdbg
