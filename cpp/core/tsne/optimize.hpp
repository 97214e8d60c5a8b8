#pragma once
// The t-SNE optimisation loop: attraction over the sparse P plus repulsion (exact, Barnes-Hut or
// FFT-interpolated), gains, momentum, a step cap and re-centring, phase by phase, with a progress
// callback. Gradient convention (no factor 4):
//   g_i = α Σ_j p_ij w_ij (y_i − y_j) − Z⁻¹ Σ_{j≠i} w_ij² (y_i − y_j).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/common/cancel.hpp"
#include "core/tsne/affinity.hpp"

namespace llmdbg::tsne {

enum class Method { exact, bh, fft };
Method parse_method(const std::string& name);  // "exact" | "bh" | "fft"

struct Phase {
  int n_iter = 0;
  double exaggeration = 1.0;
  double learning_rate = 1.0;
  double momentum = 0.8;
};

struct OptimizeParams {
  std::vector<Phase> phases;
  Method method = Method::bh;
  double theta = 0.5;          // Barnes-Hut: accept a cell when side / distance < θ
  int fft_n_interp = 3;        // FFT: interpolation nodes per interval
  int fft_min_intervals = 50;  // FFT: minimum intervals per dimension
  double fft_intervals_per_unit = 1.0;
  // FFT: hard cap on intervals per dimension (FftParams::max_intervals). An iteration whose map
  // needs more than fft_interval_budget(n) intervals uses Barnes-Hut (fft_repulsion.hpp).
  int fft_max_intervals = 512;
  double max_step_norm = 5.0;  // cap on ‖u_i‖ per step (<= 0: no cap)
  double min_gain = 0.01;
  int callback_every = 10;  // iterations between callbacks
  int kl_every = 50;        // iterations between KL estimates (<= 0: never)
  int num_threads = 0;
  // Use at most n / min_points_per_thread threads (at least 1); <= 0 uses num_threads as is.
  // BH and exact results do not depend on the thread count, so this only trades fork/join
  // cost (a few microseconds per region against ~0.3 ms of work per iteration at 500 points).
  int64_t min_points_per_thread = 500;
  // Below this many points, measure the full team against one thread every 200 iterations and
  // run on the faster (ThreadChooser in optimize.cpp); results are the same either way.
  int64_t adaptive_threads_below = 20000;
  // Polled on the calling thread (at most every 10 ms, between iterations and inside the O(n²)
  // sums); true stops the loop with llmdbg::Interrupted. Empty: never.
  CancelFn cancelled;
};

struct OptimizeResult {
  int n_iter = 0;        // iterations run (fewer when the callback stopped the loop)
  double kl = 0.0;       // exact KL(P‖Q) of the final embedding, double
  bool stopped = false;  // the callback asked to stop
};

// Called every callback_every iterations with (iterations done so far, latest KL estimate; NaN
// before the first). The estimate, made every kl_every iterations, uses the approximate Z of the
// current method and the true (unexaggerated) P, so it equals KL_α/α − log α of the
// exaggerated problem. Return false to stop the loop.
using ProgressCallback = std::function<bool(int, double)>;

// Runs every phase on Y (n×2 row-major, updated in place). P must be symmetric and sum to 1.
// Throws std::invalid_argument for a bad P, bad phases (exaggeration and learning rate finite
// and > 0, momentum in [0, 1)), a map outside check_embedding's range at the start, or one that
// diverges there; llmdbg::Interrupted when params.cancelled asks to stop.
OptimizeResult optimize(const Csr& P, double* Y, const OptimizeParams& params,
                        const ProgressCallback& callback);

// Gradient of the (exaggerated) objective at Y and the Z used, with the given method. For tests.
double gradient(const Csr& P, const double* Y, double exaggeration, Method method, double theta,
                double* grad, int num_threads);

// Exact KL(P‖Q) in double: O(n²) for Z, O(nnz) for the rest.
double kl_divergence(const Csr& P, const double* Y, int num_threads,
                     const CancelFn& cancelled = {});

// Throws std::invalid_argument unless every coordinate of Y (n×2) is finite and within ±1e150
// (squared distances and similarities then stay normal doubles).
void check_embedding(const double* Y, int64_t n);

}  // namespace llmdbg::tsne
