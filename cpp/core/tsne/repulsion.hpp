#pragma once
// t-SNE repulsion kernels: the shared interface of the optimiser (optimize.hpp) and the
// repulsion methods. Each fills the unnormalised repulsive force and returns the normaliser Z;
// the optimiser divides by Z. The FFT method lives in fft_repulsion.hpp.
#include <cstdint>

#include "core/common/cancel.hpp"

namespace llmdbg::tsne {
// Y: n×2 row-major. Writes rep (n×2 row-major) with rep_i = Σ_{j≠i} w_ij² (y_i − y_j), w_ij =
// 1/(1+‖y_i−y_j‖²), and returns Z = Σ_{i≠j} w_ij (double, fixed summation order for determinism).
// With a guard, rows are skipped once it has stopped (the caller then calls guard->finish()).
double repulsion_exact(const double* Y, int64_t n, double* rep, int num_threads,
                       Guard* guard = nullptr);
double repulsion_bh(const double* Y, int64_t n, double theta, double* rep, int num_threads);
}  // namespace llmdbg::tsne
