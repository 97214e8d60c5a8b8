// The fused per-head attention kernels against hand-computed small cases, plus thread-count
// determinism and the error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/attention/head_stats.hpp"

namespace at = llmdbg::attention;

namespace {

// Random row-stochastic maps (B, H, T, T); causal ones are zero above the diagonal.
template <typename T>
std::vector<T> random_maps(int64_t b, int64_t h, int64_t t, bool causal, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> expo(1.0);
  std::vector<T> x(static_cast<size_t>(b * h * t * t));
  for (int64_t r = 0; r < b * h * t; ++r) {
    const int64_t i = r % t;
    double sum = 0.0;
    std::vector<double> row(static_cast<size_t>(t), 0.0);
    for (int64_t j = 0; j < t; ++j) {
      if (causal && j > i) continue;
      row[static_cast<size_t>(j)] = std::pow(expo(rng), 3.0);  // peaky
      sum += row[static_cast<size_t>(j)];
    }
    for (int64_t j = 0; j < t; ++j) {
      x[static_cast<size_t>(r * t + j)] = static_cast<T>(row[static_cast<size_t>(j)] / sum);
    }
  }
  return x;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

const double kLog2 = std::log(2.0);

}  // namespace

TEST(HeadStats, HandComputedTwoByTwo) {
  // Row 0 splits evenly, row 1 puts everything on key 0; key 0 is special.
  const std::vector<double> map = {0.5, 0.5, 1.0, 0.0};
  const std::vector<uint8_t> special = {1, 0};
  const auto r = at::head_stats<double>({{map.data(), 1}}, 1, 2, nullptr, special.data(), 1);
  ASSERT_EQ(r.entropy.size(), 1u);
  EXPECT_DOUBLE_EQ(r.entropy[0], kLog2 / 2);               // (log 2 + 0) / 2
  EXPECT_DOUBLE_EQ(r.entropy_norm_bidirectional[0], 0.5);  // (1 + 0) / 2
  EXPECT_DOUBLE_EQ(r.entropy_norm_causal[0], 0.0);         // row 0 left out, row 1 is 0
  EXPECT_DOUBLE_EQ(r.max_weight[0], 0.75);
  EXPECT_DOUBLE_EQ(r.special_mass[0], 0.75);
  EXPECT_DOUBLE_EQ(r.upper_max[0], 0.5);
  ASSERT_EQ(r.sink.size(), 2u);
  EXPECT_DOUBLE_EQ(r.sink[0], 0.75);  // (A00 + A10) / 2
  EXPECT_DOUBLE_EQ(r.sink[1], 0.0);   // A11 / 1
  EXPECT_DOUBLE_EQ(r.sink_max[0], 0.75);
  EXPECT_EQ(r.sink_argmax[0], 0);
  EXPECT_EQ(r.queries, (std::vector<int64_t>{2}));
  EXPECT_EQ(r.norm_queries_bidirectional, (std::vector<int64_t>{2}));
  EXPECT_EQ(r.norm_queries_causal, (std::vector<int64_t>{1}));
}

TEST(HeadStats, CausalWithPaddingSkipsPaddingQueriesAndKeys) {
  // Two sequences, T = 3, causal. Sequence 1 is right-padded (mask 1 1 0); its padding row holds
  // junk, even a negative value, which must be ignored.
  const std::vector<float> maps = {                   // sequence 0
                                   1.0f, 0.0f, 0.0f,  //
                                   0.5f, 0.5f, 0.0f,  //
                                   0.25f, 0.25f, 0.5f,
                                   // sequence 1
                                   1.0f, 0.0f, 0.0f,    //
                                   0.75f, 0.25f, 0.0f,  //
                                   -3.0f, 9.0f, 7.0f};
  const std::vector<uint8_t> mask = {1, 1, 1, 1, 1, 0};
  const auto r = at::head_stats<float>({{maps.data(), 1}}, 2, 3, mask.data(), nullptr, 2);
  const double h01 = kLog2, h02 = 1.5 * kLog2;  // entropies of (.5,.5) and (.25,.25,.5)
  const double h11 = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  EXPECT_NEAR(r.entropy[0], (0 + h01 + h02 + 0 + h11) / 5, 1e-15);
  // Causal normalisation by log(real keys j <= i); the first query of each sequence is left out.
  EXPECT_NEAR(r.entropy_norm_causal[0], (h01 / kLog2 + h02 / std::log(3.0) + h11 / kLog2) / 3,
              1e-15);
  // Bidirectional normalisation by log(real keys of the sequence): 3 and 2.
  EXPECT_NEAR(r.entropy_norm_bidirectional[0],
              (h01 / std::log(3.0) + h02 / std::log(3.0) + h11 / kLog2) / 5, 1e-15);
  EXPECT_DOUBLE_EQ(r.upper_max[0], 0.0);
  EXPECT_NEAR(r.max_weight[0], (1 + 0.5 + 0.5 + 1 + 0.75) / 5, 1e-15);
  EXPECT_TRUE(std::isnan(r.special_mass[0]));
  // alpha(k) = mean over real queries i >= k of A[i, k].
  EXPECT_NEAR(r.sink[0], (1 + 0.5 + 0.25) / 3, 1e-15);
  EXPECT_NEAR(r.sink[1], (0.5 + 0.25) / 2, 1e-15);
  EXPECT_NEAR(r.sink[2], 0.5, 1e-15);
  EXPECT_NEAR(r.sink[3], (1 + 0.75) / 2, 1e-15);
  EXPECT_NEAR(r.sink[4], 0.25, 1e-15);
  EXPECT_TRUE(std::isnan(r.sink[5]));  // padding key
  EXPECT_EQ(r.sink_argmax, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(r.queries, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(r.norm_queries_causal, (std::vector<int64_t>{2, 1}));
}

TEST(HeadStats, UniformAndOneHotHeads) {
  const int64_t t = 6;
  std::vector<double> maps(static_cast<size_t>(2 * t * t), 0.0);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < t; ++j) maps[static_cast<size_t>(i * t + j)] = 1.0 / t;  // head 0
    maps[static_cast<size_t>(t * t + i * t)] = 1.0;  // head 1: every query on key 0
  }
  const auto r = at::head_stats<double>({{maps.data(), 2}}, 1, t, nullptr, nullptr, 0);
  EXPECT_NEAR(r.entropy[0], std::log(6.0), 1e-14);
  EXPECT_NEAR(r.entropy_norm_bidirectional[0], 1.0, 1e-14);
  EXPECT_NEAR(r.max_weight[0], 1.0 / t, 1e-15);
  EXPECT_EQ(r.entropy[1], 0.0);
  EXPECT_EQ(r.entropy_norm_causal[1], 0.0);
  EXPECT_EQ(r.upper_max[1], 0.0);
  EXPECT_EQ(r.sink_max[1], 1.0);
  EXPECT_EQ(r.sink_argmax[1], 0);
  EXPECT_EQ(r.max_weight[1], 1.0);
}

TEST(HeadStats, MissingHeadsAreNaN) {
  const auto a = random_maps<double>(1, 3, 4, false, 1);
  const auto b = random_maps<double>(1, 1, 4, false, 2);
  const auto r = at::head_stats<double>({{a.data(), 3}, {b.data(), 1}}, 1, 4, nullptr, nullptr, 2);
  EXPECT_EQ(r.heads, 3);
  EXPECT_FALSE(std::isnan(r.entropy[3]));
  EXPECT_TRUE(std::isnan(r.entropy[4]));
  EXPECT_TRUE(std::isnan(r.entropy[5]));
  EXPECT_TRUE(std::isnan(r.sink[(3 + 1) * 4]));  // layer 1, head 1, key 0
  EXPECT_EQ(r.sink_argmax[4], -1);
  const auto alone = at::head_stats<double>({{b.data(), 1}}, 1, 4, nullptr, nullptr, 1);
  EXPECT_EQ(alone.entropy[0], r.entropy[3]);
}

TEST(HeadStats, BitwiseIdenticalForEveryThreadCount) {
  const int64_t l = 3, b = 2, h = 5, t = 37;
  std::vector<std::vector<float>> data;
  std::vector<at::LayerMaps<float>> layers;
  for (int64_t i = 0; i < l; ++i) {
    data.push_back(random_maps<float>(b, h, t, i == 1, 10 + static_cast<unsigned>(i)));
  }
  for (auto& d : data) layers.push_back({d.data(), h});
  std::vector<uint8_t> mask(static_cast<size_t>(b * t), 1), special(mask.size(), 0);
  mask[static_cast<size_t>(b * t - 1)] = mask[static_cast<size_t>(b * t - 2)] = 0;
  special[0] = special[static_cast<size_t>(t)] = 1;
  const auto ref = at::head_stats<float>(layers, b, t, mask.data(), special.data(), 1);
  const std::vector<at::LayerMaps<float>> rotated = {layers[1], layers[2], layers[0]};
  const auto js_ref = at::js_divergence<float>(layers, rotated, b, t, mask.data(), 1);
  for (int threads : {2, 3, 7, 64}) {
    const auto r = at::head_stats<float>(layers, b, t, mask.data(), special.data(), threads);
    EXPECT_TRUE(same_bits(r.entropy, ref.entropy)) << threads;
    EXPECT_TRUE(same_bits(r.entropy_norm_causal, ref.entropy_norm_causal)) << threads;
    EXPECT_TRUE(same_bits(r.entropy_norm_bidirectional, ref.entropy_norm_bidirectional)) << threads;
    EXPECT_TRUE(same_bits(r.max_weight, ref.max_weight)) << threads;
    EXPECT_TRUE(same_bits(r.special_mass, ref.special_mass)) << threads;
    EXPECT_TRUE(same_bits(r.sink, ref.sink)) << threads;
    EXPECT_EQ(r.sink_argmax, ref.sink_argmax);
    const auto js = at::js_divergence<float>(layers, rotated, b, t, mask.data(), threads);
    EXPECT_TRUE(same_bits(js, js_ref)) << threads;
  }
  // Layer 1 is causal, the others are not.
  EXPECT_EQ(ref.upper_max[static_cast<size_t>(h)], 0.0);
  EXPECT_GT(ref.upper_max[0], 0.0);
}

TEST(HeadStats, ErrorsNameTheProblem) {
  std::vector<double> map = {0.5, 0.5, 1.5, -0.5};
  try {
    at::head_stats<double>({{map.data(), 1}}, 1, 2, nullptr, nullptr, 1);
    FAIL() << "expected invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("query 1, key 1"), std::string::npos) << e.what();
  }
  const std::vector<uint8_t> empty = {0, 0};
  EXPECT_THROW(at::head_stats<double>({{map.data(), 1}}, 1, 2, empty.data(), nullptr, 1),
               std::invalid_argument);
  EXPECT_THROW(at::head_stats<double>({}, 1, 2, nullptr, nullptr, 1), std::invalid_argument);
  EXPECT_THROW(at::head_stats<double>({{map.data(), 1}}, 0, 2, nullptr, nullptr, 1),
               std::invalid_argument);
  const std::vector<at::LayerMaps<double>> one = {{map.data(), 1}}, two = {one[0], one[0]};
  EXPECT_THROW(at::js_divergence<double>(one, two, 1, 2, nullptr, 1), std::invalid_argument);
}

TEST(JsDivergence, HandComputed) {
  // Row 0: p = (1, 0), q = (.5, .5); row 1: identical rows.
  const std::vector<double> a = {1.0, 0.0, 0.3, 0.7};
  const std::vector<double> b = {0.5, 0.5, 0.3, 0.7};
  const auto js = at::js_divergence<double>({{a.data(), 1}}, {{b.data(), 1}}, 1, 2, nullptr, 1);
  const double kl_p = std::log(1.0 / 0.75);
  const double kl_q = 0.5 * std::log(0.5 / 0.75) + 0.5 * std::log(0.5 / 0.25);
  ASSERT_EQ(js.size(), 1u);
  EXPECT_NEAR(js[0], 0.5 * (kl_p + kl_q) / 2, 1e-15);
}

TEST(JsDivergence, IdenticalIsZeroDisjointIsLog2) {
  const auto a = random_maps<float>(2, 3, 9, true, 5);
  EXPECT_EQ(at::js_divergence<float>({{a.data(), 3}}, {{a.data(), 3}}, 2, 9, nullptr, 2),
            std::vector<double>(3, 0.0));
  const int64_t t = 4;
  std::vector<double> p(static_cast<size_t>(t * t), 0.0), q(p.size(), 0.0);
  for (int64_t i = 0; i < t; ++i) {
    p[static_cast<size_t>(i * t)] = 1.0;
    q[static_cast<size_t>(i * t + 1)] = 1.0;
  }
  const std::vector<uint8_t> mask = {1, 1, 1, 0};
  const auto js = at::js_divergence<double>({{p.data(), 1}}, {{q.data(), 1}}, 1, t, mask.data(), 1);
  EXPECT_NEAR(js[0], kLog2, 1e-15);
}
