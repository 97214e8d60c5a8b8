#pragma once
// Quadrature on [0, 1] for integrated gradients: IG_i = (x_i - b_i) * ∫₀¹ ∂F(b + α(x - b))/∂x_i dα.
//
// Every rule is a list of nodes α_k and weights w_k with Σ_k w_k g(α_k) ≈ ∫₀¹ g. Weights sum to 1
// for every rule except "captum_trapezoid", which reproduces Captum's riemann_trapezoid (nodes
// 1/(n-1) apart, weights 1/n with halved ends, so Σ w = 1 - 1/n) for side-by-side checks only.
//
// The adaptive rule is nested Clenshaw–Curtis: level 0 is {0, 1}, level k >= 1 has the 2^k + 1
// Chebyshev extreme points of [0, 1], and each level contains the previous one, so refining never
// throws an evaluation away. Its nodes include both endpoints, whose forward values F(b) and F(x)
// give the convergence delta for free. Clenshaw–Curtis is exact for polynomials of degree n - 1
// and, for the analytic integrands of smooth networks, about as accurate as Gauss–Legendre at the
// same number of nodes (Trefethen, "Is Gauss quadrature better than Clenshaw–Curtis?", SIAM Rev.
// 2008), whose nodes do not nest.
#include <string>
#include <vector>

namespace llmdbg::attribution {

struct Rule {
  std::vector<double> nodes;    // α in [0, 1]
  std::vector<double> weights;  // same length as nodes
};

// Methods: "riemann_left", "riemann_right", "riemann_middle", "trapezoid" (correct: nodes
// k/(n-1), ends weighted 1/(2(n-1)); n >= 2), "gausslegendre", "clenshaw_curtis" (n >= 2),
// "captum_trapezoid" (Captum's quirk; n >= 2). Throws std::invalid_argument for an unknown
// method or too few nodes.
Rule fixed_rule(const std::string& method, int n);

// Gauss–Legendre nodes and weights on [0, 1] (Newton iteration on P_n, double precision).
Rule gauss_legendre(int n);

// Clenshaw–Curtis with n >= 2 points on [0, 1], nodes in increasing order.
Rule clenshaw_curtis(int n);

// Number of nodes of nested level `level` (2 for level 0, 2^level + 1 after), level in [0, 20].
int nested_size(int level);

// The nested Clenshaw–Curtis rule of `level`, nodes in the order they were first added: level 0's
// {0, 1}, then the new nodes of level 1, 2, ... (each level's new nodes in increasing order), so
// level k's new nodes are nodes[nested_size(k - 1) : nested_size(k)] and the weights align.
Rule nested_rule(int level);

}  // namespace llmdbg::attribution
