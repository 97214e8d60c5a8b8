// FIt-SNE repulsion: the mixed-radix FFT against a direct DFT, and repulsion_fft against a
// brute-force O(n²) sum of the same quantities (rep_i = Σ_{j≠i} w_ij² (y_i − y_j),
// Z = Σ_{i≠j} w_ij) on compact, tiny, widely spread and duplicated point clouds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>
#include <random>
#include <vector>

#include "core/tsne/fft.hpp"
#include "core/tsne/fft_repulsion.hpp"

namespace ts = llmdbg::tsne;
using cd = std::complex<double>;

namespace {

std::vector<cd> random_complex(int64_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<cd> v(static_cast<size_t>(n));
  for (auto& z : v) z = cd(g(rng), g(rng));
  return v;
}

// Direct DFT; the angle uses jk mod n so large products do not lose precision.
std::vector<cd> naive_dft(const std::vector<cd>& x, int sign) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<cd> X(x.size());
  for (int64_t k = 0; k < n; ++k) {
    cd acc = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double ang = sign * 2.0 * std::numbers::pi * static_cast<double>((j * k) % n) / n;
      acc += x[static_cast<size_t>(j)] * cd(std::cos(ang), std::sin(ang));
    }
    X[static_cast<size_t>(k)] = acc;
  }
  return X;
}

double max_abs_diff(const std::vector<cd>& a, const std::vector<cd>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct Brute {
  std::vector<double> rep;
  double Z = 0.0;
};

// Independent reference in long double: the definition, term by term.
Brute brute_force(const std::vector<double>& Y) {
  const int64_t n = static_cast<int64_t>(Y.size() / 2);
  Brute r;
  r.rep.assign(Y.size(), 0.0);
  long double Z = 0.0L;
  for (int64_t i = 0; i < n; ++i) {
    long double rx = 0.0L, ry = 0.0L;
    for (int64_t j = 0; j < n; ++j) {
      if (j == i) continue;
      const long double dx = static_cast<long double>(Y[2 * i]) - Y[2 * j];
      const long double dy = static_cast<long double>(Y[2 * i + 1]) - Y[2 * j + 1];
      const long double w = 1.0L / (1.0L + dx * dx + dy * dy);
      Z += w;
      rx += w * w * dx;
      ry += w * w * dy;
    }
    r.rep[static_cast<size_t>(2 * i)] = static_cast<double>(rx);
    r.rep[static_cast<size_t>(2 * i + 1)] = static_cast<double>(ry);
  }
  r.Z = static_cast<double>(Z);
  return r;
}

// ‖rep − ref‖_F / ‖ref‖_F
double rel_force_error(const std::vector<double>& rep, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < rep.size(); ++i) {
    num += (rep[i] - ref[i]) * (rep[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> gaussian_cloud(int64_t n, double scale, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> Y(static_cast<size_t>(2 * n));
  for (auto& v : Y) v = scale * g(rng);
  return Y;
}

// Clusters spread over a box of side ~2·half_width, the shape of a late t-SNE embedding.
std::vector<double> spread_clusters(int64_t n, unsigned seed, double half_width = 75.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::uniform_real_distribution<double> u(-half_width, half_width);
  std::vector<double> centres(20);
  for (auto& c : centres) c = u(rng);
  std::vector<double> Y(static_cast<size_t>(2 * n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = i % 10;
    Y[2 * i] = centres[2 * c] + 3.0 * g(rng);
    Y[2 * i + 1] = centres[2 * c + 1] + 3.0 * g(rng);
  }
  return Y;
}

// Many exact duplicates: 40 distinct positions, each repeated, plus a few isolated points.
std::vector<double> duplicates(int64_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> base(80);
  for (auto& v : base) v = 5.0 * g(rng);
  std::vector<double> Y(static_cast<size_t>(2 * n));
  for (int64_t i = 0; i < n; ++i) {
    if (i % 50 == 49) {
      Y[2 * i] = 5.0 * g(rng);
      Y[2 * i + 1] = 5.0 * g(rng);
    } else {
      Y[2 * i] = base[2 * (i % 40)];
      Y[2 * i + 1] = base[2 * (i % 40) + 1];
    }
  }
  return Y;
}

struct Errors {
  double force, z;
};

Errors fft_errors(const std::vector<double>& Y, const ts::FftParams& p, int threads) {
  const int64_t n = static_cast<int64_t>(Y.size() / 2);
  std::vector<double> rep(Y.size());
  const double Z = ts::repulsion_fft(Y.data(), n, p, rep.data(), threads);
  const Brute ref = brute_force(Y);
  return {rel_force_error(rep, ref.rep), std::abs(Z - ref.Z) / ref.Z};
}

}  // namespace

TEST(TsneFft, MatchesDirectDftForMixedRadixSizes) {
  for (int64_t n :
       {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 25, 30, 49, 60, 97, 100, 128, 300, 360, 450}) {
    const ts::Fft fft(n);
    const auto x = random_complex(n, static_cast<unsigned>(n));
    std::vector<cd> y = x, scratch(static_cast<size_t>(n));
    fft.forward(y.data(), scratch.data());
    const double tol =
        1e-12 * std::sqrt(static_cast<double>(n)) * (1.0 + std::log2(static_cast<double>(n)));
    EXPECT_LT(max_abs_diff(y, naive_dft(x, -1)), tol * std::sqrt(static_cast<double>(n)))
        << "n=" << n;
    std::vector<cd> z = x;
    fft.inverse(z.data(), scratch.data());
    EXPECT_LT(max_abs_diff(z, naive_dft(x, +1)), tol * std::sqrt(static_cast<double>(n)))
        << "n=" << n;
    // Round trip: inverse(forward(x)) = n x.
    fft.inverse(y.data(), scratch.data());
    for (auto& v : y) v /= static_cast<double>(n);
    EXPECT_LT(max_abs_diff(y, x), tol) << "n=" << n;
  }
}

TEST(TsneFft, SmoothSizes) {
  EXPECT_EQ(ts::next_smooth(1), 1);
  EXPECT_EQ(ts::next_smooth(7), 8);
  EXPECT_EQ(ts::next_smooth(301), 320);
  EXPECT_EQ(ts::next_smooth(300), 300);
  EXPECT_EQ(ts::next_smooth(1001), 1024);
}

TEST(TsneFft, TwoDimensionalTransformIsTransposedDft) {
  for (int64_t L : {6, 12, 30}) {
    for (int64_t nonzero : {L, L / 2}) {
      auto a = random_complex(L * L, static_cast<unsigned>(L + nonzero));
      for (int64_t i = nonzero * L; i < L * L; ++i) a[static_cast<size_t>(i)] = 0.0;
      // Reference: 2-D DFT X̂[u][v] = Σ_ab a[a][b] e^{−2πi(ua+vb)/L}, expected at [v][u].
      std::vector<cd> ref(a.size());
      for (int64_t u = 0; u < L; ++u)
        for (int64_t v = 0; v < L; ++v) {
          cd acc = 0.0;
          for (int64_t r = 0; r < L; ++r)
            for (int64_t c = 0; c < L; ++c) {
              const double ang =
                  -2.0 * std::numbers::pi * static_cast<double>((u * r + v * c) % L) / L;
              acc += a[static_cast<size_t>(r * L + c)] * cd(std::cos(ang), std::sin(ang));
            }
          ref[static_cast<size_t>(v * L + u)] = acc;
        }
      const ts::Fft fft(L);
      auto b = a;
      ts::fft2d(fft, b.data(), false, nonzero, L, 2);
      EXPECT_LT(max_abs_diff(b, ref), 1e-11 * L * L) << "L=" << L;
      // Inverse of the transposed spectrum: back to a (× L²), first `nonzero` rows only.
      ts::fft2d(fft, b.data(), true, L, nonzero, 2);
      double err = 0.0;
      for (int64_t i = 0; i < nonzero * L; ++i)
        err = std::max(err, std::abs(b[static_cast<size_t>(i)] / static_cast<double>(L * L) -
                                     a[static_cast<size_t>(i)]));
      EXPECT_LT(err, 1e-12 * L) << "L=" << L;
    }
  }
}

TEST(TsneFft, BatchedTransformEqualsOneAtATime) {
  const int64_t L = 30;
  const ts::Fft fft(L);
  auto a = random_complex(L * L, 11), b = random_complex(L * L, 12), c = random_complex(L * L, 13);
  for (int64_t i = 10 * L; i < L * L; ++i) b[static_cast<size_t>(i)] = 0.0;
  for (bool inverse : {false, true}) {
    auto a1 = a, b1 = b, c1 = c;
    ts::fft2d(fft, a1.data(), inverse, L, L, 1);
    ts::fft2d(fft, b1.data(), inverse, 10, 7, 1);
    ts::fft2d(fft, c1.data(), inverse, L, L, 1);
    auto a2 = a, b2 = b, c2 = c;
    std::complex<double>* arrays[3] = {a2.data(), b2.data(), c2.data()};
    const int64_t nonzero[3] = {L, 10, L}, needed[3] = {L, 7, L};
    ts::fft2d_batch(fft, arrays, nonzero, needed, 3, inverse, 3);
    EXPECT_EQ(a1, a2);
    EXPECT_EQ(c1, c2);
    EXPECT_TRUE(std::equal(b1.begin(), b1.begin() + 7 * L, b2.begin()));
  }
}

// Accuracy of the default parameters (3 nodes per interval, ≥ 50 intervals, 1 interval per
// unit: FIt-SNE's and openTSNE's defaults) against the brute-force sums. The error is that of
// the interpolation, so it grows where neighbours are sparse on the scale of one interval (the
// "wide" cloud: 2000 points with std 30). Measured here (relative force error / relative Z
// error): gaussian 4.7e-5 / 3.6e-7, tiny 4e-16 / 6e-16, wide 4.2e-2 / 5.6e-3, spread clusters
// 2.0e-2 / 9.2e-4, duplicates 4.6e-3 / 6.2e-4. openTSNE 1.0.4's FFT gradient on the same
// gaussian and wide clouds: 4.7e-5 / 8.5e-7 and 4.5e-2 / 1.4e-2. Bounds leave ~1.5-2x room.
TEST(TsneFft, DefaultParametersMatchBruteForce) {
  const ts::FftParams p;
  struct Case {
    const char* name;
    std::vector<double> Y;
    double force_bound, z_bound;
  };
  const std::vector<Case> cases = {
      {"gaussian", gaussian_cloud(2000, 1.0, 1), 1e-4, 1e-5},
      {"tiny (PCA init scale)", gaussian_cloud(1500, 1e-4, 2), 1e-10, 1e-10},
      {"wide gaussian", gaussian_cloud(2000, 30.0, 3), 7e-2, 1e-2},
      {"spread clusters", spread_clusters(3000, 4), 4e-2, 2e-3},
      {"duplicates", duplicates(2000, 5), 1e-2, 2e-3},
  };
  for (const auto& c : cases) {
    for (int threads : {1, 2}) {
      const Errors e = fft_errors(c.Y, p, threads);
      EXPECT_LT(e.force, c.force_bound) << c.name << " threads=" << threads;
      EXPECT_LT(e.z, c.z_bound) << c.name << " threads=" << threads;
      std::printf("[ fft acc  ] %-22s threads=%d  rel force err %.2e  rel Z err %.2e\n", c.name,
                  threads, e.force, e.z);
    }
  }
}

TEST(TsneFft, MoreNodesAreMoreAccurate) {
  const auto Y = spread_clusters(2000, 7, 30.0);
  ts::FftParams coarse;
  coarse.n_interp = 2;
  ts::FftParams fine;
  fine.n_interp = 5;
  const Errors ec = fft_errors(Y, coarse, 2);
  const Errors ef = fft_errors(Y, fine, 2);
  ts::FftParams denser;  // two intervals per unit
  denser.intervals_per_unit = 2.0;
  const Errors ed = fft_errors(Y, denser, 2);
  EXPECT_LT(ef.force, ec.force / 3);
  EXPECT_LT(ed.force, fft_errors(Y, {}, 2).force / 3);
  std::printf(
      "[ fft acc  ] spread clusters: n_interp 2 / 5: %.2e / %.2e; 2 intervals per unit: %.2e\n",
      ec.force, ef.force, ed.force);
}

TEST(TsneFft, DeterministicForAFixedThreadCount) {
  const auto Y = spread_clusters(3000, 9, 30.0);
  const int64_t n = 3000;
  for (int threads : {1, 2, 3}) {
    std::vector<double> a(Y.size()), b(Y.size());
    const double za = ts::repulsion_fft(Y.data(), n, {}, a.data(), threads);
    const double zb = ts::repulsion_fft(Y.data(), n, {}, b.data(), threads);
    EXPECT_EQ(za, zb);
    EXPECT_EQ(a, b);
  }
}

TEST(TsneFft, SmallAndDegenerateInputs) {
  // Two points: w = 1/(1+d²) exactly known.
  const std::vector<double> Y = {0.0, 0.0, 1.0, 2.0};
  std::vector<double> rep(4);
  const double Z = ts::repulsion_fft(Y.data(), 2, {}, rep.data(), 1);
  const double w = 1.0 / 6.0;
  EXPECT_NEAR(Z, 2 * w, 1e-5 * 2 * w);
  EXPECT_NEAR(rep[0], -w * w * 1.0, 1e-4 * w * w);
  EXPECT_NEAR(rep[1], -w * w * 2.0, 1e-4 * w * w);
  EXPECT_NEAR(rep[2], w * w * 1.0, 1e-4 * w * w);
  EXPECT_NEAR(rep[3], w * w * 2.0, 1e-4 * w * w);
  // All points identical: every w = 1, every force 0.
  const std::vector<double> same(200, 0.25);
  std::vector<double> r2(200);
  EXPECT_NEAR(ts::repulsion_fft(same.data(), 100, {}, r2.data(), 2), 100.0 * 99.0, 1e-6 * 9900);
  for (double v : r2) EXPECT_NEAR(v, 0.0, 1e-9);
  // Bad parameters and coordinates.
  ts::FftParams bad;
  bad.n_interp = 0;
  EXPECT_THROW(ts::repulsion_fft(Y.data(), 2, bad, rep.data(), 1), std::invalid_argument);
  const std::vector<double> nan = {0.0, std::nan(""), 1.0, 1.0};
  EXPECT_THROW(ts::repulsion_fft(nan.data(), 2, {}, rep.data(), 1), std::invalid_argument);
}

// The grid grew with the square of the embedding's extent: 1e12 apart, two points asked for
// ~1e12 intervals per side and the run never returned. Past max_intervals it throws before
// allocating anything (coarser intervals would give wrong forces).
TEST(TsneFft, HugeSpreadIsRefusedNotHung) {
  const std::vector<double> Y = {0.0, 0.0, 1e12, -1e12, 5.0, 3.0};
  std::vector<double> rep(Y.size());
  EXPECT_THROW(ts::repulsion_fft(Y.data(), 3, {}, rep.data(), 1), std::invalid_argument);
  ts::FftParams small;
  small.max_intervals = 60;
  const std::vector<double> wide = {0.0, 0.0, 70.0, 10.0, 5.0, 3.0};
  EXPECT_THROW(ts::repulsion_fft(wide.data(), 3, small, rep.data(), 1), std::invalid_argument);
  small.max_intervals = 80;
  EXPECT_TRUE(std::isfinite(ts::repulsion_fft(wide.data(), 3, small, rep.data(), 1)));
}

// Issue 19: spreading runs by grid row (one thread per row, points in order), so the FFT
// repulsion no longer depends on the thread count (per-thread grids made maps differ ~1e-9).
TEST(TsneFft, BitwiseEqualForEveryThreadCount) {
  const auto Y = spread_clusters(3000, 19, 30.0);
  std::vector<double> one(Y.size()), many(Y.size());
  const double z1 = ts::repulsion_fft(Y.data(), 3000, {}, one.data(), 1);
  for (int threads : {2, 3, 5}) {
    EXPECT_EQ(ts::repulsion_fft(Y.data(), 3000, {}, many.data(), threads), z1);
    EXPECT_EQ(many, one);
  }
}

// The optimiser's grid follows the number of points: ~4 sqrt(n) nodes per side, at least
// min_intervals, at most max_intervals (200 points with a spread-out init took ~950 MB).
TEST(TsneFft, IntervalBudgetFollowsThePoints) {
  const ts::FftParams p;
  EXPECT_EQ(ts::fft_interval_budget(200, p), 50);
  EXPECT_EQ(ts::fft_interval_budget(20000, p), 188);
  EXPECT_EQ(ts::fft_interval_budget(90000, p), 400);  // 4 * 300 / 3
  EXPECT_EQ(ts::fft_interval_budget(10000000, p), 512);
  const std::vector<double> Y = {0.0, 0.0, 99.5, 10.0, 5.0, 3.0};
  EXPECT_EQ(ts::fft_intervals(Y.data(), 3, p), 100.0);
  const std::vector<double> tight = {0.0, 0.0, 1.0, 1.0};
  EXPECT_EQ(ts::fft_intervals(tight.data(), 2, p), 50.0);
}

// Z came from φ_i − K1(0): the interpolation error of each point's self term (~0.1 per point)
// swamped Z for sparse maps (two points 170 apart: 0.24 instead of 7e-5). The grid's own self
// term is subtracted now, leaving the pairs' interpolation error only.
TEST(TsneFft, SparseMapsGetZFromThePairsOnly) {
  const std::vector<double> two = {37.71906633, -39.63145899, 192.12679513, 31.47003515};
  std::vector<double> rep(4);
  const double dx = two[0] - two[2], dy = two[1] - two[3];
  const double z = 2.0 / (1.0 + dx * dx + dy * dy);
  EXPECT_NEAR(ts::repulsion_fft(two.data(), 2, {}, rep.data(), 1), z, 1e-3 * z);
  const auto sparse = gaussian_cloud(30, 40.0, 41);
  const Errors e = fft_errors(sparse, {}, 2);
  EXPECT_LT(e.z, 1e-3);
}

// The kernel's spectrum is kept between calls while the transform size and node spacing stay the
// same (issue 20): a call that reuses it gives bitwise what a fresh workspace computes, for the
// unit-interval regime (a map that grows a little) and for small maps (width rounded up to a
// power of 2^(1/16)).
TEST(TsneFft, ReusedKernelSpectrumGivesTheFreshResult) {
  for (const double half_width : {75.0, 10.0}) {
    const auto Y1 = spread_clusters(2000, 23, half_width);
    std::vector<double> Y2 = Y1;
    for (auto& v : Y2) v *= 1.001;
    std::vector<double> warm(Y2.size()), fresh(Y2.size());
    ts::release_fft_workspace();
    ts::repulsion_fft(Y1.data(), 2000, {}, warm.data(), 2);
    const double z_warm = ts::repulsion_fft(Y2.data(), 2000, {}, warm.data(), 2);
    ts::release_fft_workspace();
    const double z_fresh = ts::repulsion_fft(Y2.data(), 2000, {}, fresh.data(), 2);
    EXPECT_EQ(z_warm, z_fresh) << half_width;
    EXPECT_EQ(warm, fresh) << half_width;
    // A different grid after a cached one is not served the stale spectrum.
    std::vector<double> Y3 = Y1, other(Y3.size()), other_fresh(Y3.size());
    for (auto& v : Y3) v *= 1.7;
    ts::repulsion_fft(Y3.data(), 2000, {}, other.data(), 2);
    ts::release_fft_workspace();
    ts::repulsion_fft(Y3.data(), 2000, {}, other_fresh.data(), 2);
    EXPECT_EQ(other, other_fresh) << half_width;
  }
  ts::release_fft_workspace();
}
