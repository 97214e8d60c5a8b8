#include "core/attention/rollout.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/common/cpu.hpp"
#include "core/common/parallel.hpp"

#ifdef LLMDBG_X86_AVX2
#include <immintrin.h>
#endif

namespace llmdbg::attention {

// ---------------------------------------------------------------------------------------------
// GEMM. A small BLIS-style kernel rather than Eigen's product: (1) Eigen vectorises for the
// compile-time ISA only (SSE2 in a portable build, about a third of an AVX2 core), while this
// selects an AVX2/FMA micro-kernel at run time; (2) Eigen's GEMM splits work over OpenMP threads
// on its own (with blocking that depends on the thread count), which would break both the
// explicit num_threads contract and bitwise determinism. Here B is packed once into kKC × kNR
// panels (L1), A into kMC × kKC blocks (L2), and every element of C is summed over k in the
// same fixed order (k blocks of kKC, ascending) whatever the row block it falls in.
// ---------------------------------------------------------------------------------------------
namespace detail {
namespace {

constexpr int64_t kMR = 6;    // micro-tile rows
constexpr int64_t kNR = 8;    // micro-tile columns (two AVX2 registers of doubles)
constexpr int64_t kKC = 256;  // k block: a kKC × kNR panel of B stays in L1
constexpr int64_t kMC = 48;   // rows per task: a kMC × kKC block of A stays in L2

using Kernel = void (*)(int64_t kc, const double* a, const double* b, double* c, int64_t ldc,
                        int64_t mr, int64_t nr, bool accumulate);

// Store a finished kMR × kNR tile (t) into C, only its mr × nr valid part.
inline void store_tile(const double* t, double* c, int64_t ldc, int64_t mr, int64_t nr,
                       bool accumulate) {
  for (int64_t r = 0; r < mr; ++r) {
    double* crow = c + r * ldc;
    const double* trow = t + r * kNR;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) crow[j] += trow[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) crow[j] = trow[j];
    }
  }
}

void kernel_portable(int64_t kc, const double* a, const double* b, double* c, int64_t ldc,
                     int64_t mr, int64_t nr, bool accumulate) {
  double t[kMR * kNR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const double* ap = a + p * kMR;
    const double* bp = b + p * kNR;
    for (int64_t r = 0; r < kMR; ++r) {
      const double ar = ap[r];
      for (int64_t j = 0; j < kNR; ++j) t[r * kNR + j] += ar * bp[j];
    }
  }
  store_tile(t, c, ldc, mr, nr, accumulate);
}

#ifdef LLMDBG_X86_AVX2
__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const double* a, const double* b,
                                                     double* c, int64_t ldc, int64_t mr, int64_t nr,
                                                     bool accumulate) {
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
  __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
  __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
  __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
  __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
  __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256d b0 = _mm256_loadu_pd(b);
    const __m256d b1 = _mm256_loadu_pd(b + 4);
    __m256d ar = _mm256_broadcast_sd(a + 0);
    c00 = _mm256_fmadd_pd(ar, b0, c00), c01 = _mm256_fmadd_pd(ar, b1, c01);
    ar = _mm256_broadcast_sd(a + 1);
    c10 = _mm256_fmadd_pd(ar, b0, c10), c11 = _mm256_fmadd_pd(ar, b1, c11);
    ar = _mm256_broadcast_sd(a + 2);
    c20 = _mm256_fmadd_pd(ar, b0, c20), c21 = _mm256_fmadd_pd(ar, b1, c21);
    ar = _mm256_broadcast_sd(a + 3);
    c30 = _mm256_fmadd_pd(ar, b0, c30), c31 = _mm256_fmadd_pd(ar, b1, c31);
    ar = _mm256_broadcast_sd(a + 4);
    c40 = _mm256_fmadd_pd(ar, b0, c40), c41 = _mm256_fmadd_pd(ar, b1, c41);
    ar = _mm256_broadcast_sd(a + 5);
    c50 = _mm256_fmadd_pd(ar, b0, c50), c51 = _mm256_fmadd_pd(ar, b1, c51);
    a += kMR;
    b += kNR;
  }
  const __m256d rows[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == kMR && nr == kNR) {
    for (int64_t r = 0; r < kMR; ++r) {
      double* crow = c + r * ldc;
      if (accumulate) {
        _mm256_storeu_pd(crow, _mm256_add_pd(_mm256_loadu_pd(crow), rows[r][0]));
        _mm256_storeu_pd(crow + 4, _mm256_add_pd(_mm256_loadu_pd(crow + 4), rows[r][1]));
      } else {
        _mm256_storeu_pd(crow, rows[r][0]);
        _mm256_storeu_pd(crow + 4, rows[r][1]);
      }
    }
    return;
  }
  alignas(32) double t[kMR * kNR];
  for (int64_t r = 0; r < kMR; ++r) {
    _mm256_store_pd(t + r * kNR, rows[r][0]);
    _mm256_store_pd(t + r * kNR + 4, rows[r][1]);
  }
  store_tile(t, c, ldc, mr, nr, accumulate);
}
#endif

Kernel pick_kernel() {
#ifdef LLMDBG_X86_AVX2
  if (use_avx2()) return kernel_avx2;
#endif
  return kernel_portable;
}

// B (k × n, row-major, leading dimension ldb) packed as: for each k block (kKC rows) and each
// panel of kNR columns, kc × kNR values row by row, zero-padded past column n. Panel p of the k
// block starting at pc sits at pc * npad + p * kc * kNR. Only panels [p0, p1) are written (so
// threads can share the work).
struct PackedB {
  int64_t k = 0, n = 0, npad = 0;
  std::vector<double> data;
  PackedB() = default;
  PackedB(int64_t k_, int64_t n_) { resize(k_, n_); }
  void resize(int64_t k_, int64_t n_) {
    k = k_, n = n_, npad = (n_ + kNR - 1) / kNR * kNR;
    data.resize(static_cast<size_t>(k * npad));
  }
  int64_t panels() const { return npad / kNR; }
  const double* panel(int64_t pc, int64_t p) const {
    return data.data() + pc * npad + p * std::min(kKC, k - pc) * kNR;
  }
};

void pack_b_panels(const double* b, int64_t ldb, PackedB& out, int64_t p0, int64_t p1) {
  for (int64_t pc = 0; pc < out.k; pc += kKC) {
    const int64_t kc = std::min(kKC, out.k - pc);
    for (int64_t p = p0; p < p1; ++p) {
      double* dst = out.data.data() + pc * out.npad + p * kc * kNR;
      const int64_t col0 = p * kNR;
      const int64_t w = std::min(kNR, out.n - col0);
      for (int64_t kk = 0; kk < kc; ++kk) {
        const double* src = b + (pc + kk) * ldb + col0;
        double* d = dst + kk * kNR;
        for (int64_t j = 0; j < w; ++j) d[j] = src[j];
        for (int64_t j = w; j < kNR; ++j) d[j] = 0.0;
      }
    }
  }
}

// Pack B by the threads of the current team (orphaned worksharing; a team of one works too).
void pack_b_team(const double* b, int64_t ldb, PackedB& out) {
  const int64_t panels = out.panels();
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) pack_b_panels(b, ldb, out, p, p + 1);
}

// C[0:m, 0:n_eff] = A[0:m, 0:k_eff] · B[0:k_eff, 0:n_eff] for m <= kMC rows, B packed (k_eff <=
// B.k, n_eff <= B.n). abuf holds kMC * kKC doubles.
void gemm_block(const double* a, int64_t lda, int64_t m, int64_t k_eff, const PackedB& b,
                int64_t n_eff, double* c, int64_t ldc, double* abuf, Kernel kernel) {
  const int64_t micro = (m + kMR - 1) / kMR;
  const int64_t panels = (n_eff + kNR - 1) / kNR;
  if (k_eff == 0) {
    for (int64_t r = 0; r < m; ++r) std::fill(c + r * ldc, c + r * ldc + n_eff, 0.0);
    return;
  }
  for (int64_t pc = 0; pc < k_eff; pc += kKC) {
    const int64_t kc = std::min(kKC, k_eff - pc);
    // A block: micro-panel q holds rows q*kMR .. q*kMR+5, column by column (zero-padded).
    for (int64_t q = 0; q < micro; ++q) {
      double* dst = abuf + q * kc * kMR;
      for (int64_t r = 0; r < kMR; ++r) {
        const int64_t row = q * kMR + r;
        if (row < m) {
          const double* src = a + row * lda + pc;
          for (int64_t kk = 0; kk < kc; ++kk) dst[kk * kMR + r] = src[kk];
        } else {
          for (int64_t kk = 0; kk < kc; ++kk) dst[kk * kMR + r] = 0.0;
        }
      }
    }
    for (int64_t p = 0; p < panels; ++p) {
      const double* bp = b.panel(pc, p);
      const int64_t nr = std::min(kNR, n_eff - p * kNR);
      for (int64_t q = 0; q < micro; ++q) {
        const int64_t mr = std::min(kMR, m - q * kMR);
        kernel(kc, abuf + q * kc * kMR, bp, c + q * kMR * ldc + p * kNR, ldc, mr, nr, pc > 0);
      }
    }
  }
}

}  // namespace

bool gemm_uses_avx2() { return pick_kernel() != kernel_portable; }

void gemm(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc,
          int64_t m, int64_t k, int64_t n, int num_threads) {
  if (m <= 0 || n <= 0) return;
  const int threads = resolve_threads(num_threads);
  PackedB packed(k, n);
  const Kernel kernel = pick_kernel();
  const int64_t blocks = (m + kMC - 1) / kMC;
  // Per-thread buffers allocated here: nothing inside the region may throw.
  std::vector<double> abufs(static_cast<size_t>(threads * kMC * kKC));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    pack_b_team(b, ldb, packed);
    double* abuf = abufs.data() + thread_id() * kMC * kKC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kMC;
      gemm_block(a + r0 * lda, lda, std::min(kMC, m - r0), k, packed, n, c + r0 * ldc, ldc, abuf,
                 kernel);
    }
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Input checks and head fusion.
// ---------------------------------------------------------------------------------------------

void check_graph(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
                 int64_t num_rows) {
  if (g.layers == nullptr || g.num_layers < 1) throw std::invalid_argument("no attention layers");
  if (g.batch < 1 || g.tokens < 1) throw std::invalid_argument("batch and tokens must be >= 1");
  for (int64_t l = 0; l < g.num_layers; ++l) {
    const GraphLayer& layer = g.layers[l];
    if ((layer.f32 == nullptr) == (layer.f64 == nullptr) || layer.heads < 1) {
      throw std::invalid_argument("layer " + std::to_string(l) +
                                  " needs exactly one data pointer and heads >= 1");
    }
  }
  if (!(opt.discard_ratio >= 0.0 && opt.discard_ratio < 1.0)) {
    throw std::invalid_argument("discard_ratio must be in [0, 1), got " +
                                std::to_string(opt.discard_ratio));
  }
  if (rows != nullptr) {
    for (int64_t r = 0; r < num_rows; ++r) {
      if (rows[r] < 0 || rows[r] >= g.tokens) {
        throw std::invalid_argument("row " + std::to_string(rows[r]) + " is outside [0, " +
                                    std::to_string(g.tokens) + ")");
      }
    }
  }
  if (g.mask != nullptr) {
    for (int64_t b = 0; b < g.batch; ++b) {
      const uint8_t* m = g.mask + b * g.tokens;
      if (std::none_of(m, m + g.tokens, [](uint8_t v) { return v != 0; })) {
        throw std::invalid_argument("sequence " + std::to_string(b) + " has no real token");
      }
    }
  }
}

void real_tokens(const AttentionGraph& g, int64_t b, int64_t* idx, int64_t* n) {
  int64_t count = 0;
  for (int64_t t = 0; t < g.tokens; ++t) {
    if (g.mask == nullptr || g.mask[b * g.tokens + t] != 0) idx[count++] = t;
  }
  *n = count;
}

std::string bad_weight_message(const std::string& arg, int64_t layer, int64_t batch, int64_t head,
                               int64_t query, int64_t key, double value) {
  char v[32];
  std::snprintf(v, sizeof v, "%.9g", value);  // "nan", "inf", "-0.5": no locale involved
  // Appended piece by piece (GCC 12 warns falsely about long operator+ chains, -Wrestrict).
  std::string out = arg;
  if (layer >= 0) out.append("[").append(std::to_string(layer)).append("]");
  out.append(" holds ").append(v).append(" at (batch ").append(std::to_string(batch));
  out.append(", head ")
      .append(std::to_string(head))
      .append(", query ")
      .append(std::to_string(query));
  out.append(", key ").append(std::to_string(key));
  out.append("); attention weights must be finite and >= 0");
  return out;
}

namespace {

// A weight the kernels accept: finite and >= 0 (-0.0 included; false for NaN).
template <typename S>
inline bool weight_ok(S v) {
  return v >= S(0) && v <= std::numeric_limits<S>::max();
}

// The first weight of (layer, batch b) in (head, query, key) order that weight_ok refuses,
// restricted to the real tokens idx[0..n); the message names it. Called only once one was seen.
template <typename S>
std::string locate_bad_weight(const S* data, int64_t heads, int64_t b, int64_t tokens,
                              const int64_t* idx, int64_t n, int64_t layer_index) {
  const S* base = data + b * heads * tokens * tokens;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const S v = base[(h * tokens + idx[i]) * tokens + idx[j]];
        if (!weight_ok(v)) {
          return bad_weight_message("layers", layer_index, b, h, idx[i], idx[j],
                                    static_cast<double>(v));
        }
      }
  return "layers: a weight is negative, NaN or infinite";  // not reached
}

// Sum of n doubles with four independent lanes (vectorisable, fixed order).
inline double lane_sum(const double* x, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) s0 += x[j], s1 += x[j + 1], s2 += x[j + 2], s3 += x[j + 3];
  for (; j < n; ++j) s0 += x[j];
  return (s0 + s1) + (s2 + s3);
}

// o[j] = x[j] (first head) or o[j] (+, max, min)= x[j], widened to double. The same
// arithmetic (a conversion and one add/compare per element, no FMA) is compiled twice, for the
// baseline ISA and for AVX2 (chosen at run time), so both give bitwise the same result.
#define LLMDBG_COMBINE_BODY                                            \
  if (first) {                                                         \
    for (int64_t j = 0; j < n; ++j) o[j] = static_cast<double>(x[j]);  \
  } else if (fusion == HeadFusion::mean) {                             \
    for (int64_t j = 0; j < n; ++j) o[j] += static_cast<double>(x[j]); \
  } else if (fusion == HeadFusion::max) {                              \
    for (int64_t j = 0; j < n; ++j) {                                  \
      const double v = static_cast<double>(x[j]);                      \
      o[j] = o[j] < v ? v : o[j];                                      \
    }                                                                  \
  } else {                                                             \
    for (int64_t j = 0; j < n; ++j) {                                  \
      const double v = static_cast<double>(x[j]);                      \
      o[j] = v < o[j] ? v : o[j];                                      \
    }                                                                  \
  }

// The largest sign-and-exponent bit pattern of n values (the whole float, the high word of a
// double). Non-negative finite values lie below +inf's pattern and negative or non-finite ones do
// not, so one unsigned max per value (a few times cheaper than two float compares) tells a valid
// row apart; -0.0 also lands above and is sorted out by weights_ok's exact pass.
#define LLMDBG_HIGH_BITS_BODY             \
  uint32_t m = 0;                         \
  for (int64_t j = 0; j < n; ++j) {       \
    uint32_t u;                           \
    if constexpr (sizeof(S) == 4) {       \
      std::memcpy(&u, x + j, 4);          \
    } else {                              \
      uint64_t w;                         \
      std::memcpy(&w, x + j, 8);          \
      u = static_cast<uint32_t>(w >> 32); \
    }                                     \
    m = u > m ? u : m;                    \
  }                                       \
  return m;

template <typename S>
void combine_portable(double* __restrict o, const S* __restrict x, int64_t n, HeadFusion fusion,
                      bool first) {
  LLMDBG_COMBINE_BODY
}

template <typename S>
uint32_t high_bits_portable(const S* __restrict x, int64_t n) {
  LLMDBG_HIGH_BITS_BODY
}

#ifdef LLMDBG_X86_AVX2
template <typename S>
__attribute__((target("avx2"))) void combine_avx2(double* __restrict o, const S* __restrict x,
                                                  int64_t n, HeadFusion fusion, bool first) {
  LLMDBG_COMBINE_BODY
}

template <typename S>
__attribute__((target("avx2"))) uint32_t high_bits_avx2(const S* __restrict x, int64_t n) {
  LLMDBG_HIGH_BITS_BODY
}
#endif
#undef LLMDBG_COMBINE_BODY
#undef LLMDBG_HIGH_BITS_BODY

template <typename S>
using CombineFn = void (*)(double*, const S*, int64_t, HeadFusion, bool);
template <typename S>
using HighBitsFn = uint32_t (*)(const S*, int64_t);

template <typename S>
HighBitsFn<S> pick_high_bits() {
#ifdef LLMDBG_X86_AVX2
  if (cpu_has_avx2()) return high_bits_avx2<S>;
#endif
  return high_bits_portable<S>;
}

// Whether every x[j] is finite and >= 0: the bit-pattern bound first, the exact test only for a
// row that fails it (a refused value, or a -0.0).
template <typename S>
bool weights_ok(HighBitsFn<S> high_bits, const S* x, int64_t n) {
  constexpr uint32_t kInf = sizeof(S) == 4 ? 0x7f800000u : 0x7ff00000u;
  if (high_bits(x, n) < kInf) return true;
  for (int64_t j = 0; j < n; ++j) {
    if (!weight_ok(x[j])) return false;
  }
  return true;
}

template <typename S>
CombineFn<S> pick_combine() {
#ifdef LLMDBG_X86_AVX2
  if (cpu_has_avx2()) return combine_avx2<S>;
#endif
  return combine_portable<S>;
}

// Fuse the heads of rows [i0, i1) of one (batch, layer) into out (n × n). idx maps the n real
// tokens to positions; `contiguous` when they are idx[0], idx[0] + 1, ... (no gather needed).
// Returns false when a weight read is negative, NaN or infinite.
template <typename S>
bool fuse_rows(const S* base, int64_t heads, int64_t tokens, const int64_t* idx, bool contiguous,
               int64_t n, HeadFusion fusion, int64_t i0, int64_t i1, double* out) {
  const int64_t offset = idx[0];
  const int64_t plane = tokens * tokens;
  const CombineFn<S> combine = pick_combine<S>();
  const HighBitsFn<S> high_bits = pick_high_bits<S>();
  std::vector<S> gathered(contiguous ? 0 : static_cast<size_t>(n));
  bool ok = true;
  // Head-major over the block of rows, so each head's plane is read as one contiguous stretch
  // per block; every element still accumulates its heads in order 0, 1, ..., H − 1.
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = i0; i < i1; ++i) {
      const S* x = base + h * plane + idx[i] * tokens;
      if (contiguous) {
        x += offset;
      } else {
        for (int64_t j = 0; j < n; ++j) gathered[static_cast<size_t>(j)] = x[idx[j]];
        x = gathered.data();
      }
      combine(out + i * n, x, n, fusion, h == 0);
      ok = weights_ok(high_bits, x, n) && ok;
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    double* o = out + i * n;
    if (fusion == HeadFusion::mean && heads > 1) {
      const double h = static_cast<double>(heads);
      for (int64_t j = 0; j < n; ++j) o[j] /= h;
    }
  }
  return ok;
}

// Residual and row normalisation of row i; returns true when the row has a non-zero entry above
// the diagonal.
inline bool finish_row(double* o, int64_t i, int64_t n, bool residual) {
  if (residual) {
    o[i] += 1.0;
    const double s = lane_sum(o, n);  // >= 1: attention weights are >= 0
    for (int64_t j = 0; j < n; ++j) o[j] /= s;
  }
  bool upper = false;
  for (int64_t j = i + 1; j < n; ++j) upper |= o[j] != 0.0;
  return upper;
}

// vit-explain's discard: zero the k = floor(n² · ratio) smallest entries in (value, position)
// order, keeping entry [0, 0].
void discard_smallest(double* m, int64_t n, double ratio) {
  const int64_t total = n * n;
  const auto k = static_cast<int64_t>(static_cast<double>(total) * ratio);
  if (k <= 0) return;
  std::vector<double> values(m, m + total);
  std::nth_element(values.begin(), values.begin() + (k - 1), values.end());
  const double threshold = values[static_cast<size_t>(k - 1)];
  int64_t below = 0;
  for (int64_t p = 0; p < total; ++p) below += m[p] < threshold;
  int64_t ties = k - below;  // entries equal to the threshold to take, lowest position first
  for (int64_t p = 0; p < total; ++p) {
    bool take = m[p] < threshold;
    if (!take && m[p] == threshold && ties > 0) take = true, --ties;
    if (take && p != 0) m[p] = 0.0;
  }
}

constexpr int64_t kFuseRows = 8;         // rows per work item of the fusion
constexpr uint8_t kUpper = 1, kBad = 2;  // per-chunk flags of fuse_team

// Â of one (batch, layer) by the threads of the current team (orphaned worksharing, so it can
// run inside a longer parallel region; a team of one works too). `flags` holds one byte per
// chunk of kFuseRows rows (shared, at least ceil(n / kFuseRows) long). Returns, in every thread,
// true when Â is lower triangular. A refused weight (weight_ok) is recorded in `guard` as
// std::invalid_argument naming layers[layer_index] and its first position; work stops once the
// guard has stopped (Ctrl-C or an error), but every barrier is still reached. Ends with a barrier.
template <typename S>
bool fuse_team(const S* data, const GraphLayer& layer, int64_t b, int64_t tokens,
               const int64_t* idx, int64_t n, const GraphOptions& opt, double* out, uint8_t* flags,
               Guard& guard, int64_t layer_index) {
  const S* base = data + b * layer.heads * tokens * tokens;
  const bool contiguous = idx[n - 1] - idx[0] == n - 1;
  const bool discard = static_cast<int64_t>(static_cast<double>(n * n) * opt.discard_ratio) > 0;
  const int64_t chunks = (n + kFuseRows - 1) / kFuseRows;
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    flags[c] = 0;
    guard.poll();
    guard.run([&] {
      const int64_t i0 = c * kFuseRows, i1 = std::min(n, i0 + kFuseRows);
      const bool ok =
          fuse_rows(base, layer.heads, tokens, idx, contiguous, n, opt.fusion, i0, i1, out);
      bool any = false;
      if (!discard) {
        for (int64_t i = i0; i < i1; ++i) any = finish_row(out + i * n, i, n, opt.residual) || any;
      }
      flags[c] = static_cast<uint8_t>((any ? kUpper : 0) | (ok ? 0 : kBad));
    });
  }
  bool bad = false;
  for (int64_t c = 0; c < chunks; ++c) bad = bad || (flags[c] & kBad);
  if (bad) {
#pragma omp single
    guard.run([&] {
      throw std::invalid_argument(
          locate_bad_weight(data, layer.heads, b, tokens, idx, n, layer_index));
    });
  }
  if (discard) {
#pragma omp single
    guard.run([&] { discard_smallest(out, n, opt.discard_ratio); });
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      if (guard.stopped()) continue;
      bool any = false;
      for (int64_t i = c * kFuseRows; i < std::min(n, (c + 1) * kFuseRows); ++i) {
        any = finish_row(out + i * n, i, n, opt.residual) || any;
      }
      flags[c] = any ? kUpper : 0;
    }
  }
  bool lower = true;
  for (int64_t c = 0; c < chunks; ++c) lower = lower && !(flags[c] & kUpper);
#pragma omp barrier
  return lower;
}

bool fuse_layer_team(const GraphLayer& layer, int64_t b, int64_t tokens, const int64_t* idx,
                     int64_t n, const GraphOptions& opt, double* out, uint8_t* flags, Guard& guard,
                     int64_t layer_index) {
  return layer.f32 != nullptr
             ? fuse_team(layer.f32, layer, b, tokens, idx, n, opt, out, flags, guard, layer_index)
             : fuse_team(layer.f64, layer, b, tokens, idx, n, opt, out, flags, guard, layer_index);
}

}  // namespace

bool fuse_layer(const GraphLayer& layer, int64_t b, int64_t tokens, const int64_t* idx, int64_t n,
                const GraphOptions& opt, double* out, int num_threads, int64_t layer_index) {
  const int threads = std::max(1, std::min(num_threads, max_threads()));
  std::vector<uint8_t> flags(static_cast<size_t>((n + kFuseRows - 1) / kFuseRows));
  Guard guard;
  bool lower = true;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const bool l =
        fuse_layer_team(layer, b, tokens, idx, n, opt, out, flags.data(), guard, layer_index);
#pragma omp master
    lower = l;
  }
  guard.finish();
  return lower;
}

// ---------------------------------------------------------------------------------------------
// Rollout.
// ---------------------------------------------------------------------------------------------
namespace {

// One sequence: P starts as the requested rows of Â_L and is multiplied on the right by Â_{L−1},
// ..., Â_1 (the full product when every row is requested). One parallel region of `threads`
// threads covers all layers (fusion, packing and the product are worksharing loops inside it),
// so idle workers are woken once per sequence, not three times per layer.
// Allocates before its region (nothing inside may throw); `guard` stops the work on Ctrl-C or a
// refused weight, and the caller calls guard.finish().
void rollout_one(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
                 int64_t num_rows, int64_t b, float* out, int threads, Guard& guard) {
  using detail::kMC;
  const int64_t T = g.tokens;
  std::vector<int64_t> idx(static_cast<size_t>(T));
  int64_t n = 0;
  real_tokens(g, b, idx.data(), &n);
  // Position of every token in the real sub-sequence (-1: padding).
  std::vector<int64_t> pos(static_cast<size_t>(T), -1);
  for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(idx[i])] = i;

  // out_row[r]: output row of P's row r; prow[r]: its index in the sub-sequence.
  const bool full = rows == nullptr;
  const int64_t out_rows_total = full ? T : num_rows;
  std::vector<int64_t> prow, out_row;
  if (full) {
    prow.resize(static_cast<size_t>(n));
    out_row.assign(idx.begin(), idx.begin() + n);
    for (int64_t i = 0; i < n; ++i) prow[static_cast<size_t>(i)] = i;
  } else {
    for (int64_t r = 0; r < num_rows; ++r) {
      const int64_t p = pos[static_cast<size_t>(rows[r])];
      if (p >= 0) prow.push_back(p), out_row.push_back(r);
    }
  }
  const auto R = static_cast<int64_t>(prow.size());
  float* dst = out + b * out_rows_total * T;
  std::fill(dst, dst + out_rows_total * T, 0.0f);
  if (R == 0) return;

  const int64_t L = g.num_layers;
  std::vector<double> ahat(static_cast<size_t>(n * n));
  std::vector<double> p(static_cast<size_t>(full ? n * n : R * n)), pn(p.size());
  std::vector<uint8_t> flags(static_cast<size_t>((n + kFuseRows - 1) / kFuseRows));
  std::vector<double> abufs(static_cast<size_t>(threads * kMC * detail::kKC));
  detail::PackedB packed(n, n);
  const detail::Kernel kernel = detail::pick_kernel();
  const int64_t blocks = (R + kMC - 1) / kMC;
  // Support of each row block while every map is lower triangular: row i of P is then 0 past
  // column i, so the block needs columns (and k) up to its largest row only.
  std::vector<int64_t> block_end(static_cast<size_t>(blocks));
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int64_t hi = 0;
    for (int64_t r = blk * kMC; r < std::min(R, (blk + 1) * kMC); ++r) {
      hi = std::max(hi, prow[static_cast<size_t>(r)] + 1);
    }
    block_end[static_cast<size_t>(blk)] = hi;
  }
  bool lower = true;

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // Top layer: P = its rows (the whole map for the full product).
    const bool top_lower =
        fuse_layer_team(g.layers[L - 1], b, T, idx.data(), n, opt, full ? p.data() : ahat.data(),
                        flags.data(), guard, L - 1);
    if (!full) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        std::copy_n(ahat.data() + prow[static_cast<size_t>(r)] * n, n, p.data() + r * n);
      }
    }
#pragma omp single
    lower = top_lower;
    double* abuf = abufs.data() + thread_id() * kMC * detail::kKC;
    for (int64_t l = L - 2; l >= 0; --l) {
      const bool layer_lower = fuse_layer_team(g.layers[l], b, T, idx.data(), n, opt, ahat.data(),
                                               flags.data(), guard, l);
      detail::pack_b_team(ahat.data(), n, packed);  // ends with a barrier
      const bool tri = lower && layer_lower;
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        if (guard.poll()) continue;  // stopped: skip the work, keep the barriers
        const int64_t r0 = blk * kMC, m = std::min(kMC, R - r0);
        const int64_t kn = tri ? block_end[static_cast<size_t>(blk)] : n;
        detail::gemm_block(p.data() + r0 * n, n, m, kn, packed, kn, pn.data() + r0 * n, n, abuf,
                           kernel);
        if (kn < n) {
          for (int64_t r = r0; r < r0 + m; ++r)
            std::fill(pn.data() + r * n + kn, pn.data() + (r + 1) * n, 0.0);
        }
      }
#pragma omp single
      {
        std::swap(p, pn);
        lower = tri;
      }
    }
  }
  if (guard.stopped()) return;

  for (int64_t r = 0; r < R; ++r) {
    float* o = dst + out_row[static_cast<size_t>(r)] * T;
    const double* src = p.data() + r * n;
    for (int64_t j = 0; j < n; ++j) o[idx[static_cast<size_t>(j)]] = static_cast<float>(src[j]);
  }
}

}  // namespace

void rollout(const AttentionGraph& g, const GraphOptions& opt, const int64_t* rows,
             int64_t num_rows, float* out, int num_threads, const CancelFn& cancelled) {
  check_graph(g, opt, rows, num_rows);
  const int threads = resolve_threads(num_threads);
  Guard guard(cancelled);
  if (threads > 1 && g.batch >= threads) {
    // Whole sequences per thread; each is computed exactly as in the row-parallel branch.
    TaskQueue queue(g.batch);
#pragma omp parallel num_threads(threads)
    queue.run(guard, [&](int64_t b) { rollout_one(g, opt, rows, num_rows, b, out, 1, guard); });
  } else {
    for (int64_t b = 0; b < g.batch && !guard.poll(); ++b) {
      rollout_one(g, opt, rows, num_rows, b, out, threads, guard);
    }
  }
  guard.finish();
}

// ---------------------------------------------------------------------------------------------
// Row sums (input validation).
// ---------------------------------------------------------------------------------------------
namespace {

// One row: the sum in double over 8 lanes and, with WithMin, the minimum over 8 lanes in the same
// sweep (plain compares the compiler turns into vector min instructions).
template <bool WithMin, typename T>
void row_sum_min(const T* x, int64_t cols, double* sum, double* min) {
  double s[8] = {};
  T m[8];
  for (int q = 0; q < 8; ++q) m[q] = cols > 0 ? x[0] : T(0);
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    for (int q = 0; q < 8; ++q) {
      s[q] += static_cast<double>(x[j + q]);
      if constexpr (WithMin) m[q] = x[j + q] < m[q] ? x[j + q] : m[q];
    }
  }
  for (; j < cols; ++j) {
    s[0] += static_cast<double>(x[j]);
    if constexpr (WithMin) m[0] = x[j] < m[0] ? x[j] : m[0];
  }
  *sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  if constexpr (WithMin) {
    T r = m[0];
    for (int q = 1; q < 8; ++q) r = m[q] < r ? m[q] : r;
    *min = static_cast<double>(r);
  }
}

}  // namespace

template <typename T>
void row_sums(const T* data, int64_t rows, int64_t cols, double* out, int num_threads,
              double* row_min, const CancelFn& cancelled) {
  const int threads = resolve_threads(num_threads);
  Guard guard(cancelled);
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows > 64) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    if ((r & 63) == 0 && guard.poll()) continue;
    if (guard.stopped()) continue;
    if (row_min) {
      row_sum_min<true>(data + r * cols, cols, out + r, row_min + r);
    } else {
      row_sum_min<false>(data + r * cols, cols, out + r, nullptr);
    }
  }
  guard.finish();
}

template void row_sums<float>(const float*, int64_t, int64_t, double*, int, double*,
                              const CancelFn&);
template void row_sums<double>(const double*, int64_t, int64_t, double*, int, double*,
                               const CancelFn&);

}  // namespace llmdbg::attention
