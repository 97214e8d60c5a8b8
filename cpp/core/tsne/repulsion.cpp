#include "core/tsne/repulsion.hpp"

#include <vector>

#include "core/common/parallel.hpp"
#include "core/tsne/quadtree.hpp"

namespace llmdbg::tsne {

double repulsion_exact(const double* Y, int64_t n, double* rep, int num_threads, Guard* guard) {
  std::vector<double> zi(n);
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
  for (int64_t i = 0; i < n; ++i) {
    if (guard && guard->poll()) continue;  // the caller throws; rep is then incomplete
    const double px = Y[2 * i], py = Y[2 * i + 1];
    double z = 0.0, fx = 0.0, fy = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double dx = px - Y[2 * j], dy = py - Y[2 * j + 1];
      const double w = 1.0 / (1.0 + dx * dx + dy * dy);
      const double keep = j == i ? 0.0 : 1.0;  // branch-free self exclusion
      z += keep * w;
      fx += keep * w * w * dx;
      fy += keep * w * w * dy;
    }
    rep[2 * i] = fx, rep[2 * i + 1] = fy;
    zi[i] = z;
  }
  double z = 0.0;
  for (int64_t i = 0; i < n; ++i) z += zi[i];
  return z;
}

double repulsion_bh(const double* Y, int64_t n, double theta, double* rep, int num_threads) {
  QuadTree tree;
  tree.build(Y, n, theta);
  const auto& order = tree.order();
  const auto& nodes = tree.nodes();
  const auto& leaves = tree.leaves();
  const int64_t n_leaves = static_cast<int64_t>(leaves.size());
  std::vector<double> zs(n), fs(2 * n), zi(n);
  const int threads = resolve_threads(num_threads);
  std::vector<QuadTree::Scratch> scratches(threads);
  for (auto& sc : scratches) tree.prepare(sc);  // no allocation inside the region
#pragma omp parallel num_threads(threads)
  {
    QuadTree::Scratch& scratch = scratches[thread_id()];
#pragma omp for schedule(dynamic, 8)
    for (int64_t l = 0; l < n_leaves; ++l) {
      const QuadNode& leaf = nodes[leaves[l]];
      tree.leaf_repulsion(leaves[l], scratch, &zs[leaf.begin], &fs[leaf.begin],
                          &fs[n + leaf.begin]);
    }
  }
  for (int64_t s = 0; s < n; ++s) {
    const int64_t i = order[s];
    zi[i] = zs[s];
    rep[2 * i] = fs[s], rep[2 * i + 1] = fs[n + s];
  }
  double z = 0.0;
  for (int64_t i = 0; i < n; ++i) z += zi[i];
  return z;
}

}  // namespace llmdbg::tsne
