#include "core/tsne/optimize.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/common/parallel.hpp"
#include "core/tsne/fft_repulsion.hpp"
#include "core/tsne/format.hpp"
#include "core/tsne/quadtree.hpp"
#include "core/tsne/repulsion.hpp"
#include "core/tsne/simd.hpp"

namespace llmdbg::tsne {

Method parse_method(const std::string& name) {
  if (name == "exact") return Method::exact;
  if (name == "bh") return Method::bh;
  if (name == "fft") return Method::fft;
  throw std::invalid_argument("method must be 'exact', 'bh' or 'fft', got '" + name + "'");
}

namespace {

// Buffers reused across iterations.
struct Workspace {
  Workspace(const Csr& P, int threads)
      : attr(2 * P.n),
        rep(2 * P.n),
        zs(P.n),
        fs(2 * P.n),
        plogw(P.n),
        scratch(threads),
        cols(P.indices.begin(), P.indices.end()) {}
  std::vector<double> attr, rep, zs, fs, plogw;
  std::vector<QuadTree::Scratch> scratch;  // one interaction list per thread
  std::vector<int32_t> cols;  // P.indices as int32: less memory traffic in the attraction
  QuadTree tree;
};

// Σ_j p_ij w_ij (y_i − y_j) for the rows [i0, i1) of P, one vectorised (gather) loop per row.
LLMDBG_TSNE_CLONES
void attraction_rows(const int64_t* __restrict indptr, const int32_t* __restrict indices,
                     const double* __restrict data, const double* __restrict Y, int64_t i0,
                     int64_t i1, double* __restrict out) {
  for (int64_t i = i0; i < i1; ++i) {
    const double px = Y[2 * i], py = Y[2 * i + 1];
    double ax = 0.0, ay = 0.0;
#pragma omp simd reduction(+ : ax, ay)
    for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
      const int64_t j = indices[e];  // widened: the gather below uses 64-bit offsets
      const double dx = px - Y[2 * j], dy = py - Y[2 * j + 1];
      const double pw = data[e] / (1.0 + dx * dx + dy * dy);
      ax += pw * dx;
      ay += pw * dy;
    }
    out[2 * i] = ax, out[2 * i + 1] = ay;
  }
}

// Σ_j p_ij log w_ij over row i of P (for the KL estimate).
inline double plogw_row(const Csr& P, const double* Y, int64_t i) {
  const double px = Y[2 * i], py = Y[2 * i + 1];
  double lw = 0.0;
  for (int64_t e = P.indptr[i]; e < P.indptr[i + 1]; ++e) {
    const int64_t j = P.indices[e];
    const double dx = px - Y[2 * j], dy = py - Y[2 * j + 1];
    lw -= P.data[e] * std::log1p(dx * dx + dy * dy);
  }
  return lw;
}

constexpr int64_t kRowBlock = 64;               // rows of P per attraction task
constexpr int64_t kParallelUpdateFrom = 16384;  // points

// Fills ws.attr (Σ_j p_ij w_ij (y_i − y_j)) and ws.rep (Σ_j w_ij² (y_i − y_j)) and returns Z.
// With want_kl, *plogw_sum receives Σ p_ij log w_ij.
double compute_forces(const Csr& P, const double* Y, const OptimizeParams& prm, int threads,
                      Workspace& ws, bool want_kl, double* plogw_sum, Guard* guard) {
  const int64_t n = P.n;
  FftParams fp;
  fp.n_interp = prm.fft_n_interp;
  fp.min_intervals = prm.fft_min_intervals;
  fp.intervals_per_unit = prm.fft_intervals_per_unit;
  fp.max_intervals = prm.fft_max_intervals;
  Method method = prm.method;
  // A map too wide for a grid of the points' size (a spread-out init, a few points) would make
  // the FFT grid, not the points, dominate memory and time: this iteration uses Barnes-Hut.
  if (method == Method::fft && fft_intervals(Y, n, fp) > fft_interval_budget(n, fp)) {
    method = Method::bh;
  }
  const int64_t n_blocks = (n + kRowBlock - 1) / kRowBlock;
  auto attraction_block = [&](int64_t blk) {
    const int64_t i0 = blk * kRowBlock, i1 = std::min(n, i0 + kRowBlock);
    attraction_rows(P.indptr.data(), ws.cols.data(), P.data.data(), Y, i0, i1, ws.attr.data());
    if (want_kl) {
      for (int64_t i = i0; i < i1; ++i) ws.plogw[i] = plogw_row(P, Y, i);
    }
  };
  double Z = 0.0;
  if (method == Method::bh) {
    // One parallel region (one fork/join) for the repulsion, a leaf at a time in Morton order
    // (neighbouring leaves share the cells they open), its scatter back to the original order,
    // and the attraction over the rows of P in storage order (the CSR arrays stream).
    ws.tree.build(Y, n, prm.theta);
    for (auto& sc : ws.scratch) ws.tree.prepare(sc);
    const auto& order = ws.tree.order();
    const auto& nodes = ws.tree.nodes();
    const auto& leaves = ws.tree.leaves();
    const int64_t n_leaves = static_cast<int64_t>(leaves.size());
    double* zs = ws.zs.data();
    double* fs = ws.fs.data();
#pragma omp parallel num_threads(threads)
    {
      QuadTree::Scratch& scratch = ws.scratch[thread_id()];
#pragma omp for schedule(dynamic, 4)
      for (int64_t l = 0; l < n_leaves; ++l) {
        const QuadNode& leaf = nodes[leaves[l]];
        ws.tree.leaf_repulsion(leaves[l], scratch, zs + leaf.begin, fs + leaf.begin,
                               fs + n + leaf.begin);
      }
#pragma omp for schedule(static) nowait
      for (int64_t s = 0; s < n; ++s) {
        const int64_t i = order[s];
        ws.rep[2 * i] = fs[s], ws.rep[2 * i + 1] = fs[n + s];
      }
#pragma omp for schedule(dynamic, 4) nowait
      for (int64_t blk = 0; blk < n_blocks; ++blk) attraction_block(blk);
    }
    for (int64_t s = 0; s < n; ++s) Z += zs[s];  // sorted order: fixed for any thread count
  } else {
    if (method == Method::exact) {
      Z = repulsion_exact(Y, n, ws.rep.data(), threads, guard);
    } else {
      Z = repulsion_fft(Y, n, fp, ws.rep.data(), threads);
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4)
    for (int64_t blk = 0; blk < n_blocks; ++blk) attraction_block(blk);
  }
  if (want_kl) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += ws.plogw[i];
    *plogw_sum = s;
  }
  return Z;
}

// Threads actually used: results do not depend on the count (every reduction has a fixed
// order), so small problems run on fewer threads, where fork/join would cost more than it saves
// (and much more on an oversubscribed machine).
int effective_threads(int requested, int64_t n, int64_t min_points_per_thread) {
  const int64_t t = resolve_threads(requested);
  if (min_points_per_thread <= 0) return static_cast<int>(t);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, n / min_points_per_thread)));
}

inline int sgn(double x) { return (x > 0) - (x < 0); }

// Picks the team size for small problems from measurements (Barnes-Hut and exact only: their
// results do not depend on the thread count). A probe runs kProbe iterations on all
// `max_threads` and kProbe on one thread, timed (wall clock); the iterations up to the next
// probe run on whichever was faster. Results do not depend on the
// thread count, so this changes only the speed: on a quiet machine the full team wins, on an
// oversubscribed one (every barrier can wait a scheduler time slice, which dwarfs an iteration
// of ~0.5 ms at a few thousand points) one thread does.
class ThreadChooser {
 public:
  static constexpr int kCycle = 200, kProbe = 6;
  ThreadChooser(int max_threads, bool adaptive) : max_(max_threads), adaptive_(adaptive) {}
  int threads(int it) {
    if (!adaptive_) return max_;
    const int pos = it - probe_at_;
    const auto now = std::chrono::steady_clock::now();
    if (pos == 0) start_ = now;
    if (pos == kProbe) multi_ = std::chrono::duration<double>(now - start_).count(), start_ = now;
    if (pos == 2 * kProbe) {
      const double single = std::chrono::duration<double>(now - start_).count();
      choice_ = multi_ <= single ? max_ : 1;
      // The next probe after kCycle iterations, or twice as long after each lost probe: on a
      // busy machine the team's probe iterations are the expensive ones.
      gap_ = choice_ == max_ ? kCycle : 2 * gap_;
      probe_at_ += gap_;
    }
    return pos >= 0 && pos < kProbe ? max_ : pos >= kProbe && pos < 2 * kProbe ? 1 : choice_;
  }

 private:
  int max_;
  bool adaptive_;
  int choice_ = 1;
  int probe_at_ = 0, gap_ = kCycle;
  double multi_ = 0.0;
  std::chrono::steady_clock::time_point start_;
};

void check_problem(const Csr& P) {
  if (P.n < 2) throw std::invalid_argument("t-SNE needs at least 2 points");
  if (P.n > std::numeric_limits<int32_t>::max() / 2) {
    throw std::invalid_argument("t-SNE supports at most 2^30 points");
  }
  if (static_cast<int64_t>(P.indptr.size()) != P.n + 1 ||
      static_cast<int64_t>(P.indices.size()) != P.indptr[P.n] ||
      P.data.size() != P.indices.size()) {
    throw std::invalid_argument("P: inconsistent CSR arrays");
  }
  for (int64_t i = 0; i < P.n; ++i) {
    if (P.indptr[i] > P.indptr[i + 1]) throw std::invalid_argument("P: indptr must not decrease");
  }
  for (const int64_t j : P.indices) {
    if (j < 0 || j >= P.n) throw std::invalid_argument("P: column index out of range");
  }
}

// Largest |coordinate| of a map the core accepts: squared distances (≤ 8e300) and the
// similarities w ≥ 1e-301 then stay normal doubles, so Z > 0 and KL is finite.
constexpr double kMaxCoordinate = 1e150;

void check_phases(const OptimizeParams& prm) {
  for (size_t k = 0; k < prm.phases.size(); ++k) {
    const Phase& ph = prm.phases[k];
    const std::string at = "phases[" + std::to_string(k) + "]: ";
    if (ph.n_iter < 0) throw std::invalid_argument(at + "n_iter must be >= 0");
    if (!(ph.exaggeration > 0) || !std::isfinite(ph.exaggeration)) {
      throw std::invalid_argument(at + "exaggeration must be finite and > 0, got " +
                                  num(ph.exaggeration));
    }
    if (!(ph.learning_rate > 0) || !std::isfinite(ph.learning_rate)) {
      throw std::invalid_argument(at + "learning_rate must be finite and > 0, got " +
                                  num(ph.learning_rate));
    }
    if (!(ph.momentum >= 0 && ph.momentum < 1)) {
      throw std::invalid_argument(at + "momentum must be in [0, 1), got " + num(ph.momentum));
    }
  }
  if (std::isnan(prm.max_step_norm)) throw std::invalid_argument("max_step_norm must not be NaN");
  if (!(prm.min_gain >= 0) || !std::isfinite(prm.min_gain)) {
    throw std::invalid_argument("min_gain must be finite and >= 0");
  }
  if (prm.method == Method::bh && !(prm.theta >= 0)) {
    throw std::invalid_argument("theta must be >= 0");
  }
}

// Frees the FFT buffers of the calling thread when the optimisation ends, normally or not.
struct FftWorkspaceRelease {
  ~FftWorkspaceRelease() { release_fft_workspace(); }
};

}  // namespace

void check_embedding(const double* Y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(Y[2 * i]) || !std::isfinite(Y[2 * i + 1])) {
      throw std::invalid_argument("Y: row " + std::to_string(i) + " holds NaN or Inf");
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::max(std::abs(Y[2 * i]), std::abs(Y[2 * i + 1]));
    if (v > kMaxCoordinate) {
      throw std::invalid_argument("Y: coordinates must be within +-1e150, row " +
                                  std::to_string(i) + " has " + num(v));
    }
  }
}

double gradient(const Csr& P, const double* Y, double exaggeration, Method method, double theta,
                double* grad, int num_threads) {
  check_problem(P);
  check_embedding(Y, P.n);
  if (!std::isfinite(exaggeration)) throw std::invalid_argument("exaggeration must be finite");
  if (method == Method::bh && !(theta >= 0)) throw std::invalid_argument("theta must be >= 0");
  OptimizeParams prm;
  prm.method = method, prm.theta = theta;
  const int threads = resolve_threads(num_threads);
  Workspace ws(P, threads);
  FftWorkspaceRelease release;
  const double Z = compute_forces(P, Y, prm, threads, ws, false, nullptr, nullptr);
  for (int64_t c = 0; c < 2 * P.n; ++c) grad[c] = exaggeration * ws.attr[c] - ws.rep[c] / Z;
  return Z;
}

double kl_divergence(const Csr& P, const double* Y, int num_threads, const CancelFn& cancelled) {
  check_problem(P);
  check_embedding(Y, P.n);
  for (const double p : P.data) {
    if (!(p >= 0) || !std::isfinite(p)) {
      throw std::invalid_argument("P: data must be finite and >= 0");
    }
  }
  Guard guard(cancelled);
  const int64_t n = P.n;
  const int threads = resolve_threads(num_threads);
  std::vector<double> x(n), y(n), zrow(n), prow(n);
  for (int64_t i = 0; i < n; ++i) x[i] = Y[2 * i], y[i] = Y[2 * i + 1];
    // Z = 2 Σ_{i<j} w_ij; split rows so the triangle is balanced (row i and row n−1−i together).
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    if (guard.poll()) continue;
    const double px = x[i], py = y[i];
    double z = 0.0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double dx = px - x[j], dy = py - y[j];
      z += 1.0 / (1.0 + dx * dx + dy * dy);
    }
    zrow[i] = z;
  }
  guard.finish();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (int64_t e = P.indptr[i]; e < P.indptr[i + 1]; ++e) {
      const double p = P.data[e];
      if (p <= 0) continue;
      const int64_t j = P.indices[e];
      const double dx = x[i] - x[j], dy = y[i] - y[j];
      s += p * (std::log(p) + std::log1p(dx * dx + dy * dy));
    }
    prow[i] = s;
  }
  double z = 0.0, kl = 0.0, psum = 0.0;
  for (int64_t i = 0; i < n; ++i) z += zrow[i], kl += prow[i];
  for (const double p : P.data) psum += p;
  return kl + psum * std::log(2.0 * z);
}

OptimizeResult optimize(const Csr& P, double* Y, const OptimizeParams& params,
                        const ProgressCallback& callback) {
  check_problem(P);
  check_phases(params);
  check_embedding(Y, P.n);
  const int64_t n = P.n;
  if (params.method == Method::fft) {  // checks the FFT parameters up front
    FftParams fp;
    fp.n_interp = params.fft_n_interp;
    fp.min_intervals = params.fft_min_intervals;
    fp.intervals_per_unit = params.fft_intervals_per_unit;
    fp.max_intervals = params.fft_max_intervals;
    fft_intervals(Y, n, fp);
  }
  Guard guard(params.cancelled);
  FftWorkspaceRelease release;
  const int max_threads = effective_threads(params.num_threads, n, params.min_points_per_thread);
  ThreadChooser chooser(max_threads, max_threads > 1 && n < params.adaptive_threads_below);
  Workspace ws(P, max_threads);
  std::vector<double> update(2 * n, 0.0), gains(2 * n, 1.0);
  double plogp = 0.0;
  for (const double p : P.data) plogp += p > 0 ? p * std::log(p) : 0.0;
  const int every = std::max(1, params.callback_every);
  OptimizeResult result;
  int it = 0;
  double kl_estimate = std::numeric_limits<double>::quiet_NaN();
  for (const Phase& ph : params.phases) {
    for (int t = 0; t < ph.n_iter && !result.stopped; ++t) {
      const bool report = callback && (it + 1) % every == 0;
      const bool want_kl = callback && params.kl_every > 0 && (it + 1) % params.kl_every == 0;
      const int threads = chooser.threads(it);
      // The update is a few microseconds per thousand points: not worth a fork/join when small.
      const int update_threads = n >= kParallelUpdateFrom ? threads : 1;
      double plogw = 0.0;
      const double Z = compute_forces(P, Y, params, threads, ws, want_kl, &plogw, &guard);
      guard.finish();  // an exact sum cut short by Ctrl-C
      if (want_kl) kl_estimate = plogp - plogw + std::log(Z);
      // Z > 0 for any accepted map (|y| <= 1e150); the guard keeps a 0 from becoming NaN.
      const double alpha = ph.exaggeration, invZ = Z > 0 ? 1.0 / Z : 0.0;
      const double eta = ph.learning_rate, mu = ph.momentum;
      const double cap = params.max_step_norm, min_gain = params.min_gain;
      // Gradient, gains, momentum, step cap and step in one pass (one fork/join).
#pragma omp parallel for num_threads(update_threads) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        double u[2];
        for (int d = 0; d < 2; ++d) {
          const int64_t c = 2 * i + d;
          const double grad = alpha * ws.attr[c] - invZ * ws.rep[c];
          double g = gains[c];
          g = sgn(update[c]) != sgn(grad) ? g + 0.2 : std::max(g * 0.8, min_gain);
          gains[c] = g;
          u[d] = mu * update[c] - eta * g * grad;
        }
        const double norm2 = u[0] * u[0] + u[1] * u[1];
        if (cap > 0 && norm2 > cap * cap) {
          const double f = cap / std::sqrt(norm2);
          u[0] *= f, u[1] *= f;
        }
        update[2 * i] = u[0], update[2 * i + 1] = u[1];
        Y[2 * i] += u[0], Y[2 * i + 1] += u[1];
      }
      double mx = 0.0, my = 0.0;
      for (int64_t i = 0; i < n; ++i) mx += Y[2 * i], my += Y[2 * i + 1];
      mx /= static_cast<double>(n), my /= static_cast<double>(n);
      double extent = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        Y[2 * i] -= mx, Y[2 * i + 1] -= my;
        extent = std::max({extent, std::abs(Y[2 * i]), std::abs(Y[2 * i + 1])});
      }
      if (!(extent <= kMaxCoordinate)) {  // NaN too
        throw std::invalid_argument(
            "the t-SNE map diverged at iteration " + std::to_string(it + 1) +
            " (coordinates beyond 1e150 or NaN); lower the learning rate or use max_step_norm > 0");
      }
      ++it;
      guard.checkpoint();
      if (report && !callback(it, kl_estimate)) result.stopped = true;
    }
  }
  result.n_iter = it;
  result.kl = kl_divergence(P, Y, max_threads, params.cancelled);
  return result;
}

}  // namespace llmdbg::tsne
