#include "core/tsne/fft.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

#include "core/common/parallel.hpp"

namespace llmdbg::tsne {

using cd = std::complex<double>;

namespace {

// Plain complex product: std::complex's operator* checks for NaN/Inf operands (a __muldc3
// call per product) unless the whole build uses -fcx-limited-range; the FFT has none.
inline cd cmul(cd a, cd b) {
  return {a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real()};
}

// Radices of n: 4s first (fewest passes), then 2, 3, 5, then any other prime.
std::vector<int> factorize(int64_t n) {
  std::vector<int> f;
  while (n % 4 == 0) {
    f.push_back(4);
    n /= 4;
  }
  for (int p : {2, 3, 5}) {
    while (n % p == 0) {
      f.push_back(p);
      n /= p;
    }
  }
  for (int64_t p = 7; n > 1; p += 2) {
    while (n % p == 0) {
      f.push_back(static_cast<int>(p));
      n /= p;
    }
    if (p * p > n && n > 1) {
      f.push_back(static_cast<int>(n));
      n = 1;
    }
  }
  return f;
}

// Length-r DFT of v (in place), forward sign. w: exp(−2πi k / r) for k < r (generic radix only).
inline void small_dft(cd* v, int r, const cd* w, cd* tmp) {
  switch (r) {
    case 2: {
      const cd a = v[0], b = v[1];
      v[0] = a + b;
      v[1] = a - b;
      return;
    }
    case 3: {
      constexpr double s = 0.86602540378443864676;  // sin(2π/3)
      const cd a = v[0], b = v[1], c = v[2];
      const cd t = b + c;
      const cd m = a - 0.5 * t;
      const cd bc = b - c;
      const cd d(s * bc.imag(), -s * bc.real());  // −i·s·(b − c)
      v[0] = a + t;
      v[1] = m + d;
      v[2] = m - d;
      return;
    }
    case 4: {
      const cd a = v[0], b = v[1], c = v[2], d = v[3];
      const cd s0 = a + c, s1 = a - c, s2 = b + d;
      const cd bd = b - d;
      const cd s3(bd.imag(), -bd.real());  // −i·(b − d)
      v[0] = s0 + s2;
      v[1] = s1 + s3;
      v[2] = s0 - s2;
      v[3] = s1 - s3;
      return;
    }
    case 5: {
      const double c1 = std::cos(2 * std::numbers::pi / 5), c2 = std::cos(4 * std::numbers::pi / 5);
      const double s1 = std::sin(2 * std::numbers::pi / 5), s2 = std::sin(4 * std::numbers::pi / 5);
      const cd a = v[0];
      const cd t1 = v[1] + v[4], t2 = v[2] + v[3];
      const cd t3 = v[1] - v[4], t4 = v[2] - v[3];
      const cd m1 = a + c1 * t1 + c2 * t2;
      const cd m2 = a + c2 * t1 + c1 * t2;
      // −i·(s1 t3 + s2 t4) and −i·(s2 t3 − s1 t4)
      const cd u1 = s1 * t3 + s2 * t4, u2 = s2 * t3 - s1 * t4;
      const cd n1(u1.imag(), -u1.real());
      const cd n2(u2.imag(), -u2.real());
      v[0] = a + t1 + t2;
      v[1] = m1 + n1;
      v[4] = m1 - n1;
      v[2] = m2 + n2;
      v[3] = m2 - n2;
      return;
    }
    default: {
      for (int k = 0; k < r; ++k) {
        cd acc = 0.0;
        for (int j = 0; j < r; ++j) acc += cmul(v[j], w[(static_cast<int64_t>(j) * k) % r]);
        tmp[k] = acc;
      }
      std::copy(tmp, tmp + r, v);
    }
  }
}

// One Stockham stage of a fixed small radix: the length-R DFT is inlined and unrolled.
template <int R>
void stage_fixed(const cd* src, cd* dst, int64_t n, int64_t ns, const cd* twiddle) {
  const int64_t stride = n / R;
  for (int64_t jb = 0; jb < stride / ns; ++jb) {
    const cd* in = src + jb * ns;
    cd* out = dst + jb * ns * R;
    for (int64_t k = 0; k < ns; ++k) {
      const cd* tw = twiddle + k * R;
      cd v[R];
      v[0] = in[k];
      for (int q = 1; q < R; ++q) v[q] = cmul(in[k + q * stride], tw[q]);
      small_dft(v, R, nullptr, nullptr);
      for (int q = 0; q < R; ++q) out[k + q * ns] = v[q];
    }
  }
}

}  // namespace

int64_t next_smooth(int64_t m) {
  for (;; ++m) {
    int64_t r = m;
    for (int p : {2, 3, 5}) {
      while (r % p == 0) r /= p;
    }
    if (r == 1) return m;
  }
}

Fft::Fft(int64_t n) : n_(n) {
  if (n < 1) throw std::invalid_argument("Fft: size must be positive");
  int64_t ns = 1;
  for (int r : factorize(n)) {
    Stage s{r, ns, std::vector<cd>(static_cast<size_t>(ns * r))};
    for (int64_t k = 0; k < ns; ++k) {
      for (int q = 0; q < r; ++q) {
        const double ang =
            -2.0 * std::numbers::pi * static_cast<double>(k * q) / static_cast<double>(ns * r);
        s.twiddle[static_cast<size_t>(k * r + q)] = cd(std::cos(ang), std::sin(ang));
      }
    }
    stages_.push_back(std::move(s));
    ns *= r;
  }
}

// Stockham auto-sort (Govindaraju et al. 2008, "High performance discrete Fourier transforms on
// graphics processors"): stage with radix R reads R inputs at stride n/R, twiddles them by the
// position within the current sub-transform (k = j mod ns), does a length-R DFT and writes the
// results at stride ns into the next buffer.
void Fft::run(cd* data, cd* scratch) const {
  cd* src = data;
  cd* dst = scratch;
  cd v[64];
  cd tmp[64];
  std::vector<cd> big_v, big_tmp, roots;
  for (const Stage& s : stages_) {
    const int r = s.radix;
    if (r <= 5) {
      switch (r) {
        case 2: stage_fixed<2>(src, dst, n_, s.ns, s.twiddle.data()); break;
        case 3: stage_fixed<3>(src, dst, n_, s.ns, s.twiddle.data()); break;
        case 4: stage_fixed<4>(src, dst, n_, s.ns, s.twiddle.data()); break;
        default: stage_fixed<5>(src, dst, n_, s.ns, s.twiddle.data()); break;
      }
      std::swap(src, dst);
      continue;
    }
    cd* pv = v;
    cd* ptmp = tmp;
    {
      if (r > 64) {
        big_v.resize(static_cast<size_t>(r));
        big_tmp.resize(static_cast<size_t>(r));
        pv = big_v.data();
        ptmp = big_tmp.data();
      }
      roots.resize(static_cast<size_t>(r));
      for (int k = 0; k < r; ++k) {
        const double ang = -2.0 * std::numbers::pi * k / r;
        roots[static_cast<size_t>(k)] = cd(std::cos(ang), std::sin(ang));
      }
    }
    const cd* w = roots.data();
    const int64_t stride = n_ / r;
    const int64_t ns = s.ns;
    // j = jb·ns + k runs over the stride butterflies; k is the position in the sub-transform.
    for (int64_t jb = 0; jb < stride / ns; ++jb) {
      for (int64_t k = 0; k < ns; ++k) {
        const int64_t j = jb * ns + k;
        const cd* tw = s.twiddle.data() + k * r;
        pv[0] = src[j];
        for (int q = 1; q < r; ++q) pv[q] = cmul(src[j + q * stride], tw[q]);
        small_dft(pv, r, w, ptmp);
        const int64_t out = jb * ns * r + k;
        for (int q = 0; q < r; ++q) dst[out + q * ns] = pv[q];
      }
    }
    std::swap(src, dst);
  }
  if (src != data) std::copy(src, src + n_, data);
}

void Fft::forward(cd* data, cd* scratch) const { run(data, scratch); }

void Fft::inverse(cd* data, cd* scratch) const {
  for (int64_t i = 0; i < n_; ++i) data[i] = std::conj(data[i]);
  run(data, scratch);
  for (int64_t i = 0; i < n_; ++i) data[i] = std::conj(data[i]);
}

void fft2d_batch(const Fft& fft, cd* const* arrays, const int64_t* rows_nonzero,
                 const int64_t* rows_needed, int count, bool inverse, int num_threads) {
  const int64_t L = fft.size();
  const int threads = resolve_threads(num_threads);
  // Flattened (array, row) index ranges of the two row passes, and (array, block row) of the
  // transposes, so the whole batch costs three barriers.
  std::vector<int64_t> off1(static_cast<size_t>(count) + 1, 0),
      off2(static_cast<size_t>(count) + 1, 0);
  for (int c = 0; c < count; ++c) {
    off1[c + 1] = off1[c] + std::clamp<int64_t>(rows_nonzero[c], 0, L);
    off2[c + 1] = off2[c] + std::clamp<int64_t>(rows_needed[c], 0, L);
  }
  constexpr int64_t B = 32;
  const int64_t nb = (L + B - 1) / B;
  auto locate = [count](const std::vector<int64_t>& off, int64_t r, int64_t& i) {
    int c = 0;
    while (c + 1 < count && r >= off[c + 1]) ++c;
    i = r - off[c];
    return c;
  };
  auto row_fft = [&](cd* row, cd* scratch) {
    if (inverse) {
      fft.inverse(row, scratch);
    } else {
      fft.forward(row, scratch);
    }
  };
  // One scratch row per thread, allocated before the region (no exception may leave it).
  std::vector<cd> scratch_rows(static_cast<size_t>(threads * L));
#pragma omp parallel num_threads(threads)
  {
    cd* scratch = scratch_rows.data() + static_cast<size_t>(thread_id()) * L;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < off1[count]; ++r) {
      int64_t i = 0;
      const int c = locate(off1, r, i);
      row_fft(arrays[c] + i * L, scratch);
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < count * nb; ++r) {
      cd* a = arrays[r / nb];
      const int64_t bi = (r % nb) * B;
      for (int64_t bj = bi; bj < L; bj += B) {
        const int64_t ie = std::min(bi + B, L), je = std::min(bj + B, L);
        for (int64_t i = bi; i < ie; ++i) {
          for (int64_t j = (bi == bj ? i + 1 : bj); j < je; ++j)
            std::swap(a[i * L + j], a[j * L + i]);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < off2[count]; ++r) {
      int64_t i = 0;
      const int c = locate(off2, r, i);
      row_fft(arrays[c] + i * L, scratch);
    }
  }
}

void fft2d(const Fft& fft, cd* a, bool inverse, int64_t rows_nonzero, int64_t rows_needed,
           int num_threads) {
  fft2d_batch(fft, &a, &rows_nonzero, &rows_needed, 1, inverse, num_threads);
}

}  // namespace llmdbg::tsne
