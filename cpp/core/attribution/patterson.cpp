#include "patterson.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <array>
#include <cmath>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <string>

namespace llmdbg::attribution {

namespace {

// Legendre polynomials P_0..P_{deg}(x) on [-1, 1] by the three-term recurrence.
void legendre_all(double x, int deg, double* out) {
  out[0] = 1.0;
  if (deg >= 1) out[1] = x;
  for (int k = 2; k <= deg; ++k)
    out[k] = ((2.0 * k - 1.0) * x * out[k - 1] - (k - 1.0) * out[k - 2]) / k;
}

// Σ c_k P_k(x) by Clenshaw's recurrence.
double legendre_series(const Eigen::VectorXd& c, double x) {
  double b1 = 0.0, b2 = 0.0;
  for (int k = static_cast<int>(c.size()) - 1; k >= 1; --k) {
    const double alpha = (2.0 * k + 1.0) / (k + 1.0) * x;
    const double beta = -(k + 1.0) / (k + 2.0);
    const double b0 = c[k] + alpha * b1 + beta * b2;
    b2 = b1, b1 = b0;
  }
  return c[0] + x * b1 - 0.5 * b2;
}

// New nodes (on [-1, 1]) extending `x` (n nodes) by m = n + 1: the zeros of
// p = P_m + Σ_{i<m} c_i P_i with ∫ π_x p P_j = 0 for j < m.
std::vector<double> extension_nodes(const std::vector<double>& x) {
  const int n = static_cast<int>(x.size());
  const int m = n + 1;
  // The integrands have degree <= n + 2m - 1; Gauss–Legendre with q nodes is exact to 2q - 1.
  const Rule gl = gauss_legendre((n + 2 * m) / 2 + 4);  // on [0, 1]
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(m, m + 1);
  std::vector<double> p(m + 1);
  for (size_t q = 0; q < gl.nodes.size(); ++q) {
    const double t = 2.0 * gl.nodes[q] - 1.0;
    double pi = 2.0 * gl.weights[q];
    for (double xj : x) pi *= (t - xj);
    legendre_all(t, m, p.data());
    for (int j = 0; j < m; ++j)
      for (int i = 0; i <= m; ++i) a(j, i) += pi * p[j] * p[i];
  }
  Eigen::VectorXd c(m + 1);
  c.head(m) = a.leftCols(m).colPivHouseholderQr().solve(-a.col(m));
  c[m] = 1.0;
  // Zeros by sign changes on a grid uniform in θ (x = −cos θ, dense near the ends where zeros
  // crowd), refined by bisection to full precision.
  const int grid = 400 * m;
  std::vector<double> roots;
  double lo = -1.0, flo = legendre_series(c, lo);
  for (int g = 1; g <= grid; ++g) {
    const double hi = -std::cos(std::numbers::pi * g / grid);
    const double fhi = legendre_series(c, hi);
    if ((flo < 0) != (fhi < 0)) {
      double l = lo, h = hi, fl = flo;
      for (int it = 0; it < 200 && h - l > 0; ++it) {
        const double mid = 0.5 * (l + h);
        if (mid <= l || mid >= h) break;
        const double fm = legendre_series(c, mid);
        if ((fm < 0) == (fl < 0)) l = mid, fl = fm;
        else h = mid;
      }
      roots.push_back(0.5 * (l + h));
    }
    lo = hi, flo = fhi;
  }
  if (static_cast<int>(roots.size()) != m || roots.front() <= -1.0 || roots.back() >= 1.0) {
    throw std::runtime_error("Patterson extension of " + std::to_string(n) + " nodes found " +
                             std::to_string(roots.size()) + " real zeros in (-1, 1), expected " +
                             std::to_string(m));
  }
  return roots;
}

// Interpolatory weights on [-1, 1]: Σ_j w_j P_k(x_j) = ∫ P_k = 2 δ_k0 for k < N.
std::vector<double> interpolatory_weights(const std::vector<double>& x) {
  const int n = static_cast<int>(x.size());
  Eigen::MatrixXd v(n, n);
  std::vector<double> p(n);
  for (int j = 0; j < n; ++j) {
    legendre_all(x[j], n - 1, p.data());
    for (int k = 0; k < n; ++k) v(k, j) = p[k];
  }
  Eigen::VectorXd moments = Eigen::VectorXd::Zero(n);
  moments[0] = 2.0;
  const Eigen::VectorXd w = v.colPivHouseholderQr().solve(moments);
  return {w.data(), w.data() + n};
}

std::array<Rule, kPattersonMaxLevel + 1> build_all() {
  std::array<Rule, kPattersonMaxLevel + 1> rules;
  std::vector<double> x;  // nodes on [-1, 1] in order of addition
  const Rule g5 = gauss_legendre(5);
  for (double a : g5.nodes) x.push_back(2.0 * a - 1.0);
  for (int level = 0; level <= kPattersonMaxLevel; ++level) {
    if (level > 0) {
      const auto added = extension_nodes(x);
      x.insert(x.end(), added.begin(), added.end());
    }
    const auto w = interpolatory_weights(x);
    Rule& r = rules[level];
    for (size_t j = 0; j < x.size(); ++j) {
      r.nodes.push_back(0.5 * (x[j] + 1.0));
      r.weights.push_back(0.5 * w[j]);
    }
    // Level 0 keeps Gauss–Legendre's own weights (exact closed form rather than a solve).
    if (level == 0) r.weights = g5.weights;
  }
  return rules;
}

}  // namespace

int patterson_size(int level) {
  if (level < 0 || level > kPattersonMaxLevel) {
    throw std::invalid_argument("Patterson level must be in [0, " +
                                std::to_string(kPattersonMaxLevel) + "], got " +
                                std::to_string(level));
  }
  return 6 * (1 << level) - 1;  // 5, 11, 23, 47, 95
}

const Rule& patterson_rule(int level) {
  patterson_size(level);  // validates
  static std::once_flag once;
  static std::array<Rule, kPattersonMaxLevel + 1> rules;
  std::call_once(once, [] { rules = build_all(); });
  return rules[level];
}

}  // namespace llmdbg::attribution
