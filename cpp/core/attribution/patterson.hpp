#pragma once
// Nested Gauss–Kronrod–Patterson rules on [0, 1] for adaptive integrated gradients.
//
// Level 0 is the 5-point Gauss–Legendre rule (exact to degree 9). Level k adds n_{k-1} + 1 nodes
// to the n_{k-1} of level k - 1 (5, 11, 23, 47, 95 nodes): the new nodes are the zeros of the
// polynomial of degree n_{k-1} + 1 orthogonal to every lower degree under the weight
// π(x) = Π (x − x_j) over the existing nodes (Kronrod 1965; Patterson 1968, "The optimum addition
// of points to quadrature formulae"), which raises the exactness to 3 n_{k-1} + 1 (level 1 is the
// classical 11-point Gauss–Kronrod rule). Every level reuses all earlier nodes, so refining
// never throws a model evaluation away, and per node it is about twice as accurate as nested
// Clenshaw–Curtis (degree ≈ 1.5 n instead of n − 1). The rules are open: the endpoint values
// F(b), F(x) that the convergence delta needs come from one extra forward-only pass.
#include <vector>

#include "quadrature.hpp"

namespace llmdbg::attribution {

// Highest supported level (95 nodes); level 5 (191 nodes) is not computable stably in double.
inline constexpr int kPattersonMaxLevel = 4;

// Number of nodes of `level` in [0, kPattersonMaxLevel]: 5, 11, 23, 47, 95.
int patterson_size(int level);

// The rule of `level`, nodes in the order they were first added (level 0's five Gauss nodes in
// increasing α, then each later level's new nodes in increasing α), so level k's new nodes are
// nodes[patterson_size(k - 1) :] and every node of level k - 1 appears bit-identically at the
// same index. Weights are positive and sum to 1. Computed once per level and cached.
// Throws std::invalid_argument for a level outside [0, kPattersonMaxLevel].
const Rule& patterson_rule(int level);

}  // namespace llmdbg::attribution
