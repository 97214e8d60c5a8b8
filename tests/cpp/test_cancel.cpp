// Cancellation and error capture (core/common/cancel.hpp) and the kernels that use them: every
// long kernel polls its `cancelled` callback *while* it works (not only at the start) and throws
// llmdbg::Interrupted; exceptions thrown inside OpenMP regions come out of the call instead of
// terminating the process.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/attention/flow.hpp"
#include "core/attention/head_stats.hpp"
#include "core/attention/rollout.hpp"
#include "core/attribution/quadrature.hpp"
#include "core/common/cancel.hpp"
#include "core/common/errors.hpp"
#include "core/common/parallel.hpp"
#include "core/data/profile.hpp"
#include "core/stats/stats.hpp"

namespace at = llmdbg::attention;

namespace {

// A callback that asks to stop on its `stop_at`-th call and counts its calls. Calls are at least
// 10 ms apart, so stop_at = 3 means "after about 20 ms of work".
struct StopAt {
  int stop_at;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
  llmdbg::CancelFn fn() const {
    auto c = calls;
    const int k = stop_at;
    return [c, k] { return ++*c >= k; };
  }
};

// Runs `work` with a callback that stops on its third call: the kernel must throw Interrupted,
// having polled three times (so it polled during the work, not only at its start).
void expect_interrupted_midway(const std::function<void(const llmdbg::CancelFn&)>& work) {
  StopAt stop{3};
  EXPECT_THROW(work(stop.fn()), llmdbg::Interrupted);
  EXPECT_EQ(stop.calls->load(), 3);
}

// Softmax rows of random logits: (L, B, H, T, T) float32, and rollout views.
struct Maps {
  int64_t L, B, H, T;
  std::vector<std::vector<float>> data;
  std::vector<at::GraphLayer> layers;
  Maps(int64_t L_, int64_t B_, int64_t H_, int64_t T_, unsigned seed) : L(L_), B(B_), H(H_), T(T_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t l = 0; l < L; ++l) {
      std::vector<float> a(static_cast<size_t>(B * H * T * T));
      for (int64_t r = 0; r < B * H * T; ++r) {
        float sum = 0.0f;
        for (int64_t j = 0; j < T; ++j) sum += (a[r * T + j] = std::exp(normal(rng)));
        for (int64_t j = 0; j < T; ++j) a[r * T + j] /= sum;
      }
      data.push_back(std::move(a));
    }
    for (auto& a : data) layers.push_back({a.data(), nullptr, H});
  }
  at::AttentionGraph graph(const uint8_t* mask = nullptr) const {
    return {layers.data(), L, B, T, mask};
  }
  std::vector<at::LayerMaps<float>> views() const {
    std::vector<at::LayerMaps<float>> v;
    for (const auto& a : data) v.push_back({a.data(), H});
    return v;
  }
  float& at(int64_t l, int64_t b, int64_t h, int64_t i, int64_t j) {
    return data[l][static_cast<size_t>(((b * H + h) * T + i) * T + j)];
  }
};

}  // namespace

// ---- the mechanism ----

TEST(Cancel, ExceptionsInsideAParallelRegionAreRethrownAfterIt) {
  llmdbg::Guard guard;
  std::atomic<int> ran{0};
#pragma omp parallel num_threads(4)
  for (int i = 0; i < 100; ++i) {
    guard.run([&] {
      ++ran;
      if (i == 7) throw std::bad_alloc();
    });
  }
  EXPECT_TRUE(guard.stopped());
  EXPECT_LT(ran.load(), 400);  // the rest was skipped once one failed
  EXPECT_THROW(guard.finish(), std::bad_alloc);
}

TEST(Cancel, TheFirstExceptionWinsAndFinishIsQuietWithoutOne) {
  llmdbg::Guard quiet;
  EXPECT_NO_THROW(quiet.finish());
  llmdbg::Guard guard;
  guard.run([] { throw std::invalid_argument("first"); });
  guard.run([] { throw std::runtime_error("second"); });  // skipped: already stopped
  try {
    guard.finish();
    FAIL() << "finish() did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "first");
  }
}

TEST(Cancel, OnlyTheCreatingThreadCallsTheCallbackAtMostEvery10ms) {
  std::atomic<int> calls{0};
  llmdbg::Guard guard([&] {
    ++calls;
    return false;
  });
  std::thread other([&] {
    for (int i = 0; i < 1000; ++i) guard.poll();
  });
  other.join();
  EXPECT_EQ(calls.load(), 0);
  for (int i = 0; i < 1000; ++i) guard.poll();
  EXPECT_EQ(calls.load(), 1);  // 1000 polls well within 10 ms
  std::this_thread::sleep_for(std::chrono::milliseconds(12));
  guard.poll();
  EXPECT_EQ(calls.load(), 2);
  EXPECT_NO_THROW(guard.finish());
}

TEST(Cancel, ACallbackThatThrowsStopsTheWork) {
  llmdbg::Guard guard([]() -> bool { throw std::runtime_error("callback failed"); });
  EXPECT_TRUE(guard.poll());
  EXPECT_THROW(guard.finish(), std::runtime_error);
}

TEST(Cancel, TaskQueueRunsEveryTaskOnceAndRethrows) {
  const int64_t n = 1000;
  std::vector<std::atomic<int>> hits(n);
  llmdbg::Guard guard;
  llmdbg::TaskQueue queue(n);
#pragma omp parallel num_threads(3)
  queue.run(guard, [&](int64_t i) { ++hits[static_cast<size_t>(i)]; });
  EXPECT_NO_THROW(guard.finish());
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);

  llmdbg::Guard failing;
  llmdbg::TaskQueue again(n);
#pragma omp parallel num_threads(3)
  again.run(failing, [&](int64_t i) {
    if (i == 10) throw std::invalid_argument("task 10");
  });
  EXPECT_THROW(failing.finish(), std::invalid_argument);
}

// The creating thread keeps answering the callback while another thread finishes a long task
// (one that only checks stopped(), so only the owner's polling can stop it).
TEST(Cancel, TaskQueueOwnerPollsWhileOthersFinish) {
  StopAt stop{3};
  llmdbg::Guard guard(stop.fn());
  llmdbg::TaskQueue queue(2);
  std::atomic<int> long_tasks{0}, stopped_early{0};
  const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2)
  queue.run(guard, [&](int64_t) {
    if (guard.is_owner()) return;  // the owner's tasks are short
    ++long_tasks;
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
      if (guard.stopped()) {
        ++stopped_early;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const auto took = std::chrono::steady_clock::now() - start;
  if (long_tasks.load() > 0) {  // another thread took a task (not guaranteed on a busy machine)
    EXPECT_THROW(guard.finish(), llmdbg::Interrupted);
    EXPECT_EQ(stopped_early.load(), long_tasks.load());
    EXPECT_LT(took, std::chrono::seconds(2));
  }
}

// ---- every long kernel polls while it works ----

TEST(CancelKernels, Rollout) {
  for (const int threads : {1, 2}) {
    for (const int64_t batch : {1, 4}) {  // row-parallel and sequence-parallel branches
      // T = 640: 12 products of 640^2 matrices (6 GFLOP per sequence) take several times the
      // 20 ms the callback's third call needs even on two fast cores; T = 384 sometimes
      // finished first on a quiet machine.
      constexpr int64_t T = 640;
      Maps m(12, batch, 1, T, 1);
      std::vector<float> out(static_cast<size_t>(batch * T * T));
      expect_interrupted_midway(
          [&](const auto& c) { at::rollout(m.graph(), {}, nullptr, 0, out.data(), threads, c); });
    }
  }
}

TEST(CancelKernels, Flow) {
  Maps m(6, 1, 1, 64, 2);
  std::vector<float> out(64 * 64);
  for (const int threads : {1, 2}) {
    expect_interrupted_midway([&](const auto& c) {
      at::attention_flow(m.graph(), {}, nullptr, 0, out.data(), threads, c);
    });
  }
}

TEST(CancelKernels, HeadStatsAndDrift) {
  Maps m(1, 1, 2, 512, 3);
  std::vector<at::LayerMaps<float>> many;
  for (int k = 0; k < 400; ++k) many.push_back(m.views()[0]);  // the same map, 400 times
  expect_interrupted_midway(
      [&](const auto& c) { at::head_stats(many, 1, 512, nullptr, nullptr, 2, c); });
  expect_interrupted_midway(
      [&](const auto& c) { at::js_divergence(many, many, 1, 512, nullptr, 2, c); });
}

TEST(CancelKernels, StatsAndRowSums) {
  std::vector<float> x(size_t{1} << 22, 1.5f);
  std::vector<float> dst(x.size());
  std::vector<double> sums(x.size() / 64);
  // Each call takes milliseconds: a callback that stops on its first call interrupts it at once.
  StopAt first{1};
  EXPECT_THROW(llmdbg::stats::summarize(x.data(), static_cast<int64_t>(x.size()), 2, first.fn()),
               llmdbg::Interrupted);
  EXPECT_THROW(llmdbg::stats::summarize_copy(x.data(), dst.data(), static_cast<int64_t>(x.size()),
                                             2, first.fn()),
               llmdbg::Interrupted);
  EXPECT_THROW(at::row_sums(x.data(), static_cast<int64_t>(sums.size()), 64, sums.data(), 2,
                            nullptr, first.fn()),
               llmdbg::Interrupted);
  // A callback that never stops changes nothing.
  const auto plain = llmdbg::stats::summarize(x.data(), static_cast<int64_t>(x.size()), 2);
  const auto polled =
      llmdbg::stats::summarize(x.data(), static_cast<int64_t>(x.size()), 2, [] { return false; });
  EXPECT_EQ(plain.count, polled.count);
  EXPECT_EQ(plain.mean, polled.mean);
  EXPECT_EQ(plain.m2, polled.m2);
}

TEST(CancelKernels, DataProfile) {
  const std::string text(1 << 20, 'a');  // one long token, counted 2000 times (2 GiB of bytes)
  std::string spaced;
  for (int i = 0; i < (1 << 18); ++i) spaced += "ab ";
  const std::vector<std::string_view> texts(2000, text), words(2000, spaced);
  namespace dp = llmdbg::data;
  expect_interrupted_midway([&](const auto& c) { dp::count_whitespace_tokens(words, 2, c); });
  expect_interrupted_midway([&](const auto& c) { dp::profile_whitespace(words, 2, c); });
  expect_interrupted_midway([&](const auto& c) { dp::duplicate_groups(texts, 2, ~0ull, c); });
  std::vector<int64_t> ids(size_t{1} << 22, 3);
  const int64_t offsets[2] = {0, static_cast<int64_t>(ids.size())};
  StopAt first{1};
  EXPECT_THROW(dp::count_ids(ids.data(), offsets, 1, 10, 2, first.fn()), llmdbg::Interrupted);
}

TEST(CancelKernels, Quadrature) {
  namespace q = llmdbg::attribution;
  expect_interrupted_midway([](const auto& c) { q::gauss_legendre(q::kMaxQuadraticNodes, c); });
  expect_interrupted_midway([](const auto& c) { q::clenshaw_curtis(q::kMaxQuadraticNodes, c); });
  EXPECT_THROW(q::fixed_rule("gausslegendre", q::kMaxQuadraticNodes + 1), std::invalid_argument);
  EXPECT_THROW(q::fixed_rule("riemann_left", q::kMaxNodes + 1), std::invalid_argument);
  EXPECT_EQ(q::fixed_rule("riemann_left", 7, [] { return false; }).nodes.size(), 7u);
}

// ---- weights the graph and head kernels refuse ----

TEST(Weights, NegativeNanAndInfAreRefusedNamingLayerAndPosition) {
  const float bad_values[] = {-0.5f, std::nanf(""), INFINITY};
  for (const float bad : bad_values) {
    Maps m(3, 2, 2, 5, 4);
    // Rows still sum to 1 for the negative case: only the sign gives it away.
    m.at(1, 1, 1, 3, 2) = bad;
    std::vector<float> out(2 * 5 * 5);
    for (int threads : {1, 2}) {
      try {
        at::rollout(m.graph(), {}, nullptr, 0, out.data(), threads);
        FAIL() << "rollout accepted " << bad;
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("layers[1] holds "), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("(batch 1, head 1, query 3, key 2)"),
                  std::string::npos)
            << e.what();
      }
      EXPECT_THROW(at::attention_flow(m.graph(), {}, nullptr, 0, out.data(), threads),
                   std::invalid_argument);
      try {
        at::head_stats(m.views(), 2, 5, nullptr, nullptr, threads);
        FAIL() << "head_stats accepted " << bad;
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("layers[1] holds "), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("(batch 1, head 1, query 3, key 2)"),
                  std::string::npos);
      }
      EXPECT_THROW(at::js_divergence(m.views(), m.views(), 2, 5, nullptr, threads),
                   std::invalid_argument);
    }
  }
}

// Padding is never read: a NaN in a padding row or column changes nothing.
TEST(Weights, ValuesAtPaddingPositionsAreIgnored) {
  Maps m(2, 1, 1, 4, 5);
  const uint8_t mask[4] = {1, 1, 1, 0};
  std::vector<float> clean(16), dirty(16);
  at::rollout(m.graph(mask), {}, nullptr, 0, clean.data(), 1);
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t k = 0; k < 4; ++k) m.at(l, 0, 0, 3, k) = m.at(l, 0, 0, k, 3) = std::nanf("");
  at::rollout(m.graph(mask), {}, nullptr, 0, dirty.data(), 1);
  EXPECT_EQ(clean, dirty);
}

// -0.0 is a valid weight (the fast bit-pattern bound flags it; the exact pass accepts it), in
// float32 and float64 maps alike.
TEST(Weights, NegativeZeroIsAccepted) {
  Maps m(2, 1, 2, 6, 6);
  m.at(0, 0, 1, 2, 3) = 0.0f;
  std::vector<float> plus(36), minus(36);
  at::rollout(m.graph(), {}, nullptr, 0, plus.data(), 1);
  m.at(0, 0, 1, 2, 3) = -0.0f;
  EXPECT_NO_THROW(at::rollout(m.graph(), {}, nullptr, 0, minus.data(), 1));
  EXPECT_EQ(plus, minus);
  std::vector<double> f64(m.data[0].begin(), m.data[0].end());
  std::vector<at::GraphLayer> one{{nullptr, f64.data(), 2}};
  const at::AttentionGraph g{one.data(), 1, 1, 6, nullptr};
  EXPECT_NO_THROW(at::rollout(g, {}, nullptr, 0, minus.data(), 1));
  f64[3] = -1e-300;  // a tiny negative double is still refused
  EXPECT_THROW(at::rollout(g, {}, nullptr, 0, minus.data(), 1), std::invalid_argument);
}
