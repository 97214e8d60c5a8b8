#pragma once
// Approximate k-nearest neighbours for t-SNE at large n: an HNSW graph (hnswlib, Malkov &
// Yashunin 2018; Debian's header-only libhnswlib-dev) built and queried in parallel, with the
// returned candidates re-ranked in double like knn_exact's.
#include <cstdint>

#include "core/common/cancel.hpp"

namespace llmdbg::tsne {

struct HnswParams {
  int M = 24;                // graph degree (2·M links on the bottom layer)
  int ef_construction = 64;  // candidate list while inserting
  int ef_search = 0;         // candidate list while querying; <= 0: max(k + 32, 1.5·k)
  uint64_t seed = 100;       // level generator
  int refine = 16;  // refinement: also try the neighbours of the first `refine` neighbours (0: off)
  int refine_rounds = 1;  // refinement rounds (NN-descent iterations; 0: off)
};

// X: n×d row-major (Euclidean metric). Writes the approximate k nearest neighbours of every row
// (never the row itself) into indices (n×k) and their squared distances, recomputed in double,
// into sqdist (n×k), sorted by (distance, index); the distances are exact, only the neighbour
// set is approximate (see TSNE.knn_recall_ for the recall on a sample). The graph's answers are
// then refined from the neighbours' own neighbour lists (params.refine, params.refine_rounds).
//
// Like knn_exact, ranks at unit scale (an exact power-of-two rescaling of the centred data), so
// X·2^s gives the same indices. Determinism: with num_threads = 1 the graph and the result are
// the same for a fixed seed; with more threads the inserts race for the graph's locks, so the
// graph (and a few neighbours) can change from run to run. Throws std::invalid_argument for
// k < 1, k >= n, d < 1 or NaN/Inf entries; `cancelled` is polled between chunks of inserts and
// queries (llmdbg::Interrupted).
template <typename T>
void knn_approx(const T* X, int64_t n, int64_t d, int64_t k, const HnswParams& params,
                int64_t* indices, double* sqdist, int num_threads, const CancelFn& cancelled = {});

}  // namespace llmdbg::tsne
