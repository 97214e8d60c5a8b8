#include "core/tsne/quadtree.hpp"

#include <algorithm>
#include <array>
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
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::array<int32_t, kBuckets + 1> hist;
  for (int shift = 0; shift < 2 * kMaxDepth; shift += kBits) {
    hist.fill(0);
    for (int32_t i = 0; i < m; ++i) ++hist[((codes_[i] >> shift) & (kBuckets - 1)) + 1];
    for (int b = 0; b < kBuckets; ++b) hist[b + 1] += hist[b];
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
  build_node(0, 0, m);
}

int32_t QuadTree::build_node(int level, int32_t b, int32_t e) {
  const int32_t idx = static_cast<int32_t>(nodes_.size());
  nodes_.push_back({0.0, 0.0, level_thr_[level], b, e, 0, 0});
  double cx = 0.0, cy = 0.0;
  if (e - b <= kLeafSize || level == kMaxDepth) {
    for (int32_t s = b; s < e; ++s) cx += pos_[2 * s], cy += pos_[2 * s + 1];
    nodes_[idx].leaf = 1;
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

}  // namespace llmdbg::tsne
