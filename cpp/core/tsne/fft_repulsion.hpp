#pragma once
// FFT-accelerated interpolation of the t-SNE repulsive forces (FIt-SNE; Linderman, Rachh,
// Hoskins, Steinerberger & Kluger 2019, "Fast interpolation-based t-SNE for improved
// visualization of single-cell RNA-seq data", Nat. Methods 16, arXiv:1712.09005).
//
// Output convention (the same as repulsion_exact / repulsion_bh in repulsion.hpp): for a 2-D
// embedding Y (n × 2, row-major),
//   rep_i = Σ_{j≠i} w_ij² (y_i − y_j)    (written to rep, n × 2 row-major)
//   return Z = Σ_{i≠j} w_ij,             w_ij = 1 / (1 + ‖y_i − y_j‖²).
//
// Method. A square box around Y is cut into an m × m grid of equal intervals: for a map wider
// than min_intervals / intervals_per_unit, intervals of exactly 1 / intervals_per_unit and
// m = ceil(intervals_per_unit · side) (rounded up so the transform size 2·m·n_interp is
// 5-smooth); for a smaller map, min_intervals intervals (rounded up likewise) whose width is
// rounded up to a power of 2^(1/16). Either way the kernel's spectrum depends on the transform
// size and the node spacing only, which change far less often than the map's extent, so it is
// computed once and reused by the following calls on the same thread (one forward transform
// of three saved per iteration). There are n_interp equispaced Lagrange nodes per interval and
// dimension (at (k + ½)/n_interp of the interval, so the nodes are equispaced over the whole box).
// Three charges per point, 1 and ỹ = y − box centre, are spread to the nodes with tensor-product
// Lagrange weights and convolved on the node grid with K1 = 1/(1+d²) (charge 1) and
// K2 = 1/(1+d²)² (all three) by one zero-padded 2-D FFT each way (a circulant embedding of the
// Toeplitz kernel matrix; two real charges share one complex transform because the kernels are
// real and even). Interpolating back gives, per point,
//   φ_i = Σ_j w_ij,  ψ_i = Σ_j w_ij²,  χ_i = Σ_j w_ij² ỹ_j      (j = i included)
// so Z = Σ_i (φ_i − s_i), with s_i the grid's own estimate of the self term K1(0) (interpolated
// like the pairs, so its error cancels), and rep_i = ỹ_i ψ_i − χ_i (the self term cancels).
// Z comes from K1 directly rather than from FIt-SNE's K2 with a ‖y‖² charge, which cancels
// badly when the embedding is wide. The interpolation error is the method's only approximation; see
// tests/cpp/test_tsne_fft.cpp for measured force and Z errors (about openTSNE's own).
//
// Cost O(n · n_interp² + M² log M) with M = 2·m·p: linear in n, but the grid grows with the
// square of the embedding's extent. Past max_intervals (512 per side: ~450 MB of transforms)
// it throws instead: coarser intervals would make the forces wrong (the interpolation needs
// intervals of about the kernel's unit width; on 20,000 points in 30 clusters spread over 400
// units, the force error against the exact sum is 1.4e-2 at width 1, 0.15 at width 2 and 1.5 at
// width 4, where Barnes-Hut at theta 0.5 gives 1.0e-2), and a bigger grid exhausts memory (a
// spread of 1e12 used to hang). The optimiser goes further (optimize.cpp): an iteration whose map
// needs more than fft_interval_budget(n) intervals uses Barnes-Hut instead, so the grid's size
// follows the number of points (200 points with a spread-out init took ~950 MB).
//
// Spreading is parallel over grid rows (the points of one interval row touch only its node
// rows, each summed by one thread in point order), gathering and the FFT passes over points /
// rows, so results are bitwise identical for every thread count.

#include <cstdint>

namespace llmdbg::tsne {

struct FftParams {
  int n_interp = 3;
  int min_intervals = 50;
  double intervals_per_unit = 1.0;
  int max_intervals = 512;
};

// Throws std::invalid_argument for bad parameters (n_interp outside [1, 16], min_intervals < 1,
// intervals_per_unit not positive and finite), non-finite coordinates, or a map that needs more
// than max(min_intervals, max_intervals) intervals per side.
double repulsion_fft(const double* Y, int64_t n, const FftParams& p, double* rep, int num_threads);

// Intervals per side the grid for Y needs: max(min_intervals, ceil(intervals_per_unit · side))
// before rounding up for the transform size (a double: it may be astronomically large).
double fft_intervals(const double* Y, int64_t n, const FftParams& p);

// The most intervals per side the optimiser uses FFT with for n points: about 4·sqrt(n) nodes
// per side (so the grid has ~64 n cells), at least min_intervals, at most max_intervals.
int64_t fft_interval_budget(int64_t n, const FftParams& p);

// Frees the calling thread's buffers (the optimiser calls it when done; they are reused between
// iterations, and a large grid's would otherwise stay allocated for the thread's lifetime).
void release_fft_workspace();

}  // namespace llmdbg::tsne
