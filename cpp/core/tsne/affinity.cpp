#include "core/tsne/affinity.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/common/parallel.hpp"
#include "core/tsne/format.hpp"

namespace llmdbg::tsne {

void calibrate(const double* sqdist, int64_t n, int64_t k, double perplexity, double tol,
               int max_iter, double* P, double* perplexities, int num_threads) {
  if (!(perplexity >= 1.0) || !std::isfinite(perplexity)) {
    throw std::invalid_argument("calibrate: perplexity must be a finite number >= 1, got " +
                                num(perplexity));
  }
  if (!(tol >= 0.0) || !std::isfinite(tol)) {
    throw std::invalid_argument("calibrate: tol must be a finite number >= 0, got " + num(tol));
  }
  if (max_iter < 1) {
    throw std::invalid_argument("calibrate: max_iter must be >= 1, got " +
                                std::to_string(max_iter));
  }
  if (k < 1) throw std::invalid_argument("calibrate: need at least one neighbour per point");
  for (int64_t c = 0; c < n * k; ++c) {
    if (!(sqdist[c] >= 0.0) || !std::isfinite(sqdist[c])) {
      throw std::invalid_argument("calibrate: sqdist[" + std::to_string(c / k) + ", " +
                                  std::to_string(c % k) + "] = " + num(sqdist[c]) +
                                  " is not a finite squared distance >= 0");
    }
  }
  const double target = std::log(perplexity);
  const int threads = resolve_threads(num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> shifted(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double* d = sqdist + i * k;
      double* p = P + i * k;
      const double dmin = *std::min_element(d, d + k);
      // Shifted distances at unit scale: a power of two brings the largest into [0.5, 1)
      // exactly, so sums of 1e300-sized distances do not overflow, subnormal ones are not lost,
      // and sqdist · 4^s gives bitwise the same row (the entropy depends on β·s only).
      double smax = 0.0;
      for (int64_t m = 0; m < k; ++m) smax = std::max(smax, d[m] - dmin);
      // (ldexp per value: 2^-e itself overflows when smax is subnormal)
      const int e = smax > 0 ? std::ilogb(smax) + 1 : 0;
      double* s = shifted.data();
      for (int64_t m = 0; m < k; ++m) s[m] = std::ldexp(d[m] - dmin, -e);
      // Start from 1 / mean shifted distance (about the right scale for any units), then Newton
      // steps on H(β), dH/dβ = −β Var_p(s), kept inside the bisection bracket [lo, hi]; a step
      // that would leave it bisects instead. Converges in a handful of steps instead of ~30.
      double mean_s = 0.0;
      for (int64_t m = 0; m < k; ++m) mean_s += s[m];
      mean_s /= static_cast<double>(k);
      double beta = mean_s > 0 ? 1.0 / mean_s : 1.0, lo = 0.0;
      double hi = std::numeric_limits<double>::infinity();
      double entropy = 0.0;
      bool collapsed = false;
      for (int step = 0; step < max_iter; ++step) {
        // A target below what ties at the nearest distance allow (perplexity 1 with duplicates)
        // sharpens β past the largest double; exp(−∞ · 0) would then be NaN.
        if (!std::isfinite(beta)) {
          collapsed = true;
          break;
        }
        // Shifted exponent: the nearest neighbour has weight 1, so the sum never underflows.
        double sum = 0.0, dsum = 0.0, d2sum = 0.0;
        for (int64_t m = 0; m < k; ++m) {
          const double w = std::exp(-beta * s[m]);
          p[m] = w;
          sum += w;
          dsum += w * s[m];
          d2sum += w * s[m] * s[m];
        }
        const double mean = dsum / sum;
        entropy = std::log(sum) + beta * mean;
        const double diff = entropy - target;
        if (std::abs(diff) <= tol) break;
        if (diff > 0) {  // too flat: sharpen
          lo = beta;
        } else {
          hi = beta;
        }
        const double slope = -beta * (d2sum / sum - mean * mean);
        const double newton = slope < 0 ? beta - diff / slope : -1.0;
        if (newton > lo && newton < hi && std::isfinite(newton)) {
          beta = newton;
        } else if (diff > 0) {
          beta = std::isinf(hi) ? beta * 2.0 : 0.5 * (beta + hi);
        } else {
          beta = 0.5 * (beta + lo);
        }
      }
      if (collapsed) {  // the limit β → ∞: uniform over the neighbours at the nearest distance
        int64_t ties = 0;
        for (int64_t m = 0; m < k; ++m) ties += s[m] == 0.0;
        for (int64_t m = 0; m < k; ++m) p[m] = s[m] == 0.0 ? 1.0 : 0.0;
        entropy = std::log(static_cast<double>(ties));
      }
      double sum = 0.0;
      for (int64_t m = 0; m < k; ++m) sum += p[m];
      for (int64_t m = 0; m < k; ++m) p[m] /= sum;
      if (perplexities) perplexities[i] = std::exp(entropy);
    }
  }
}

Csr joint_probabilities(const int64_t* indices, const double* P_cond, int64_t n, int64_t k,
                        int num_threads) {
  const int threads = resolve_threads(num_threads);
  // Row i holds its own k entries plus every (j -> i) entry transposed: count, fill, then sort
  // and merge each row.
  std::vector<int64_t> count(n + 1, 0);
  double pmax = 0.0;
  for (int64_t c = 0; c < n * k; ++c) {
    if (!(P_cond[c] >= 0.0) || !std::isfinite(P_cond[c])) {
      throw std::invalid_argument("joint_probabilities: P[" + std::to_string(c / k) + ", " +
                                  std::to_string(c % k) + "] = " + num(P_cond[c]) +
                                  " is not a finite probability >= 0");
    }
    pmax = std::max(pmax, P_cond[c]);
  }
  if (n > 0 && !(pmax > 0.0)) {
    throw std::invalid_argument("joint_probabilities: P sums to 0; nothing to normalise");
  }
  for (int64_t i = 0; i < n; ++i) {
    count[i + 1] += k;
    for (int64_t m = 0; m < k; ++m) {
      const int64_t j = indices[i * k + m];
      if (j < 0 || j >= n || j == i) {
        throw std::invalid_argument("joint_probabilities: indices[" + std::to_string(i) + ", " +
                                    std::to_string(m) + "] = " + std::to_string(j) +
                                    " is out of range [0, " + std::to_string(n) +
                                    ") or the row itself");
      }
      count[j + 1] += 1;
    }
  }
  for (int64_t i = 0; i < n; ++i) count[i + 1] += count[i];
  std::vector<std::pair<int64_t, double>> coo(static_cast<size_t>(count[n]));
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  // Values at unit scale (times a power of two, exact): sums of huge entries cannot overflow,
  // and the normalised result is bitwise the same as without the factor.
  const int e = pmax > 0 ? std::ilogb(pmax) + 1 : 0;  // ldexp per value: 2^-e may overflow
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t m = 0; m < k; ++m) {
      coo[fill[i]++] = {indices[i * k + m], std::ldexp(P_cond[i * k + m], -e)};
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t m = 0; m < k; ++m) {
      coo[fill[indices[i * k + m]]++] = {i, std::ldexp(P_cond[i * k + m], -e)};
    }
  }
  std::vector<int64_t> row_nnz(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    auto b = coo.begin() + count[i], e = coo.begin() + count[i + 1];
    // Stable on column so the (at most two) values of one column are added in a fixed order.
    std::stable_sort(b, e, [](const auto& x, const auto& y) { return x.first < y.first; });
    int64_t out = count[i];
    for (auto it = b; it != e; ++it) {
      if (out > count[i] && coo[out - 1].first == it->first) {
        coo[out - 1].second += it->second;
      } else {
        coo[out++] = *it;
      }
    }
    row_nnz[i] = out - count[i];
  }
  Csr P;
  P.n = n;
  P.indptr.assign(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) P.indptr[i + 1] = P.indptr[i] + row_nnz[i];
  P.indices.resize(P.indptr[n]);
  P.data.resize(P.indptr[n]);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t m = 0; m < row_nnz[i]; ++m) total += coo[count[i] + m].second;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t m = 0; m < row_nnz[i]; ++m) {
      P.indices[P.indptr[i] + m] = coo[count[i] + m].first;
      P.data[P.indptr[i] + m] = coo[count[i] + m].second / total;
    }
  }
  return P;
}

}  // namespace llmdbg::tsne
