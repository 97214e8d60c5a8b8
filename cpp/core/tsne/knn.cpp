#include "core/tsne/knn.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

}  // namespace

template <typename T>
void knn_exact(const T* X, int64_t n, int64_t d, int64_t k, Metric metric, int64_t* indices,
               double* sqdist, int num_threads) {
  if (k < 1 || k >= n) {
    throw std::invalid_argument("knn: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                                "], got " + std::to_string(k));
  }
  const int threads = resolve_threads(num_threads);
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
  if (metric == Metric::cosine) {
    for (int64_t i = 0; i < n; ++i) {
      const double norm = Xd.row(i).norm();
      if (!(norm > 0)) {
        throw std::invalid_argument("knn: row " + std::to_string(i) +
                                    " is zero; the cosine metric needs nonzero rows");
      }
      Xd.row(i) /= norm;
    }
  }
  const Eigen::RowVectorXd mean = Xd.colwise().mean();
  // Squared float32 distances overflow past ~1e19 and underflow below ~1e-19: rank extreme
  // magnitudes in rescaled units (ranking is scale-free; the exact distances stay in double).
  const double maxabs = (Xd.rowwise() - mean).cwiseAbs().maxCoeff();
  const double scale = (maxabs > 1e15 || (maxabs > 0 && maxabs < 1e-15)) ? 1.0 / maxabs : 1.0;
  const RowMatF Xf = ((Xd.rowwise() - mean) * scale).template cast<float>();
  const Eigen::VectorXf norms = Xf.rowwise().squaredNorm();

  // A few spare candidates absorb float32 rounding in the ranking.
  const int64_t cand = std::min<int64_t>(n - 1, k + std::max<int64_t>(4, k / 8));
  constexpr int64_t kRefBlock = 1024;
  const int64_t n_qblocks = (n + kQueryBlock - 1) / kQueryBlock;

  bool short_of_candidates = false;  // never throw inside the parallel region
#pragma omp parallel num_threads(threads)
  {
    BlockF S(kQueryBlock, kRefBlock);
    std::vector<TopK> tops(kQueryBlock);
    std::vector<std::pair<double, int64_t>> exact;
#pragma omp for schedule(dynamic, 1)
    for (int64_t qb = 0; qb < n_qblocks; ++qb) {
      const int64_t q0 = qb * kQueryBlock, nq = std::min<int64_t>(kQueryBlock, n - q0);
      for (int64_t a = 0; a < nq; ++a) tops[a].reset(static_cast<size_t>(cand));
      for (int64_t r0 = 0; r0 < n; r0 += kRefBlock) {
        const int64_t nr = std::min(kRefBlock, n - r0);
        // A cache-blocked GEMM (serial: see BlockF).
        S.topLeftCorner(nq, nr).noalias() =
            Xf.middleRows(q0, nq) * Xf.middleRows(r0, nr).transpose();
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
        if (static_cast<int64_t>(exact.size()) < k) {
#pragma omp atomic write
          short_of_candidates = true;
          continue;
        }
        for (int64_t m = 0; m < k; ++m) {
          indices[i * k + m] = exact[m].second;
          sqdist[i * k + m] = exact[m].first;
        }
      }
    }
  }
  if (short_of_candidates) {
    throw std::runtime_error("knn: fewer than k finite distances for some point (overflow?)");
  }
}

template void knn_exact<float>(const float*, int64_t, int64_t, int64_t, Metric, int64_t*, double*,
                               int);
template void knn_exact<double>(const double*, int64_t, int64_t, int64_t, Metric, int64_t*, double*,
                                int);

}  // namespace llmdbg::tsne
