#include "core/tsne/quadtree.hpp"
#include "core/tsne/simd.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace llmdbg::tsne {

namespace {

// Spread the low 32 bits of x to the even bit positions (x → x0 0 x1 0 x2 ...).
uint64_t part1by1(uint64_t x) {
  x &= 0x00000000ffffffffULL;
  x = (x | (x << 16)) & 0x0000ffff0000ffffULL;
  x = (x | (x << 8)) & 0x00ff00ff00ff00ffULL;
  x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0fULL;
  x = (x | (x << 2)) & 0x3333333333333333ULL;
  x = (x | (x << 1)) & 0x5555555555555555ULL;
  return x;
}

}  // namespace

void QuadTree::build(const double* Y, int64_t n, double theta) {
  if (n > std::numeric_limits<int32_t>::max() / 2) {
    throw std::invalid_argument("QuadTree: too many points");
  }
  const int32_t m = static_cast<int32_t>(n);
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (int32_t i = 0; i < m; ++i) {
    xmin = std::min(xmin, Y[2 * i]), xmax = std::max(xmax, Y[2 * i]);
    ymin = std::min(ymin, Y[2 * i + 1]), ymax = std::max(ymax, Y[2 * i + 1]);
  }
  if (!std::isfinite(xmin + xmax + ymin + ymax)) {
    throw std::runtime_error("t-SNE embedding became non-finite");
  }
  side_ = std::max({xmax - xmin, ymax - ymin, 1e-300}) * (1.0 + 1e-9);
  const double cells = static_cast<double>(1u << kMaxDepth);
  const double scale = cells / side_;
  const uint64_t qmax = (1u << kMaxDepth) - 1;
  codes_.resize(m), tmp_codes_.resize(m), order_.resize(m), tmp_order_.resize(m);
  for (int32_t i = 0; i < m; ++i) {
    const uint64_t qx = std::min<uint64_t>(static_cast<uint64_t>((Y[2 * i] - xmin) * scale), qmax);
    const uint64_t qy =
        std::min<uint64_t>(static_cast<uint64_t>((Y[2 * i + 1] - ymin) * scale), qmax);
    codes_[i] = (part1by1(qy) << 1) | part1by1(qx);
    order_[i] = i;
  }
  // LSD radix sort on the 42 code bits, 11 bits per pass (stable, so ties keep index order).
  // All four histograms come from one read of the codes; a pass whose digit is the same for
  // every point is skipped.
  constexpr int kBits = 11, kBuckets = 1 << kBits, kPasses = (2 * kMaxDepth + kBits - 1) / kBits;
  hist_.assign(static_cast<size_t>(kPasses) * (kBuckets + 1), 0);
  for (int32_t i = 0; i < m; ++i) {
    const uint64_t code = codes_[i];
    for (int p = 0; p < kPasses; ++p) {
      ++hist_[p * (kBuckets + 1) + ((code >> (p * kBits)) & (kBuckets - 1)) + 1];
    }
  }
  for (int p = 0; p < kPasses; ++p) {
    int32_t* hist = hist_.data() + p * (kBuckets + 1);
    bool single = false;
    for (int b = 0; b < kBuckets; ++b) {
      single = single || hist[b + 1] == m;
      hist[b + 1] += hist[b];
    }
    if (single) continue;
    const int shift = p * kBits;
    for (int32_t i = 0; i < m; ++i) {
      const int32_t dst = hist[(codes_[i] >> shift) & (kBuckets - 1)]++;
      tmp_codes_[dst] = codes_[i];
      tmp_order_[dst] = order_[i];
    }
    codes_.swap(tmp_codes_);
    order_.swap(tmp_order_);
  }
  pos_.resize(2 * static_cast<size_t>(m));
  for (int32_t s = 0; s < m; ++s) {
    pos_[2 * s] = Y[2 * order_[s]];
    pos_[2 * s + 1] = Y[2 * order_[s] + 1];
  }
  level_thr_.resize(kMaxDepth + 1);
  for (int l = 0; l <= kMaxDepth; ++l) {
    const double s = side_ / static_cast<double>(1u << l);
    level_thr_[l] = theta > 0 ? s * s / (theta * theta) : INFINITY;
  }
  nodes_.clear();
  nodes_.reserve(static_cast<size_t>(m / 2 + 16));
  leaves_.clear();
  build_node(0, 0, m);
}

int32_t QuadTree::build_node(int level, int32_t b, int32_t e) {
  const int32_t idx = static_cast<int32_t>(nodes_.size());
  nodes_.push_back({0.0, 0.0, level_thr_[level], b, e, 0, 0});
  double cx = 0.0, cy = 0.0;
  if (e - b <= kLeafSize || level == kMaxDepth) {
    for (int32_t s = b; s < e; ++s) cx += pos_[2 * s], cy += pos_[2 * s + 1];
    nodes_[idx].leaf = 1;
    leaves_.push_back(idx);
  } else {
    const int shift = 2 * (kMaxDepth - 1 - level);
    int32_t lo = b;
    for (uint64_t digit = 0; digit < 4 && lo < e; ++digit) {
      // Codes in [b, e) share their bits above `shift`, so the child digit is sorted too.
      const int32_t hi = static_cast<int32_t>(
          std::partition_point(codes_.begin() + lo, codes_.begin() + e,
                               [&](uint64_t c) { return ((c >> shift) & 3) <= digit; }) -
          codes_.begin());
      if (hi > lo) {
        const int32_t child = build_node(level + 1, lo, hi);
        const double mass = static_cast<double>(hi - lo);
        cx += nodes_[child].cx * mass, cy += nodes_[child].cy * mass;
      }
      lo = hi;
    }
  }
  const double inv = 1.0 / static_cast<double>(e - b);
  nodes_[idx].cx = cx * inv;
  nodes_[idx].cy = cy * inv;
  nodes_[idx].next = static_cast<int32_t>(nodes_.size());
  return idx;
}

namespace {

// Σ over the list of m w and m w² (y − c) for the query points, which are the list's first nq
// entries; each query's own mass is zeroed while it is summed, so it adds exactly nothing. The
// SIMD reduction's order is fixed at compile time: the sums do not depend on the thread count.
LLMDBG_TSNE_CLONES
void sum_list(const double* __restrict lx, const double* __restrict ly, double* __restrict lm,
              int64_t count, int64_t nq, double* __restrict z, double* __restrict fx,
              double* __restrict fy) {
  for (int64_t q = 0; q < nq; ++q) {
    const double px = lx[q], py = ly[q], mass = lm[q];
    lm[q] = 0.0;
    double zs = 0.0, sx = 0.0, sy = 0.0;
#pragma omp simd reduction(+ : zs, sx, sy)
    for (int64_t j = 0; j < count; ++j) {
      const double dx = px - lx[j], dy = py - ly[j];
      const double w = 1.0 / (1.0 + dx * dx + dy * dy);
      const double mw = lm[j] * w;
      zs += mw;
      sx += mw * w * dx;
      sy += mw * w * dy;
    }
    lm[q] = mass;
    z[q] = zs, fx[q] = sx, fy[q] = sy;
  }
}

}  // namespace

void QuadTree::prepare(Scratch& sc) const {
  const size_t cap = nodes_.size() + pos_.size() / 2;  // at most one entry per node or point
  if (sc.x.size() < cap) sc.x.resize(cap), sc.y.resize(cap), sc.m.resize(cap);
}

int64_t QuadTree::leaf_repulsion(int32_t leaf, Scratch& sc, double* z, double* fx,
                                 double* fy) const {
  const QuadNode& L = nodes_[leaf];
  const int32_t b = L.begin, e = L.end;
  const double* pos = pos_.data();
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (int32_t s = b; s < e; ++s) {
    xmin = std::min(xmin, pos[2 * s]), xmax = std::max(xmax, pos[2 * s]);
    ymin = std::min(ymin, pos[2 * s + 1]), ymax = std::max(ymax, pos[2 * s + 1]);
  }
  // At most one entry per node or point: size once, write by index (no push_back checks).
  prepare(sc);  // a no-op when the caller prepared it
  double* lx = sc.x.data();
  double* ly = sc.y.data();
  double* lm = sc.m.data();
  // The leaf's own points first (they are the queries), then the walk's cells and points.
  int64_t len = 0;
  for (int32_t s = b; s < e; ++s, ++len)
    lx[len] = pos[2 * s], ly[len] = pos[2 * s + 1], lm[len] = 1.0;
  const QuadNode* nodes = nodes_.data();
  const int32_t count = static_cast<int32_t>(nodes_.size());
  int32_t k = 0;
  while (k < count) {
    const QuadNode& c = nodes[k];
    if (c.begin <= b && b < c.end) {  // the leaf itself or an ancestor: open
      k = k == leaf ? c.next : k + 1;
      continue;
    }
    const double dx = std::max({xmin - c.cx, c.cx - xmax, 0.0});
    const double dy = std::max({ymin - c.cy, c.cy - ymax, 0.0});
    if (dx * dx + dy * dy > c.thr) {
      lx[len] = c.cx, ly[len] = c.cy, lm[len] = static_cast<double>(c.end - c.begin);
      ++len;
      k = c.next;
    } else if (c.leaf) {
      for (int32_t j = c.begin; j < c.end; ++j, ++len) {
        lx[len] = pos[2 * j], ly[len] = pos[2 * j + 1], lm[len] = 1.0;
      }
      k = c.next;
    } else {
      k += 1;
    }
  }
  sum_list(lx, ly, lm, len, e - b, z, fx, fy);
  return len;
}

}  // namespace llmdbg::tsne
