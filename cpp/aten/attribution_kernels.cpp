#include "attribution_kernels.hpp"

#include <stdexcept>
#include <string>

namespace llmdbg {

namespace {

std::string shape_of(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ")";
}

}  // namespace

at::Tensor ig_path(const at::Tensor& baseline, const at::Tensor& diff, const at::Tensor& alphas,
                   c10::ScalarType dtype) {
  if (baseline.dim() < 1) {  // the path is flattened along the batch dimension
    throw std::invalid_argument("ig_path: baseline must have a batch dimension (B, ...), got " +
                                shape_of(baseline));
  }
  if (baseline.sizes() != diff.sizes()) {
    throw std::invalid_argument("ig_path: baseline " + shape_of(baseline) + " and diff " +
                                shape_of(diff) + " must have the same shape");
  }
  if (baseline.scalar_type() != at::kFloat || diff.scalar_type() != at::kFloat) {
    throw std::invalid_argument("ig_path: baseline and diff must be float32");
  }
  if (alphas.dim() != 1 || alphas.size(0) < 1) {
    throw std::invalid_argument("ig_path: alphas must be a non-empty 1-D tensor, got " +
                                shape_of(alphas));
  }
  const int64_t k = alphas.size(0);
  std::vector<int64_t> view(baseline.dim() + 1, 1);
  view[0] = k;
  const at::Tensor a = alphas.to(baseline.device(), at::kFloat).view(view);
  // (K, B, ...) = b + α·(x − b), then flattened step-major to (K·B, ...).
  at::Tensor path = at::addcmul(baseline.unsqueeze(0), a, diff.unsqueeze(0));
  std::vector<int64_t> flat(baseline.sizes().begin(), baseline.sizes().end());
  flat[0] *= k;
  return path.view(flat).to(dtype);
}

void ig_accumulate(at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                   const at::Tensor& rows) {
  if (acc.scalar_type() != at::kFloat || !acc.is_contiguous()) {
    throw std::invalid_argument("ig_accumulate: acc must be a contiguous float32 tensor");
  }
  if (acc.dim() < 2 || grads.dim() != acc.dim()) {
    throw std::invalid_argument("ig_accumulate: acc (G, B, ...) " + shape_of(acc) +
                                " and grads (G, K*R, ...) " + shape_of(grads) +
                                " must have the same number of dimensions (>= 2)");
  }
  if (weights.dim() != 1) throw std::invalid_argument("ig_accumulate: weights must be 1-D");
  if (rows.defined() &&
      (rows.dim() != 1 || (rows.numel() > 0 && (rows.min().item<int64_t>() < 0 ||
                                                rows.max().item<int64_t>() >= acc.size(1))))) {
    throw std::invalid_argument("ig_accumulate: rows must be a 1-D tensor of indices in [0, B)");
  }
  const int64_t g = acc.size(0), b = acc.size(1), k = weights.size(0);
  const int64_t r = rows.defined() ? rows.size(0) : b;
  const int64_t n = acc.numel() / std::max<int64_t>(g * b, 1);
  if (grads.size(0) != g || grads.size(1) != k * r || grads.numel() != g * k * r * n) {
    throw std::invalid_argument("ig_accumulate: grads " + shape_of(grads) + " does not match acc " +
                                shape_of(acc) + " with " + std::to_string(k) + " weights and " +
                                std::to_string(r) + " rows");
  }
  // (G, 1, K) @ (G, K, R·N) -> (G, 1, R·N): the weighted sum over steps as one batched GEMV.
  const at::Tensor w = weights.to(acc.device(), at::kFloat).view({1, 1, k}).expand({g, 1, k});
  const at::Tensor gr = grads.to(at::kFloat).reshape({g, k, r * n});
  const at::Tensor contrib = at::bmm(w, gr).view({g, r, n});
  if (rows.defined()) {
    acc.view({g, b, n}).index_add_(1, rows.to(acc.device(), at::kLong), contrib);
  } else {
    acc.view({g, b, n}).add_(contrib);
  }
}

}  // namespace llmdbg
