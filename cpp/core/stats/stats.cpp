#include "core/stats/stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/common/cpu.hpp"
#include "core/common/parallel.hpp"

#ifdef LLMDBG_X86_AVX2
#include <immintrin.h>
#endif

namespace llmdbg::stats {

namespace {

inline int clamp_bin(int exponent) { return std::clamp(exponent - kHistMinExp, 0, kHistBins - 1); }

// IEEE-754 layout of the supported types, so the loop can read exponents straight from the bits.
template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using U = uint32_t;
  static constexpr int kMantissa = 23, kExpMask = 0xff, kBias = 127;
};
template <>
struct Bits<double> {
  using U = uint64_t;
  static constexpr int kMantissa = 52, kExpMask = 0x7ff, kBias = 1023;
};

// Three passes over one cache-resident chunk (kChunk = 32k values): raw biased exponents (folded
// into the log2 bins afterwards; the all-ones exponent counts NaN/Inf) and zeros; sum and
// extrema of the finite values; squared deviations from the chunk mean, which is more accurate
// than a running sum of squares.
//
// The passes keep kLanes independent accumulators (and exponent tables), element i going to
// lane i % kLanes, merged in lane order: one serial chain of double additions (4 cycles each) and
// read-modify-write on one counter table capped the loop near 7 cycles per value, which made
// the statistics the main cost of a capture. The exponent count runs on its own so that the
// sum/extrema loop of an all-finite chunk has no branch and vectorises. The lanes are fixed, so
// results stay identical for every thread count and every call.
constexpr int kLanes = 8;

// AVX2 versions of the two arithmetic loops of an all-finite float chunk (`n` a multiple of 8):
// the same 8 lanes with the same operations in the same order (float -> double conversion, one
// addition per lane; multiply then add, never fused), so they give bitwise the results of the
// portable loops. They return false where AVX2 is unavailable (and for doubles).
template <typename T>
bool sum_extrema_avx2(const T*, int64_t, double*, T*, T*) {
  return false;
}
template <typename T>
bool squared_deviations_avx2(const T*, int64_t, double, double*) {
  return false;
}
// The biased exponent byte of each float (n a multiple of 8) into `out`, and the zeros into *zeros.
template <typename T>
bool exponent_bytes_avx2(const T*, int64_t, uint8_t*, int64_t*) {
  return false;
}

#ifdef LLMDBG_X86_AVX2
__attribute__((target("avx2"))) void sum_extrema_f32(const float* x, int64_t n, double* sum,
                                                     float* lo, float* hi) {
  __m256d s0 = _mm256_loadu_pd(sum), s1 = _mm256_loadu_pd(sum + 4);
  __m256 mn = _mm256_loadu_ps(lo), mx = _mm256_loadu_ps(hi);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    mn = _mm256_min_ps(v, mn);  // (v < lo) ? v : lo, as the portable loop
    mx = _mm256_max_ps(v, mx);  // (v > hi) ? v : hi
  }
  _mm256_storeu_pd(sum, s0);
  _mm256_storeu_pd(sum + 4, s1);
  _mm256_storeu_ps(lo, mn);
  _mm256_storeu_ps(hi, mx);
}

__attribute__((target("avx2"))) void squared_deviations_f32(const float* x, int64_t n, double mean,
                                                            double* m2) {
  const __m256d mu = _mm256_set1_pd(mean);
  __m256d a0 = _mm256_loadu_pd(m2), a1 = _mm256_loadu_pd(m2 + 4);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), mu);
    const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mu);
    a0 = _mm256_add_pd(a0, _mm256_mul_pd(d0, d0));
    a1 = _mm256_add_pd(a1, _mm256_mul_pd(d1, d1));
  }
  _mm256_storeu_pd(m2, a0);
  _mm256_storeu_pd(m2 + 4, a1);
}

__attribute__((target("avx2"))) int64_t exponent_bytes_f32(const float* x, int64_t n,
                                                           uint8_t* out) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i zero = _mm256_setzero_si256();
  // Gathers byte 3 of each 32-bit lane (the exponent after the shift by 23) into the low 4 bytes.
  const __m256i pick =
      _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                       -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  int64_t zeros = 0;
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i bits =
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask);
    zeros += __builtin_popcount(static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, zero)))));
    const __m256i e = _mm256_shuffle_epi8(_mm256_srli_epi32(bits, 23), pick);
    const uint32_t lo = static_cast<uint32_t>(_mm256_extract_epi32(e, 0));
    const uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(e, 4));
    std::memcpy(out + i, &lo, 4);
    std::memcpy(out + i + 4, &hi, 4);
  }
  return zeros;
}

template <>
bool exponent_bytes_avx2<float>(const float* x, int64_t n, uint8_t* out, int64_t* zeros) {
  if (!use_avx2()) return false;
  *zeros += exponent_bytes_f32(x, n, out);
  return true;
}

template <>
bool sum_extrema_avx2<float>(const float* x, int64_t n, double* sum, float* lo, float* hi) {
  if (!use_avx2()) return false;
  sum_extrema_f32(x, n, sum, lo, hi);
  return true;
}
template <>
bool squared_deviations_avx2<float>(const float* x, int64_t n, double mean, double* m2) {
  if (!use_avx2()) return false;
  squared_deviations_f32(x, n, mean, m2);
  return true;
}
#endif

template <typename T>
Summary summarize_chunk(const T* x, int64_t n) {
  using B = Bits<T>;
  using U = typename B::U;
  constexpr U kAbsMask = ~(U{1} << (sizeof(U) * 8 - 1));
  // Independent counter tables, one per position mod kTables: the increments of one table form a
  // read-modify-write chain through memory, and real data concentrates on a few exponents.
  constexpr int kTables = sizeof(T) == 4 ? 8 : 4;
  // uint32 counts: a chunk holds at most kChunk values.
  std::array<std::array<uint32_t, B::kExpMask + 1>, kTables> by_exponent{};
  Summary s;
  s.count = n;
  int64_t zeros = 0;
  auto count_exponent = [&](std::array<uint32_t, B::kExpMask + 1>& table, T v) {
    const U abs_bits = std::bit_cast<U>(v) & kAbsMask;
    ++table[static_cast<size_t>(abs_bits >> B::kMantissa)];
    zeros += abs_bits == 0;
  };
  const int64_t groups = n - n % kTables;
  if (std::array<uint8_t, kChunk> bytes; exponent_bytes_avx2(x, groups, bytes.data(), &zeros)) {
    // The exponents were extracted eight at a time; only the table increments stay scalar.
    for (int64_t i = 0; i < groups; i += kTables) {
      for (int t = 0; t < kTables; ++t)
        ++by_exponent[static_cast<size_t>(t)][bytes[static_cast<size_t>(i + t)]];
    }
  } else {
    for (int64_t i = 0; i < groups; i += kTables) {
      for (int t = 0; t < kTables; ++t)
        count_exponent(by_exponent[static_cast<size_t>(t)], x[i + t]);
    }
  }
  for (int64_t i = groups; i < n; ++i) count_exponent(by_exponent[0], x[i]);
  std::array<int64_t, B::kExpMask + 1> counts{};
  for (int e = 0; e <= B::kExpMask; ++e) {
    for (int t = 0; t < kTables; ++t)
      counts[static_cast<size_t>(e)] += by_exponent[static_cast<size_t>(t)][static_cast<size_t>(e)];
  }
  const int64_t nonfinite = counts[B::kExpMask];
  // Exponent field 0 holds zeros and subnormals; subnormals belong to the first bin anyway.
  counts[0] -= zeros;
  for (int e = 0; e < B::kExpMask; ++e) {
    if (counts[static_cast<size_t>(e)] != 0)
      s.hist[static_cast<size_t>(clamp_bin(e - B::kBias))] += counts[static_cast<size_t>(e)];
  }
  s.finite = n - nonfinite;
  s.zero_count = zeros;
  std::array<double, kLanes> sum{};
  std::array<T, kLanes> lo, hi;
  lo.fill(std::numeric_limits<T>::infinity());
  hi.fill(-std::numeric_limits<T>::infinity());
  const int64_t body = n - n % kLanes;
  if (nonfinite == 0 && !sum_extrema_avx2(x, body, sum.data(), lo.data(), hi.data())) {
    for (int64_t i = 0; i < body; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T v = x[i + l];
        sum[static_cast<size_t>(l)] += static_cast<double>(v);
        lo[static_cast<size_t>(l)] =
            v < lo[static_cast<size_t>(l)] ? v : lo[static_cast<size_t>(l)];
        hi[static_cast<size_t>(l)] =
            v > hi[static_cast<size_t>(l)] ? v : hi[static_cast<size_t>(l)];
      }
    }
  }
  for (int64_t i = nonfinite == 0 ? body : 0; i < n; ++i) {
    const T v = x[i];
    if (!std::isfinite(v)) {
      s.nan_count += std::isnan(v);
      continue;
    }
    const auto l = static_cast<size_t>(i % kLanes);
    sum[l] += static_cast<double>(v);
    lo[l] = std::min(lo[l], v);
    hi[l] = std::max(hi[l], v);
  }
  s.inf_count = nonfinite - s.nan_count;
  if (s.finite == 0) return s;
  double total = 0.0;
  T low = lo[0], high = hi[0];
  for (int l = 0; l < kLanes; ++l) {
    total += sum[static_cast<size_t>(l)];
    low = std::min(low, lo[static_cast<size_t>(l)]);
    high = std::max(high, hi[static_cast<size_t>(l)]);
  }
  s.mean = total / static_cast<double>(s.finite);
  s.min = static_cast<double>(low);
  s.max = static_cast<double>(high);
  s.absmax = std::max(-s.min, s.max);
  std::array<double, kLanes> m2{};
  const double mean = s.mean;
  if (nonfinite == 0 && !squared_deviations_avx2(x, body, mean, m2.data())) {
    for (int64_t i = 0; i < body; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const double dev = static_cast<double>(x[i + l]) - mean;
        m2[static_cast<size_t>(l)] += dev * dev;
      }
    }
  }
  for (int64_t i = nonfinite == 0 ? body : 0; i < n; ++i) {
    if (std::isfinite(x[i])) {
      const double dev = static_cast<double>(x[i]) - mean;
      m2[static_cast<size_t>(i % kLanes)] += dev * dev;
    }
  }
  double m2_total = 0.0;
  for (int l = 0; l < kLanes; ++l) m2_total += m2[static_cast<size_t>(l)];
  s.m2 = m2_total;
  return s;
}

}  // namespace

int hist_bin(float x) {
  const auto bits = std::bit_cast<uint32_t>(x);
  const int biased = static_cast<int>((bits >> 23) & 0xffu);
  return clamp_bin(biased - 127);  // subnormals land in bin 0 either way
}

int hist_bin(double x) {
  const auto bits = std::bit_cast<uint64_t>(x);
  const int biased = static_cast<int>((bits >> 52) & 0x7ffu);
  return clamp_bin(biased - 1023);
}

void Summary::merge(const Summary& o) {
  if (o.count == 0) return;
  if (o.finite > 0) {
    if (finite == 0) {
      mean = o.mean;
      m2 = o.m2;
      min = o.min;
      max = o.max;
      absmax = o.absmax;
    } else {
      const double na = static_cast<double>(finite);
      const double nb = static_cast<double>(o.finite);
      const double n = na + nb;
      const double delta = o.mean - mean;
      mean += delta * (nb / n);
      m2 += o.m2 + delta * delta * (na * nb / n);
      min = std::min(min, o.min);
      max = std::max(max, o.max);
      absmax = std::max(absmax, o.absmax);
    }
  }
  count += o.count;
  finite += o.finite;
  nan_count += o.nan_count;
  inf_count += o.inf_count;
  zero_count += o.zero_count;
  for (int b = 0; b < kHistBins; ++b) hist[b] += o.hist[b];
}

double Summary::variance() const {
  return finite > 0 ? m2 / static_cast<double>(finite) : std::numeric_limits<double>::quiet_NaN();
}

double Summary::stddev() const { return std::sqrt(variance()); }

double Summary::zero_fraction() const {
  return count > 0 ? static_cast<double>(zero_count) / static_cast<double>(count)
                   : std::numeric_limits<double>::quiet_NaN();
}

namespace {

// Chunks are fixed (kChunk) and merged in order, so results do not depend on the thread count.
// `dst` may be null (summarise only) or a destination to copy each chunk into first.
// `cancelled` is polled between chunks; Interrupted leaves dst partly written.
template <typename T>
Summary summarize_chunks(const T* src, T* dst, int64_t n, int num_threads,
                         const CancelFn& cancelled) {
  Summary total;
  if (n <= 0) return total;
  auto one = [&](int64_t begin, int64_t len) {
    if (dst == nullptr) return summarize_chunk(src + begin, len);
    std::memcpy(dst + begin, src + begin, static_cast<size_t>(len) * sizeof(T));
    return summarize_chunk(dst + begin, len);
  };
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  if (n_chunks == 1) return one(0, n);
  std::vector<Summary> parts(static_cast<size_t>(n_chunks));
  const int threads = static_cast<int>(std::min<int64_t>(resolve_threads(num_threads), n_chunks));
  Guard guard(cancelled);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    if (guard.poll()) continue;  // about 10 us per chunk
    const int64_t begin = c * kChunk;
    parts[static_cast<size_t>(c)] = one(begin, std::min(kChunk, n - begin));
  }
  guard.finish();
  for (const Summary& p : parts) total.merge(p);
  return total;
}

}  // namespace

template <typename T>
Summary summarize(const T* data, int64_t n, int num_threads, const CancelFn& cancelled) {
  return summarize_chunks<T>(data, nullptr, n, num_threads, cancelled);
}

template <typename T>
Summary summarize_copy(const T* src, T* dst, int64_t n, int num_threads,
                       const CancelFn& cancelled) {
  return summarize_chunks<T>(src, dst, n, num_threads, cancelled);
}

template Summary summarize<float>(const float*, int64_t, int, const CancelFn&);
template Summary summarize<double>(const double*, int64_t, int, const CancelFn&);
template Summary summarize_copy<float>(const float*, float*, int64_t, int, const CancelFn&);
template Summary summarize_copy<double>(const double*, double*, int64_t, int, const CancelFn&);

}  // namespace llmdbg::stats
