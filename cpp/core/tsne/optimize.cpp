#include "core/tsne/optimize.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/common/parallel.hpp"
#include "core/tsne/fft_repulsion.hpp"
#include "core/tsne/quadtree.hpp"
#include "core/tsne/repulsion.hpp"

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
  explicit Workspace(int64_t n) : attr(2 * n), rep(2 * n), zi(n), plogw(n) {}
  std::vector<double> attr, rep, zi, plogw;
  QuadTree tree;
};

// Σ_j p_ij w_ij (y_i − y_j) over row i of P; adds Σ_j p_ij log w_ij to *plogw when asked.
inline void attraction_row(const Csr& P, const double* Y, int64_t i, double* out, double* plogw) {
  const double px = Y[2 * i], py = Y[2 * i + 1];
  double ax = 0.0, ay = 0.0, lw = 0.0;
  for (int64_t e = P.indptr[i]; e < P.indptr[i + 1]; ++e) {
    const int64_t j = P.indices[e];
    const double dx = px - Y[2 * j], dy = py - Y[2 * j + 1];
    const double d2 = dx * dx + dy * dy;
    const double pw = P.data[e] / (1.0 + d2);
    ax += pw * dx, ay += pw * dy;
    if (plogw) lw -= P.data[e] * std::log1p(d2);
  }
  out[2 * i] = ax, out[2 * i + 1] = ay;
  if (plogw) plogw[i] = lw;
}

// Fills ws.attr (Σ_j p_ij w_ij (y_i − y_j)) and ws.rep (Σ_j w_ij² (y_i − y_j)) and returns Z.
// With want_kl, *plogw_sum receives Σ p_ij log w_ij.
double compute_forces(const Csr& P, const double* Y, const OptimizeParams& prm, int threads,
                      Workspace& ws, bool want_kl, double* plogw_sum) {
  const int64_t n = P.n;
  double* plogw = want_kl ? ws.plogw.data() : nullptr;
  double Z = 0.0;
  if (prm.method == Method::bh) {
    // One parallel region (one fork/join) for both halves: the tree walk over the points in
    // Morton order, so neighbouring queries share the cells they open, then the attraction
    // over the rows of P in storage order, so the CSR arrays stream.
    ws.tree.build(Y, n, prm.theta);
    const auto& order = ws.tree.order();
    const auto& pos = ws.tree.sorted_positions();
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(dynamic, 256) nowait
      for (int64_t s = 0; s < n; ++s) {
        const int64_t i = order[s];
        double rx, ry;
        ws.zi[i] = ws.tree.point(static_cast<int32_t>(s), pos[2 * s], pos[2 * s + 1], rx, ry);
        ws.rep[2 * i] = rx, ws.rep[2 * i + 1] = ry;
      }
#pragma omp for schedule(dynamic, 1024) nowait
      for (int64_t i = 0; i < n; ++i) attraction_row(P, Y, i, ws.attr.data(), plogw);
    }
    for (int64_t i = 0; i < n; ++i) Z += ws.zi[i];
  } else {
    if (prm.method == Method::exact) {
      Z = repulsion_exact(Y, n, ws.rep.data(), threads);
    } else {
      FftParams fp;
      fp.n_interp = prm.fft_n_interp;
      fp.min_intervals = prm.fft_min_intervals;
      fp.intervals_per_unit = prm.fft_intervals_per_unit;
      Z = repulsion_fft(Y, n, fp, ws.rep.data(), threads);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) attraction_row(P, Y, i, ws.attr.data(), plogw);
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

void check_problem(const Csr& P) {
  if (P.n < 2) throw std::invalid_argument("t-SNE needs at least 2 points");
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

}  // namespace

double gradient(const Csr& P, const double* Y, double exaggeration, Method method, double theta,
                double* grad, int num_threads) {
  check_problem(P);
  OptimizeParams prm;
  prm.method = method, prm.theta = theta;
  const int threads = resolve_threads(num_threads);
  Workspace ws(P.n);
  const double Z = compute_forces(P, Y, prm, threads, ws, false, nullptr);
  for (int64_t c = 0; c < 2 * P.n; ++c) grad[c] = exaggeration * ws.attr[c] - ws.rep[c] / Z;
  return Z;
}

double kl_divergence(const Csr& P, const double* Y, int num_threads) {
  check_problem(P);
  const int64_t n = P.n;
  const int threads = resolve_threads(num_threads);
  std::vector<double> x(n), y(n), zrow(n), prow(n);
  for (int64_t i = 0; i < n; ++i) x[i] = Y[2 * i], y[i] = Y[2 * i + 1];
  // Z = 2 Σ_{i<j} w_ij; split rows so the triangle is balanced (row i and row n−1−i together).
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    const double px = x[i], py = y[i];
    double z = 0.0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double dx = px - x[j], dy = py - y[j];
      z += 1.0 / (1.0 + dx * dx + dy * dy);
    }
    zrow[i] = z;
  }
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
  if (params.method == Method::bh && !(params.theta >= 0)) {
    throw std::invalid_argument("theta must be >= 0");
  }
  const int64_t n = P.n;
  const int threads = effective_threads(params.num_threads, n, params.min_points_per_thread);
  Workspace ws(n);
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
      double plogw = 0.0;
      const double Z = compute_forces(P, Y, params, threads, ws, want_kl, &plogw);
      if (want_kl) kl_estimate = plogp - plogw + std::log(Z);
      const double alpha = ph.exaggeration, invZ = 1.0 / Z;
      const double eta = ph.learning_rate, mu = ph.momentum;
      const double cap = params.max_step_norm, min_gain = params.min_gain;
      // Gradient, gains, momentum, step cap and step in one pass (one fork/join).
#pragma omp parallel for num_threads(threads) schedule(static)
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
      for (int64_t i = 0; i < n; ++i) Y[2 * i] -= mx, Y[2 * i + 1] -= my;
      ++it;
      if (report && !callback(it, kl_estimate)) result.stopped = true;
    }
  }
  result.n_iter = it;
  result.kl = kl_divergence(P, Y, threads);
  return result;
}

}  // namespace llmdbg::tsne
