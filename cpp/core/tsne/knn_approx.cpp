#include "core/tsne/knn_approx.hpp"

// hnswlib.h defines non-inline helpers (cpuid, xgetbv): include it in this one file only.
// Without its manual SSE/AVX paths: in Debian's hnswlib 0.6.2 the SSE prefetch in
// searchBaseLayer reads the link after the last one of a full list, 4 bytes past the end of a
// heap block (AddressSanitizer: heap-buffer-overflow). Its plain distance loop is not vectorised
// (a float sum needs reassociation), so the graph gets the L2 space below instead.
#define NO_MANUAL_VECTORIZATION
#include <hnswlib/hnswlib.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/common/cancel.hpp"
#include "core/common/parallel.hpp"
#include "core/tsne/simd.hpp"

namespace llmdbg::tsne {

namespace {

using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Points per dynamically scheduled chunk: small enough to balance two threads and to poll for
// Ctrl-C every few milliseconds, large enough that the scheduling costs nothing.
constexpr int64_t kChunk = 256;

inline int unit_exponent(double x) { return x > 0 ? std::ilogb(x) + 1 : 0; }

// Squared Euclidean distance in float with 16 independent partial sums, which the compiler turns
// into vector lanes (a single running sum would have to stay scalar), for AVX2 and the baseline.
// The whole search at 100,000 x 50 took 15.5 s with it against 23.0 s with hnswlib's fallback
// loop. The sum's order is fixed, so the result depends only on the CPU's instruction set.
LLMDBG_TSNE_CLONES float l2_squared(const float* a, const float* b, size_t d) {
  constexpr size_t kLanes = 16;
  float lane[kLanes] = {};
  size_t t = 0;
  for (; t + kLanes <= d; t += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) {
      const float v = a[t + l] - b[t + l];
      lane[l] += v * v;
    }
  }
  for (size_t l = 0; t < d; ++t, ++l) {
    const float v = a[t] - b[t];
    lane[l] += v * v;
  }
  float acc = 0.0f;
  for (size_t l = 0; l < kLanes; ++l) acc += lane[l];
  return acc;
}

float hnsw_l2(const void* a, const void* b, const void* dim) {
  return l2_squared(static_cast<const float*>(a), static_cast<const float*>(b),
                    *static_cast<const size_t*>(dim));
}

// hnswlib's space interface around l2_squared (its own L2Space without the manual SIMD above).
class L2Space final : public hnswlib::SpaceInterface<float> {
 public:
  explicit L2Space(size_t dim) : dim_(dim) {}
  size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return &hnsw_l2; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  size_t dim_;
};

}  // namespace

template <typename T>
void knn_approx(const T* X, int64_t n, int64_t d, int64_t k, const HnswParams& prm,
                int64_t* indices, double* sqdist, int num_threads, const CancelFn& cancelled) {
  if (k < 1 || k >= n) {
    throw std::invalid_argument("knn_approx: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                                "], got " + std::to_string(k));
  }
  if (d < 1) throw std::invalid_argument("knn_approx: X needs at least one column, got 0");
  // Neighbour lists are stored as int32 (the refinement's copies, hnswlib's labels are uint32).
  if (n > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("knn_approx: at most 2^31 - 1 rows, got " + std::to_string(n));
  }
  if (prm.M < 2 || prm.ef_construction < 1) {
    throw std::invalid_argument("knn_approx: M must be >= 2 and ef_construction >= 1");
  }
  const int threads = resolve_threads(num_threads);
  Guard guard(cancelled);

  // The same unit-scale, centred copies as knn_exact: double for the final distances, float for
  // the graph (hnswlib's L2 space is float32).
  const auto Xin =
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(X, n, d);
  double largest = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const auto row = Xin.row(i).template cast<double>();
    if (!row.allFinite()) {
      throw std::invalid_argument("knn_approx: row " + std::to_string(i) +
                                  " of X holds NaN or Inf");
    }
    largest = std::max(largest, row.cwiseAbs().maxCoeff());
  }
  const int e1 = unit_exponent(largest);
  Eigen::RowVectorXd mean = Eigen::RowVectorXd::Zero(d);
  for (int64_t i = 0; i < n; ++i) {
    mean +=
        Xin.row(i).template cast<double>().unaryExpr([e1](double v) { return std::ldexp(v, -e1); });
  }
  mean /= static_cast<double>(n);
  double spread = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const auto row =
        Xin.row(i).template cast<double>().unaryExpr([e1](double v) { return std::ldexp(v, -e1); });
    spread = std::max(spread, (row - mean).cwiseAbs().maxCoeff());
  }
  const int e2 = unit_exponent(spread);
  // Centred, at unit scale (exact powers of two), float: data far from the origin keeps its
  // spread in float32. Ranks like the double distances up to float rounding.
  RowMatF Xf(n, d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const auto row =
        Xin.row(i).template cast<double>().unaryExpr([e1](double v) { return std::ldexp(v, -e1); });
    Xf.row(i) = (row - mean)
                    .unaryExpr([e2](double v) { return std::ldexp(v, -e2); })
                    .template cast<float>();
  }

  L2Space space(static_cast<size_t>(d));
  auto index = std::make_unique<hnswlib::HierarchicalNSW<float>>(
      &space, static_cast<size_t>(n), static_cast<size_t>(prm.M),
      static_cast<size_t>(prm.ef_construction), static_cast<size_t>(prm.seed));

  // The first point alone (the graph's entry), then the rest in parallel chunks.
  index->addPoint(Xf.row(0).data(), 0);
  const int64_t n_chunks = (n - 1 + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    if (guard.poll()) continue;
    guard.run([&] {
      const int64_t a = 1 + c * kChunk, b = std::min(n, a + kChunk);
      for (int64_t i = a; i < b; ++i) index->addPoint(Xf.row(i).data(), static_cast<size_t>(i));
    });
  }
  guard.finish();

  // Each point's search starts at the point itself on the bottom layer, not at the graph's
  // entry: with well-separated clusters (t-SNE's usual input) a search from the entry can stay
  // in the wrong cluster and miss a whole neighbourhood (recall 0.97 instead of 0.9995 measured
  // on 30 Gaussian blobs at n = 10,000). All ef candidates are re-ranked in double.
  const int64_t ef_default = std::max<int64_t>(k + 32, (3 * k + 1) / 2);
  const int64_t ef = std::min<int64_t>(
      n, std::max<int64_t>(k + 1, prm.ef_search > 0 ? prm.ef_search : ef_default));
  std::vector<hnswlib::tableint> internal(static_cast<size_t>(n));
  for (int64_t id = 0; id < n; ++id) {
    internal[index->getExternalLabel(static_cast<hnswlib::tableint>(id))] =
        static_cast<hnswlib::tableint>(id);
  }
  const int64_t q_chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::vector<std::pair<double, int64_t>>> scratch(threads);
  for (auto& s : scratch) s.reserve(static_cast<size_t>(ef));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < q_chunks; ++c) {
    if (guard.poll()) continue;
    guard.run([&] {
      auto& found = scratch[thread_id()];
      const int64_t a = c * kChunk, b = std::min(n, a + kChunk);
      for (int64_t i = a; i < b; ++i) {
        auto heap = index->searchBaseLayerST<false>(internal[static_cast<size_t>(i)],
                                                    Xf.row(i).data(), static_cast<size_t>(ef));
        found.clear();
        const auto xi = Xin.row(i).template cast<double>();
        while (!heap.empty()) {
          const auto j = static_cast<int64_t>(index->getExternalLabel(heap.top().second));
          heap.pop();
          if (j == i) continue;
          // Exact squared distance at the input's own scale (knn_exact's, without its rescale
          // round trip: both are the same double sum up to the power-of-two factor).
          found.emplace_back((xi - Xin.row(j).template cast<double>()).squaredNorm(), j);
        }
        if (static_cast<int64_t>(found.size()) < k) {
          throw std::runtime_error(
              "knn_approx: the graph returned fewer than k neighbours for row " +
              std::to_string(i) + "; raise ef_search");
        }
        std::sort(found.begin(), found.end());
        for (int64_t m = 0; m < k; ++m) {
          if (std::isinf(found[m].first)) {
            throw std::invalid_argument(
                "knn_approx: X: squared distances overflow float64; rescale X");
          }
          indices[i * k + m] = found[m].second;
          sqdist[i * k + m] = found[m].first;
        }
      }
    });
  }
  guard.finish();
  index.reset();  // the graph is not needed any more: free it before the refinement's buffers

  // Refinement, rounds of NN-descent's local join (Dong, Charikar & Li 2011): the neighbours of
  // a point's first `refine` neighbours are candidates too, ranked by float distance, the best
  // k + margin re-ranked in double. A later round skips a point when neither its list nor those
  // of its first `refine` neighbours changed in the round before (its candidates, and so its
  // answer, would be the same). On 30 overlapping 50-D Gaussian blobs (intrinsic dimension 50,
  // HNSW's hard case) at 300,000 points the graph alone finds 0.93 of the exact neighbours, one
  // round 0.96 for a fifth more time; a larger ef_search costs more for less (ef 200 and one
  // round: 0.977 for a quarter more again).
  if (prm.refine <= 0 || prm.refine_rounds <= 0) return;
  const int64_t R = std::min<int64_t>(k, prm.refine);
  const int64_t margin = std::max<int64_t>(4, k / 8);
  std::vector<int32_t> old(static_cast<size_t>(n * k));
  // changed[i]: i's list changed in the previous round (all true before the first).
  std::vector<uint8_t> changed(static_cast<size_t>(n), 1), changed_next(static_cast<size_t>(n), 0);
  std::vector<std::vector<uint32_t>> stamps(threads,
                                            std::vector<uint32_t>(static_cast<size_t>(n), 0));
  std::vector<uint32_t> tags(threads, 0);
  std::vector<std::vector<std::pair<float, int64_t>>> cands(threads);
  for (auto& c : cands) c.reserve(static_cast<size_t>(k * (R + 1)));
  auto fdist = [&](int64_t i, int64_t j) {
    return l2_squared(Xf.row(i).data(), Xf.row(j).data(), static_cast<size_t>(d));
  };
  // Reverse lists: the points that hold i among their k. Where j found i but i missed j (pairs
  // near the k-th distance, nearly tied in high dimension), the reverse list hands j back to i.
  std::vector<int64_t> rev_start(static_cast<size_t>(n + 1));
  std::vector<int32_t> rev(static_cast<size_t>(n * k));
  for (int round = 0; round < prm.refine_rounds; ++round) {
    for (int64_t e = 0; e < n * k; ++e)
      old[static_cast<size_t>(e)] = static_cast<int32_t>(indices[e]);
    std::fill(rev_start.begin(), rev_start.end(), 0);
    for (int64_t e = 0; e < n * k; ++e) ++rev_start[static_cast<size_t>(old[e]) + 1];
    for (int64_t i = 0; i < n; ++i) rev_start[i + 1] += rev_start[i];
    {
      std::vector<int64_t> fill(rev_start.begin(), rev_start.end() - 1);
      for (int64_t e = 0; e < n * k; ++e) rev[fill[old[e]]++] = static_cast<int32_t>(e / k);
    }
    std::fill(changed_next.begin(), changed_next.end(), 0);
    int64_t n_changed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+ : n_changed)
    for (int64_t c = 0; c < q_chunks; ++c) {
      if (guard.poll()) continue;
      guard.run([&] {
        const int tid = thread_id();
        auto& stamp = stamps[static_cast<size_t>(tid)];
        auto& cand = cands[static_cast<size_t>(tid)];
        auto& found = scratch[static_cast<size_t>(tid)];
        const int64_t a = c * kChunk, b = std::min(n, a + kChunk);
        for (int64_t i = a; i < b; ++i) {
          const int32_t* mine = old.data() + i * k;
          bool stale = changed[static_cast<size_t>(i)] != 0;
          for (int64_t r = 0; r < R && !stale; ++r) stale = changed[static_cast<size_t>(mine[r])];
          for (int64_t e = rev_start[i]; e < rev_start[i + 1] && !stale; ++e)
            stale = changed[static_cast<size_t>(rev[e])];
          if (!stale) continue;
          const uint32_t tag = ++tags[static_cast<size_t>(tid)];
          cand.clear();
          stamp[static_cast<size_t>(i)] = tag;
          for (int64_t m = 0; m < k; ++m) {
            stamp[static_cast<size_t>(mine[m])] = tag;
            cand.emplace_back(fdist(i, mine[m]), mine[m]);
          }
          for (int64_t e = rev_start[i]; e < rev_start[i + 1]; ++e) {
            const int32_t l = rev[e];
            if (stamp[static_cast<size_t>(l)] == tag) continue;
            stamp[static_cast<size_t>(l)] = tag;
            cand.emplace_back(fdist(i, l), l);
          }
          for (int64_t r = 0; r < R; ++r) {
            const int32_t* theirs = old.data() + static_cast<int64_t>(mine[r]) * k;
            for (int64_t m = 0; m < k; ++m) {
              const int32_t l = theirs[m];
              if (stamp[static_cast<size_t>(l)] == tag) continue;
              stamp[static_cast<size_t>(l)] = tag;
              cand.emplace_back(fdist(i, l), l);
            }
          }
          const auto keep =
              static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(cand.size()), k + margin));
          std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(keep - 1),
                           cand.end());
          found.clear();
          const auto xi = Xin.row(i).template cast<double>();
          for (size_t e = 0; e < keep; ++e) {
            const int64_t j = cand[e].second;
            found.emplace_back((xi - Xin.row(j).template cast<double>()).squaredNorm(), j);
          }
          std::sort(found.begin(), found.end());
          bool differs = false;
          for (int64_t m = 0; m < k; ++m) {
            const int64_t j = found[static_cast<size_t>(m)].second;
            differs = differs || j != mine[m];
            indices[i * k + m] = j;
            sqdist[i * k + m] = found[static_cast<size_t>(m)].first;
          }
          changed_next[static_cast<size_t>(i)] = differs ? 1 : 0;
          n_changed += differs ? 1 : 0;
        }
      });
    }
    guard.finish();
    if (n_changed == 0) break;
    changed.swap(changed_next);
  }
}

template void knn_approx<float>(const float*, int64_t, int64_t, int64_t, const HnswParams&,
                                int64_t*, double*, int, const CancelFn&);
template void knn_approx<double>(const double*, int64_t, int64_t, int64_t, const HnswParams&,
                                 int64_t*, double*, int, const CancelFn&);

}  // namespace llmdbg::tsne
