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
// Queries are answered a leaf at a time, with d² the distance to the leaf's bounding box.
#include <cstdint>
#include <vector>

namespace llmdbg::tsne {

struct QuadNode {
  double cx, cy;       // centre of mass
  double thr;          // accept when d² > thr
  int32_t begin, end;  // range in the sorted order; mass = end − begin
  int32_t next;        // preorder index after this subtree
  int32_t leaf;        // 1 for a bucket leaf
};

class QuadTree {
 public:
  static constexpr int kMaxDepth = 21;
  static constexpr int kLeafSize = 16;

  void build(const double* Y, int64_t n, double theta);

  // Scratch space for one thread's interaction list (reused across leaves and iterations).
  struct Scratch {
    std::vector<double> x, y, m;
  };
  // Sizes a scratch for this tree, so leaf_repulsion never allocates (call it before an OpenMP
  // region: no exception may leave one).
  void prepare(Scratch& scratch) const;

  // Repulsion on every point of one leaf (a node index from leaves()) with one interaction list
  // shared by the leaf's points (Barnes 1990 grouping): a cell is summarised when d² > thr holds
  // from its centre of mass to the leaf's bounding box, so for each of the leaf's points (never
  // looser than the per-point test); otherwise it is opened, and the points of an unaccepted
  // leaf enter the list one by one. The list is then summed for every point of the leaf in one
  // vectorised loop, plus the leaf's own pairs exactly (self excluded). Writes, for the sorted
  // points [begin, end) of the leaf, Σ_j w to z[0..], Σ_j w² (y − y_j) to fx[0..] and fy[0..].
  // Returns the list's length; scratch.{x, y, m}[0, length) hold it (the leaf's own points
  // first, mass 1), so its masses add up to n.
  int64_t leaf_repulsion(int32_t leaf, Scratch& scratch, double* z, double* fx, double* fy) const;

  const std::vector<int32_t>& leaves() const { return leaves_; }  // leaf node indices
  const std::vector<int32_t>& order() const { return order_; }    // sorted -> original
  const std::vector<double>& sorted_positions() const { return pos_; }
  const std::vector<QuadNode>& nodes() const { return nodes_; }
  double root_side() const { return side_; }

 private:
  int32_t build_node(int level, int32_t b, int32_t e);

  std::vector<QuadNode> nodes_;
  std::vector<int32_t> leaves_;
  std::vector<double> pos_;  // sorted positions, n×2
  std::vector<int32_t> order_, tmp_order_;
  std::vector<uint64_t> codes_, tmp_codes_;
  std::vector<int32_t> hist_;  // radix-sort histograms, one per pass
  std::vector<double> level_thr_;
  double side_ = 0.0;
};

}  // namespace llmdbg::tsne
