#pragma once
// The Barnes-Hut quadtree, rebuilt every iteration into flat arrays (internal to the t-SNE core).
//
// Points are sorted by 42-bit Morton code (radix sort), so every cell is a contiguous range of the
// sorted order. Nodes are stored in depth-first preorder with an escape index `next` (the node
// after the subtree), which makes the traversal stackless: open a cell by stepping to k + 1, skip
// it by jumping to next. Leaves are buckets of up to kLeafSize points, or any number of points at
// the depth cap (exact duplicates share one leaf and are summed exactly, never merged). A cell of
// side s is accepted for a query at squared distance d² from its centre of mass when
// s² < θ² d², precomputed per node as d² > thr = s²/θ² (no sqrt); θ = 0 gives the exact sum.
#include <cstdint>
#include <vector>

namespace llmdbg::tsne {

struct QuadNode {
  double cx, cy;  // centre of mass
  double thr;     // accept when d² > thr
  int32_t begin, end;  // range in the sorted order; mass = end − begin
  int32_t next;        // preorder index after this subtree
  int32_t leaf;        // 1 for a bucket leaf
};

class QuadTree {
 public:
  static constexpr int kMaxDepth = 21;
  static constexpr int kLeafSize = 8;

  void build(const double* Y, int64_t n, double theta);

  // Repulsion on sorted point s (position px, py): adds Σ_j w² (y − y_j) to (rx, ry) and returns
  // Σ_j w over every other point, approximated per accepted cell.
  inline double point(int32_t s, double px, double py, double& rx, double& ry) const {
    double z = 0.0, fx = 0.0, fy = 0.0;
    const QuadNode* nodes = nodes_.data();
    const double* pos = pos_.data();
    const int32_t count = static_cast<int32_t>(nodes_.size());
    int32_t k = 0;
    while (k < count) {
      const QuadNode& c = nodes[k];
      const double dx = px - c.cx, dy = py - c.cy;
      const double d2 = dx * dx + dy * dy;
      const bool contains = c.begin <= s && s < c.end;
      if (!contains && d2 > c.thr) {
        const double m = static_cast<double>(c.end - c.begin);
        const double w = 1.0 / (1.0 + d2);
        const double mw = m * w;
        z += mw;
        fx += mw * w * dx;
        fy += mw * w * dy;
        k = c.next;
      } else if (c.leaf) {
        for (int32_t j = c.begin; j < c.end; ++j) {
          if (j == s) continue;
          const double ex = px - pos[2 * j], ey = py - pos[2 * j + 1];
          const double w = 1.0 / (1.0 + ex * ex + ey * ey);
          z += w;
          fx += w * w * ex;
          fy += w * w * ey;
        }
        k = c.next;
      } else {
        k += 1;
      }
    }
    rx = fx, ry = fy;
    return z;
  }

  const std::vector<int32_t>& order() const { return order_; }  // sorted -> original
  const std::vector<double>& sorted_positions() const { return pos_; }
  const std::vector<QuadNode>& nodes() const { return nodes_; }
  double root_side() const { return side_; }

 private:
  int32_t build_node(int level, int32_t b, int32_t e);

  std::vector<QuadNode> nodes_;
  std::vector<double> pos_;        // sorted positions, n×2
  std::vector<int32_t> order_, tmp_order_;
  std::vector<uint64_t> codes_, tmp_codes_;
  std::vector<double> level_thr_;
  double side_ = 0.0;
};

}  // namespace llmdbg::tsne
