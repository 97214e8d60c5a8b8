#pragma once
// Exact k-nearest neighbours for t-SNE: blocked matrix-multiply distances with a per-query top-k.
#include <cstdint>

#include "core/common/cancel.hpp"

namespace llmdbg::tsne {

enum class Metric { euclidean, cosine };

// X: n×d row-major. Writes the k nearest neighbours of every row (never the row itself, so exact
// duplicates of a row are its neighbours at distance 0) into indices (n×k, row-major) and their
// squared distances into sqdist (n×k), sorted by (distance, index). For Metric::cosine the rows are
// L2-normalised first, so sqdist = ‖x̂ − ŷ‖² = 2 (1 − cos); every row must then be nonzero.
//
// Scale-safe: X is first multiplied by the power of two that brings its largest |x| into
// [0.5, 1) (exact), so rows of magnitude 1e-300 or 1e300 rank exactly like unit ones and X·2^s
// gives the same indices with sqdist scaled by exactly 4^s. Candidates come from float32 GEMM
// blocks (‖x‖² + ‖y‖² − 2 x·y on centred data, again at unit scale); the k + margin best are
// re-ranked with distances recomputed in double, so ties are broken by index and the result is
// deterministic and independent of the thread count. Throws std::invalid_argument for k < 1,
// k ≥ n, d < 1, a NaN/Inf entry, a zero row under the cosine metric, or squared distances that
// overflow float64 when scaled back (|x| beyond ~1e154). `cancelled` is polled between query
// blocks (every 10 ms, on the calling thread); when it returns true the search throws
// llmdbg::Interrupted.
template <typename T>
void knn_exact(const T* X, int64_t n, int64_t d, int64_t k, Metric metric, int64_t* indices,
               double* sqdist, int num_threads, const CancelFn& cancelled = {});

}  // namespace llmdbg::tsne
