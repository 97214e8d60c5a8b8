// Bindings for cpp/core/stats: fused summary statistics of a numpy array. Torch-free; the
// on-device path (device_summary) is bound with the capture store in capture.cpp.
#include <cstdint>
#include <limits>
#include <string>

#include "arrays.hpp"
#include "common.hpp"
#include "core/stats/stats.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

py::dict summary_to_dict(const stats::Summary& s) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const bool any = s.finite > 0;
  py::array_t<int64_t> hist(stats::kHistBins);
  std::copy(s.hist.begin(), s.hist.end(), hist.mutable_data());
  py::dict d;
  d["count"] = s.count;
  d["finite_count"] = s.finite;
  d["nan_count"] = s.nan_count;
  d["inf_count"] = s.inf_count;
  d["zero_count"] = s.zero_count;
  d["mean"] = any ? s.mean : nan;
  d["var"] = s.variance();
  d["std"] = s.stddev();
  d["min"] = any ? s.min : nan;
  d["max"] = any ? s.max : nan;
  d["absmax"] = any ? s.absmax : nan;
  d["zero_fraction"] = s.zero_fraction();
  d["histogram"] = hist;
  return d;
}

namespace {

py::dict summarize_array(const py::object& obj, Threads<"summarize"> threads) {
  const py::array arr = checked_array(obj, "summarize: array", kFloat, Shape());
  const auto n = static_cast<int64_t>(arr.size());
  const int num_threads = threads.value;
  const CancelFn poll = interrupt_poll();
  stats::Summary s;
  if (py::isinstance<py::array_t<float>>(arr)) {
    const float* p = data_of<float>(arr);
    without_gil([&] { s = stats::summarize(p, n, num_threads, poll); });
  } else {
    const double* p = data_of<double>(arr);
    without_gil([&] { s = stats::summarize(p, n, num_threads, poll); });
  }
  return summary_to_dict(s);
}

}  // namespace

void bind_stats(py::module_& m) {
  m.attr("HIST_BINS") = stats::kHistBins;
  m.attr("HIST_MIN_EXP") = stats::kHistMinExp;
  m.def(
      "summarize", &summarize_array, py::arg("array"), py::arg("num_threads") = 0,
      R"doc(Fused summary statistics of a float32/float64 C-contiguous array (double accumulation).

Returns a dict with count, finite_count, nan_count, inf_count, zero_count, mean, var, std, min,
max, absmax (over finite values), zero_fraction and a 64-bin log2 histogram of |x|. Ctrl-C raises
KeyboardInterrupt.)doc");
}

}  // namespace llmdbg::bindings
