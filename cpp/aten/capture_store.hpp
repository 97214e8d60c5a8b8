#pragma once
// The capture store: the only stateful C++ that touches at::Tensor. Forward/backward hooks hand
// it tensors; it detaches them, summarises them, optionally reduces them on their own device
// (head mean, token slice), converts the dtype and copies them to host memory (pinned and
// asynchronous for CUDA tensors) under a byte budget.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/common/cancel.hpp"
#include "core/common/errors.hpp"
#include "core/stats/stats.hpp"

namespace llmdbg {

// What to keep of one tensor. Dimensions are given by the caller (Python knows the layout).
struct ReduceSpec {
  int64_t head_dim = -1;   // >= 0: average over this dimension (attention heads)
  int64_t token_dim = -1;  // >= 0: keep only positions [token_start, token_stop) of this dim
  int64_t token_start = 0;
  int64_t token_stop = std::numeric_limits<int64_t>::max();  // Python slice semantics
  bool keep = true;                                          // false: statistics only
  bool stats = true;
};

class CaptureStore {
 public:
  // max_bytes <= 0: no budget. out_dtype: dtype of the host copies.
  CaptureStore(int64_t max_bytes, c10::ScalarType out_dtype);

  // Thread-safe: calls from several threads are all recorded, each whole, in the order they take
  // the store's lock. `cancelled` is polled while host statistics are computed
  // (core/common/cancel.hpp); an Interrupted or any other error leaves the call unrecorded (a
  // BudgetExceeded after the statistics keeps them, as before).
  void add(const std::string& key, const at::Tensor& tensor, const ReduceSpec& spec,
           const CancelFn& cancelled = {});

  // Host tensors for key, one per call, in call order (a copy of the handles, taken under the
  // lock).
  std::vector<at::Tensor> tensors(const std::string& key) const;
  // Summary of everything seen under key (merged across calls). Folds in pending device
  // summaries, so the caller must have synchronised CUDA streams first.
  stats::Summary summary(const std::string& key);
  std::vector<std::string> keys() const {
    std::lock_guard<std::mutex> lock(mu_);
    return order_;
  }
  bool has_stats(const std::string& key) const;

  int64_t nbytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return nbytes_;
  }
  int64_t max_bytes() const { return max_bytes_; }
  bool saw_device_tensor() const {
    std::lock_guard<std::mutex> lock(mu_);
    return saw_device_;
  }
  c10::ScalarType out_dtype() const { return out_dtype_; }
  void clear();

 private:
  struct Entry {
    std::vector<at::Tensor> host;     // kept copies
    stats::Summary summary;           // merged host summaries
    std::vector<at::Tensor> pending;  // device summaries being copied to pinned memory
    bool has_stats = false;
  };
  // Host statistics of x, or a device summary on its way to pinned memory (pending).
  struct Summarised {
    stats::Summary host;
    at::Tensor pending;
  };
  Entry& entry(const std::string& key);
  Summarised summarize(const at::Tensor& x, const CancelFn& cancelled) const;
  void add_fused(const std::string& key, const at::Tensor& x, const CancelFn& cancelled);
  at::Tensor reduce(const at::Tensor& x, const ReduceSpec& spec) const;
  void check_budget(const std::string& key, const at::Tensor& reduced) const;

  // One capture may be fed from several threads (forwards run in a thread pool): every member
  // below is read and written under this lock, and add() holds it for the whole copy.
  mutable std::mutex mu_;
  int64_t max_bytes_;
  c10::ScalarType out_dtype_;
  int64_t nbytes_ = 0;
  bool saw_device_ = false;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;  // first-seen order, i.e. execution order of the hooks
};

// Summary of a tensor computed with ATen reductions on its own device (float64 accumulation),
// packed as [count, finite, nan, inf, zero, mean, m2, min, max, absmax, hist...]. Used for CUDA
// tensors so that statistics never force a full device-to-host copy. Exposed for tests.
at::Tensor device_summary(const at::Tensor& x);
stats::Summary unpack_summary(const at::Tensor& packed_cpu);

}  // namespace llmdbg
