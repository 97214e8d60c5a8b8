#pragma once
// A small complex FFT for the FIt-SNE repulsion (fft_repulsion.cpp): mixed radix (explicit
// butterflies for 2, 3, 4 and 5, a direct DFT for any other prime factor), Stockham
// auto-sort, so no bit reversal and no recursion. Written here rather than pulling in FFTW
// (GPL); the transform sizes t-SNE needs are small (a few hundred per side) and 5-smooth by
// construction, so a plain implementation is fast enough.
//
// Convention: forward X_k = Σ_j x_j exp(−2πi jk/n); inverse is the unnormalised conjugate
// transform (X_k = Σ_j x_j exp(+2πi jk/n)), so inverse(forward(x)) = n·x.

#include <complex>
#include <cstdint>
#include <vector>

namespace llmdbg::tsne {

class Fft {
 public:
  explicit Fft(int64_t n);
  int64_t size() const { return n_; }
  // In place on data[0..n); scratch must hold n values.
  void forward(std::complex<double>* data, std::complex<double>* scratch) const;
  void inverse(std::complex<double>* data, std::complex<double>* scratch) const;

 private:
  struct Stage {
    int radix;
    int64_t ns;                                 // product of the radices before this stage
    std::vector<std::complex<double>> twiddle;  // ns × radix: exp(−2πi k r / (ns·radix))
  };
  void run(std::complex<double>* data, std::complex<double>* scratch) const;
  int64_t n_;
  std::vector<Stage> stages_;
};

// The smallest m' ≥ m whose factors are all 2, 3 or 5.
int64_t next_smooth(int64_t m);

// 2-D transform of an L × L row-major array, in place, with the output TRANSPOSED:
// forward gives X̂ᵀ (X̂ the 2-D DFT). Applying `inverse` to a transposed spectrum gives back the
// array in its original orientation, scaled by L². `rows_nonzero` (≤ L): only the first
// rows_nonzero rows of the input may be nonzero (zero padding; their first pass is skipped).
// `rows_needed` (≤ L): only the first rows_needed rows of the output are computed (the rest of
// the array is left in an unspecified state).
void fft2d(const Fft& fft, std::complex<double>* a, bool inverse, int64_t rows_nonzero,
           int64_t rows_needed, int num_threads);

// The same on `count` arrays at once (one parallel region, three barriers in all); rows_nonzero
// and rows_needed hold one value per array.
void fft2d_batch(const Fft& fft, std::complex<double>* const* arrays, const int64_t* rows_nonzero,
                 const int64_t* rows_needed, int count, bool inverse, int num_threads);

}  // namespace llmdbg::tsne
