// Attention rollout and its GEMM against straightforward double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/attention/rollout.hpp"
#include "core/common/cpu.hpp"

namespace at = llmdbg::attention;

namespace {

using Mat = std::vector<double>;  // n × n row-major

// (L, B, H, T, T) softmax of random logits, float32, plus views for the kernels.
struct Stack {
  int64_t L, B, H, T;
  std::vector<std::vector<float>> data;
  std::vector<at::GraphLayer> layers;
  Stack(int64_t L_, int64_t B_, int64_t H_, int64_t T_, unsigned seed, bool causal = false)
      : L(L_), B(B_), H(H_), T(T_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (int64_t l = 0; l < L; ++l) {
      std::vector<float> a(static_cast<size_t>(B * H * T * T));
      for (int64_t r = 0; r < B * H * T; ++r) {
        const int64_t i = r % T;
        float* row = a.data() + r * T;
        double sum = 0;
        std::vector<double> e(static_cast<size_t>(T));
        for (int64_t j = 0; j < T; ++j) {
          e[j] = (causal && j > i) ? 0.0 : std::exp(normal(rng));
          sum += e[j];
        }
        for (int64_t j = 0; j < T; ++j) row[j] = static_cast<float>(e[j] / sum);
      }
      data.push_back(std::move(a));
    }
    for (auto& a : data) layers.push_back({a.data(), nullptr, H});
  }
  at::AttentionGraph graph(const uint8_t* mask = nullptr) const {
    return {layers.data(), L, B, T, mask};
  }
};

// Reference Â of (layer, batch): mean over heads, + I, rows normalised.
Mat reference_hat(const Stack& s, int64_t l, int64_t b, bool residual = true) {
  const int64_t T = s.T;
  Mat m(static_cast<size_t>(T * T), 0.0);
  for (int64_t h = 0; h < s.H; ++h)
    for (int64_t i = 0; i < T * T; ++i)
      m[i] += s.data[l][((b * s.H + h) * T * T) + i] / double(s.H);
  if (residual) {
    for (int64_t i = 0; i < T; ++i) {
      m[i * T + i] += 1.0;
      double sum = 0;
      for (int64_t j = 0; j < T; ++j) sum += m[i * T + j];
      for (int64_t j = 0; j < T; ++j) m[i * T + j] /= sum;
    }
  }
  return m;
}

Mat matmul(const Mat& a, const Mat& b, int64_t n) {
  Mat c(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * n + k] * b[k * n + j];
  return c;
}

Mat reference_rollout(const Stack& s, int64_t b, bool residual = true) {
  Mat r = reference_hat(s, 0, b, residual);
  for (int64_t l = 1; l < s.L; ++l) r = matmul(reference_hat(s, l, b, residual), r, s.T);
  return r;
}

std::vector<float> run(const Stack& s, const at::GraphOptions& opt, int threads,
                       const std::vector<int64_t>* rows = nullptr, const uint8_t* mask = nullptr) {
  const int64_t R = rows ? static_cast<int64_t>(rows->size()) : s.T;
  std::vector<float> out(static_cast<size_t>(s.B * R * s.T), -1.0f);
  at::rollout(s.graph(mask), opt, rows ? rows->data() : nullptr, R, out.data(), threads);
  return out;
}

}  // namespace

TEST(Gemm, MatchesNaiveProductForOddShapesWithBothKernels) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-1, 1);
  for (bool portable : {false, true}) {
    llmdbg::force_portable_kernels(portable);
    for (auto [m, k, n] :
         {std::tuple{1, 1, 1}, {7, 5, 3}, {50, 300, 17}, {97, 513, 130}, {6, 8, 8}}) {
      Mat a(m * k), b(k * n), c(m * n, 99.0), want(m * n, 0.0);
      for (auto& v : a) v = u(rng);
      for (auto& v : b) v = u(rng);
      for (int i = 0; i < m; ++i)
        for (int p = 0; p < k; ++p)
          for (int j = 0; j < n; ++j) want[i * n + j] += a[i * k + p] * b[p * n + j];
      at::detail::gemm(a.data(), k, b.data(), n, c.data(), n, m, k, n, 2);
      for (int i = 0; i < m * n; ++i)
        ASSERT_NEAR(c[i], want[i], 1e-12 * k) << m << "x" << k << "x" << n;
    }
  }
  llmdbg::force_portable_kernels(false);
  EXPECT_FALSE(at::detail::gemm_uses_avx2() && !__builtin_cpu_supports("avx2"));
}

TEST(Rollout, MatchesDoublePrecisionReference) {
  Stack s(4, 2, 3, 37, 1);
  for (bool residual : {true, false}) {
    const auto out = run(s, {at::HeadFusion::mean, residual, 0.0}, 2);
    for (int64_t b = 0; b < s.B; ++b) {
      const Mat want = reference_rollout(s, b, residual);
      for (int64_t i = 0; i < s.T * s.T; ++i) ASSERT_NEAR(out[b * s.T * s.T + i], want[i], 1e-6);
    }
  }
}

TEST(Rollout, IdentityAttentionGivesIdentity) {
  Stack s(3, 1, 2, 9, 2);
  for (auto& a : s.data) {
    std::fill(a.begin(), a.end(), 0.0f);
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i = 0; i < s.T; ++i) a[(h * s.T + i) * s.T + i] = 1.0f;
  }
  const auto out = run(s, {}, 1);
  for (int64_t i = 0; i < s.T; ++i)
    for (int64_t j = 0; j < s.T; ++j) EXPECT_EQ(out[i * s.T + j], i == j ? 1.0f : 0.0f);
}

TEST(Rollout, UniformAttentionStaysUniform) {
  Stack s(5, 1, 2, 8, 3);
  for (auto& a : s.data) std::fill(a.begin(), a.end(), 1.0f / 8);
  const auto plain = run(s, {at::HeadFusion::mean, false, 0.0}, 2);
  for (float v : plain) EXPECT_NEAR(v, 1.0 / 8, 1e-7);
  // With the residual, Â = (U + I) / 2 and Â^L = 2^-L I + (1 − 2^-L) U (U² = U).
  const auto res = run(s, {}, 2);
  const double w = std::ldexp(1.0, -5);
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < 8; ++j) EXPECT_NEAR(res[i * 8 + j], (i == j) * w + (1 - w) / 8, 1e-7);
}

TEST(Rollout, RowPathEqualsRowsOfTheFullProduct) {
  Stack s(6, 2, 2, 61, 4);
  const std::vector<int64_t> rows{60, 0, 17, 17, 33};
  const auto full = run(s, {}, 2);
  const auto part = run(s, {}, 2, &rows);
  for (int64_t b = 0; b < s.B; ++b)
    for (size_t r = 0; r < rows.size(); ++r)
      for (int64_t j = 0; j < s.T; ++j)
        ASSERT_NEAR(part[(b * rows.size() + r) * s.T + j], full[(b * s.T + rows[r]) * s.T + j],
                    1e-6);
}

TEST(Rollout, CausalStackSkipsTheUpperTriangleAndStaysExact) {
  Stack s(5, 1, 3, 130, 5, /*causal=*/true);
  const auto out = run(s, {}, 2);
  const Mat want = reference_rollout(s, 0);
  for (int64_t i = 0; i < s.T; ++i)
    for (int64_t j = 0; j < s.T; ++j) {
      if (j > i) ASSERT_EQ(out[i * s.T + j], 0.0f);
      ASSERT_NEAR(out[i * s.T + j], want[i * s.T + j], 1e-6);
    }
  const std::vector<int64_t> rows{129, 3, 64};
  const auto part = run(s, {}, 1, &rows);
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t j = 0; j < s.T; ++j) ASSERT_NEAR(part[r * s.T + j], want[rows[r] * s.T + j], 1e-6);
}

TEST(Rollout, HeadFusionMaxAndMin) {
  Stack s(2, 1, 3, 6, 6);
  for (auto fusion : {at::HeadFusion::max, at::HeadFusion::min}) {
    const auto out = run(s, {fusion, true, 0.0}, 1);
    Mat hats[2];
    for (int l = 0; l < 2; ++l) {
      Mat m(36);
      for (int i = 0; i < 36; ++i) {
        double v = s.data[l][i];
        for (int h = 1; h < 3; ++h) {
          const double x = s.data[l][h * 36 + i];
          v = fusion == at::HeadFusion::max ? std::max(v, x) : std::min(v, x);
        }
        m[i] = v;
      }
      for (int i = 0; i < 6; ++i) {
        m[i * 6 + i] += 1;
        double sum = 0;
        for (int j = 0; j < 6; ++j) sum += m[i * 6 + j];
        for (int j = 0; j < 6; ++j) m[i * 6 + j] /= sum;
      }
      hats[l] = m;
    }
    const Mat want = matmul(hats[1], hats[0], 6);
    for (int i = 0; i < 36; ++i) EXPECT_NEAR(out[i], want[i], 1e-6);
  }
}

TEST(Rollout, DiscardZeroesTheSmallestEntriesButKeepsTheFirst) {
  // One layer, one head: the fused map itself. Entry [0,0] is the smallest, so with k = 4
  // only three entries are zeroed (vit-explain drops index 0 from its list).
  const float a[9] = {0.05f, 0.5f, 0.45f, 0.1f, 0.6f, 0.3f, 0.2f, 0.2f, 0.6f};
  const at::GraphLayer layer{a, nullptr, 1};
  const int64_t idx[3] = {0, 1, 2};
  double hat[9];
  at::fuse_layer(layer, 0, 3, idx, 3, {at::HeadFusion::mean, false, 0.5}, hat, 1);  // k = 4
  // Sorted by (value, position): 0.05@0 (kept), 0.1@3, 0.2@6, 0.2@7 -> zeroed.
  const double want[9] = {0.05, 0.5, 0.45, 0, 0.6, 0.3, 0, 0, 0.6};
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(hat[i], want[i], 1e-7) << i;
  at::fuse_layer(layer, 0, 3, idx, 3, {at::HeadFusion::mean, true, 0.5}, hat, 1);
  const double row1 = 0.6 + 1 + 0.3;  // (A + I) row 1 after discarding [1, 0]
  EXPECT_NEAR(hat[3], 0.0, 1e-12);
  EXPECT_NEAR(hat[4], 1.6 / row1, 1e-7);
  EXPECT_NEAR(hat[5], 0.3 / row1, 1e-7);
}

TEST(Rollout, PaddingIsRemovedExactly) {
  const int64_t T = 11, pad = 3, n = T - pad;
  Stack small(3, 1, 2, n, 7);
  Stack big(3, 1, 2, T, 7);
  for (int64_t l = 0; l < 3; ++l) {
    std::fill(big.data[l].begin(), big.data[l].end(), 0.25f);  // garbage at padding
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
          big.data[l][(h * T + i + pad) * T + j + pad] = small.data[l][(h * n + i) * n + j];
  }
  std::vector<uint8_t> mask(T, 1);
  std::fill(mask.begin(), mask.begin() + pad, 0);  // left padding
  const auto want = run(small, {}, 1);
  const auto got = run(big, {}, 2, nullptr, mask.data());
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      const float expect = (i < pad || j < pad) ? 0.0f : want[(i - pad) * n + j - pad];
      ASSERT_EQ(got[i * T + j], expect) << i << "," << j;
    }
}

TEST(Rollout, BitwiseIdenticalForEveryThreadCount) {
  for (int64_t B : {1, 3}) {
    Stack s(4, B, 2, 101, 8);
    const std::vector<int64_t> rows{5, 100};
    const auto ref = run(s, {}, 1);
    const auto ref_rows = run(s, {}, 1, &rows);
    for (int threads : {2, 3, 4}) {
      EXPECT_EQ(run(s, {}, threads), ref);
      EXPECT_EQ(run(s, {}, threads, &rows), ref_rows);
    }
  }
}

TEST(Rollout, RejectsBadArguments) {
  Stack s(1, 1, 1, 4, 9);
  std::vector<float> out(16);
  EXPECT_THROW(at::rollout(s.graph(), {at::HeadFusion::mean, true, 1.0}, nullptr, 0, out.data(), 1),
               std::invalid_argument);
  const int64_t bad_row = 4;
  EXPECT_THROW(at::rollout(s.graph(), {}, &bad_row, 1, out.data(), 1), std::invalid_argument);
  const uint8_t empty[4] = {0, 0, 0, 0};
  EXPECT_THROW(at::rollout(s.graph(empty), {}, nullptr, 0, out.data(), 1), std::invalid_argument);
}

TEST(RowSums, MatchReferenceAndFlagNonFinite) {
  std::vector<float> x(3 * 21);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * static_cast<float>(i % 7);
  x[25] = std::nanf("");
  double out[3];
  at::row_sums(x.data(), 3, 21, out, 2);
  double want0 = 0;
  for (int j = 0; j < 21; ++j) want0 += x[j];
  EXPECT_DOUBLE_EQ(out[0], want0);
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_TRUE(std::isfinite(out[2]));
}

TEST(RowSums, MinimaInTheSamePass) {
  const std::vector<float> x = {0.5f, 0.25f, 0.25f, 1.5f, -0.5f, 0.0f};
  std::vector<double> sums(2), mins(2);
  llmdbg::attention::row_sums(x.data(), 2, 3, sums.data(), 1, mins.data());
  EXPECT_DOUBLE_EQ(sums[0], 1.0);
  EXPECT_DOUBLE_EQ(sums[1], 1.0);
  EXPECT_DOUBLE_EQ(mins[0], 0.25);
  EXPECT_DOUBLE_EQ(mins[1], -0.5);
}
