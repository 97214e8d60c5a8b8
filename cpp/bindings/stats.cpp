// Bindings for cpp/core/stats: fused summary statistics of a numpy array. Torch-free; the
// on-device path (device_summary) is bound with the capture store in capture.cpp.
#include <cstdint>
#include <limits>
#include <string>

#include "common.hpp"
#include "core/stats/stats.hpp"

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

py::dict summarize_array(const py::array& arr, int num_threads) {
  // Types first, then the one call.
  if (!(arr.flags() & py::array::c_style)) {
    throw py::value_error("summarize: array must be C-contiguous (use numpy.ascontiguousarray)");
  }
  stats::Summary s;
  if (py::isinstance<py::array_t<float>>(arr)) {
    const auto* p = static_cast<const float*>(arr.data());
    const auto n = static_cast<int64_t>(arr.size());
    py::gil_scoped_release release;
    s = stats::summarize(p, n, num_threads);
  } else if (py::isinstance<py::array_t<double>>(arr)) {
    const auto* p = static_cast<const double*>(arr.data());
    const auto n = static_cast<int64_t>(arr.size());
    py::gil_scoped_release release;
    s = stats::summarize(p, n, num_threads);
  } else {
    throw py::type_error("summarize: array dtype must be float32 or float64, got " +
                         py::str(arr.dtype()).cast<std::string>());
  }
  return summary_to_dict(s);
}

}  // namespace

void bind_stats(py::module_& m) {
  m.attr("HIST_BINS") = stats::kHistBins;
  m.attr("HIST_MIN_EXP") = stats::kHistMinExp;
  m.def("summarize", &summarize_array, py::arg("array"), py::arg("num_threads") = 0,
        R"doc(Fused summary statistics of a float32/float64 C-contiguous array (double accumulation).

Returns a dict with count, finite_count, nan_count, inf_count, zero_count, mean, var, std, min,
max, absmax (over finite values), zero_fraction and a 64-bin log2 histogram of |x|.)doc");
}

}  // namespace llmdbg::bindings
