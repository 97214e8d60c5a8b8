// The fused statistics kernel against straightforward two-pass references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/common/cpu.hpp"
#include "core/stats/stats.hpp"

namespace st = llmdbg::stats;

namespace {

struct Reference {
  int64_t finite = 0, nan = 0, inf = 0, zeros = 0;
  double mean = 0, var = 0, min = 0, max = 0, absmax = 0;
  std::array<int64_t, st::kHistBins> hist{};
};

template <typename T>
Reference reference(const std::vector<T>& x) {
  Reference r;
  long double sum = 0;
  r.min = std::numeric_limits<double>::infinity();
  r.max = -r.min;
  for (T v : x) {
    if (std::isnan(v)) {
      ++r.nan;
      continue;
    }
    if (std::isinf(v)) {
      ++r.inf;
      continue;
    }
    ++r.finite;
    sum += v;
    r.min = std::min<double>(r.min, v);
    r.max = std::max<double>(r.max, v);
    r.absmax = std::max<double>(r.absmax, std::fabs(v));
    if (v == 0) {
      ++r.zeros;
      continue;
    }
    // Independent of the kernel's bit tricks: floor(log2|x|) from frexp.
    int e = 0;
    std::frexp(static_cast<double>(v), &e);
    const int b = std::clamp(e - 1 - st::kHistMinExp, 0, st::kHistBins - 1);
    ++r.hist[b];
  }
  r.mean = static_cast<double>(sum / r.finite);
  long double m2 = 0;
  for (T v : x)
    if (std::isfinite(v)) m2 += (v - r.mean) * (v - r.mean);
  r.var = static_cast<double>(m2 / r.finite);
  return r;
}

template <typename T>
std::vector<T> normal_samples(size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.5, 3.0);
  std::vector<T> x(n);
  for (auto& v : x) v = static_cast<T>(normal(rng));
  return x;
}

template <typename T>
void expect_matches(const st::Summary& s, const std::vector<T>& x) {
  const Reference r = reference(x);
  EXPECT_EQ(s.count, static_cast<int64_t>(x.size()));
  EXPECT_EQ(s.finite, r.finite);
  EXPECT_EQ(s.nan_count, r.nan);
  EXPECT_EQ(s.inf_count, r.inf);
  EXPECT_EQ(s.zero_count, r.zeros);
  EXPECT_NEAR(s.mean, r.mean, 1e-12 * (1 + std::fabs(r.mean)));
  EXPECT_NEAR(s.variance(), r.var, 1e-10 * r.var);
  EXPECT_EQ(s.min, r.min);
  EXPECT_EQ(s.max, r.max);
  EXPECT_EQ(s.absmax, r.absmax);
  for (int b = 0; b < st::kHistBins; ++b) EXPECT_EQ(s.hist[b], r.hist[b]) << "bin " << b;
}

}  // namespace

TEST(Stats, SmallFloatMatchesReference) {
  auto x = normal_samples<float>(1000, 1);
  expect_matches(st::summarize(x.data(), static_cast<int64_t>(x.size()), 1), x);
}

TEST(Stats, MultiChunkDoubleMatchesReference) {
  auto x = normal_samples<double>(5 * st::kChunk + 123, 2);
  expect_matches(st::summarize(x.data(), static_cast<int64_t>(x.size()), 2), x);
}

TEST(Stats, NonFiniteAndZerosAreCountedAndExcluded) {
  auto x = normal_samples<float>(3 * st::kChunk, 3);
  const float inf = std::numeric_limits<float>::infinity();
  x[0] = std::numeric_limits<float>::quiet_NaN();
  x[10] = inf;
  x[st::kChunk + 5] = -inf;
  x[2 * st::kChunk + 7] = 0.0f;
  x[2 * st::kChunk + 8] = -0.0f;
  const auto s = st::summarize(x.data(), static_cast<int64_t>(x.size()), 2);
  EXPECT_EQ(s.nan_count, 1);
  EXPECT_EQ(s.inf_count, 2);
  EXPECT_GE(s.zero_count, 2);
  EXPECT_TRUE(std::isfinite(s.mean));
  expect_matches(s, x);
}

TEST(Stats, BitwiseIdenticalAcrossThreadCounts) {
  auto x = normal_samples<float>(7 * st::kChunk + 11, 4);
  const auto a = st::summarize(x.data(), static_cast<int64_t>(x.size()), 1);
  const auto b = st::summarize(x.data(), static_cast<int64_t>(x.size()), 2);
  const auto c = st::summarize(x.data(), static_cast<int64_t>(x.size()), 5);
  EXPECT_EQ(a.mean, b.mean);
  EXPECT_EQ(a.m2, b.m2);
  EXPECT_EQ(a.mean, c.mean);
  EXPECT_EQ(a.m2, c.m2);
  EXPECT_EQ(a.hist, c.hist);
}

// The AVX2 loops keep the portable loops' lanes and operation order, so both give bitwise the
// same summary (odd lengths exercise the scalar tails, a NaN the finite-only branch).
TEST(Stats, AvxAndPortablePathsAreBitwiseEqual) {
  for (const int64_t n : {int64_t{5}, int64_t{1000}, 2 * st::kChunk + 13}) {
    auto x = normal_samples<float>(n, 9);
    for (const bool with_nan : {false, true}) {
      if (with_nan) x[static_cast<size_t>(n / 2)] = std::numeric_limits<float>::quiet_NaN();
      llmdbg::force_portable_kernels(true);
      const auto portable = st::summarize(x.data(), n, 2);
      llmdbg::force_portable_kernels(false);
      const auto fast = st::summarize(x.data(), n, 2);
      EXPECT_EQ(portable.mean, fast.mean) << n;
      EXPECT_EQ(portable.m2, fast.m2) << n;
      EXPECT_EQ(portable.min, fast.min) << n;
      EXPECT_EQ(portable.max, fast.max) << n;
      EXPECT_EQ(portable.nan_count, fast.nan_count) << n;
      EXPECT_EQ(portable.hist, fast.hist) << n;
    }
  }
}

TEST(Stats, MergeOfSplitsEqualsWhole) {
  auto x = normal_samples<double>(10000, 5);
  auto whole = st::summarize(x.data(), 10000, 1);
  auto left = st::summarize(x.data(), 3000, 1);
  left.merge(st::summarize(x.data() + 3000, 7000, 1));
  EXPECT_EQ(left.count, whole.count);
  EXPECT_EQ(left.hist, whole.hist);
  EXPECT_NEAR(left.mean, whole.mean, 1e-13);
  EXPECT_NEAR(left.variance(), whole.variance(), 1e-12 * whole.variance());
  EXPECT_EQ(left.min, whole.min);
  EXPECT_EQ(left.max, whole.max);
}

TEST(Stats, HistogramBinEdgesAndClamping) {
  EXPECT_EQ(st::hist_bin(1.0f), -st::kHistMinExp);  // [1, 2)
  EXPECT_EQ(st::hist_bin(1.999f), -st::kHistMinExp);
  EXPECT_EQ(st::hist_bin(2.0), -st::kHistMinExp + 1);
  EXPECT_EQ(st::hist_bin(-0.5f), -st::kHistMinExp - 1);  // sign is ignored
  EXPECT_EQ(st::hist_bin(1e-30f), 0);                    // below 2^-32: first bin
  EXPECT_EQ(st::hist_bin(1e-320), 0);                    // subnormal double
  EXPECT_EQ(st::hist_bin(1e30), st::kHistBins - 1);      // above 2^32: last bin
}

TEST(Stats, EmptyAndAllNonFinite) {
  const auto empty = st::summarize<float>(nullptr, 0, 1);
  EXPECT_EQ(empty.count, 0);
  EXPECT_TRUE(std::isnan(empty.zero_fraction()));
  std::vector<float> bad = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity()};
  const auto s = st::summarize(bad.data(), 2, 1);
  EXPECT_EQ(s.finite, 0);
  EXPECT_EQ(s.nan_count, 1);
  EXPECT_EQ(s.inf_count, 1);
  EXPECT_TRUE(std::isnan(s.variance()));
}

TEST(Stats, SummarizeCopyCopiesAndMatchesSummarize) {
  auto x = normal_samples<float>(4 * st::kChunk + 77, 6);
  x[100] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(x.size(), -1.0f);
  const auto a = st::summarize(x.data(), static_cast<int64_t>(x.size()), 2);
  const auto b = st::summarize_copy(x.data(), y.data(), static_cast<int64_t>(x.size()), 2);
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)));
  EXPECT_EQ(a.mean, b.mean);
  EXPECT_EQ(a.m2, b.m2);
  EXPECT_EQ(a.nan_count, b.nan_count);
  EXPECT_EQ(a.hist, b.hist);
}
