#pragma once
// Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") over raw
// (B, H, T, T) buffers, and the pieces attention flow shares with it: head fusion into the
// per-layer transition matrix Â and a small dense GEMM.
//
// Definitions. Layer l's maps A_l (H, T, T) have query rows summing to 1. Heads are fused into
// Ā_l (mean, max or min over heads). Optionally the lowest `discard_ratio` fraction of Ā_l's
// entries are zeroed (jacobgil/vit-explain): with n real tokens, the k = floor(n² · ratio)
// smallest entries in (value, row-major position) order are set to 0, except entry [0, 0], which
// is kept even when it is among them (vit-explain drops index 0 from its topk list, so then only
// k − 1 entries are zeroed). Ties are broken by position, so the choice is deterministic (torch's
// topk breaks them arbitrarily). Discard acts on the fused map, before the residual. With
// `residual`, Â_l = (Ā_l + I) / rowsum(Ā_l + I) (= 0.5 Ā_l + 0.5 I for row-stochastic Ā_l);
// this is vit-explain's (A + I) / 2 followed by a correct row normalisation (its issue #16
// divides along the wrong axis). Without `residual`, Â_l = Ā_l as is (no renormalisation,
// like the reference's add_residual=False), so discarded rows then sum to less than 1.
// Rollout: R_1 = Â_1, R_l = Â_l R_{l−1}; the result is R_L.
//
// Padding: `mask` (B, T), nonzero for real tokens. Each sequence is computed on the sub-matrices
// of its real tokens only (so a padded sequence gives bitwise the unpadded result on its real
// positions), and its padding rows and columns are 0 in the output.
//
// Accumulation is in double; inputs may be float32 or float64 per layer; outputs are float32.
// Determinism: every output element is computed by the same sequence of operations whatever the
// thread count (fixed GEMM blocking, one thread per row block), so results are bitwise identical
// for every num_threads. (The GEMM micro-kernel is picked per CPU: machines with and without
// AVX2/FMA may differ in the last bits.)
//
// Validation and cancellation: every weight the fusion reads (those of real queries and keys)
// must be finite and >= 0, else std::invalid_argument names the layer and position; rows that
// merely sum to 1 are not enough (-0.5 and 1.5 would send rollout to 152.9 and -156.8). Long
// kernels take a `cancelled` callback (core/common/cancel.hpp) and throw llmdbg::Interrupted when
// it returns true.

#include <cstdint>
#include <string>

#include "core/common/cancel.hpp"

namespace llmdbg::attention {

enum class HeadFusion { mean, max, min };

// One layer's maps: a C-contiguous (batch, heads, T, T) buffer, float32 or float64 (set exactly
// one pointer). Layers may differ in their number of heads and dtype.
struct GraphLayer {
  const float* f32 = nullptr;
  const double* f64 = nullptr;
  int64_t heads = 0;
};

// The attention graph of one stack: `num_layers` layers bottom first, all (batch, *, tokens,
// tokens), and an optional (batch, tokens) mask (nonzero = real token; nullptr = all real).
struct AttentionGraph {
  const GraphLayer* layers = nullptr;
  int64_t num_layers = 0;
  int64_t batch = 0;
  int64_t tokens = 0;
  const uint8_t* mask = nullptr;
};

struct GraphOptions {
  HeadFusion fusion = HeadFusion::mean;
  bool residual = true;
  double discard_ratio = 0.0;  // in [0, 1)
};

// Throws std::invalid_argument for a malformed graph (null pointers, sizes < 1, a sequence with
// no real token), a discard ratio outside [0, 1) or a row outside [0, tokens).
void check_graph(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
                 int64_t num_rows);

// The real token positions of sequence b, ascending (all of 0..T−1 without a mask).
void real_tokens(const AttentionGraph& g, int64_t b, int64_t* idx, int64_t* n);

// Â of (layer, batch b) restricted to the real tokens idx[0..n) into out (n × n, row-major):
// fused, discarded, residual added, rows normalised as above. Rows are computed in parallel with
// num_threads (1: serially; call from inside a parallel region with 1). Returns true when Â is
// lower triangular (causal), which lets products skip the zero upper triangle. Throws
// std::invalid_argument for a negative, NaN or infinite weight among those read, naming
// layers[layer_index] (or "the layer" when layer_index < 0).
bool fuse_layer(const GraphLayer& layer, int64_t b, int64_t tokens, const int64_t* idx, int64_t n,
                const GraphOptions& opt, double* out, int num_threads, int64_t layer_index = -1);

// "layers[2] holds nan at (batch 0, head 1, query 3, key 4); attention weights must be finite and
// >= 0": the message of every kernel that refuses a weight (`arg` names the list; layer < 0
// leaves the index out).
std::string bad_weight_message(const std::string& arg, int64_t layer, int64_t batch, int64_t head,
                               int64_t query, int64_t key, double value);

// Rollout of every sequence. rows == nullptr: out is (batch, T, T), the full R_L. Otherwise out
// is (batch, num_rows, T) and holds rows[r] of R_L (0 <= rows[r] < T; a padding row is all 0),
// computed top-down as e_rᵀ Â_L ⋯ Â_1 in O(L · num_rows · T²) instead of O(L · T³). Causal
// (lower-triangular) stacks skip the zero triangle (about a third of the dense work).
// Sequences are spread over threads when batch >= num_threads, otherwise row blocks of each
// product are. num_threads <= 0 uses the OpenMP default. `cancelled` is polled between row
// blocks (Interrupted; `out` is then incomplete).
void rollout(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
             int64_t num_rows, float* out, int num_threads, const CancelFn& cancelled = {});

// Row sums of a C-contiguous (rows, cols) buffer in double, in parallel (a fused, single-pass
// replacement for numpy's isfinite + sum checks of attention inputs). A row holding NaN or Inf
// sums to NaN or Inf. With row_min, the smallest value of each row too, in the same pass (the
// negative-weight check of rollout and flow). `cancelled`: as rollout's.
template <typename T>
void row_sums(const T* data, int64_t rows, int64_t cols, double* out, int num_threads,
              double* row_min = nullptr, const CancelFn& cancelled = {});

extern template void row_sums<float>(const float*, int64_t, int64_t, double*, int, double*,
                                     const CancelFn&);
extern template void row_sums<double>(const double*, int64_t, int64_t, double*, int, double*,
                                      const CancelFn&);

namespace detail {

// C[0:m, 0:n] = A[0:m, 0:k] · B[0:k, 0:n], row-major with leading dimensions, double. Fixed
// blocking over k (so the summation order of every element depends on k only); an AVX2/FMA
// micro-kernel where the CPU has one (chosen at run time), a portable one otherwise.
void gemm(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc,
          int64_t m, int64_t k, int64_t n, int num_threads);

// Which micro-kernel runs (tests force the portable one with llmdbg::force_portable_kernels,
// core/common/cpu.hpp).
bool gemm_uses_avx2();

}  // namespace detail

}  // namespace llmdbg::attention
