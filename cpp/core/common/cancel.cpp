#include "core/common/cancel.hpp"

#include <utility>

#include "core/common/errors.hpp"
#include "core/common/parallel.hpp"

namespace llmdbg {

namespace {
constexpr auto kPollEvery = std::chrono::milliseconds(10);
}  // namespace

Guard::Guard(CancelFn cancelled)
    : cancelled_(std::move(cancelled)),
      owner_(std::this_thread::get_id()),
      next_poll_(std::chrono::steady_clock::now()) {}

bool Guard::poll() noexcept {
  if (!cancelled_ || stopped() || !is_owner()) return stopped();
  const auto now = std::chrono::steady_clock::now();
  if (now < next_poll_) return false;
  next_poll_ = now + kPollEvery;
  try {
    if (cancelled_()) {
      interrupted_.store(true);
      stop_.store(true);
    }
  } catch (...) {
    record(std::current_exception());
  }
  return stopped();
}

void Guard::record(std::exception_ptr e) noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = std::move(e);
  }
  stop_.store(true);
}

void Guard::finish() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e = error_;
  }
  if (e) std::rethrow_exception(e);
  if (interrupted_.load()) throw Interrupted();
}

void TaskQueue::finish_team(Guard& guard) noexcept {
  const int team = team_size();
  const int done = done_.fetch_add(1) + 1;
  if (!guard.is_owner()) return;
  // The owner keeps answering Ctrl-C while the others finish their last task.
  while (done < team && done_.load() < team) {
    guard.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace llmdbg
