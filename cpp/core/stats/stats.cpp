#include "core/stats/stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/common/parallel.hpp"

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

// Two passes over one cache-resident chunk. Pass 1 is branch-free for finite values: it counts
// raw biased exponents (folded into the log2 bins afterwards), zeros, sum and extrema; only
// NaN/Inf (exponent all ones) take a branch. Pass 2 sums squared deviations from the chunk mean,
// which is more accurate than a running sum of squares.
template <typename T>
Summary summarize_chunk(const T* x, int64_t n) {
  using B = Bits<T>;
  using U = typename B::U;
  constexpr U kAbsMask = ~(U{1} << (sizeof(U) * 8 - 1));
  std::array<int64_t, B::kExpMask + 1> by_exponent{};
  Summary s;
  s.count = n;
  int64_t nonfinite = 0, zeros = 0;
  double sum = 0.0;
  T lo = std::numeric_limits<T>::infinity();
  T hi = -lo;
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const U abs_bits = std::bit_cast<U>(v) & kAbsMask;
    const int exponent = static_cast<int>(abs_bits >> B::kMantissa);
    if (exponent == B::kExpMask) [[unlikely]] {
      ++nonfinite;
      if (std::isnan(v)) ++s.nan_count;
      continue;
    }
    ++by_exponent[static_cast<size_t>(exponent)];
    zeros += abs_bits == 0;
    sum += static_cast<double>(v);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  s.inf_count = nonfinite - s.nan_count;
  s.finite = n - nonfinite;
  s.zero_count = zeros;
  // Exponent field 0 holds zeros and subnormals; subnormals belong to the first bin anyway.
  by_exponent[0] -= zeros;
  for (int e = 0; e <= B::kExpMask - 1; ++e) {
    if (by_exponent[static_cast<size_t>(e)] != 0) {
      s.hist[static_cast<size_t>(clamp_bin(e - B::kBias))] += by_exponent[static_cast<size_t>(e)];
    }
  }
  if (s.finite == 0) return s;
  s.mean = sum / static_cast<double>(s.finite);
  s.min = static_cast<double>(lo);
  s.max = static_cast<double>(hi);
  s.absmax = std::max(-s.min, s.max);
  double m2 = 0.0;
  if (nonfinite == 0) {
    for (int64_t i = 0; i < n; ++i) {
      const double dev = static_cast<double>(x[i]) - s.mean;
      m2 += dev * dev;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      if (std::isfinite(x[i])) {
        const double dev = static_cast<double>(x[i]) - s.mean;
        m2 += dev * dev;
      }
    }
  }
  s.m2 = m2;
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
template <typename T>
Summary summarize_chunks(const T* src, T* dst, int64_t n, int num_threads) {
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
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = c * kChunk;
    parts[static_cast<size_t>(c)] = one(begin, std::min(kChunk, n - begin));
  }
  for (const Summary& p : parts) total.merge(p);
  return total;
}

}  // namespace

template <typename T>
Summary summarize(const T* data, int64_t n, int num_threads) {
  return summarize_chunks<T>(data, nullptr, n, num_threads);
}

template <typename T>
Summary summarize_copy(const T* src, T* dst, int64_t n, int num_threads) {
  return summarize_chunks<T>(src, dst, n, num_threads);
}

template Summary summarize<float>(const float*, int64_t, int);
template Summary summarize<double>(const double*, int64_t, int);
template Summary summarize_copy<float>(const float*, float*, int64_t, int);
template Summary summarize_copy<double>(const double*, double*, int64_t, int);

}  // namespace llmdbg::stats
