#pragma once
// Per layer x head attention diagnostics over raw (B, H, T, T) buffers: one fused pass over each
// (layer, batch, head) map gives the row entropies (raw and normalised), the row maxima, the
// mass on special tokens, the largest weight above the diagonal (to detect causal maps) and the
// column sums behind the StreamingLLM sink score (Xiao et al. 2023); a second kernel gives the
// Jensen-Shannon divergence between the rows of two runs.
//
// Conventions. Row i (a query) of a map holds the weights A[i, j] over keys j and sums to 1.
// `mask` is (B, T), nonzero for real tokens (nullptr: every token is real); padding queries are
// skipped, padding keys are still read (a masked model gives them weight 0).
// Accumulation is in double. Determinism: each (layer, batch, head) map is reduced by one thread
// in row order into its own slot, and the slots are merged over the batch in a fixed order, so
// results are bitwise identical for every thread count.

#include <cstdint>
#include <vector>

#include "core/common/cancel.hpp"

namespace llmdbg::attention {

// One layer: a C-contiguous (batch, heads, T, T) buffer. Layers may differ in their number of
// heads; outputs are laid out with the largest head count and hold NaN for missing heads.
template <typename T>
struct LayerMaps {
  const T* data = nullptr;
  int64_t heads = 0;
};

struct HeadStats {
  int64_t layers = 0, batch = 0, heads = 0, tokens = 0;  // heads: the largest head count

  // (layers, heads): means over the real queries of all sequences (pooled, not a mean of means).
  std::vector<double> entropy;  // H_i = -sum_j A_ij log A_ij (nats, 0 log 0 = 0)
  // H_i / log(n_i) where n_i is the number of keys query i can attend to; queries with n_i = 1
  // (a one-token sequence, the first query of a causal map) are left out. NaN without any query.
  std::vector<double> entropy_norm_bidirectional;  // n_i = real keys of the sequence
  std::vector<double> entropy_norm_causal;         // n_i = real keys j <= i
  std::vector<double> max_weight;                  // max_j A_ij
  std::vector<double> special_mass;  // sum over special keys j of A_ij (NaN: no special)
  // (layers, heads): the largest weight a real query gives a later real key (0 when none, e.g.
  // T = 1). Exactly 0 for causal maps.
  std::vector<double> upper_max;

  // (layers, batch, heads, tokens): StreamingLLM's alpha(k) = mean over the real queries i >= k
  // of A[i, k] (= sum_{i>=k} A[i,k] / (T - k) without padding); NaN at padding keys.
  std::vector<double> sink;
  // (layers, batch, heads, tokens): the mean over *all* real queries of A[i, k], the sink score
  // for bidirectional maps, where every query can attend to k (equal to sink for causal ones
  // up to the count of queries that can see k).
  std::vector<double> sink_all;
  // (layers, batch, heads): max_k alpha(k) over real k, and its position (the first on ties).
  std::vector<double> sink_max;
  std::vector<int64_t> sink_argmax;

  // (batch): real queries, and those counted by the two normalised entropies.
  std::vector<int64_t> queries, norm_queries_bidirectional, norm_queries_causal;
};

// Fused per-head statistics of every layer. `batch`, `tokens` >= 1; every sequence must have a
// real token. `special` is (B, T), nonzero for special tokens, or nullptr. Throws
// std::invalid_argument for bad sizes and for a negative, NaN or infinite weight in a real
// query's row (naming its position). num_threads <= 0 uses the OpenMP default. `cancelled` is
// polled between rows (core/common/cancel.hpp; llmdbg::Interrupted when it returns true).
template <typename T>
HeadStats head_stats(const std::vector<LayerMaps<T>>& layers, int64_t batch, int64_t tokens,
                     const uint8_t* mask, const uint8_t* special, int num_threads,
                     const CancelFn& cancelled = {});

// Jensen-Shannon divergence between corresponding rows of two runs with the same shapes:
// JS(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, in nats (divide by log 2 for
// base 2, where it lies in [0, 1]), averaged per (layer, head) over the real queries of all
// sequences. Returns (layers, heads), NaN for missing heads. Throws std::invalid_argument for
// mismatched layers and negative, NaN or infinite weights in real queries' rows; `cancelled` as
// head_stats'.
template <typename T>
std::vector<double> js_divergence(const std::vector<LayerMaps<T>>& a,
                                  const std::vector<LayerMaps<T>>& b, int64_t batch, int64_t tokens,
                                  const uint8_t* mask, int num_threads,
                                  const CancelFn& cancelled = {});

extern template HeadStats head_stats<float>(const std::vector<LayerMaps<float>>&, int64_t, int64_t,
                                            const uint8_t*, const uint8_t*, int, const CancelFn&);
extern template HeadStats head_stats<double>(const std::vector<LayerMaps<double>>&, int64_t,
                                             int64_t, const uint8_t*, const uint8_t*, int,
                                             const CancelFn&);
extern template std::vector<double> js_divergence<float>(const std::vector<LayerMaps<float>>&,
                                                         const std::vector<LayerMaps<float>>&,
                                                         int64_t, int64_t, const uint8_t*, int,
                                                         const CancelFn&);
extern template std::vector<double> js_divergence<double>(const std::vector<LayerMaps<double>>&,
                                                          const std::vector<LayerMaps<double>>&,
                                                          int64_t, int64_t, const uint8_t*, int,
                                                          const CancelFn&);

}  // namespace llmdbg::attention
