#pragma once
// Exact k-nearest neighbours for t-SNE: blocked matrix-multiply distances with a per-query top-k.
#include <cstdint>

namespace llmdbg::tsne {

enum class Metric { euclidean, cosine };

// X: n×d row-major. Writes the k nearest neighbours of every row (never the row itself, so exact
// duplicates of a row are its neighbours at distance 0) into indices (n×k, row-major) and their
// squared distances into sqdist (n×k), sorted by (distance, index). For Metric::cosine the rows are
// L2-normalised first, so sqdist = ‖x̂ − ŷ‖² = 2 (1 − cos); every row must then be nonzero.
//
// Candidates come from float32 GEMM blocks (‖x‖² + ‖y‖² − 2 x·y on centred data); the k + margin
// best are re-ranked with distances recomputed in double, so ties are broken by index and the
// result is deterministic and independent of the thread count. Throws std::invalid_argument for
// k < 1, k ≥ n or a zero row under the cosine metric.
template <typename T>
void knn_exact(const T* X, int64_t n, int64_t d, int64_t k, Metric metric, int64_t* indices,
               double* sqdist, int num_threads);

}  // namespace llmdbg::tsne
