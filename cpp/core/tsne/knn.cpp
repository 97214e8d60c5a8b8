#include "core/tsne/knn.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/common/cancel.hpp"
#include "core/common/parallel.hpp"

namespace llmdbg::tsne {

namespace {

using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Query blocks of at most 32 rows: Eigen runs the GEMM of a destination with at most 32 rows
// (known at compile time) on the calling thread, never in a nested OpenMP region of its own.
constexpr int kQueryBlock = 32;
using BlockF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, kQueryBlock,
                             Eigen::Dynamic>;

// The cap smallest (distance, index) pairs seen so far, ordered lexicographically so the kept
// set does not depend on the order candidates arrive in. Candidates under the current bound are
// buffered and merged with nth_element when the buffer fills: amortised O(1) per candidate.
struct TopK {
  using Item = std::pair<float, int64_t>;
  std::vector<Item> items;  // best (first `kept`) followed by the buffer
  size_t cap = 0, kept = 0;
  float bound = INFINITY;  // admit candidates with distance <= bound

  void reset(size_t c) {
    cap = c, kept = 0, bound = INFINITY;
    items.clear();
    items.reserve(2 * c);
  }
  void push(float dist, int64_t j) {
    items.emplace_back(dist, j);
    if (items.size() >= 2 * cap) merge();
  }
  void merge() {
    if (items.size() > cap) {
      std::nth_element(items.begin(), items.begin() + (cap - 1), items.end());
      items.resize(cap);
      bound = items[cap - 1].first;
      for (const auto& it : items) bound = std::max(bound, it.first);
    }
    kept = items.size();
  }
};

// The power of two 2^e with x / 2^e in [0.5, 1) (e = 0 for x = 0): dividing by it is exact.
inline int unit_exponent(double x) { return x > 0 ? std::ilogb(x) + 1 : 0; }

}  // namespace

template <typename T>
void knn_exact(const T* X, int64_t n, int64_t d, int64_t k, Metric metric, int64_t* indices,
               double* sqdist, int num_threads, const CancelFn& cancelled) {
  if (k < 1 || k >= n) {
    throw std::invalid_argument("knn: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                                "], got " + std::to_string(k));
  }
  if (d < 1) throw std::invalid_argument("knn: X needs at least one column, got 0");
  const int threads = resolve_threads(num_threads);
  Guard guard(cancelled);
  // Double copy (normalised for cosine) for the exact re-ranking, and a centred float copy for
  // the GEMM: centring keeps ‖x‖² + ‖y‖² − 2 x·y from cancelling catastrophically.
  RowMatD Xd =
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(X, n, d)
          .template cast<double>();
  for (int64_t i = 0; i < n; ++i) {
    if (!Xd.row(i).allFinite()) {
      throw std::invalid_argument("knn: row " + std::to_string(i) + " of X holds NaN or Inf");
    }
  }
  // Rank at unit scale: a power of two brings the largest |x| into [0.5, 1) exactly, so squared
  // distances neither overflow (|x| ~ 1e300) nor underflow (|x| ~ 1e-300) in double, and X and
  // X·2^s give the same neighbours and distances scaled by exactly 4^s. Under the cosine metric
  // each row is brought to its own unit scale instead (a 1e-200 row among unit ones would
  // otherwise underflow), then normalised: 2 (1 − cos) does not depend on any row's scale.
  int out_exponent = 0;  // sqdist = (distance at unit scale) · 2^out_exponent
  if (metric == Metric::euclidean) {
    const int e1 = unit_exponent(Xd.cwiseAbs().maxCoeff());
    // (ldexp per value: 2^-e1 itself overflows when the largest |x| is subnormal)
    Xd = Xd.unaryExpr([e1](double v) { return std::ldexp(v, -e1); });
    out_exponent = 2 * e1;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const int er = unit_exponent(Xd.row(i).cwiseAbs().maxCoeff());
      Xd.row(i) = Xd.row(i).unaryExpr([er](double v) { return std::ldexp(v, -er); });
      const double norm = Xd.row(i).norm();
      if (!(norm > 0)) {
        throw std::invalid_argument("knn: row " + std::to_string(i) +
                                    " is zero; the cosine metric needs nonzero rows");
      }
      Xd.row(i) /= norm;
    }
  }
  const Eigen::RowVectorXd mean = Xd.colwise().mean();
  // The float copy is centred and brought to unit scale again: data far from the origin
  // (1e30 + small noise) would otherwise lose its spread in float32.
  const int e2 = unit_exponent((Xd.rowwise() - mean).cwiseAbs().maxCoeff());
  const RowMatF Xf = (Xd.rowwise() - mean)
                         .unaryExpr([e2](double v) { return std::ldexp(v, -e2); })
                         .template cast<float>();
  const Eigen::VectorXf norms = Xf.rowwise().squaredNorm();

  // A few spare candidates absorb float32 rounding in the ranking.
  const int64_t cand = std::min<int64_t>(n - 1, k + std::max<int64_t>(4, k / 8));
  constexpr int64_t kRefBlock = 1024;
  const int64_t n_qblocks = (n + kQueryBlock - 1) / kQueryBlock;

  // Per-thread buffers, allocated before the region (an allocation failure inside it could not
  // be reported).
  std::vector<BlockF> blocks(threads, BlockF(kQueryBlock, kRefBlock));
  std::vector<std::vector<TopK>> top_lists(threads, std::vector<TopK>(kQueryBlock));
  std::vector<std::vector<std::pair<double, int64_t>>> exacts(threads);
  for (auto& tops : top_lists) {
    for (auto& t : tops) t.reset(static_cast<size_t>(cand));
  }
  for (auto& e : exacts) e.reserve(static_cast<size_t>(cand));

  auto query_block = [&](int64_t qb) {
    BlockF& S = blocks[thread_id()];
    std::vector<TopK>& tops = top_lists[thread_id()];
    std::vector<std::pair<double, int64_t>>& exact = exacts[thread_id()];
    const int64_t q0 = qb * kQueryBlock, nq = std::min<int64_t>(kQueryBlock, n - q0);
    for (int64_t a = 0; a < nq; ++a) tops[a].reset(static_cast<size_t>(cand));
    for (int64_t r0 = 0; r0 < n; r0 += kRefBlock) {
      const int64_t nr = std::min(kRefBlock, n - r0);
      // A cache-blocked GEMM (serial: see BlockF).
      S.topLeftCorner(nq, nr).noalias() = Xf.middleRows(q0, nq) * Xf.middleRows(r0, nr).transpose();
      for (int64_t a = 0; a < nq; ++a) {
        TopK& top = tops[a];
        const int64_t i = q0 + a;
        const float ni = norms[i];
        const float* s = S.data() + a * S.cols();
        const float* nr_ = norms.data() + r0;
        for (int64_t b = 0; b < nr; ++b) {
          const float dist = ni + nr_[b] - 2.0f * s[b];
          if (dist <= top.bound) [[unlikely]] {
            if (r0 + b != i) top.push(dist, r0 + b);
          }
        }
      }
    }
    for (int64_t a = 0; a < nq; ++a) {
      const int64_t i = q0 + a;
      tops[a].merge();
      exact.clear();
      for (const auto& c : tops[a].items) {
        exact.emplace_back((Xd.row(i) - Xd.row(c.second)).squaredNorm(), c.second);
      }
      std::sort(exact.begin(), exact.end());
      // Only a candidate list shorter than k could make the loop below read past it.
      if (static_cast<int64_t>(exact.size()) < k) {
        throw std::runtime_error("knn: fewer than k candidates for row " + std::to_string(i) +
                                 " (internal error)");
      }
      for (int64_t m = 0; m < k; ++m) {
        const double v = std::ldexp(exact[m].first, out_exponent);
        if (std::isinf(v)) {
          throw std::invalid_argument(
              "knn: X: squared distances overflow float64 (the largest is about 2^" +
              std::to_string(out_exponent) + "); rescale X");
        }
        indices[i * k + m] = exact[m].second;
        sqdist[i * k + m] = v;
      }
    }
  };

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t qb = 0; qb < n_qblocks; ++qb) {
    if (guard.poll()) continue;
    // No exception may leave the region: the guard records the first and skips the rest.
    guard.run([&] { query_block(qb); });
  }
  guard.finish();
}

template void knn_exact<float>(const float*, int64_t, int64_t, int64_t, Metric, int64_t*, double*,
                               int, const CancelFn&);
template void knn_exact<double>(const double*, int64_t, int64_t, int64_t, Metric, int64_t*, double*,
                                int, const CancelFn&);

}  // namespace llmdbg::tsne
