#pragma once
// Fused one-shot summary statistics of a tensor: counts of NaN/Inf/zeros, mean and variance of
// the finite values, min/max/absmax and a fixed log2-bin histogram of |x|.
//
// Why fixed log2 bins: two summaries of different shards, ranks or forward calls merge exactly
// (add the counts), which per-tensor min/max bins cannot do. Accumulation is in double.
// Determinism: the input is cut into fixed-size chunks whose partial summaries are merged in
// chunk order, so the result is bitwise identical for every thread count.

#include <array>
#include <cstdint>

#include "core/common/cancel.hpp"

namespace llmdbg::stats {

// Bin b (0..kHistBins-1) holds finite non-zero values with 2^(b+kHistMinExp) <= |x| <
// 2^(b+kHistMinExp+1). Magnitudes outside [2^-32, 2^32) are clamped into the end bins.
inline constexpr int kHistBins = 64;
inline constexpr int kHistMinExp = -32;
// Elements per chunk: small enough to stay in L2 for the second (variance) pass.
inline constexpr int64_t kChunk = int64_t{1} << 15;

struct Summary {
  int64_t count = 0;   // all elements seen
  int64_t finite = 0;  // finite elements (mean/std/min/max/absmax are over these)
  int64_t nan_count = 0;
  int64_t inf_count = 0;
  int64_t zero_count = 0;  // exact zeros (both signs)
  double mean = 0.0;
  double m2 = 0.0;   // sum of squared deviations from the mean (finite values)
  double min = 0.0;  // meaningful only when finite > 0
  double max = 0.0;
  double absmax = 0.0;
  std::array<int64_t, kHistBins> hist{};

  // Chan, Golub & LeVeque's pairwise update: exact counts, stable mean/variance.
  void merge(const Summary& other);
  double variance() const;  // population variance (ddof = 0), like numpy's default
  double stddev() const;
  double zero_fraction() const;
};

// The histogram bin of a finite, non-zero value, read from its exponent bits (exact, no log).
int hist_bin(float x);
int hist_bin(double x);

// Summarise n contiguous values. num_threads <= 0 uses the OpenMP default. `cancelled` is polled
// between chunks (core/common/cancel.hpp; llmdbg::Interrupted when it returns true).
template <typename T>
Summary summarize(const T* data, int64_t n, int num_threads, const CancelFn& cancelled = {});

// Copy n values from src to dst and summarise them in the same sweep: each chunk is copied,
// then summarised while it is still in cache, so the data is read from memory once. Gives the
// same summary as summarize(src, n, ...) bitwise.
template <typename T>
Summary summarize_copy(const T* src, T* dst, int64_t n, int num_threads,
                       const CancelFn& cancelled = {});

extern template Summary summarize<float>(const float*, int64_t, int, const CancelFn&);
extern template Summary summarize<double>(const double*, int64_t, int, const CancelFn&);
extern template Summary summarize_copy<float>(const float*, float*, int64_t, int, const CancelFn&);
extern template Summary summarize_copy<double>(const double*, double*, int64_t, int,
                                               const CancelFn&);

}  // namespace llmdbg::stats
