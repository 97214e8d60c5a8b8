// t-SNE core under hostile input (issue 19): extreme scales, NaN/Inf, cancellation, bad
// phases and maps. Each failure mode here used to crash, hang or return NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/common/errors.hpp"
#include "core/tsne/affinity.hpp"
#include "core/tsne/knn.hpp"
#include "core/tsne/optimize.hpp"

namespace ts = llmdbg::tsne;

namespace {

std::vector<double> gaussian(int64_t n, int64_t d, unsigned seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, scale);
  std::vector<double> x(n * d);
  for (auto& v : x) v = g(rng);
  return x;
}

// A small P from the kNN graph of random clustered data.
ts::Csr small_problem(int64_t n, int64_t d, double perplexity, unsigned seed) {
  auto X = gaussian(n, d, seed);
  for (int64_t i = 0; i < n; ++i) X[i * d] += 6.0 * static_cast<double>(i % 4);
  const int64_t k = std::min<int64_t>(n - 1, static_cast<int64_t>(3 * perplexity));
  std::vector<int64_t> idx(n * k);
  std::vector<double> d2(n * k), P(n * k);
  ts::knn_exact(X.data(), n, d, k, ts::Metric::euclidean, idx.data(), d2.data(), 2);
  ts::calibrate(d2.data(), n, k, perplexity, 1e-5, 200, P.data(), nullptr, 2);
  return ts::joint_probabilities(idx.data(), P.data(), n, k, 2);
}

}  // namespace

// Issue 19: the kNN ranks at unit scale (an exact power of two), so rows of magnitude 2^-1000
// (squared distances underflowed to 0 and ranked by index) or 2^500 give the neighbours of the
// unit-scale data and distances scaled by exactly 4^s; past float64 the distances are an error.
TEST(TsneKnn, ExactAtEveryRepresentableScale) {
  const int64_t n = 80, d = 5, k = 7;
  const auto X = gaussian(n, d, 31);
  std::vector<int64_t> idx(n * k), idx_s(n * k);
  std::vector<double> d2(n * k), d2_s(n * k);
  ts::knn_exact(X.data(), n, d, k, ts::Metric::euclidean, idx.data(), d2.data(), 1);
  for (const int s : {-1000, -600, 100, 500}) {
    std::vector<double> Xs(X);
    for (auto& v : Xs) v = std::ldexp(v, s);
    ts::knn_exact(Xs.data(), n, d, k, ts::Metric::euclidean, idx_s.data(), d2_s.data(), 2);
    EXPECT_EQ(idx_s, idx) << "scale 2^" << s;
    for (int64_t c = 0; c < n * k; ++c) ASSERT_EQ(d2_s[c], std::ldexp(d2[c], 2 * s));
  }
  std::vector<double> huge(X);
  for (auto& v : huge) v = std::ldexp(v, 600);
  EXPECT_THROW(
      ts::knn_exact(huge.data(), n, d, k, ts::Metric::euclidean, idx_s.data(), d2_s.data(), 1),
      std::invalid_argument);
}

TEST(TsneKnn, RejectsEmptyRowsAndStopsWhenCancelled) {
  std::vector<double> X(10, 0.0);
  std::vector<int64_t> idx(10);
  std::vector<double> d2(10);
  EXPECT_THROW(ts::knn_exact(X.data(), 10, 0, 1, ts::Metric::euclidean, idx.data(), d2.data(), 1),
               std::invalid_argument);  // d = 0 used to read past the end of X
  // The poll runs on the calling thread, between query blocks of 32 rows (a tiny problem may
  // finish on the other threads first, so the team case uses 4000 rows).
  const auto Y = gaussian(4000, 4, 32);
  std::vector<int64_t> i2(4000 * 3);
  std::vector<double> d3(4000 * 3);
  for (const int threads : {1, 2}) {
    EXPECT_THROW(ts::knn_exact(Y.data(), 4000, 4, 3, ts::Metric::euclidean, i2.data(), d3.data(),
                               threads, [] { return true; }),
                 llmdbg::Interrupted);
  }
}

// Each row is calibrated at unit scale: distances times 4^s give bitwise the same P, whether
// they are 1e-300-sized (subnormal once squared) or 1e300-sized (their sum overflowed).
TEST(TsneCalibration, BitwiseScaleFree) {
  const int64_t n = 40, d = 3, k = 12;
  auto X = gaussian(n, d, 33);
  std::vector<int64_t> idx(n * k);
  std::vector<double> d2(n * k), P(n * k), Ps(n * k), perp(n), perp_s(n);
  ts::knn_exact(X.data(), n, d, k, ts::Metric::euclidean, idx.data(), d2.data(), 1);
  ts::calibrate(d2.data(), n, k, 5.0, 1e-6, 100, P.data(), perp.data(), 1);
  for (const int s : {-1050, -500, 500, 1010}) {
    std::vector<double> scaled(d2);
    for (auto& v : scaled) v = std::ldexp(v, s);
    ts::calibrate(scaled.data(), n, k, 5.0, 1e-6, 100, Ps.data(), perp_s.data(), 2);
    if (s > -1000) {  // exact scaling (-1050 makes some distances subnormal: close, not equal)
      EXPECT_EQ(Ps, P) << "scale 2^" << s;
    }
    for (int64_t c = 0; c < n * k; ++c) ASSERT_NEAR(Ps[c], P[c], 1e-6) << "scale 2^" << s;
  }
}

TEST(TsneAffinity, RejectsNonFiniteOrNegativeInput) {
  std::vector<double> bad = {0.0, 1.0, std::nan("")}, P(3), perp(1);
  EXPECT_THROW(ts::calibrate(bad.data(), 1, 3, 2.0, 1e-5, 50, P.data(), perp.data(), 1),
               std::invalid_argument);
  bad[2] = -1.0;
  EXPECT_THROW(ts::calibrate(bad.data(), 1, 3, 2.0, 1e-5, 50, P.data(), perp.data(), 1),
               std::invalid_argument);
  const std::vector<double> good = {0.0, 1.0, 2.0};
  for (const double perplexity : {double(INFINITY), double(NAN), 0.5}) {
    EXPECT_THROW(ts::calibrate(good.data(), 1, 3, perplexity, 1e-5, 50, P.data(), nullptr, 1),
                 std::invalid_argument);
  }
  EXPECT_THROW(ts::calibrate(good.data(), 1, 3, 2.0, 1e-5, 0, P.data(), nullptr, 1),
               std::invalid_argument);  // max_iter 0 reported perplexity 1 for a uniform row
  const std::vector<int64_t> idx = {1, 0};
  for (const std::vector<double>& pc : {std::vector<double>{NAN, 1.0}, {-1.0, 1.0}, {0.0, 0.0}}) {
    EXPECT_THROW(ts::joint_probabilities(idx.data(), pc.data(), 2, 1, 1), std::invalid_argument);
  }
  const std::vector<double> huge = {1e308, 1.5e308};  // their sum overflowed to inf
  const ts::Csr J = ts::joint_probabilities(idx.data(), huge.data(), 2, 1, 1);
  EXPECT_DOUBLE_EQ(J.data[0], 0.5);
  EXPECT_DOUBLE_EQ(J.data[1], 0.5);
}

// The loop: an FFT run from a 1e12-wide init returns (those iterations use Barnes-Hut), Ctrl-C
// stops it, bad phases and maps are refused, and a divergent run says so instead of going NaN.
TEST(TsneOptimize, HostileSettingsFailCleanly) {
  const ts::Csr P = small_problem(200, 4, 10.0, 34);
  ts::OptimizeParams prm;
  prm.phases = {{30, 1.0, 200.0, 0.8}};
  prm.method = ts::Method::fft;
  auto Y = gaussian(200, 2, 35, 1e12);
  const auto r = ts::optimize(P, Y.data(), prm, nullptr);
  EXPECT_TRUE(std::isfinite(r.kl));
  for (const double v : Y) ASSERT_TRUE(std::isfinite(v));
  prm.method = ts::Method::exact;
  prm.cancelled = [] { return true; };
  Y = gaussian(200, 2, 36, 1e-4);
  EXPECT_THROW(ts::optimize(P, Y.data(), prm, nullptr), llmdbg::Interrupted);
  prm.cancelled = {};
  for (const ts::Phase& bad : {ts::Phase{10, NAN, 1.0, 0.8}, ts::Phase{10, 1.0, INFINITY, 0.8},
                               ts::Phase{10, 1.0, 1.0, 1.0}, ts::Phase{-1, 1.0, 1.0, 0.5}}) {
    prm.phases = {bad};
    EXPECT_THROW(ts::optimize(P, Y.data(), prm, nullptr), std::invalid_argument);
  }
  prm.phases = {{10, 1.0, 1.0, 0.5}};
  auto wide = gaussian(200, 2, 37, 1e151);
  EXPECT_THROW(ts::optimize(P, wide.data(), prm, nullptr), std::invalid_argument);
  prm.phases = {{50, 1e6, 1e300, 0.5}};
  prm.max_step_norm = 0.0;  // no cap: the map leaves the double range
  EXPECT_THROW(ts::optimize(P, Y.data(), prm, nullptr), std::invalid_argument);
}
