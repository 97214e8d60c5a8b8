#pragma once
// Device-generic kernels of integrated gradients: build one chunk of the interpolation path and
// fold a chunk of gradients into float32 accumulators. Only these touch at::Tensor; the
// quadrature itself (nodes, weights, nesting) is the torch-free core/attribution/quadrature.
#include <ATen/ATen.h>

namespace llmdbg {

// Path points for one chunk of K alphas: out[k * B + b] = baseline[b] + alphas[k] * diff[b],
// step-major like Captum, computed in float32 and returned in `dtype` on baseline's device.
// baseline, diff: (B, ...) float32, same shape and device; alphas: (K,) any float dtype.
at::Tensor ig_path(const at::Tensor& baseline, const at::Tensor& diff, const at::Tensor& alphas,
                   c10::ScalarType dtype);

// acc[g, rows[b]] += Σ_k weights[k] * grads[g, k * R + b] in float32, in place.
// acc: (G, B, ...) float32; grads: (G, K * R, ...) any float dtype, R = rows.size(0) (or B when
// rows is undefined, meaning every example); weights: (K,). One batched matrix product per call: no
// K-fold float32 copy of the gradients is made beyond one dtype conversion for half types.
void ig_accumulate(at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                   const at::Tensor& rows);

}  // namespace llmdbg
