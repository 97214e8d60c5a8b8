#include "core/attention/qk_attention.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/common/cpu.hpp"
#include "core/common/errors.hpp"
#include "core/common/parallel.hpp"

#ifdef LLMDBG_X86_AVX2
#include <immintrin.h>
#endif

namespace llmdbg::attention {

namespace {

constexpr int64_t kMR = 6;          // micro-tile rows (query rows)
constexpr int64_t kNR = 16;         // micro-tile columns (keys): two AVX2 registers
constexpr int64_t kKC = 512;        // keys per chunk: chunks start at multiples of kKC
constexpr int64_t kGroupRows = 48;  // query rows of a GQA group that share one key panel
constexpr int64_t kMaxChunks = 64;  // row-product partial sums (over the whole batch)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLowest = std::numeric_limits<float>::lowest();
constexpr float kMaxFloat = std::numeric_limits<float>::max();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("qk_attention: " + what);
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: out[r * ld + c] = sum_d q[r][d] * panel[d * kNR + c] for 6 rows and 16 keys,
// summed over d in ascending order (the same order whatever the tile's position).
// ---------------------------------------------------------------------------------------------
using MicroKernel = void (*)(int64_t dim, const float* const* q, const float* panel, float* out,
                             int64_t ld);

void micro_portable(int64_t dim, const float* const* q, const float* panel, float* out,
                    int64_t ld) {
  float acc[kMR][kNR] = {};
  for (int64_t d = 0; d < dim; ++d) {
    const float* b = panel + d * kNR;
    for (int64_t r = 0; r < kMR; ++r) {
      const float a = q[r][d];
      for (int64_t c = 0; c < kNR; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int64_t r = 0; r < kMR; ++r) {
    for (int64_t c = 0; c < kNR; ++c) out[r * ld + c] = acc[r][c];
  }
}

// ---------------------------------------------------------------------------------------------
// Row passes, portable. prepare: logits -> masked logits in place, returns their max and flags
// NaN/+inf. accumulate: e = exp(x - m) summed (s), e * (x - m) summed (e) and the special mass.
// probabilities: x -> exp(x - m) * inv_s in place.
// ---------------------------------------------------------------------------------------------
struct Sums {
  double s = 0.0, e = 0.0, sp = 0.0;
};

template <bool Add, bool Keep>
float prepare_portable(float* x, int64_t n, float scaling, const float* add, const uint8_t* keep,
                       bool& bad) {
  float mx = kNegInf;
  bool nonfinite = false;
  for (int64_t j = 0; j < n; ++j) {
    float v = x[j] * scaling;
    if constexpr (Add) v += add[j];
    if constexpr (Keep) v = keep[j] ? v : kNegInf;
    nonfinite |= !(v <= kMaxFloat);  // NaN or +inf
    x[j] = v;
    mx = v > mx ? v : mx;
  }
  bad = bad || nonfinite;
  return mx;
}

template <bool Special>
void accumulate_portable(const float* x, int64_t n, float m, const uint8_t* special, Sums& out) {
  double s = 0.0, e = 0.0, sp = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float t = std::max(x[j] - m, kLowest);  // -inf (excluded) -> lowest, so e * t = 0
    const float ej = std::exp(t);
    s += ej;
    e += static_cast<double>(ej) * static_cast<double>(t);
    if constexpr (Special) sp += special[j] ? static_cast<double>(ej) : 0.0;
  }
  out.s += s, out.e += e, out.sp += sp;
}

void probabilities_portable(float* x, int64_t n, float m, float inv_s) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::exp(std::max(x[j] - m, kLowest)) * inv_s;
}

// ---------------------------------------------------------------------------------------------
// AVX2/FMA versions.
// ---------------------------------------------------------------------------------------------
#ifdef LLMDBG_X86_AVX2
#define LLMDBG_AVX2 __attribute__((target("avx2,fma")))

// exp(x) for 8 floats, Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial),
// within 2 ulp of the true value on [log(FLT_MIN), 88]; -inf and anything below log(FLT_MIN)
// give 0 (the denormal results a libm gives there are below 1.2e-38 anyway).
LLMDBG_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654475f);  // log(FLT_MIN)
  const __m256 hi = _mm256_set1_ps(88.0f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
  return _mm256_andnot_ps(underflow, y);
}

LLMDBG_AVX2 inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

LLMDBG_AVX2 inline double hsum(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

// 8 bytes -> all-ones lanes where the byte is 0.
LLMDBG_AVX2 inline __m256 zero_bytes(const uint8_t* p) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()));
}

LLMDBG_AVX2 void micro_avx2(int64_t dim, const float* const* q, const float* panel, float* out,
                            int64_t ld) {
  const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3], *q4 = q[4], *q5 = q[5];
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  const float* b = panel;
  for (int64_t d = 0; d < dim; ++d, b += kNR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 a = _mm256_broadcast_ss(q0 + d);
    c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(q1 + d);
    c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(q2 + d);
    c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(q3 + d);
    c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(q4 + d);
    c40 = _mm256_fmadd_ps(a, b0, c40), c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(q5 + d);
    c50 = _mm256_fmadd_ps(a, b0, c50), c51 = _mm256_fmadd_ps(a, b1, c51);
  }
  _mm256_storeu_ps(out, c00), _mm256_storeu_ps(out + 8, c01);
  out += ld;
  _mm256_storeu_ps(out, c10), _mm256_storeu_ps(out + 8, c11);
  out += ld;
  _mm256_storeu_ps(out, c20), _mm256_storeu_ps(out + 8, c21);
  out += ld;
  _mm256_storeu_ps(out, c30), _mm256_storeu_ps(out + 8, c31);
  out += ld;
  _mm256_storeu_ps(out, c40), _mm256_storeu_ps(out + 8, c41);
  out += ld;
  _mm256_storeu_ps(out, c50), _mm256_storeu_ps(out + 8, c51);
}

template <bool Add, bool Keep>
LLMDBG_AVX2 float prepare_avx2(float* x, int64_t n, float scaling, const float* add,
                               const uint8_t* keep, bool& bad) {
  const __m256 sc = _mm256_set1_ps(scaling), ninf = _mm256_set1_ps(kNegInf);
  const __m256 fmax = _mm256_set1_ps(kMaxFloat);
  __m256 mx = ninf, nonfinite = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), sc);
    if constexpr (Add) v = _mm256_add_ps(v, _mm256_loadu_ps(add + j));
    if constexpr (Keep) v = _mm256_blendv_ps(v, ninf, zero_bytes(keep + j));
    nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(v, fmax, _CMP_NLE_UQ));
    _mm256_storeu_ps(x + j, v);
    mx = _mm256_max_ps(v, mx);  // a NaN v leaves mx as it was (and is flagged)
  }
  bad = bad || _mm256_movemask_ps(nonfinite) != 0;
  const float tail = prepare_portable<Add, Keep>(x + j, n - j, scaling, Add ? add + j : nullptr,
                                                 Keep ? keep + j : nullptr, bad);
  return std::max(hmax(mx), tail);
}

// Adds the 8 floats of v, widened to double, to the 4 + 4 lanes of (lo, hi).
LLMDBG_AVX2 inline void add_wide(__m256 v, __m256d& lo, __m256d& hi) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// One vector of the accumulation: e = exp(t) with t = max(x - m, lowest), e * t, and e on the
// flagged keys.
template <bool Special>
LLMDBG_AVX2 inline void exp_terms(const float* x, const uint8_t* special, __m256 mv, __m256& e,
                                  __m256& et, __m256& sp) {
  const __m256 t = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x), mv), _mm256_set1_ps(kLowest));
  e = exp256(t);
  et = _mm256_mul_ps(e, t);
  if constexpr (Special) sp = _mm256_andnot_ps(zero_bytes(special), e);
}

// The sums of accumulate_portable: four vectors (32 keys) are added in float, then widened and
// added in double. The terms of each sum have one sign, so the float step costs at most ~2e-7
// relative to the 32 terms it adds.
template <bool Special>
LLMDBG_AVX2 void accumulate_avx2(const float* x, int64_t n, float m, const uint8_t* special,
                                 Sums& out) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  __m256d e0 = _mm256_setzero_pd(), e1 = _mm256_setzero_pd();
  __m256d p0 = _mm256_setzero_pd(), p1 = _mm256_setzero_pd();
  __m256 ea, eb, ec, ed, ta, tb, tc, td, pa, pb, pc, pd;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const uint8_t* f = Special ? special + j : nullptr;
    exp_terms<Special>(x + j, f, mv, ea, ta, pa);
    exp_terms<Special>(x + j + 8, Special ? f + 8 : nullptr, mv, eb, tb, pb);
    exp_terms<Special>(x + j + 16, Special ? f + 16 : nullptr, mv, ec, tc, pc);
    exp_terms<Special>(x + j + 24, Special ? f + 24 : nullptr, mv, ed, td, pd);
    add_wide(_mm256_add_ps(_mm256_add_ps(ea, eb), _mm256_add_ps(ec, ed)), s0, s1);
    add_wide(_mm256_add_ps(_mm256_add_ps(ta, tb), _mm256_add_ps(tc, td)), e0, e1);
    if constexpr (Special) {
      add_wide(_mm256_add_ps(_mm256_add_ps(pa, pb), _mm256_add_ps(pc, pd)), p0, p1);
    }
  }
  for (; j + 8 <= n; j += 8) {
    exp_terms<Special>(x + j, Special ? special + j : nullptr, mv, ea, ta, pa);
    add_wide(ea, s0, s1), add_wide(ta, e0, e1);
    if constexpr (Special) add_wide(pa, p0, p1);
  }
  out.s += hsum(_mm256_add_pd(s0, s1));
  out.e += hsum(_mm256_add_pd(e0, e1));
  if constexpr (Special) out.sp += hsum(_mm256_add_pd(p0, p1));
  accumulate_portable<Special>(x + j, n - j, m, Special ? special + j : nullptr, out);
}

LLMDBG_AVX2 void probabilities_avx2(float* x, int64_t n, float m, float inv_s) {
  const __m256 mv = _mm256_set1_ps(m), low = _mm256_set1_ps(kLowest);
  const __m256 iv = _mm256_set1_ps(inv_s);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 t = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv), low);
    _mm256_storeu_ps(x + j, _mm256_mul_ps(exp256(t), iv));
  }
  probabilities_portable(x + j, n - j, m, inv_s);
}

LLMDBG_AVX2 void exp_block_avx2(const float* x, float* y, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, exp256(_mm256_loadu_ps(x + j)));
  for (; j < n; ++j) {
    alignas(32) float in[8] = {x[j]}, res[8];
    _mm256_store_ps(res, exp256(_mm256_load_ps(in)));
    y[j] = res[0];
  }
}
#undef LLMDBG_AVX2
#endif  // LLMDBG_X86_AVX2

// The row passes of one instruction set.
struct Isa {
  MicroKernel micro;
  float (*prepare[2][2])(float*, int64_t, float, const float*, const uint8_t*, bool&);
  void (*accumulate[2])(const float*, int64_t, float, const uint8_t*, Sums&);
  void (*probabilities)(float*, int64_t, float, float);
};

Isa pick_isa() {
#ifdef LLMDBG_X86_AVX2
  if (use_avx2()) {
    return {micro_avx2,
            {{prepare_avx2<false, false>, prepare_avx2<false, true>},
             {prepare_avx2<true, false>, prepare_avx2<true, true>}},
            {accumulate_avx2<false>, accumulate_avx2<true>},
            probabilities_avx2};
  }
#endif
  return {micro_portable,
          {{prepare_portable<false, false>, prepare_portable<false, true>},
           {prepare_portable<true, false>, prepare_portable<true, true>}},
          {accumulate_portable<false>, accumulate_portable<true>},
          probabilities_portable};
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------
void check_indices(const int64_t* idx, int64_t n, int64_t bound, const char* name) {
  for (int64_t r = 0; r < n; ++r) {
    if (idx[r] < 0 || idx[r] >= bound) {
      fail(std::string(name) + "[" + std::to_string(r) + "] = " + std::to_string(idx[r]) +
           " is outside [0, " + std::to_string(bound) + ")");
    }
  }
}

void check(const QKProblem& p, const QKRequest& r, const QKOutputs& o) {
  if (!p.q || !p.k) fail("q and k are required");
  if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1 || p.q_len < 1 || p.k_len < 1 || p.dim < 1) {
    fail("every size must be >= 1");
  }
  if (p.q_heads % p.kv_heads != 0) {
    fail("q has " + std::to_string(p.q_heads) + " heads and k has " + std::to_string(p.kv_heads) +
         "; the query heads must be a multiple of the key heads");
  }
  if (!std::isfinite(p.scaling)) fail("scaling must be finite");
  if (!(p.softcap >= 0.0 && std::isfinite(p.softcap))) fail("softcap must be >= 0 and finite");
  if (p.window < 0) fail("window must be >= 0 (0 = no sliding window)");
  if (p.offset < 0) fail("offset must be >= 0");
  if (p.bool_mask && p.add_mask) fail("pass bool_mask or add_mask, not both");
  if ((p.bool_mask || p.add_mask) && !((p.mask_batch == 1 || p.mask_batch == p.batch) &&
                                       (p.mask_heads == 1 || p.mask_heads == p.q_heads))) {
    fail("the mask's batch must be 1 or " + std::to_string(p.batch) + " and its heads 1 or " +
         std::to_string(p.q_heads));
  }
  if (p.sink_index) check_indices(p.sink_index, p.batch, p.k_len, "sink_index");
  if (p.sinks) {
    for (int64_t h = 0; h < p.q_heads; ++h) {
      if (!std::isfinite(p.sinks[h])) fail("sinks holds NaN or inf");
    }
  }
  if (r.stats && !(o.entropy && o.max_prob && o.sink_mass && (o.special_mass || !p.special))) {
    fail("stats needs the entropy, max_prob, sink_mass (and special_mass) outputs");
  }
  if (r.maps) {
    if (!o.maps) fail("maps needs an output");
    if (r.map_heads && r.num_map_heads < 1) fail("map_heads must not be empty");
    if (r.map_rows && r.num_map_rows < 0) fail("map_rows has a negative length");
    if (r.map_heads) check_indices(r.map_heads, r.num_map_heads, p.q_heads, "map_heads");
    if (r.map_rows) check_indices(r.map_rows, r.num_map_rows, p.q_len, "map_rows");
  }
  if (r.row_weights) {
    if (!o.row_product) fail("row_weights needs a row_product output");
    if (r.row_sets < 0) fail("row_sets must be >= 0");
    if (r.row_heads && r.num_row_heads < 1) fail("row_heads must not be empty");
    if (r.row_heads) check_indices(r.row_heads, r.num_row_heads, p.q_heads, "row_heads");
    for (int64_t i = 0; i < p.batch * std::max<int64_t>(1, r.row_sets) * p.q_len; ++i) {
      if (!std::isfinite(r.row_weights[i])) fail("row_weights holds NaN or inf");
    }
  }
}

// First non-finite element of a C-contiguous (d0, d1, d2, d3) array, as "(a, b, c, d) = nan".
std::string first_nonfinite(const float* x, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  const int64_t n = d0 * d1 * d2 * d3;
  for (int64_t f = 0; f < n; ++f) {
    if (!std::isfinite(x[f])) {
      const int64_t idx[4] = {f / (d1 * d2 * d3), f / (d2 * d3) % d1, f / d3 % d2, f % d3};
      std::string s = "(";
      for (int a = 0; a < 4; ++a) s += (a ? ", " : "") + std::to_string(idx[a]);
      return s + ") = " + (std::isnan(x[f]) ? "nan" : x[f] > 0 ? "inf" : "-inf");
    }
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// The plan: which rows and heads are computed, in blocks and tasks fixed by the problem alone.
// ---------------------------------------------------------------------------------------------
struct Block {
  int64_t b = 0, r0 = 0, r1 = 0;  // rows[r0, r1) of the active-row list
  bool has_map = false, has_weight = false;
};

struct Task {
  int64_t block0 = 0, block1 = 0;
  int64_t partial = -1;  // row-product partial sum index, or -1
};

// Index lists grouped by value (value -> the positions where it occurs), as CSR.
struct Inverse {
  std::vector<int64_t> begin, pos;
  Inverse() = default;
  Inverse(const int64_t* idx, int64_t n, int64_t bound) : begin(static_cast<size_t>(bound + 1)) {
    for (int64_t r = 0; r < n; ++r) ++begin[static_cast<size_t>(idx[r] + 1)];
    for (int64_t v = 0; v < bound; ++v) begin[v + 1] += begin[v];
    pos.resize(static_cast<size_t>(n));
    std::vector<int64_t> fill(begin.begin(), begin.end() - 1);
    for (int64_t r = 0; r < n; ++r) pos[static_cast<size_t>(fill[idx[r]]++)] = r;
  }
  int64_t count(int64_t v) const { return begin[v + 1] - begin[v]; }
};

// The interval [lo, hi) of keys the causal and window bounds leave to query row i (empty when
// lo >= hi), without overflow for any offset and window.
inline void key_range(const QKProblem& p, int64_t i, int64_t* lo, int64_t* hi) {
  const int64_t max64 = std::numeric_limits<int64_t>::max();
  const int64_t pos = p.offset > max64 - i ? max64 : i + p.offset;
  *hi = p.causal ? (pos >= p.k_len ? p.k_len : pos + 1) : p.k_len;
  *lo = 0;
  if (p.window > 0 && pos >= p.window) {
    const int64_t d = pos - p.window;  // keys j <= d are excluded
    *lo = d >= p.k_len ? p.k_len : d + 1;
  }
}

struct Plan {
  int64_t group = 1;          // query heads per key head
  int64_t block_rows = kMR;   // rows per block
  int64_t k_pad = 0;          // k_len rounded up to kNR
  int64_t panels = 0;         // key panels per (batch, key head)
  bool full_rows = false;     // keep whole rows of logits (maps, row product)
  std::vector<int64_t> rows;  // active rows, batch after batch
  std::vector<Block> blocks;
  std::vector<Task> tasks;
  std::vector<int64_t> partial_begin;  // per batch, its first partial (batch + 1 entries)
  Inverse map_heads, map_rows;
  std::vector<int64_t> row_head_count;  // multiplicity of each head in row_heads
  int64_t map_head_total = 0, row_head_total = 0;
  int64_t sets = 1;  // weight vectors per sequence (QKRequest::row_sets, at least 1)

  // Whether query row i of sequence b has a non-zero weight in some set.
  bool weighted(const QKRequest& r, int64_t b, int64_t i, int64_t q_len) const {
    if (!r.row_weights) return false;
    for (int64_t set = 0; set < sets; ++set) {
      if (r.row_weights[(b * sets + set) * q_len + i] != 0.0) return true;
    }
    return false;
  }
};

Plan make_plan(const QKProblem& p, const QKRequest& r) {
  Plan plan;
  const int64_t B = p.batch, Tq = p.q_len, H = p.q_heads;
  plan.group = H / p.kv_heads;
  plan.block_rows = kMR * std::max<int64_t>(1, kGroupRows / (kMR * plan.group));
  plan.k_pad = (p.k_len + kNR - 1) / kNR * kNR;
  plan.panels = plan.k_pad / kNR;
  plan.full_rows = r.maps || r.row_weights;
  if (r.maps) {
    std::vector<int64_t> all_heads, all_rows;
    const int64_t* heads = r.map_heads;
    const int64_t* rows = r.map_rows;
    plan.map_head_total = r.map_heads ? r.num_map_heads : H;
    const int64_t nr = r.map_rows ? r.num_map_rows : Tq;
    if (!heads) {
      for (int64_t h = 0; h < H; ++h) all_heads.push_back(h);
      heads = all_heads.data();
    }
    if (!rows) {
      for (int64_t i = 0; i < Tq; ++i) all_rows.push_back(i);
      rows = all_rows.data();
    }
    plan.map_heads = Inverse(heads, plan.map_head_total, H);
    plan.map_rows = Inverse(rows, nr, Tq);
  }
  if (r.row_weights) {
    plan.sets = std::max<int64_t>(1, r.row_sets);
    plan.row_head_count.assign(static_cast<size_t>(H), r.row_heads ? 0 : 1);
    plan.row_head_total = r.row_heads ? r.num_row_heads : H;
    for (int64_t a = 0; r.row_heads && a < r.num_row_heads; ++a)
      ++plan.row_head_count[r.row_heads[a]];
  }
  // Partial sums: about kMaxChunks vectors of k_len doubles in all.
  const int64_t chunks_per_batch =
      std::max<int64_t>(1, (kMaxChunks + B * plan.sets - 1) / (B * plan.sets));
  plan.partial_begin.push_back(0);
  for (int64_t b = 0; b < B; ++b) {
    const auto first_row = static_cast<int64_t>(plan.rows.size());
    for (int64_t i = 0; i < Tq; ++i) {
      const bool map = r.maps && plan.map_rows.count(i) > 0;
      const bool weight = plan.weighted(r, b, i, Tq);
      if (r.stats || map || weight) plan.rows.push_back(i);
    }
    const auto end_row = static_cast<int64_t>(plan.rows.size());
    const auto first_block = static_cast<int64_t>(plan.blocks.size());
    for (int64_t r0 = first_row; r0 < end_row; r0 += plan.block_rows) {
      Block blk{b, r0, std::min(end_row, r0 + plan.block_rows)};
      for (int64_t a = blk.r0; a < blk.r1; ++a) {
        const int64_t i = plan.rows[static_cast<size_t>(a)];
        blk.has_map = blk.has_map || (r.maps && plan.map_rows.count(i) > 0);
        blk.has_weight = blk.has_weight || plan.weighted(r, b, i, Tq);
      }
      plan.blocks.push_back(blk);
    }
    const int64_t nb = static_cast<int64_t>(plan.blocks.size()) - first_block;
    if (r.row_weights) {
      // Contiguous runs of blocks, each summed into its own partial (fixed by the problem).
      const int64_t nc = std::min(chunks_per_batch, nb);
      for (int64_t c = 0; c < nc; ++c) {
        plan.tasks.push_back({first_block + nb * c / nc, first_block + nb * (c + 1) / nc,
                              plan.partial_begin.back() + c});
      }
      plan.partial_begin.push_back(plan.partial_begin.back() + nc);
    } else {
      for (int64_t blk = first_block; blk < first_block + nb; ++blk) {
        plan.tasks.push_back({blk, blk + 1, -1});
      }
    }
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The work of one thread.
// ---------------------------------------------------------------------------------------------
struct RowState {
  int64_t h = 0, i = 0, lo = 0, hi = 0;
  float m = kNegInf;       // running max of the masked logits
  float x_sink = kNegInf;  // masked logit of the sink key
  Sums sums;
};

class Worker {
 public:
  Worker(const QKProblem& p, const QKRequest& r, const QKOutputs& o, const Plan& plan,
         const Isa& isa, const float* packed)
      : p_(p), r_(r), o_(o), plan_(plan), isa_(isa), packed_(packed) {
    ld_ = plan.full_rows ? plan.k_pad : kKC;
    const int64_t rows = plan.group * plan.block_rows;
    buf_.resize(static_cast<size_t>(rows * ld_));
    state_.resize(static_cast<size_t>(rows));
    qptr_.resize(static_cast<size_t>(rows));
  }

  // Bad logits (NaN or +inf): the smallest (b, h, i) this worker met, or b = -1.
  int64_t bad_b = -1, bad_h = 0, bad_i = 0;

  void run_block(const Block& blk, double* partial) {
    const int64_t n = blk.r1 - blk.r0;
    const int64_t* rows = plan_.rows.data() + blk.r0;
    if (r_.maps && blk.has_map) zero_maps(blk.b, rows, n);
    for (int64_t g = 0; g < p_.kv_heads; ++g) run_group(blk, rows, n, g, partial);
    if (r_.maps && blk.has_map && r_.map_fusion == MapFusion::mean) {
      const auto count = static_cast<float>(plan_.map_head_total);
      for (int64_t a = 0; a < n; ++a) {
        for (int64_t s = plan_.map_rows.begin[rows[a]]; s < plan_.map_rows.begin[rows[a] + 1];
             ++s) {
          float* out = fused_row(blk.b, plan_.map_rows.pos[s]);
          for (int64_t j = 0; j < p_.k_len; ++j) out[j] /= count;
        }
      }
    }
  }

 private:
  bool head_needed(const Block& blk, int64_t h) const {
    return r_.stats || (r_.maps && blk.has_map && plan_.map_heads.count(h) > 0) ||
           (r_.row_weights && blk.has_weight && plan_.row_head_count[h] > 0);
  }

  float* fused_row(int64_t b, int64_t out_row) const {
    const int64_t nr = static_cast<int64_t>(plan_.map_rows.pos.size());
    return o_.maps + (b * nr + out_row) * p_.k_len;
  }
  float* head_row(int64_t b, int64_t out_head, int64_t out_row) const {
    const int64_t nr = static_cast<int64_t>(plan_.map_rows.pos.size());
    return o_.maps + ((b * plan_.map_head_total + out_head) * nr + out_row) * p_.k_len;
  }

  void zero_maps(int64_t b, const int64_t* rows, int64_t n) {
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t s = plan_.map_rows.begin[rows[a]]; s < plan_.map_rows.begin[rows[a] + 1]; ++s) {
        const int64_t out_row = plan_.map_rows.pos[s];
        if (r_.map_fusion == MapFusion::none) {
          for (int64_t oh = 0; oh < plan_.map_head_total; ++oh) {
            std::fill_n(head_row(b, oh, out_row), p_.k_len, 0.0f);
          }
        } else {
          std::fill_n(fused_row(b, out_row), p_.k_len, 0.0f);
        }
      }
    }
  }

  void run_group(const Block& blk, const int64_t* rows, int64_t n, int64_t g, double* partial) {
    const int64_t b = blk.b, D = p_.dim, Tq = p_.q_len, Tk = p_.k_len;
    const int64_t tiles_per_head = (n + kMR - 1) / kMR;
    const int64_t rows_per_head = tiles_per_head * kMR;
    // Buffer rows: head slot a, row a_r at a * rows_per_head + a_r.
    int64_t heads = 0, klo = Tk, khi = 0;
    for (int64_t hh = 0; hh < plan_.group; ++hh) {
      const int64_t h = g * plan_.group + hh;
      if (!head_needed(blk, h)) continue;
      for (int64_t a = 0; a < rows_per_head; ++a) {
        const int64_t i = rows[std::min(a, n - 1)];  // padding rows repeat the last row
        qptr_[heads * rows_per_head + a] = p_.q + ((b * p_.q_heads + h) * Tq + i) * D;
        RowState& st = state_[heads * rows_per_head + a];
        st = RowState{};
        st.h = h, st.i = i;
        key_range(p_, i, &st.lo, &st.hi);
        if (st.lo < st.hi) klo = std::min(klo, st.lo), khi = std::max(khi, st.hi);
      }
      ++heads;
    }
    if (heads == 0) return;
    const int64_t used_rows = heads * rows_per_head;
    const int64_t sink_key = p_.sink_index ? p_.sink_index[b] : 0;
    const float* kpack = packed_ + (b * p_.kv_heads + g) * plan_.panels * D * kNR;
    const float scaling = static_cast<float>(p_.scaling);
    const bool add = p_.add_mask != nullptr, keep = p_.bool_mask != nullptr;
    const bool special = r_.stats && p_.special != nullptr;
    for (int64_t c0 = klo / kKC * kKC; c0 < khi; c0 += kKC) {
      const int64_t c1 = std::min(c0 + kKC, khi);
      const int64_t base = plan_.full_rows ? 0 : c0;
      const int64_t p0 = std::max(c0, klo) / kNR, p1 = (c1 + kNR - 1) / kNR;
      for (int64_t pn = p0; pn < p1; ++pn) {
        const float* panel = kpack + pn * D * kNR;
        float* dst = buf_.data() + (pn * kNR - base);
        for (int64_t t = 0; t < used_rows; t += kMR) {
          isa_.micro(D, qptr_.data() + t, panel, dst + t * ld_, ld_);
        }
      }
      for (int64_t a = 0; a < used_rows; ++a) {
        if (a % rows_per_head >= n) continue;  // padding row
        RowState& st = state_[a];
        const int64_t j0 = std::max(c0, st.lo), j1 = std::min(c1, st.hi);
        if (j0 >= j1) continue;
        float* x = buf_.data() + a * ld_ + (j0 - base);
        const int64_t len = j1 - j0;
        const int64_t mrow = mask_row(b, st.h, st.i);
        float sc = scaling;
        if (p_.softcap > 0.0) apply_softcap(x, len), sc = 1.0f;
        bool bad = false;
        const float mc =
            isa_.prepare[add][keep](x, len, sc, add ? p_.add_mask + mrow + j0 : nullptr,
                                    keep ? p_.bool_mask + mrow + j0 : nullptr, bad);
        if (bad && (bad_b < 0 || std::tuple{b, st.h, st.i} < std::tuple{bad_b, bad_h, bad_i})) {
          bad_b = b, bad_h = st.h, bad_i = st.i;
        }
        if (sink_key >= j0 && sink_key < j1) st.x_sink = x[sink_key - j0];
        if (mc == kNegInf) continue;  // every key of the chunk excluded
        if (mc > st.m) {
          if (st.m != kNegInf) rescale(st, mc);
          st.m = mc;
        }
        isa_.accumulate[special](x, len, st.m, special ? p_.special + b * Tk + j0 : nullptr,
                                 st.sums);
      }
    }
    for (int64_t a = 0; a < used_rows; ++a) {
      if (a % rows_per_head >= n) continue;
      finish_row(b, state_[a], buf_.data() + a * ld_, partial);
    }
  }

  int64_t mask_row(int64_t b, int64_t h, int64_t i) const {
    const int64_t bm = p_.mask_batch == 1 ? 0 : b, hm = p_.mask_heads == 1 ? 0 : h;
    return ((bm * p_.mask_heads + hm) * p_.q_len + i) * p_.k_len;
  }

  // x = softcap * tanh(x * scaling / softcap), in the order of eager attention.
  void apply_softcap(float* x, int64_t n) const {
    const auto cap = static_cast<float>(p_.softcap), sc = static_cast<float>(p_.scaling);
    for (int64_t j = 0; j < n; ++j) x[j] = std::tanh(x[j] * sc / cap) * cap;
  }

  // The running max rises from st.m to m: rescale the sums to the new reference.
  static void rescale(RowState& st, float m) {
    const double delta = static_cast<double>(st.m) - static_cast<double>(m);  // < 0
    const double scale = std::exp(delta);
    st.sums.e = scale * (st.sums.e + delta * st.sums.s);
    st.sums.s *= scale;
    st.sums.sp *= scale;
  }

  void finish_row(int64_t b, RowState& st, float* xrow, double* partial) {
    const int64_t h = st.h, i = st.i, Tq = p_.q_len;
    const int64_t stat = (b * p_.q_heads + h) * Tq + i;
    const bool excluded = st.m == kNegInf;
    double s = 0.0;
    float m = st.m;
    if (!excluded) {
      if (p_.sinks && p_.sinks[h] > m) rescale(st, p_.sinks[h]), m = p_.sinks[h];
      s = st.sums.s + (p_.sinks ? std::exp(static_cast<double>(p_.sinks[h]) - m) : 0.0);
    }
    if (r_.stats) {
      if (excluded) {
        o_.entropy[stat] = o_.max_prob[stat] = o_.sink_mass[stat] = static_cast<float>(kNaN);
        if (p_.special) o_.special_mass[stat] = static_cast<float>(kNaN);
      } else {
        const double md = m;
        o_.entropy[stat] = static_cast<float>(std::log(s) * st.sums.s / s - st.sums.e / s);
        o_.max_prob[stat] = static_cast<float>(std::exp(static_cast<double>(st.m) - md) / s);
        o_.sink_mass[stat] = static_cast<float>(std::exp(static_cast<double>(st.x_sink) - md) / s);
        if (p_.special) o_.special_mass[stat] = static_cast<float>(st.sums.sp / s);
      }
    }
    if (excluded) return;  // maps stay 0, the row product gets nothing
    const bool map = r_.maps && plan_.map_heads.count(h) > 0 && plan_.map_rows.count(i) > 0;
    const bool product = plan_.weighted(r_, b, i, Tq) && plan_.row_head_count[h] > 0;
    if (!map && !product) return;
    const int64_t lo = st.lo, len = st.hi - st.lo;
    float* prob = xrow + lo;  // full rows: the buffer is indexed by key
    isa_.probabilities(prob, len, m, static_cast<float>(1.0 / s));
    if (map) write_maps(b, h, i, lo, prob, len);
    if (product) {
      const double share =
          static_cast<double>(plan_.row_head_count[h]) / static_cast<double>(plan_.row_head_total);
      for (int64_t set = 0; set < plan_.sets; ++set) {
        const double coef = r_.row_weights[(b * plan_.sets + set) * Tq + i] * share;
        if (coef == 0.0) continue;
        double* acc = partial + set * p_.k_len + lo;
        for (int64_t j = 0; j < len; ++j) acc[j] += coef * static_cast<double>(prob[j]);
      }
    }
  }

  void write_maps(int64_t b, int64_t h, int64_t i, int64_t lo, const float* prob, int64_t len) {
    for (int64_t s = plan_.map_rows.begin[i]; s < plan_.map_rows.begin[i + 1]; ++s) {
      const int64_t out_row = plan_.map_rows.pos[s];
      if (r_.map_fusion == MapFusion::none) {
        for (int64_t t = plan_.map_heads.begin[h]; t < plan_.map_heads.begin[h + 1]; ++t) {
          std::copy_n(prob, len, head_row(b, plan_.map_heads.pos[t], out_row) + lo);
        }
      } else if (r_.map_fusion == MapFusion::mean) {
        float* out = fused_row(b, out_row) + lo;
        const auto mult = static_cast<float>(plan_.map_heads.count(h));
        for (int64_t j = 0; j < len; ++j) out[j] += mult * prob[j];
      } else {
        float* out = fused_row(b, out_row) + lo;
        for (int64_t j = 0; j < len; ++j) out[j] = std::max(out[j], prob[j]);
      }
    }
  }

  const QKProblem& p_;
  const QKRequest& r_;
  const QKOutputs& o_;
  const Plan& plan_;
  const Isa& isa_;
  const float* packed_;
  int64_t ld_ = 0;
  std::vector<float> buf_;
  std::vector<RowState> state_;
  std::vector<const float*> qptr_;
};

// K of (batch b, key head g), panel pn (keys pn*16 .. pn*16+15) as D x 16 floats, zero-padded.
// Returns false when the keys hold NaN or inf.
bool pack_panel(const QKProblem& p, const Plan& plan, int64_t bg, int64_t pn, float* packed) {
  const int64_t D = p.dim, Tk = p.k_len;
  const float* src = p.k + bg * Tk * D;
  float* dst = packed + (bg * plan.panels + pn) * D * kNR;
  float check = 0.0f;  // stays 0 unless some value is NaN or inf (then NaN)
  for (int64_t c = 0; c < kNR; ++c) {
    const int64_t j = pn * kNR + c;
    if (j < Tk) {
      const float* kj = src + j * D;
      for (int64_t d = 0; d < D; ++d) dst[d * kNR + c] = kj[d], check += kj[d] * 0.0f;
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d * kNR + c] = 0.0f;
    }
  }
  return check == 0.0f;
}

bool rows_finite(const float* x, int64_t n) {
  float check = 0.0f;
  for (int64_t f = 0; f < n; ++f) check += x[f] * 0.0f;
  return check == 0.0f;
}

}  // namespace

namespace detail {

void exp_block(const float* x, float* y, int64_t n) {
#ifdef LLMDBG_X86_AVX2
  if (use_avx2()) return exp_block_avx2(x, y, n);
#endif
  for (int64_t j = 0; j < n; ++j) y[j] = std::exp(x[j]);
}

bool qk_uses_avx2() { return pick_isa().micro != micro_portable; }

}  // namespace detail

void qk_attention(const QKProblem& p, const QKRequest& r, const QKOutputs& o, int num_threads,
                  const std::function<bool()>& cancelled) {
  check(p, r, o);
  if (!r.stats && !r.maps && !r.row_weights) return;
  if (cancelled && cancelled()) throw Interrupted();
  const Plan plan = make_plan(p, r);
  const Isa isa = pick_isa();
  const int threads = resolve_threads(num_threads);
  const int64_t B = p.batch, Tk = p.k_len, D = p.dim;
  const int64_t bg_count = B * p.kv_heads;
  std::vector<float> packed(static_cast<size_t>(bg_count * plan.panels * D * kNR));
  const int64_t n_partials = r.row_weights ? plan.partial_begin.back() : 0;
  const int64_t partial_len = plan.sets * Tk;  // one (sets, k_len) block per partial
  std::vector<double> partials(static_cast<size_t>(n_partials * partial_len));
  const int64_t q_rows = B * p.q_heads * p.q_len;

  std::atomic<bool> q_bad{false}, k_bad{false}, stop{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  int64_t bad_b = -1, bad_h = 0, bad_i = 0;
  auto record = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = e;
    stop.store(true);
  };
  using Clock = std::chrono::steady_clock;
  auto last_poll = Clock::now();
  const auto ntasks = static_cast<int64_t>(plan.tasks.size());

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // 1. Pack K (checking it) and check Q.
#pragma omp for schedule(static) nowait
    for (int64_t f = 0; f < bg_count * plan.panels; ++f) {
      if (!pack_panel(p, plan, f / plan.panels, f % plan.panels, packed.data())) k_bad.store(true);
    }
#pragma omp for schedule(static)
    for (int64_t f = 0; f < q_rows; f += 64) {
      if (!rows_finite(p.q + f * D, std::min<int64_t>(64, q_rows - f) * D)) q_bad.store(true);
    }
    // 2. The tasks, most expensive (latest rows) first.
    std::unique_ptr<Worker> worker;
    try {
      worker = std::make_unique<Worker>(p, r, o, plan, isa, packed.data());
    } catch (...) {
      record(std::current_exception());
    }
    const bool skip = q_bad.load() || k_bad.load();
    const bool poller = cancelled && thread_id() == 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = ntasks - 1; t >= 0; --t) {
      const Task& task = plan.tasks[static_cast<size_t>(t)];
      double* partial = task.partial >= 0 ? partials.data() + task.partial * partial_len : nullptr;
      if (partial && !skip) std::fill_n(partial, partial_len, 0.0);
      for (int64_t blk = task.block0; blk < task.block1; ++blk) {
        if (skip || stop.load(std::memory_order_relaxed) || !worker) break;
        try {
          worker->run_block(plan.blocks[static_cast<size_t>(blk)], partial);
          if (poller && Clock::now() - last_poll >= std::chrono::milliseconds(10)) {
            last_poll = Clock::now();
            if (cancelled()) stop.store(true);
          }
        } catch (...) {
          record(std::current_exception());
        }
      }
    }
    if (worker && worker->bad_b >= 0) {
      std::lock_guard<std::mutex> lock(error_mutex);
      const auto key = [](int64_t b, int64_t h, int64_t i) { return std::tuple{b, h, i}; };
      if (bad_b < 0 ||
          key(worker->bad_b, worker->bad_h, worker->bad_i) < key(bad_b, bad_h, bad_i)) {
        bad_b = worker->bad_b, bad_h = worker->bad_h, bad_i = worker->bad_i;
      }
    }
    // 3. The row product: partial sums in chunk order, each output element by one thread.
    // (Batches without a weighted row have no partial and get zeros.)
    if (r.row_weights && !skip && !stop.load()) {
#pragma omp for schedule(static)
      for (int64_t f = 0; f < B * partial_len; ++f) {
        const int64_t b = f / partial_len, e = f % partial_len;
        double sum = 0.0;
        for (int64_t c = plan.partial_begin[b]; c < plan.partial_begin[b + 1]; ++c) {
          sum += partials[static_cast<size_t>(c * partial_len + e)];
        }
        o.row_product[f] = sum;
      }
    }
  }

  if (error) std::rethrow_exception(error);
  if (k_bad.load())
    fail("k holds NaN or inf, first at " + first_nonfinite(p.k, B, p.kv_heads, Tk, D));
  if (q_bad.load()) {
    fail("q holds NaN or inf, first at " + first_nonfinite(p.q, B, p.q_heads, p.q_len, D));
  }
  if (stop.load()) throw Interrupted();
  if (bad_b >= 0) {
    fail("the logits of batch " + std::to_string(bad_b) + ", head " + std::to_string(bad_h) +
         ", query " + std::to_string(bad_i) +
         " hold NaN or +inf (NaN or +inf in add_mask, or a dot product that overflows float32)");
  }
}

}  // namespace llmdbg::attention
