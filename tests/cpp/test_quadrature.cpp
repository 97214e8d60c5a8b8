// Quadrature rules for integrated gradients: exactness on polynomials, weights, nesting, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <stdexcept>

#include "core/attribution/patterson.hpp"
#include "core/attribution/quadrature.hpp"

namespace qa = llmdbg::attribution;

namespace {

double integrate(const qa::Rule& r, int degree) {
  double s = 0.0;
  for (size_t k = 0; k < r.nodes.size(); ++k) s += r.weights[k] * std::pow(r.nodes[k], degree);
  return s;
}

double sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }

}  // namespace

TEST(Quadrature, WeightsSumToOneAndNodesInUnitInterval) {
  for (const char* m : {"riemann_left", "riemann_right", "riemann_middle", "trapezoid",
                        "gausslegendre", "clenshaw_curtis"}) {
    for (int n : {2, 3, 7, 50, 301}) {
      const auto r = qa::fixed_rule(m, n);
      ASSERT_EQ(r.nodes.size(), static_cast<size_t>(n)) << m;
      EXPECT_NEAR(sum(r.weights), 1.0, 1e-13) << m << " n=" << n;
      for (double a : r.nodes) {
        EXPECT_GE(a, 0.0);
        EXPECT_LE(a, 1.0);
      }
    }
  }
}

TEST(Quadrature, CaptumTrapezoidKeepsItsDeficit) {
  // Captum's riemann_trapezoid: weights 1/n with halved ends on nodes 1/(n-1) apart.
  for (int n : {2, 10, 50}) {
    const auto r = qa::fixed_rule("captum_trapezoid", n);
    EXPECT_NEAR(sum(r.weights), 1.0 - 1.0 / n, 1e-14);
    EXPECT_DOUBLE_EQ(r.nodes.front(), 0.0);
    EXPECT_DOUBLE_EQ(r.nodes.back(), 1.0);
  }
}

TEST(Quadrature, GaussLegendreExactToDegree2nMinus1) {
  for (int n : {1, 2, 3, 5, 8, 16}) {
    const auto r = qa::gauss_legendre(n);
    for (int d = 0; d <= 2 * n - 1; ++d)
      EXPECT_NEAR(integrate(r, d), 1.0 / (d + 1), 1e-13) << n << " " << d;
    if (n <= 5) {
      EXPECT_GT(std::abs(integrate(r, 2 * n) - 1.0 / (2 * n + 1)), 1e-8) << n;
    }
  }
}

TEST(Quadrature, GaussLegendreMatchesKnownNodes) {
  const auto r = qa::gauss_legendre(2);  // ±1/√3 on [-1, 1]
  EXPECT_NEAR(r.nodes[0], 0.5 * (1 - 1 / std::sqrt(3.0)), 1e-15);
  EXPECT_NEAR(r.weights[0], 0.5, 1e-15);
  const auto big = qa::gauss_legendre(200);
  EXPECT_NEAR(sum(big.weights), 1.0, 1e-12);
  for (size_t k = 1; k < big.nodes.size(); ++k) EXPECT_LT(big.nodes[k - 1], big.nodes[k]);
}

TEST(Quadrature, ClenshawCurtisExactToDegreeNMinus1) {
  for (int n : {2, 3, 5, 9, 17, 33}) {
    const auto r = qa::clenshaw_curtis(n);
    // n - 1 in general; odd n integrates one degree more by symmetry.
    const int exact = (n % 2 == 1) ? n : n - 1;
    for (int d = 0; d <= exact; ++d)
      EXPECT_NEAR(integrate(r, d), 1.0 / (d + 1), 1e-13) << n << " " << d;
  }
}

TEST(Quadrature, TrapezoidExactOnLinearRiemannMiddleToo) {
  for (int n : {2, 3, 50}) {
    EXPECT_NEAR(integrate(qa::fixed_rule("trapezoid", n), 1), 0.5, 1e-14);
    EXPECT_NEAR(integrate(qa::fixed_rule("riemann_middle", n), 1), 0.5, 1e-14);
  }
  // Left/right Riemann are off by exactly ∓1/(2n) on g(α) = α.
  EXPECT_NEAR(integrate(qa::fixed_rule("riemann_left", 50), 1), 0.5 - 0.01, 1e-14);
  EXPECT_NEAR(integrate(qa::fixed_rule("riemann_right", 50), 1), 0.5 + 0.01, 1e-14);
  // Trapezoid error on α² is 1/(6(n-1)²).
  EXPECT_NEAR(integrate(qa::fixed_rule("trapezoid", 11), 2) - 1.0 / 3, 1.0 / 600, 1e-14);
}

// Σ w_k P_d(2α_k − 1) for the Legendre polynomial P_d, whose integral over [0, 1] is δ_d0: a
// well-conditioned exactness check up to high degree (monomials are not).
double integrate_legendre(const qa::Rule& r, int d) {
  double s = 0.0;
  for (size_t k = 0; k < r.nodes.size(); ++k) {
    const double t = 2.0 * r.nodes[k] - 1.0;
    double p0 = 1.0, p1 = t;
    for (int j = 2; j <= d; ++j) {
      const double p2 = ((2.0 * j - 1.0) * t * p1 - (j - 1.0) * p0) / j;
      p0 = p1, p1 = p2;
    }
    s += r.weights[k] * (d == 0 ? 1.0 : p1);
  }
  return s;
}

TEST(Patterson, LevelsNestWithPositiveWeights) {
  const int sizes[] = {5, 11, 23, 47, 95};
  for (int level = 0; level <= qa::kPattersonMaxLevel; ++level) {
    const auto& cur = qa::patterson_rule(level);
    ASSERT_EQ(qa::patterson_size(level), sizes[level]);
    ASSERT_EQ(cur.nodes.size(), static_cast<size_t>(sizes[level]));
    ASSERT_EQ(cur.weights.size(), cur.nodes.size());
    if (level > 0) {
      const auto& prev = qa::patterson_rule(level - 1);
      for (size_t k = 0; k < prev.nodes.size(); ++k) EXPECT_EQ(cur.nodes[k], prev.nodes[k]);
      // New nodes come in increasing order.
      EXPECT_TRUE(std::is_sorted(cur.nodes.begin() + static_cast<long>(prev.nodes.size()),
                                 cur.nodes.end()));
    }
    std::set<double> distinct(cur.nodes.begin(), cur.nodes.end());
    EXPECT_EQ(distinct.size(), cur.nodes.size());
    for (size_t k = 0; k < cur.nodes.size(); ++k) {
      EXPECT_GT(cur.nodes[k], 0.0);
      EXPECT_LT(cur.nodes[k], 1.0);
      EXPECT_GT(cur.weights[k], 0.0) << level << " " << k;
    }
    EXPECT_NEAR(sum(cur.weights), 1.0, 1e-13);
  }
  // Level 0 is 5-point Gauss–Legendre.
  const auto gl = qa::gauss_legendre(5);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(qa::patterson_rule(0).nodes[k], gl.nodes[k]);
    EXPECT_EQ(qa::patterson_rule(0).weights[k], gl.weights[k]);
  }
}

TEST(Patterson, ExactToDegreeThreeNPlusOne) {
  // Level 0 (Gauss, n = 5) is exact to degree 9; level k adds n_{k-1} + 1 nodes and is exact to
  // 3 n_{k-1} + 1 (16, 34, 70, 142). Below level 3 the next even degree is visibly not exact
  // (higher up its error sinks under rounding). The 95-node weights come from a 95 × 95 solve:
  // exact to ~1e-11, far below the float32 accumulation they feed.
  int degree = 9;
  for (int level = 0; level <= qa::kPattersonMaxLevel; ++level) {
    if (level > 0) degree = 3 * qa::patterson_size(level - 1) + 1;
    const auto& r = qa::patterson_rule(level);
    for (int d = 0; d <= degree; ++d)
      EXPECT_NEAR(integrate_legendre(r, d), d == 0 ? 1.0 : 0.0, level < 4 ? 1e-12 : 1e-10)
          << level << " " << d;
    const int beyond = degree % 2 ? degree + 1 : degree + 2;
    if (level < 3) EXPECT_GT(std::abs(integrate_legendre(r, beyond)), 1e-6) << level;
  }
}

TEST(Patterson, ConvergesFastOnSmoothIntegrand) {
  // A sigmoid-shaped integrand like a saturating network: error falls by orders per level.
  auto g = [](double a) { return 1.0 / (1.0 + std::exp(-8.0 * (a - 0.4))); };
  const double exact = (std::log1p(std::exp(8.0 * 0.6)) - std::log1p(std::exp(-8.0 * 0.4))) / 8.0;
  double prev = 1.0;
  for (int level = 0; level <= 3; ++level) {
    const auto& r = qa::patterson_rule(level);
    double s = 0.0;
    for (size_t k = 0; k < r.nodes.size(); ++k) s += r.weights[k] * g(r.nodes[k]);
    const double err = std::abs(s - exact);
    if (level < 3) EXPECT_LT(err, prev * 1e-2) << level;
    prev = err;
  }
  EXPECT_LT(prev, 1e-14);
}

TEST(Quadrature, BadArgumentsThrow) {
  EXPECT_THROW(qa::fixed_rule("trapezoid", 1), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("gausslegendre", 0), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("riemann_left", -3), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("simpson", 5), std::invalid_argument);
  EXPECT_THROW(qa::patterson_size(-1), std::invalid_argument);
  EXPECT_THROW(qa::patterson_rule(qa::kPattersonMaxLevel + 1), std::invalid_argument);
}
