#pragma once
// Attention probabilities recomputed from queries and keys, tile by tile, without ever holding a
// (Tq, Tk) map per head: per-row statistics (entropy, max probability, sink and special-token
// mass), maps of chosen heads and rows (optionally fused over heads), and the row-weighted sum
// that top-down rollout needs (REFERENCE.md section 5).
//
// Semantics: Hugging Face's eager attention (eager_attention_forward). Query head h uses key head
// h / (Hq / Hkv) (GQA). For query row i, at absolute position p = i + offset, and key j:
//   w = dot(q_i, k_j) * scaling                 (float32 dot product, then the scaling)
//   w = softcap * tanh(w / softcap)             when softcap > 0 (Gemma-2)
//   w = w + add_mask[b, h, i, j]                when an additive mask is given (may be -inf or
//                                               a huge negative such as float32 min)
// Key j is excluded (probability exactly 0) when causal and j > p; when window > 0 and
// j <= p - window; when bool_mask[b, h, i, j] == 0; or when w == -inf. Over the other keys
//   p_ij = exp(w_ij - m_i) / s_i,  m_i = max(max_j w_ij, sink_h),  s_i = sum_j exp(w_ij - m_i)
//                                                                       + exp(sink_h - m_i)
// where the sink terms appear only with `sinks` (gpt-oss's learned logit per query head, which
// takes part in the max and the denominator only, so rows then sum to less than 1). A row whose
// keys are all excluded is all zeros by convention, and its statistics are NaN (also with sinks).
// An additive mask of float32 min (not -inf) excludes nothing, exactly as in eager attention: a
// row masked that way everywhere is uniform, not zero.
//
// Masks are (Bm, Hm, Tq, Tk), C-contiguous, with Bm in {1, B} and Hm in {1, Hq}; a size-1
// dimension is broadcast (read with a zero stride, never copied). A bool mask is read as bytes,
// nonzero = attend. The causal and window bounds make each row's keys one interval
// [lo_i, hi_i); keys outside it are never computed.
//
// Algorithm. K is packed once per (batch, key head) into panels of 16 keys (D x 16 floats) and
// shared by the query heads of its GQA group. A task takes a block of query rows (6-48, so that
// a key panel meets 48 query rows of the group) and streams the keys it needs in chunks of 512:
// a 6 x 16 register-blocked micro-kernel computes the logits (AVX2/FMA when the CPU has it, chosen
// at run time, else a portable kernel), then each row's chunk is scaled, capped and masked, and
// an online softmax keeps its running max and the sums s, sum_j e_j (w_j - m) and the special mass
// in double. Maps and the row product take one more pass over the row's logits (kept in a
// rows x Tk buffer only when they are asked for). Memory: one such buffer per thread, the packed
// K (the size of k) and, for the row product, one Tk vector of doubles per work chunk.
//
// Statistics (stats=true), float32 (B, Hq, Tq) each, NaN for fully excluded rows:
//   entropy      -sum_j p_ij log p_ij in nats (0 log 0 = 0), computed as
//                log(s) * S / s - sum_j e_j (w_j - m) / s with S = sum_j e_j (no cancellation
//                against m);
//   max_prob     max_j p_ij;
//   sink_mass    p_ij at j = sink_index[b] (0 when that key is excluded);
//   special_mass sum of p_ij over keys with special[b, j] != 0 (only when special is given).
// Maps: float32 (B, nh, nr, Tk) of p for the chosen heads and rows (MapFusion::none), or
// (B, nr, Tk) fused over the chosen heads (mean or max). Heads and rows may repeat; a repeated
// head counts twice in the mean.
// Row product: double (B, Tk), sum_i row_weights[b, i] * mean_{h in row_heads} p_h[b, i, :], or
// with R weight sets (B, R, Tk) from (B, R, Tq) weights, each set like the (B, Tq) case (several
// rolled-out rows in one pass); rows whose weights are all exactly 0 are skipped (not computed).
//
// Accumulation: logits in float32 (like eager attention), sums in double. Determinism: every
// row is computed by one thread with a fixed sequence of operations that does not depend on the
// thread count nor on which other rows or heads are requested, and the row product is reduced
// from per-chunk partial sums (chunks fixed by the problem, not the threads) in chunk order, so
// all outputs are bitwise identical for every num_threads. The AVX2 and portable kernels differ
// in the last bits (FMA, the vectorised exp).
//
// Cancellation: `cancelled`, when set, is called by the calling thread (OpenMP thread 0) before
// the work and then about every 10 ms; once it returns true every thread stops at its next block
// of rows and qk_attention throws llmdbg::Interrupted (outputs are then incomplete).

#include <cstdint>
#include <functional>

namespace llmdbg::attention {

enum class MapFusion { none, mean, max };

// The inputs. Pointers are C-contiguous buffers; optional ones are nullptr when absent.
struct QKProblem {
  const float* q = nullptr;  // (batch, q_heads, q_len, dim), finite
  const float* k = nullptr;  // (batch, kv_heads, k_len, dim), finite
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, k_len = 0, dim = 0;  // all >= 1
  double scaling = 1.0;                                                         // finite
  double softcap = 0.0;  // >= 0, finite; 0 = off
  bool causal = false;
  int64_t window = 0;  // >= 0; 0 = no sliding window
  int64_t offset = 0;  // >= 0; absolute position of query row 0
  // At most one mask, (mask_batch, mask_heads, q_len, k_len).
  const uint8_t* bool_mask = nullptr;  // nonzero = attend
  const float* add_mask = nullptr;
  int64_t mask_batch = 1, mask_heads = 1;  // in {1, batch} and {1, q_heads}
  const uint8_t* special = nullptr;        // (batch, k_len), nonzero = flagged key
  const int64_t* sink_index = nullptr;     // (batch), in [0, k_len); nullptr = key 0
  const float* sinks = nullptr;            // (q_heads), finite
};

// What to compute. Maps: map_heads (num_map_heads, in [0, q_heads)) and map_rows (num_map_rows,
// in [0, q_len)); nullptr = all heads / all rows in order. Row product: row_weights, finite,
// (batch, q_len) with row_sets = 0 or (batch, row_sets, q_len) with row_sets >= 1; row_heads
// (num_row_heads) in [0, q_heads), nullptr = all heads.
struct QKRequest {
  bool stats = false;
  bool maps = false;
  const int64_t* map_heads = nullptr;
  int64_t num_map_heads = 0;
  const int64_t* map_rows = nullptr;
  int64_t num_map_rows = 0;
  MapFusion map_fusion = MapFusion::none;
  const double* row_weights = nullptr;  // row product requested when not nullptr
  int64_t row_sets = 0;                 // 0: (batch, q_len) weights; R >= 1: (batch, R, q_len)
  const int64_t* row_heads = nullptr;
  int64_t num_row_heads = 0;
};

// Caller-owned outputs (shapes above; nothing needs initialising). The four statistics are
// required with stats (special_mass only when special is given), maps with maps, row_product
// with row_weights; the others are ignored.
struct QKOutputs {
  float* entropy = nullptr;
  float* max_prob = nullptr;
  float* sink_mass = nullptr;
  float* special_mass = nullptr;
  float* maps = nullptr;
  double* row_product = nullptr;  // (batch, k_len), or (batch, row_sets, k_len)
};

// Runs the request. Throws std::invalid_argument for bad sizes, options or indices, for NaN or
// inf in q or k (naming the first such element) and for NaN or +inf logits (from add_mask or an
// overflowing dot product; the smallest (batch, head, query) is named); llmdbg::Interrupted when
// `cancelled` returned true; whatever `cancelled` throws. num_threads <= 0 uses the OpenMP default.
void qk_attention(const QKProblem& problem, const QKRequest& request, const QKOutputs& out,
                  int num_threads, const std::function<bool()>& cancelled = {});

namespace detail {

// y[i] = exp(x[i]) with the kernels' own exp (the vectorised polynomial on the AVX2 path):
// -inf and anything below log(FLT_MIN) give 0. For tests.
void exp_block(const float* x, float* y, int64_t n);

// Whether the AVX2/FMA kernels run (llmdbg::force_portable_kernels turns them off). For tests.
bool qk_uses_avx2();

}  // namespace detail

}  // namespace llmdbg::attention
