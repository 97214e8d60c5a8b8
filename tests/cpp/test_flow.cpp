// Attention flow: the layered push–relabel solver against hand-computed values and an
// independent Edmonds–Karp on an explicit dense graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <vector>

#include "core/attention/flow.hpp"

namespace at = llmdbg::attention;

namespace {

// Independent reference: Edmonds–Karp on the explicit (L + 1) n-node graph, dense capacities.
double edmonds_karp(const std::vector<double>& caps, int64_t L, int64_t n, int64_t s, int64_t t) {
  const int64_t N = (L + 1) * n;
  std::vector<double> c(static_cast<size_t>(N * N), 0.0);
  for (int64_t l = 1; l <= L; ++l)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        c[(l * n + i) * N + (l - 1) * n + j] = caps[((l - 1) * n + i) * n + j];
  double total = 0;
  while (true) {
    std::vector<int64_t> parent(static_cast<size_t>(N), -1);
    parent[s] = s;
    std::deque<int64_t> q{s};
    while (!q.empty() && parent[t] < 0) {
      const int64_t x = q.front();
      q.pop_front();
      for (int64_t y = 0; y < N; ++y)
        if (parent[y] < 0 && c[x * N + y] > 1e-15) parent[y] = x, q.push_back(y);
    }
    if (parent[t] < 0) return total;
    double d = 1e300;
    for (int64_t y = t; y != s; y = parent[y]) d = std::min(d, c[parent[y] * N + y]);
    for (int64_t y = t; y != s; y = parent[y]) c[parent[y] * N + y] -= d, c[y * N + parent[y]] += d;
    total += d;
  }
}

// L row-stochastic n × n capacity blocks (random, some entries exactly 0).
std::vector<double> random_caps(int64_t L, int64_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<double> caps(static_cast<size_t>(L * n * n));
  for (int64_t r = 0; r < L * n; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      double v = u(rng);
      v = v < 0.3 ? 0.0 : v * v;
      caps[r * n + j] = v, sum += v;
    }
    if (sum == 0) caps[r * n] = sum = 1;
    for (int64_t j = 0; j < n; ++j) caps[r * n + j] /= sum;
  }
  return caps;
}

}  // namespace

TEST(LayeredMaxFlow, HandMadeGraph) {
  // L = 2, n = 2. Top (source u = 0) -> middle: 1 to m0, 1 to m1. Middle -> input:
  // m0 -> {v0: 1, v1: 1}, m1 -> {v0: 1}. Max flow to v0 is 2 (both middle nodes); to v1 it is 1.
  // Solving v0 first and v1 next forces the solver to move flow off m0 -> v0 (a reverse arc).
  const std::vector<double> caps = {
      1, 1,  // block 0 row m0: to v0, v1
      1, 0,  // block 0 row m1
      1, 1,  // block 1 row u0: to m0, m1
      0, 0,  // block 1 row u1
  };
  const at::LayeredGraph graph(caps.data(), 2, 2);
  at::LayeredMaxFlow solver(2, 2);
  EXPECT_NEAR(solver.max_flow(graph, 0, 0), 2.0, 1e-12);
  EXPECT_NEAR(solver.max_flow(graph, 0, 1), 1.0, 1e-12);
  EXPECT_NEAR(solver.max_flow(graph, 0, 0), 2.0, 1e-12);
  EXPECT_EQ(solver.max_flow(graph, 1, 0), 0.0);
}

TEST(LayeredMaxFlow, KnownValuesWithBottlenecksInBothLayers) {
  // L = 2, n = 3: two paths per sink, each limited by a different layer.
  // u0 -> m0 (0.5), m1 (0.5); m0 -> v0 (0.3), v1 (0.7); m1 -> v0 (0.4), v1 (0.1), v2 (0.5).
  const std::vector<double> caps = {
      0.3, 0.7, 0.0, 0.4, 0.1, 0.5, 0.0, 0.0, 1.0,  // block 0 (middle -> input)
      0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,  // block 1 (top -> middle)
  };
  const at::LayeredGraph graph(caps.data(), 2, 3);
  at::LayeredMaxFlow solver(2, 3);
  EXPECT_NEAR(solver.max_flow(graph, 0, 0), 0.7, 1e-12);
  EXPECT_NEAR(solver.max_flow(graph, 0, 1), 0.6, 1e-12);
  EXPECT_NEAR(solver.max_flow(graph, 0, 2), 0.5, 1e-12);
}

TEST(LayeredMaxFlow, MatchesEdmondsKarpOnRandomGraphs) {
  for (unsigned seed = 0; seed < 30; ++seed) {
    const int64_t L = 1 + seed % 4, n = 2 + seed % 9;
    const auto caps = random_caps(L, n, seed);
    const at::LayeredGraph graph(caps.data(), L, n);
    at::LayeredMaxFlow solver(L, n);
    for (int64_t u = 0; u < n; ++u) {
      for (int64_t v = 0; v < n; ++v) {
        const double want = edmonds_karp(caps, L, n, L * n + u, v);
        ASSERT_NEAR(solver.max_flow(graph, u, v), want, 1e-10)
            << "seed " << seed << " u " << u << " v " << v;
      }
    }
  }
}

namespace {

struct Maps {
  int64_t L, B, H, T;
  std::vector<std::vector<double>> data;
  std::vector<at::GraphLayer> layers;
  Maps(int64_t L_, int64_t B_, int64_t H_, int64_t T_, unsigned seed) : L(L_), B(B_), H(H_), T(T_) {
    std::mt19937_64 rng(seed);
    std::exponential_distribution<double> e(1.0);
    for (int64_t l = 0; l < L; ++l) {
      std::vector<double> a(static_cast<size_t>(B * H * T * T));
      for (int64_t r = 0; r < B * H * T; ++r) {
        double s = 0;
        for (int64_t j = 0; j < T; ++j) s += a[r * T + j] = std::pow(e(rng), 3);
        for (int64_t j = 0; j < T; ++j) a[r * T + j] /= s;
      }
      data.push_back(std::move(a));
    }
    for (auto& a : data) layers.push_back({nullptr, a.data(), H});
  }
  std::vector<float> flow(int threads, const std::vector<int64_t>* rows = nullptr) const {
    const int64_t R = rows ? static_cast<int64_t>(rows->size()) : T;
    std::vector<float> out(static_cast<size_t>(B * R * T));
    at::attention_flow({layers.data(), L, B, T, nullptr}, {}, rows ? rows->data() : nullptr, R,
                       out.data(), threads);
    return out;
  }
};

}  // namespace

TEST(AttentionFlow, OneLayerEqualsTheResidualMap) {
  Maps m(1, 2, 3, 7, 11);
  const auto f = m.flow(2);
  const int64_t idx[7] = {0, 1, 2, 3, 4, 5, 6};
  for (int64_t b = 0; b < 2; ++b) {
    double hat[49];
    at::fuse_layer(m.layers[0], b, 7, idx, 7, {}, hat, 1);
    for (int i = 0; i < 49; ++i) EXPECT_NEAR(f[b * 49 + i], hat[i], 1e-6);
  }
}

TEST(AttentionFlow, RowsSumToOneAndMatchEdmondsKarp) {
  Maps m(3, 2, 2, 6, 12);
  const auto f = m.flow(2);
  const int64_t n = 6, idx[6] = {0, 1, 2, 3, 4, 5};
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<double> caps(3 * 36);
    for (int64_t l = 0; l < 3; ++l)
      at::fuse_layer(m.layers[l], b, n, idx, n, {}, caps.data() + l * 36, 1);
    for (int64_t u = 0; u < n; ++u) {
      double want[6], sum = 0, got_sum = 0;
      for (int64_t v = 0; v < n; ++v) sum += want[v] = edmonds_karp(caps, 3, n, 3 * n + u, v);
      for (int64_t v = 0; v < n; ++v) {
        EXPECT_NEAR(f[(b * n + u) * n + v], want[v] / sum, 1e-6);
        got_sum += f[(b * n + u) * n + v];
      }
      EXPECT_NEAR(got_sum, 1.0, 1e-6);
    }
  }
}

TEST(AttentionFlow, BitwiseIdenticalForEveryThreadCountAndRowSubsets) {
  Maps m(4, 2, 2, 23, 13);
  const auto ref = m.flow(1);
  for (int threads : {2, 3, 5}) EXPECT_EQ(m.flow(threads), ref);
  const std::vector<int64_t> rows{22, 0, 7};
  const auto part = m.flow(3, &rows);
  for (int64_t b = 0; b < 2; ++b)
    for (size_t r = 0; r < rows.size(); ++r)
      for (int64_t j = 0; j < 23; ++j)
        EXPECT_EQ(part[(b * 3 + r) * 23 + j], ref[(b * 23 + rows[r]) * 23 + j]);
}

TEST(AttentionFlow, RejectsDiscard) {
  Maps m(1, 1, 1, 3, 14);
  std::vector<float> out(9);
  EXPECT_THROW(at::attention_flow({m.layers.data(), 1, 1, 3, nullptr},
                                  {at::HeadFusion::mean, true, 0.5}, nullptr, 0, out.data(), 1),
               std::invalid_argument);
}
