#pragma once
// t-SNE input affinities: per-point perplexity calibration and the symmetric sparse P.
#include <cstdint>
#include <vector>

namespace llmdbg::tsne {

// Sparse row-major matrix (CSR); column indices sorted within each row.
struct Csr {
  int64_t n = 0;
  std::vector<int64_t> indptr;  // n + 1
  std::vector<int64_t> indices;
  std::vector<double> data;
};

// sqdist: n×k squared distances to each point's k neighbours. For every row, bisects the
// precision β_i until the entropy of p_{j|i} ∝ exp(−β_i (d²_ij − min_j d²_ij)) equals
// log(perplexity) within tol (nats), in at most max_iter steps. Writes the conditional
// probabilities (n×k, rows sum to 1) into P and, when perplexities is not null, the achieved
// exp(entropy) per row. Rows whose neighbours are all equidistant (e.g. exact duplicates) end
// uniform; a target below what ties at the nearest distance allow gives the β → ∞ limit
// (uniform over those ties). Each row is solved at unit scale (its shifted distances times a
// power of two), so any finite distances work and sqdist·4^s gives bitwise the same P. Throws
// std::invalid_argument unless perplexity is finite and >= 1, tol finite and >= 0,
// max_iter >= 1, k >= 1 and every sqdist entry finite and >= 0.
void calibrate(const double* sqdist, int64_t n, int64_t k, double perplexity, double tol,
               int max_iter, double* P, double* perplexities, int num_threads);

// P_ij = (p_{j|i} + p_{i|j}) / Σ, the symmetric joint distribution (sums to 1) from the kNN
// graph (indices n×k) and the conditional probabilities (n×k). Deterministic. Throws
// std::invalid_argument for an index out of range or equal to its row, a P_cond entry that is
// negative or not finite, or a P_cond that sums to 0.
Csr joint_probabilities(const int64_t* indices, const double* P_cond, int64_t n, int64_t k,
                        int num_threads);

}  // namespace llmdbg::tsne
