#pragma once
// Quadrature on [0, 1] for integrated gradients: IG_i = (x_i - b_i) * ∫₀¹ ∂F(b + α(x - b))/∂x_i dα.
//
// Every rule is a list of nodes α_k and weights w_k with Σ_k w_k g(α_k) ≈ ∫₀¹ g. Weights sum to 1
// for every rule except "captum_trapezoid", which reproduces Captum's riemann_trapezoid (nodes
// 1/(n-1) apart, weights 1/n with halved ends, so Σ w = 1 - 1/n) for side-by-side checks only.
//
// The adaptive rule's nested Gauss–Kronrod–Patterson sequence is in patterson.hpp.
#include <string>
#include <vector>

#include "core/common/cancel.hpp"

namespace llmdbg::attribution {

struct Rule {
  std::vector<double> nodes;    // α in [0, 1]
  std::vector<double> weights;  // same length as nodes
};

// Most nodes a rule may have: far beyond what any integrand needs (Captum's default is 50). The
// O(n²) rules (Gauss–Legendre by Newton on P_n, Clenshaw–Curtis by its closed form) stop at
// kMaxQuadraticNodes, where they take about a second.
inline constexpr int kMaxNodes = 1000000;
inline constexpr int kMaxQuadraticNodes = 10000;

// Methods: "riemann_left", "riemann_right", "riemann_middle", "trapezoid" (correct: nodes
// k/(n-1), ends weighted 1/(2(n-1)); n >= 2), "gausslegendre", "clenshaw_curtis" (n >= 2),
// "captum_trapezoid" (Captum's quirk; n >= 2). Throws std::invalid_argument for an unknown
// method, too few nodes or too many (kMaxNodes, kMaxQuadraticNodes). `cancelled` is polled per node
// (core/common/cancel.hpp; llmdbg::Interrupted when it returns true).
Rule fixed_rule(const std::string& method, int n, const CancelFn& cancelled = {});

// Gauss–Legendre nodes and weights on [0, 1] (Newton iteration on P_n, double precision).
Rule gauss_legendre(int n, const CancelFn& cancelled = {});

// Clenshaw–Curtis with n >= 2 points on [0, 1], nodes in increasing order.
Rule clenshaw_curtis(int n, const CancelFn& cancelled = {});

}  // namespace llmdbg::attribution
