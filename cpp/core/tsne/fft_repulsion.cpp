#include "core/tsne/fft_repulsion.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/common/parallel.hpp"
#include "core/tsne/fft.hpp"
#include "core/tsne/format.hpp"

namespace llmdbg::tsne {

using cd = std::complex<double>;

namespace {

// Lagrange basis weights at local coordinate t ∈ [0, 1] for p nodes at (k + ½)/p.
inline void lagrange(double t, int p, const double* nodes, const double* denom, double* w) {
  for (int k = 0; k < p; ++k) {
    double num = 1.0;
    for (int l = 0; l < p; ++l) {
      if (l != k) num *= t - nodes[l];
    }
    w[k] = num * denom[k];
  }
}

struct Cell {
  int64_t bx, by;
  double wx[16], wy[16];
};

// Buffers and the FFT plan, kept between calls on the same thread: the optimiser calls this
// every iteration with slowly changing sizes, and fresh multi-megabyte allocations would cost
// a page fault per 4 KiB each time. Every buffer is fully overwritten before it is read.
struct Workspace {
  std::vector<Cell> cells;
  std::vector<int64_t> row_start, by_row;  // points bucketed by grid row (counting sort)
  std::vector<double> zpart;
  std::vector<cd> A, B, K;
  std::unique_ptr<Fft> fft;
  // K holds the kernel's spectrum for (kernel_L, kernel_dh): reused while the grid keeps its
  // transform size and node spacing (the geometry below is chosen so that it mostly does).
  int64_t kernel_L = -1;
  double kernel_dh = 0.0;
};

Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

// Square bounding box of Y: its centre and side (slightly enlarged so no point sits on the far
// edge, and at least 1e-9). Throws for non-finite coordinates.
void bounding_box(const double* Y, int64_t n, double& cx, double& cy, double& side) {
  double xmin = Y[0], xmax = Y[0], ymin = Y[1], ymax = Y[1];
  for (int64_t i = 1; i < n; ++i) {
    xmin = std::min(xmin, Y[2 * i]);
    xmax = std::max(xmax, Y[2 * i]);
    ymin = std::min(ymin, Y[2 * i + 1]);
    ymax = std::max(ymax, Y[2 * i + 1]);
  }
  if (!std::isfinite(xmin + xmax + ymin + ymax)) {
    throw std::invalid_argument("repulsion_fft: Y holds NaN or Inf");
  }
  cx = 0.5 * xmin + 0.5 * xmax, cy = 0.5 * ymin + 0.5 * ymax;
  side = std::max(xmax - xmin, ymax - ymin);
  side = std::max(side * (1.0 + 1e-9), 1e-9);
}

void check_params(const FftParams& prm) {
  if (prm.n_interp < 1 || prm.n_interp > 16) {
    throw std::invalid_argument("repulsion_fft: n_interp must be in [1, 16]");
  }
  if (prm.min_intervals < 1 || !(prm.intervals_per_unit > 0.0) ||
      !std::isfinite(prm.intervals_per_unit)) {
    throw std::invalid_argument(
        "repulsion_fft: min_intervals and intervals_per_unit must be positive and finite");
  }
  if (prm.max_intervals < 1)
    throw std::invalid_argument("repulsion_fft: max_intervals must be >= 1");
}

}  // namespace

double fft_intervals(const double* Y, int64_t n, const FftParams& prm) {
  check_params(prm);
  if (n <= 0) return static_cast<double>(prm.min_intervals);
  double cx = 0.0, cy = 0.0, side = 0.0;
  bounding_box(Y, n, cx, cy, side);
  return std::max<double>(prm.min_intervals, std::ceil(prm.intervals_per_unit * side));
}

int64_t fft_interval_budget(int64_t n, const FftParams& prm) {
  // Nodes per side (m · n_interp) up to 4·sqrt(n): the grid then has at most ~64 n cells after
  // padding, so its memory and time grow like the points' own, not like the map's area.
  const double by_points = 4.0 * std::sqrt(static_cast<double>(std::max<int64_t>(n, 0))) /
                           static_cast<double>(std::max(prm.n_interp, 1));
  const int64_t budget = std::max<int64_t>(prm.min_intervals, static_cast<int64_t>(by_points));
  return std::min<int64_t>(budget, std::max(prm.min_intervals, prm.max_intervals));
}

void release_fft_workspace() { workspace() = Workspace{}; }

double repulsion_fft(const double* Y, int64_t n, const FftParams& prm, double* rep,
                     int num_threads) {
  check_params(prm);
  if (n <= 0) return 0.0;
  const int threads = resolve_threads(num_threads);
  const int p = prm.n_interp;

  double cx = 0.0, cy = 0.0, side = 0.0;
  bounding_box(Y, n, cx, cy, side);
  // m intervals per dimension; 2·m·p (the padded transform size) is kept 5-smooth.
  const double wanted = std::ceil(prm.intervals_per_unit * side);  // may be astronomically large
  if (wanted > static_cast<double>(std::max(prm.min_intervals, prm.max_intervals))) {
    throw std::invalid_argument("repulsion_fft: Y spans " + num(side) + " units, so the FFT grid " +
                                "would need " + num(wanted) + " intervals per side (at most " +
                                std::to_string(prm.max_intervals) +
                                "); use method='bh', or start from a smaller init");
  }
  // Geometry chosen so the kernel's spectrum can be reused across iterations: a map wider than
  // min_intervals units gets intervals of exactly 1 / intervals_per_unit (the kernel then
  // depends on the transform size alone, which changes only when the map outgrows it); a
  // smaller one gets min_intervals intervals whose width is rounded up to a power of 2^(1/16)
  // (the box is at most 4.4 % wider than the map, and keeps its width while the map changes
  // within that step). The box is centred on the map.
  int64_t m = 0;
  double h = 0.0;
  if (wanted > static_cast<double>(prm.min_intervals)) {
    m = static_cast<int64_t>(wanted);
    while (next_smooth(2 * m * p) != 2 * m * p) ++m;
    h = 1.0 / prm.intervals_per_unit;
  } else {
    m = prm.min_intervals;
    while (next_smooth(2 * m * p) != 2 * m * p) ++m;
    h = std::exp2(std::ceil(16.0 * std::log2(side / static_cast<double>(m))) / 16.0);
    if (static_cast<double>(m) * h < side) h = side / static_cast<double>(m);  // rounding guard
  }
  const double box = static_cast<double>(m) * h;
  const double x0 = cx - 0.5 * box, y0 = cy - 0.5 * box;
  const int64_t N = m * p;  // nodes per dimension
  const int64_t L = 2 * N;  // padded transform size
  const double dh = h / p;  // node spacing

  double nodes[16], denom[16];
  for (int k = 0; k < p; ++k) nodes[k] = (k + 0.5) / p;
  for (int k = 0; k < p; ++k) {
    double d = 1.0;
    for (int l = 0; l < p; ++l) {
      if (l != k) d *= nodes[k] - nodes[l];
    }
    denom[k] = 1.0 / d;
  }

  // Interval and interpolation weights of every point (x indexes grid rows, y columns).
  Workspace& ws = workspace();
  std::vector<Cell>& cells = ws.cells;
  cells.resize(static_cast<size_t>(n));
  std::vector<int64_t>& row_start = ws.row_start;
  std::vector<int64_t>& by_row = ws.by_row;
  row_start.assign(static_cast<size_t>(m + 1), 0);
  by_row.resize(static_cast<size_t>(n));
  std::vector<int64_t> fill(static_cast<size_t>(m));  // no allocation inside the region
  std::vector<cd>& A = ws.A;
  std::vector<cd>& B = ws.B;
  std::vector<cd>& K = ws.K;
  A.resize(static_cast<size_t>(L * L));
  B.resize(static_cast<size_t>(L * L));
  const bool kernel_cached = ws.kernel_L == L && ws.kernel_dh == dh;
  if (!kernel_cached) {
    ws.kernel_L = -1;  // K is overwritten below
    K.resize(static_cast<size_t>(L * L));
  }
  // Spread charges 1 (→ A, real) and (ỹx, ỹy) (→ B = ỹx + i ỹy), ỹ = y − box centre, straight
  // into the zero-padded transform inputs. The points of grid row bx touch only node rows
  // [bx·p, bx·p + p), so rows are spread in parallel, each by one thread in point order: every
  // node's sum has one fixed order, and the result is the same for every thread count.
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      Cell& c = cells[static_cast<size_t>(i)];
      const double ux = (Y[2 * i] - x0) / h, uy = (Y[2 * i + 1] - y0) / h;
      c.bx = std::clamp<int64_t>(static_cast<int64_t>(ux), 0, m - 1);
      c.by = std::clamp<int64_t>(static_cast<int64_t>(uy), 0, m - 1);
      lagrange(ux - static_cast<double>(c.bx), p, nodes, denom, c.wx);
      lagrange(uy - static_cast<double>(c.by), p, nodes, denom, c.wy);
    }
    // The kernel array K1 + i·K2 at circular offsets (both kernels are real and even, so their
    // spectra are real); A and B start at zero.
#pragma omp for schedule(static) nowait
    for (int64_t a = 0; a < L; ++a) {
      cd* Ar = A.data() + a * L;
      cd* Br = B.data() + a * L;
      cd* Kr = K.data() + a * L;
      const int64_t da = a < N ? a : (a > N ? L - a : -1);
      for (int64_t b = 0; b < L; ++b) {
        const int64_t db = b < N ? b : (b > N ? L - b : -1);
        if (!kernel_cached) {
          if (da < 0 || db < 0) {
            Kr[b] = 0.0;
          } else {
            const double d2 = static_cast<double>(da * da + db * db) * dh * dh;
            const double k1 = 1.0 / (1.0 + d2);
            Kr[b] = cd(k1, k1 * k1);
          }
        }
        Ar[b] = 0.0;
        Br[b] = 0.0;
      }
    }
#pragma omp single
    {  // counting sort of the points by grid row, stable (point order within a row)
      for (int64_t i = 0; i < n; ++i) ++row_start[static_cast<size_t>(cells[i].bx + 1)];
      for (int64_t r = 0; r < m; ++r) row_start[r + 1] += row_start[r];
      std::copy(row_start.begin(), row_start.end() - 1, fill.begin());
      for (int64_t i = 0; i < n; ++i) by_row[static_cast<size_t>(fill[cells[i].bx]++)] = i;
    }  // implicit barrier: the zeroing above is complete too
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t s = row_start[r]; s < row_start[r + 1]; ++s) {
        const int64_t i = by_row[static_cast<size_t>(s)];
        const Cell& c = cells[static_cast<size_t>(i)];
        const double qx = Y[2 * i] - cx, qy = Y[2 * i + 1] - cy;
        for (int kx = 0; kx < p; ++kx) {
          const size_t row = static_cast<size_t>((c.bx * p + kx) * L + c.by * p);
          for (int ky = 0; ky < p; ++ky) {
            const double w = c.wx[kx] * c.wy[ky];
            A[row + ky] += w;
            B[row + ky] += cd(w * qx, w * qy);
          }
        }
      }
    }
  }
  if (!ws.fft || ws.fft->size() != L) ws.fft = std::make_unique<Fft>(L);
  const Fft& fft = *ws.fft;
  if (kernel_cached) {
    cd* arrays[2] = {A.data(), B.data()};
    const int64_t nonzero[2] = {N, N}, needed[2] = {L, L};
    fft2d_batch(fft, arrays, nonzero, needed, 2, false, threads);
  } else {
    cd* arrays[3] = {K.data(), A.data(), B.data()};
    const int64_t nonzero[3] = {L, N, N}, needed[3] = {L, L, L};
    fft2d_batch(fft, arrays, nonzero, needed, 3, false, threads);
    ws.kernel_L = L;
    ws.kernel_dh = dh;
  }
  const double scale = 1.0 / static_cast<double>(L * L);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < L * L; ++i) {
    const double k1 = K[static_cast<size_t>(i)].real() * scale;
    const double k2 = K[static_cast<size_t>(i)].imag() * scale;
    const cd a = A[static_cast<size_t>(i)];  // → (K1 ∗ 1) + i (K2 ∗ 1)
    A[static_cast<size_t>(i)] = cd(a.real() * k1 - a.imag() * k2, a.real() * k2 + a.imag() * k1);
    B[static_cast<size_t>(i)] *= k2;  // → (K2 ∗ ỹx) + i (K2 ∗ ỹy)
  }
  {
    cd* arrays[2] = {A.data(), B.data()};
    const int64_t nonzero[2] = {L, L}, needed[2] = {N, N};
    fft2d_batch(fft, arrays, nonzero, needed, 2, true, threads);
  }

  // The self term of φ_i as the grid sees it: K1 between the point's own interpolation nodes
  // (offsets (a − c, b − e) node spacings), weighted by its Lagrange weights. Subtracting this
  // instead of K1(0) = 1 removes the interpolation error of the self term, which dominated Z
  // for sparse maps (two points 170 apart: Z 0.24 instead of 7e-5). The forces need no such
  // correction: their self terms cancel between ỹ_i ψ_i and χ_i.
  double kself[16][16];
  for (int a = 0; a < p; ++a) {
    for (int b = 0; b < p; ++b)
      kself[a][b] = 1.0 / (1.0 + static_cast<double>(a * a + b * b) * dh * dh);
  }
  // Gather the potentials back to the points.
  double Z = 0.0;
  std::vector<double>& zpart = ws.zpart;
  zpart.resize(static_cast<size_t>(n));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const Cell& c = cells[static_cast<size_t>(i)];
    double phi1 = 0.0, psi0 = 0.0, psix = 0.0, psiy = 0.0;
    for (int kx = 0; kx < p; ++kx) {
      const size_t row = static_cast<size_t>((c.bx * p + kx) * L + c.by * p);
      double r1 = 0.0, r0 = 0.0, rx = 0.0, ry = 0.0;
      for (int ky = 0; ky < p; ++ky) {
        const cd a = A[row + ky], b = B[row + ky];
        r1 += c.wy[ky] * a.real();
        r0 += c.wy[ky] * a.imag();
        rx += c.wy[ky] * b.real();
        ry += c.wy[ky] * b.imag();
      }
      phi1 += c.wx[kx] * r1;
      psi0 += c.wx[kx] * r0;
      psix += c.wx[kx] * rx;
      psiy += c.wx[kx] * ry;
    }
    const double qx = Y[2 * i] - cx, qy = Y[2 * i + 1] - cy;
    // Σ_j w_ij² (y_i − y_j) = ỹ_i Σ_j w_ij² − Σ_j w_ij² ỹ_j; the self term cancels exactly.
    rep[2 * i] = qx * psi0 - psix;
    rep[2 * i + 1] = qy * psi0 - psiy;
    double self = 0.0;
    for (int a = 0; a < p; ++a) {
      for (int a2 = 0; a2 < p; ++a2) {
        const double* kr = kself[a > a2 ? a - a2 : a2 - a];
        double row = 0.0;
        for (int b = 0; b < p; ++b) {
          double acc = 0.0;
          for (int b2 = 0; b2 < p; ++b2) acc += c.wy[b2] * kr[b > b2 ? b - b2 : b2 - b];
          row += c.wy[b] * acc;
        }
        self += c.wx[a] * c.wx[a2] * row;
      }
    }
    zpart[static_cast<size_t>(i)] = phi1 - self;  // Σ_{j≠i} w_ij, the grid's own self term removed
  }
  for (int64_t i = 0; i < n; ++i) Z += zpart[static_cast<size_t>(i)];
  return Z;
}

}  // namespace llmdbg::tsne
