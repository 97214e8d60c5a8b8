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
// uniform. Throws std::invalid_argument unless 1 ≤ perplexity and k ≥ 1.
void calibrate(const double* sqdist, int64_t n, int64_t k, double perplexity, double tol,
               int max_iter, double* P, double* perplexities, int num_threads);

// P_ij = (p_{j|i} + p_{i|j}) / Σ, the symmetric joint distribution (sums to 1) from the kNN
// graph (indices n×k) and the conditional probabilities (n×k). Deterministic.
Csr joint_probabilities(const int64_t* indices, const double* P_cond, int64_t n, int64_t k,
                        int num_threads);

}  // namespace llmdbg::tsne
