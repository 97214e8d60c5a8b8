// Approximate neighbours (HNSW through hnswlib) against the exact blocked search: recall on
// well-separated clusters, exact distances, self exclusion, one-thread reproducibility, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "core/tsne/knn.hpp"
#include "core/tsne/knn_approx.hpp"

namespace ts = llmdbg::tsne;

namespace {

// n points around `centres` Gaussian centres (spread 10) in d dimensions, unit noise.
std::vector<float> blobs(int64_t n, int64_t d, int centres, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> c(static_cast<size_t>(centres * d)), x(static_cast<size_t>(n * d));
  for (auto& v : c) v = 10.0f * g(rng);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < d; ++j) x[i * d + j] = c[(i % centres) * d + j] + g(rng);
  }
  return x;
}

}  // namespace

TEST(TsneKnnApprox, RecallAgainstExactOnSeparatedClusters) {
  const int64_t n = 4000, d = 50, k = 90;
  const auto X = blobs(n, d, 30, 1);
  std::vector<int64_t> ia(n * k), ie(n * k);
  std::vector<double> da(n * k), de(n * k);
  ts::knn_approx(X.data(), n, d, k, ts::HnswParams{}, ia.data(), da.data(), 2);
  ts::knn_exact(X.data(), n, d, k, ts::Metric::euclidean, ie.data(), de.data(), 2);
  int64_t hits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const std::set<int64_t> truth(ie.begin() + i * k, ie.begin() + (i + 1) * k);
    for (int64_t m = 0; m < k; ++m) {
      EXPECT_NE(ia[i * k + m], i);
      hits += static_cast<int64_t>(truth.count(ia[i * k + m]));
      if (m > 0) EXPECT_LE(da[i * k + m - 1], da[i * k + m]);
      // Distances are recomputed exactly in double.
      double s = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(X[i * d + j]) - X[ia[i * k + m] * d + j];
        s += v * v;
      }
      EXPECT_DOUBLE_EQ(da[i * k + m], s);
    }
  }
  EXPECT_GE(static_cast<double>(hits) / static_cast<double>(n * k), 0.98);
}

TEST(TsneKnnApprox, OneThreadIsReproducible) {
  const int64_t n = 1500, d = 16, k = 20;
  const auto X = blobs(n, d, 5, 2);
  std::vector<int64_t> a(n * k), b(n * k);
  std::vector<double> da(n * k), db(n * k);
  ts::HnswParams p;
  p.seed = 9;
  ts::knn_approx(X.data(), n, d, k, p, a.data(), da.data(), 1);
  ts::knn_approx(X.data(), n, d, k, p, b.data(), db.data(), 1);
  EXPECT_EQ(a, b);
  EXPECT_EQ(da, db);
}

TEST(TsneKnnApprox, RejectsBadInput) {
  std::vector<float> X(30, 0.0f);
  std::vector<int64_t> idx(100);
  std::vector<double> d2(100);
  EXPECT_THROW(ts::knn_approx(X.data(), 10, 3, 10, ts::HnswParams{}, idx.data(), d2.data(), 1),
               std::invalid_argument);
  X[4] = NAN;
  EXPECT_THROW(ts::knn_approx(X.data(), 10, 3, 3, ts::HnswParams{}, idx.data(), d2.data(), 1),
               std::invalid_argument);
}
