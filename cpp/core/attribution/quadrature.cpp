#include "quadrature.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace llmdbg::attribution {

namespace {

void need(bool ok, const std::string& method, int n, int least, int most = kMaxNodes) {
  if (!ok) {
    throw std::invalid_argument("n_steps must be >= " + std::to_string(least) + " for method '" +
                                method + "', got " + std::to_string(n));
  }
  if (n > most) {
    throw std::invalid_argument("n_steps must be <= " + std::to_string(most) + " for method '" +
                                method + "', got " + std::to_string(n));
  }
}

}  // namespace

Rule gauss_legendre(int n, const CancelFn& cancelled) {
  need(n >= 1, "gausslegendre", n, 1, kMaxQuadraticNodes);
  if (n == 1) return Rule{{0.5}, {1.0}};
  Rule r{std::vector<double>(n), std::vector<double>(n)};
  Guard guard(cancelled);
  // Roots of P_n by Newton from Tricomi's initial guess; symmetric pairs filled together.
  for (int i = 0; i < (n + 1) / 2; ++i) {
    guard.checkpoint();  // O(n) per Newton step
    double x = std::cos(std::numbers::pi * (i + 0.75) / (n + 0.5));
    double dp = 1.0;
    for (int it = 0; it < 100; ++it) {
      double p0 = 1.0, p1 = x;
      for (int k = 2; k <= n; ++k) {
        const double p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1, p1 = p2;
      }
      dp = n * (x * p1 - p0) / (x * x - 1.0);
      const double dx = p1 / dp;
      x -= dx;
      if (std::abs(dx) < 1e-16) break;
    }
    // Recompute the derivative at the converged root for the weight.
    double p0 = 1.0, p1 = x;
    for (int k = 2; k <= n; ++k) {
      const double p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
      p0 = p1, p1 = p2;
    }
    dp = n * (x * p1 - p0) / (x * x - 1.0);
    const double w = 2.0 / ((1.0 - x * x) * dp * dp);
    // Map [-1, 1] -> [0, 1]; increasing α order.
    r.nodes[i] = 0.5 * (1.0 - x), r.weights[i] = 0.5 * w;
    r.nodes[n - 1 - i] = 0.5 * (1.0 + x), r.weights[n - 1 - i] = 0.5 * w;
  }
  return r;
}

Rule clenshaw_curtis(int n, const CancelFn& cancelled) {
  need(n >= 2, "clenshaw_curtis", n, 2, kMaxQuadraticNodes);
  const int N = n - 1;
  Rule r{std::vector<double>(n), std::vector<double>(n)};
  Guard guard(cancelled);
  for (int j = 0; j <= N; ++j) {
    guard.checkpoint();
    const double theta = std::numbers::pi * j / N;
    // Waldvogel's closed form on [-1, 1], halved for [0, 1].
    double s = 0.0;
    for (int k = 1; k <= N / 2; ++k) {
      const double b = (2 * k == N) ? 1.0 : 2.0;
      s += b / (4.0 * k * k - 1.0) * std::cos(2.0 * k * theta);
    }
    const double c = (j == 0 || j == N) ? 1.0 : 2.0;
    r.weights[j] = 0.5 * c / N * (1.0 - s);
    // α = (1 - cos θ) / 2 = sin²(θ/2) on the lower half, mirrored above: exactly symmetric, with
    // exact 0, 1/2 and 1, so nested levels share bit-identical nodes.
    if (2 * j < N) {
      const double half = std::sin(0.5 * theta);
      r.nodes[j] = half * half;
    } else if (2 * j == N) {
      r.nodes[j] = 0.5;
    }
  }
  for (int j = (N + 2) / 2; j <= N; ++j) r.nodes[j] = 1.0 - r.nodes[N - j];
  return r;
}

Rule fixed_rule(const std::string& method, int n, const CancelFn& cancelled) {
  if (method == "gausslegendre") return gauss_legendre(n, cancelled);
  if (method == "clenshaw_curtis") return clenshaw_curtis(n, cancelled);
  Rule r;
  if (method == "riemann_left" || method == "riemann_right" || method == "riemann_middle") {
    need(n >= 1, method, n, 1);
    const double shift = method == "riemann_left" ? 0.0 : method == "riemann_right" ? 1.0 : 0.5;
    for (int k = 0; k < n; ++k) {
      r.nodes.push_back((k + shift) / n);
      r.weights.push_back(1.0 / n);
    }
    return r;
  }
  if (method == "trapezoid" || method == "captum_trapezoid") {
    need(n >= 2, method, n, 2);
    const bool captum = method == "captum_trapezoid";
    for (int k = 0; k < n; ++k) {
      r.nodes.push_back(k == n - 1 ? 1.0 : static_cast<double>(k) / (n - 1));
      const double w = captum ? 1.0 / n : 1.0 / (n - 1);
      r.weights.push_back((k == 0 || k == n - 1) ? 0.5 * w : w);
    }
    return r;
  }
  throw std::invalid_argument(
      "method must be one of 'riemann_left', 'riemann_right', 'riemann_middle', 'trapezoid', "
      "'gausslegendre', 'clenshaw_curtis', 'captum_trapezoid' or 'adaptive', got '" +
      method + "'");
}

}  // namespace llmdbg::attribution
