#include "capture_store.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <stdexcept>

namespace llmdbg {

namespace {

constexpr int kPacked = 10 + stats::kHistBins;

// Messages are built with std::to_string, not iostreams: an ostringstream crashed inside
// libstdc++'s locale facets in an environment whose torch build brings its own C++ runtime
// pieces (seen on the GPU machine with torch 2.11), and plain strings need no locale at all.
std::string shape_string(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + (t.dim() == 1 ? ",)" : ")");
}

bool is_low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// Python slice semantics for [start, stop) on a dimension of length n.
std::pair<int64_t, int64_t> normalise_slice(int64_t start, int64_t stop, int64_t n) {
  if (start < 0) start = std::max<int64_t>(start + n, 0);
  if (stop < 0) stop = std::max<int64_t>(stop + n, 0);
  start = std::min(start, n);
  stop = std::min(std::max(stop, start), n);
  return {start, stop};
}

}  // namespace

CaptureStore::CaptureStore(int64_t max_bytes, c10::ScalarType out_dtype)
    : max_bytes_(max_bytes), out_dtype_(out_dtype) {
  if (!(out_dtype == at::kFloat || out_dtype == at::kDouble || out_dtype == at::kHalf ||
        out_dtype == at::kBFloat16)) {
    throw std::invalid_argument(
        "dtype must be a floating-point dtype (float16, bfloat16, "
        "float32 or float64)");
  }
}

CaptureStore::Entry& CaptureStore::entry(const std::string& key) {
  auto [it, inserted] = entries_.try_emplace(key);
  if (inserted) order_.push_back(key);
  return it->second;
}

CaptureStore::Summarised CaptureStore::summarize(const at::Tensor& x,
                                                 const CancelFn& cancelled) const {
  Summarised out;
  if (x.numel() == 0) return out;
  if (!x.is_cpu()) {
    // Reduce on the device; only the packed summary travels, asynchronously.
    at::Tensor packed = device_summary(x);
    out.pending = at::empty({kPacked}, packed.options().device(at::kCPU).pinned_memory(true));
    out.pending.copy_(packed, /*non_blocking=*/true);
    return out;
  }
  // bf16/fp16 are widened to float32; the kernel accumulates in double either way.
  const int threads = at::get_num_threads();
  if (x.scalar_type() == at::kDouble) {
    const at::Tensor c = x.contiguous();
    out.host = stats::summarize(c.data_ptr<double>(), c.numel(), threads, cancelled);
  } else {
    const at::Tensor c = x.to(at::kFloat).contiguous();
    out.host = stats::summarize(c.data_ptr<float>(), c.numel(), threads, cancelled);
  }
  return out;
}

at::Tensor CaptureStore::reduce(const at::Tensor& x, const ReduceSpec& spec) const {
  at::Tensor r = x;
  if (spec.token_dim >= 0) {
    if (spec.token_dim >= r.dim()) {
      throw std::invalid_argument("token dimension " + std::to_string(spec.token_dim) +
                                  " does not exist in a tensor of shape " + shape_string(r));
    }
    auto [start, stop] = normalise_slice(spec.token_start, spec.token_stop, r.size(spec.token_dim));
    r = r.slice(spec.token_dim, start, stop);
  }
  if (spec.head_dim >= 0) {
    if (spec.head_dim >= r.dim()) {
      throw std::invalid_argument("head dimension " + std::to_string(spec.head_dim) +
                                  " does not exist in a tensor of shape " + shape_string(r));
    }
    // Averages accumulate in float32 at least, also for bf16/fp16 maps; integer and bool
    // tensors average in float32 (ATen has no integer mean).
    const bool widen = is_low_precision(r) || !at::isFloatingType(r.scalar_type());
    r = widen ? r.mean({spec.head_dim}, false, at::kFloat) : r.mean({spec.head_dim});
  }
  return r;
}

void CaptureStore::check_budget(const std::string& key, const at::Tensor& reduced) const {
  if (max_bytes_ <= 0) return;
  const int64_t need = reduced.numel() * static_cast<int64_t>(c10::elementSize(out_dtype_));
  if (nbytes_ + need > max_bytes_) {
    throw BudgetExceeded(
        "capturing '" + key + "' " + shape_string(reduced) + " as " + c10::toString(out_dtype_) +
        " needs " + std::to_string(need) + " bytes, but the max_bytes budget of " +
        std::to_string(max_bytes_) + " has only " + std::to_string(max_bytes_ - nbytes_) +
        " bytes left (" + std::to_string(nbytes_) +
        " already captured). Raise max_bytes, capture fewer modules, or reduce what is kept "
        "(reduce='last_token', 'head_mean' or 'stats').");
  }
}

void CaptureStore::add(const std::string& key, const at::Tensor& tensor, const ReduceSpec& spec,
                       const CancelFn& cancelled) {
  if (!tensor.defined()) throw std::invalid_argument("tensor for '" + key + "' is undefined");
  if (!(at::isFloatingType(tensor.scalar_type()) ||
        at::isIntegralType(tensor.scalar_type(), true))) {
    throw std::invalid_argument(
        "'" + key + "' has dtype " + std::string(c10::toString(tensor.scalar_type())) +
        "; only real floating-point, integer and bool tensors can be captured");
  }
  // The common case, one sweep that copies and summarises, reads the raw buffer only: it needs
  // no detached alias (creating one costs about a microsecond per captured module).
  const bool fused = spec.stats && spec.keep && spec.head_dim < 0 && spec.token_dim < 0 &&
                     tensor.is_cpu() && tensor.is_contiguous() &&
                     tensor.scalar_type() == out_dtype_ &&
                     (out_dtype_ == at::kFloat || out_dtype_ == at::kDouble);
  const at::Tensor x = fused ? tensor : tensor.detach();
  std::lock_guard<std::mutex> lock(mu_);
  if (fused) {
    add_fused(key, x, cancelled);
    return;
  }
  // Statistics first, into a local: Ctrl-C part-way leaves the store as it was.
  Summarised s;
  if (spec.stats) s = summarize(x, cancelled);
  Entry& e = entry(key);
  if (spec.stats) {
    e.has_stats = true;
    e.summary.merge(s.host);
    if (s.pending.defined()) e.pending.push_back(s.pending), saw_device_ = true;
  }
  if (!spec.keep) return;

  const at::Tensor r = reduce(x, spec);
  check_budget(key, r);
  at::Tensor host;
  if (r.is_cpu()) {
    // Always an independent copy: the model may reuse or modify its buffers in place later.
    const bool fresh = !r.is_alias_of(x) && r.scalar_type() == out_dtype_ && r.is_contiguous();
    host = fresh ? r
                 : r.to(out_dtype_, /*non_blocking=*/false, /*copy=*/true,
                        at::MemoryFormat::Contiguous);
  } else {
    host = at::empty(r.sizes(), r.options().device(at::kCPU).dtype(out_dtype_).pinned_memory(true));
    host.copy_(r, /*non_blocking=*/true);
    saw_device_ = true;
  }
  nbytes_ += host.numel() * static_cast<int64_t>(host.element_size());
  e.host.push_back(std::move(host));
}

void CaptureStore::add_fused(const std::string& key, const at::Tensor& x,
                             const CancelFn& cancelled) {
  check_budget(key, x);
  // A plain CPU tensor of the same dtype: not x.options(), which would carry requires_grad.
  at::Tensor host = at::empty(x.sizes(), at::TensorOptions().dtype(x.scalar_type()));
  const int threads = at::get_num_threads();
  const stats::Summary s =
      x.scalar_type() == at::kDouble
          ? stats::summarize_copy(x.const_data_ptr<double>(), host.mutable_data_ptr<double>(),
                                  x.numel(), threads, cancelled)
          : stats::summarize_copy(x.const_data_ptr<float>(), host.mutable_data_ptr<float>(),
                                  x.numel(), threads, cancelled);
  // Recorded only once complete (an interrupted copy is dropped).
  Entry& e = entry(key);
  e.summary.merge(s);
  e.has_stats = true;
  nbytes_ += host.numel() * static_cast<int64_t>(host.element_size());
  e.host.push_back(std::move(host));
}

std::vector<at::Tensor> CaptureStore::tensors(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) throw std::out_of_range("nothing was captured under '" + key + "'");
  return it->second.host;
}

bool CaptureStore::has_stats(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  return it != entries_.end() && it->second.has_stats;
}

stats::Summary CaptureStore::summary(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.has_stats) {
    throw std::out_of_range("no statistics were captured under '" + key + "'");
  }
  Entry& e = it->second;
  for (const at::Tensor& p : e.pending) e.summary.merge(unpack_summary(p));
  e.pending.clear();
  return e.summary;
}

void CaptureStore::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();
  order_.clear();
  nbytes_ = 0;
  saw_device_ = false;
}

at::Tensor device_summary(const at::Tensor& x) {
  const at::Tensor flat = x.detach().reshape({-1});
  const auto opts = flat.options().dtype(at::kDouble);
  if (flat.numel() == 0) {
    return at::zeros({kPacked}, opts);
  }
  // Few, simple passes; counts and sums accumulate in float64 without syncing the host.
  const at::Tensor finite = at::isfinite(flat);
  const at::Tensor n_finite = at::sum(finite, at::kDouble);
  const at::Tensor n_nan = at::sum(at::isnan(flat), at::kDouble);
  const at::Tensor n_zero = at::sum(flat.eq(0), at::kDouble);
  const at::Tensor count = at::full({}, static_cast<double>(flat.numel()), opts);
  const at::Tensor n_inf = count - n_finite - n_nan;
  const at::Tensor xd = flat.to(at::kDouble);
  const at::Tensor mean = at::sum(at::where(finite, xd, 0.0)) / n_finite.clamp_min(1);
  // Non-finite entries replaced by the mean: they then move neither min/max nor the squared
  // deviations, so one tensor serves all three.
  const at::Tensor clean = at::where(finite, xd, mean);
  const auto [mn, mx] = at::aminmax(clean);
  const at::Tensor dev = clean - mean;
  const at::Tensor m2 = at::sum(dev * dev);
  const at::Tensor amax = at::maximum(-mn, mx);
  // floor(log2|x|) = frexp exponent - 1. Zeros and non-finite values go to a spare last bin;
  // histc (shared-memory bins) instead of scatter_add_, whose atomics on 64 bins serialise.
  const at::Tensor exponent = std::get<1>(at::frexp(clean)).to(at::kDouble);
  at::Tensor bins = (exponent - (1 + stats::kHistMinExp)).clamp(0, stats::kHistBins - 1);
  bins = at::where(finite.logical_and(flat.ne(0)), bins, static_cast<double>(stats::kHistBins));
  const at::Tensor hist = at::histc(bins, stats::kHistBins + 1, 0, stats::kHistBins + 1);
  return at::cat({at::stack({count, n_finite, n_nan, n_inf, n_zero, mean, m2, mn, mx, amax}),
                  hist.slice(0, 0, stats::kHistBins)});
}

stats::Summary unpack_summary(const at::Tensor& packed_cpu) {
  const at::Tensor p = packed_cpu.to(at::kDouble).contiguous();
  if (p.numel() != kPacked) throw std::invalid_argument("packed summary has the wrong length");
  const double* v = p.data_ptr<double>();
  stats::Summary s;
  s.count = static_cast<int64_t>(v[0]);
  s.finite = static_cast<int64_t>(v[1]);
  s.nan_count = static_cast<int64_t>(v[2]);
  s.inf_count = static_cast<int64_t>(v[3]);
  s.zero_count = static_cast<int64_t>(v[4]);
  if (s.finite > 0) {
    s.mean = v[5];
    s.m2 = v[6];
    s.min = v[7];
    s.max = v[8];
    s.absmax = v[9];
  }
  for (int b = 0; b < stats::kHistBins; ++b) s.hist[b] = static_cast<int64_t>(v[10 + b]);
  return s;
}

}  // namespace llmdbg
