// Quadrature rules for integrated gradients: exactness on polynomials, weights, nesting, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <set>
#include <stdexcept>

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
  for (const char* m : {"riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gausslegendre",
                        "clenshaw_curtis"}) {
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
    for (int d = 0; d <= 2 * n - 1; ++d) EXPECT_NEAR(integrate(r, d), 1.0 / (d + 1), 1e-13) << n << " " << d;
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
    for (int d = 0; d <= exact; ++d) EXPECT_NEAR(integrate(r, d), 1.0 / (d + 1), 1e-13) << n << " " << d;
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

TEST(Quadrature, NestedLevelsReuseEveryNode) {
  for (int level = 1; level <= 8; ++level) {
    const auto prev = qa::nested_rule(level - 1);
    const auto cur = qa::nested_rule(level);
    ASSERT_EQ(cur.nodes.size(), static_cast<size_t>(qa::nested_size(level)));
    for (size_t k = 0; k < prev.nodes.size(); ++k) EXPECT_EQ(cur.nodes[k], prev.nodes[k]);
    std::set<double> distinct(cur.nodes.begin(), cur.nodes.end());
    EXPECT_EQ(distinct.size(), cur.nodes.size());
    EXPECT_NEAR(sum(cur.weights), 1.0, 1e-13);
    // Same rule as plain Clenshaw–Curtis, reordered.
    const auto cc = qa::clenshaw_curtis(qa::nested_size(level));
    for (int d = 0; d < qa::nested_size(level); ++d) EXPECT_NEAR(integrate(cur, d), integrate(cc, d), 1e-13);
  }
  const auto l0 = qa::nested_rule(0);
  EXPECT_EQ(l0.nodes, (std::vector<double>{0.0, 1.0}));
  EXPECT_EQ(qa::nested_rule(1).nodes[2], 0.5);
}

TEST(Quadrature, NestedConvergesFastOnSmoothIntegrand) {
  // A sigmoid-shaped integrand like a saturating network: error falls by orders per level.
  auto g = [](double a) { return 1.0 / (1.0 + std::exp(-8.0 * (a - 0.4))); };
  const double exact = (std::log1p(std::exp(8.0 * 0.6)) - std::log1p(std::exp(-8.0 * 0.4))) / 8.0;
  double prev = 1.0;
  for (int level = 2; level <= 6; ++level) {
    const auto r = qa::nested_rule(level);
    double s = 0.0;
    for (size_t k = 0; k < r.nodes.size(); ++k) s += r.weights[k] * g(r.nodes[k]);
    const double err = std::abs(s - exact);
    EXPECT_LT(err, prev) << level;
    prev = err;
  }
  EXPECT_LT(prev, 1e-10);
}

TEST(Quadrature, BadArgumentsThrow) {
  EXPECT_THROW(qa::fixed_rule("trapezoid", 1), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("gausslegendre", 0), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("riemann_left", -3), std::invalid_argument);
  EXPECT_THROW(qa::fixed_rule("simpson", 5), std::invalid_argument);
  EXPECT_THROW(qa::nested_size(-1), std::invalid_argument);
  EXPECT_THROW(qa::nested_size(21), std::invalid_argument);
}
