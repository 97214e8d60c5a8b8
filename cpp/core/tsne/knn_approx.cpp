#include "core/tsne/knn_approx.hpp"

// hnswlib.h defines non-inline helpers (cpuid, xgetbv): include it in this one file only.
// Without its manual SSE/AVX paths: in Debian's hnswlib 0.6.2 the SSE prefetch in
// searchBaseLayer reads the link after the last one of a full list, 4 bytes past the end of a
// heap block (AddressSanitizer: heap-buffer-overflow). The plain distance loop it falls back to
// is vectorised by the compiler.
#define NO_MANUAL_VECTORIZATION
#include <hnswlib/hnswlib.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <memory>
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

// Points per dynamically scheduled chunk: small enough to balance two threads and to poll for
// Ctrl-C every few milliseconds, large enough that the scheduling costs nothing.
constexpr int64_t kChunk = 256;

inline int unit_exponent(double x) { return x > 0 ? std::ilogb(x) + 1 : 0; }

}  // namespace

template <typename T>
void knn_approx(const T* X, int64_t n, int64_t d, int64_t k, const HnswParams& prm,
                int64_t* indices, double* sqdist, int num_threads, const CancelFn& cancelled) {
  if (k < 1 || k >= n) {
    throw std::invalid_argument("knn_approx: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                                "], got " + std::to_string(k));
  }
  if (d < 1) throw std::invalid_argument("knn_approx: X needs at least one column, got 0");
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

  hnswlib::L2Space space(static_cast<size_t>(d));
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

  // Refinement, one round of NN-descent's local join (Dong, Charikar & Li 2011): the neighbours
  // of a point's first `refine` neighbours are candidates too, ranked by float distance, the
  // best k + margin re-ranked in double. On 30 overlapping 50-D Gaussian blobs (intrinsic
  // dimension 50, HNSW's hard case) it lifts the recall at 300,000 points from 0.93 to 0.99 for
  // a fraction of what a larger ef_search costs (ef 400: recall 0.986 and 3x the query time).
  if (prm.refine <= 0) return;
  const int64_t R = std::min<int64_t>(k, prm.refine);
  const int64_t margin = std::max<int64_t>(4, k / 8);
  std::vector<int32_t> old(static_cast<size_t>(n * k));
  for (int64_t e = 0; e < n * k; ++e)
    old[static_cast<size_t>(e)] = static_cast<int32_t>(indices[e]);
  std::vector<std::vector<uint32_t>> stamps(threads,
                                            std::vector<uint32_t>(static_cast<size_t>(n), 0));
  std::vector<uint32_t> tags(threads, 0);
  std::vector<std::vector<std::pair<float, int64_t>>> cands(threads);
  for (auto& c : cands) c.reserve(static_cast<size_t>(k * (R + 1)));
  auto fdist = [&](int64_t i, int64_t j) {
    const float* a = Xf.row(i).data();
    const float* b = Xf.row(j).data();
    float acc = 0.0f;
    for (int64_t t = 0; t < d; ++t) {
      const float v = a[t] - b[t];
      acc += v * v;
    }
    return acc;
  };
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < q_chunks; ++c) {
    if (guard.poll()) continue;
    guard.run([&] {
      const int tid = thread_id();
      auto& stamp = stamps[static_cast<size_t>(tid)];
      auto& cand = cands[static_cast<size_t>(tid)];
      auto& found = scratch[static_cast<size_t>(tid)];
      const int64_t a = c * kChunk, b = std::min(n, a + kChunk);
      for (int64_t i = a; i < b; ++i) {
        const uint32_t tag = ++tags[static_cast<size_t>(tid)];
        cand.clear();
        stamp[static_cast<size_t>(i)] = tag;
        const int32_t* mine = old.data() + i * k;
        for (int64_t m = 0; m < k; ++m) {
          stamp[static_cast<size_t>(mine[m])] = tag;
          cand.emplace_back(fdist(i, mine[m]), mine[m]);
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
        for (int64_t m = 0; m < k; ++m) {
          indices[i * k + m] = found[static_cast<size_t>(m)].second;
          sqdist[i * k + m] = found[static_cast<size_t>(m)].first;
        }
      }
    });
  }
  guard.finish();
}

template void knn_approx<float>(const float*, int64_t, int64_t, int64_t, const HnswParams&,
                                int64_t*, double*, int, const CancelFn&);
template void knn_approx<double>(const double*, int64_t, int64_t, int64_t, const HnswParams&,
                                 int64_t*, double*, int, const CancelFn&);

}  // namespace llmdbg::tsne
