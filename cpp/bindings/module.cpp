// The pybind11 module llmdbg._core: statistics and the capture store (the only binding file that
// includes torch); the other concepts are bound in their own files (see common.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/python.h>  // the at::Tensor <-> torch.Tensor caster

#include <string>

#include "aten/attribution_kernels.hpp"
#include "aten/capture_store.hpp"
#include "common.hpp"
#include "core/common/parallel.hpp"
#include "core/stats/stats.hpp"

namespace py = pybind11;

namespace llmdbg::bindings {
PyObject* g_budget_error = nullptr;
}  // namespace llmdbg::bindings

namespace {

using llmdbg::bindings::without_gil;

py::dict summary_to_dict(const llmdbg::stats::Summary& s) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const bool any = s.finite > 0;
  py::array_t<int64_t> hist(llmdbg::stats::kHistBins);
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

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw py::value_error("dtype must be 'float16', 'bfloat16', 'float32' or 'float64', got '" + name + "'");
}

py::dict summarize_array(const py::array& arr, int num_threads) {
  // Types first, then the one call.
  if (!(arr.flags() & py::array::c_style)) {
    throw py::value_error("summarize: array must be C-contiguous (use numpy.ascontiguousarray)");
  }
  llmdbg::stats::Summary s;
  if (py::isinstance<py::array_t<float>>(arr)) {
    const auto* p = static_cast<const float*>(arr.data());
    const auto n = static_cast<int64_t>(arr.size());
    py::gil_scoped_release release;
    s = llmdbg::stats::summarize(p, n, num_threads);
  } else if (py::isinstance<py::array_t<double>>(arr)) {
    const auto* p = static_cast<const double*>(arr.data());
    const auto n = static_cast<int64_t>(arr.size());
    py::gil_scoped_release release;
    s = llmdbg::stats::summarize(p, n, num_threads);
  } else {
    throw py::type_error("summarize: array dtype must be float32 or float64, got " +
                         py::str(arr.dtype()).cast<std::string>());
  }
  return summary_to_dict(s);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmdbg's compiled core (private; use the llmdbg package).";
  m.attr("HIST_BINS") = llmdbg::stats::kHistBins;
  m.attr("HIST_MIN_EXP") = llmdbg::stats::kHistMinExp;

  auto& budget_error = llmdbg::bindings::g_budget_error;
  budget_error = PyErr_NewException("llmdbg._core.CaptureBudgetError", PyExc_MemoryError, nullptr);
  m.add_object("CaptureBudgetError", py::reinterpret_borrow<py::object>(budget_error));
  llmdbg::bindings::bind_attention_graph(m);
  llmdbg::bindings::bind_head_stats(m);
  llmdbg::bindings::bind_attribution(m);
  llmdbg::bindings::bind_data_profile(m);
  llmdbg::bindings::bind_tsne(m);

  m.def("summarize", &summarize_array, py::arg("array"), py::arg("num_threads") = 0,
        R"doc(Fused summary statistics of a float32/float64 C-contiguous array (double accumulation).

Returns a dict with count, finite_count, nan_count, inf_count, zero_count, mean, var, std, min,
max, absmax (over finite values), zero_fraction and a 64-bin log2 histogram of |x|.)doc");
  m.def("openmp_max_threads", &llmdbg::openmp_max_threads,
        "omp_get_max_threads() of the OpenMP runtime our kernels use.");
  m.def("openmp_team_size", &llmdbg::openmp_team_size, py::arg("num_threads") = 0,
        "Size of the team an OpenMP region gets for num_threads (<= 0: runtime default).");
  m.def(
      "device_summary",
      [](const at::Tensor& x) {
        at::Tensor packed;
        without_gil([&] { packed = llmdbg::device_summary(x).cpu(); });
        return summary_to_dict(llmdbg::unpack_summary(packed));
      },
      py::arg("tensor"), "The ATen (on-device) statistics path, exposed for tests.");

  // Integrated gradients' device kernels (attribution_kernels.hpp); Python checks shapes first.
  m.def(
      "ig_path",
      [](const at::Tensor& baseline, const at::Tensor& diff, const at::Tensor& alphas, const std::string& dtype) {
        const auto st = parse_dtype(dtype);
        at::Tensor out;
        without_gil([&] { out = llmdbg::ig_path(baseline, diff, alphas, st); });
        return out;
      },
      py::arg("baseline"), py::arg("diff"), py::arg("alphas"), py::arg("dtype"),
      "Path points (K*B, ...) = baseline + alphas[k] * diff, step-major, float32 math, cast to dtype\n"
      "('float16', 'bfloat16', 'float32' or 'float64').");
  m.def(
      "ig_accumulate",
      [](at::Tensor acc, const at::Tensor& grads, const at::Tensor& weights, std::optional<at::Tensor> rows) {
        without_gil([&] { llmdbg::ig_accumulate(acc, grads, weights, rows ? *rows : at::Tensor()); });
      },
      py::arg("acc"), py::arg("grads"), py::arg("weights"), py::arg("rows") = py::none(),
      "acc[g, rows[b]] += sum_k weights[k] * grads[g, k*R + b] in float32, in place.");

  py::class_<llmdbg::CaptureStore>(m, "CaptureStore", "Host-side store of captured tensors.")
      .def(py::init([](int64_t max_bytes, const std::string& dtype) {
             return std::make_unique<llmdbg::CaptureStore>(max_bytes, parse_dtype(dtype));
           }),
           py::arg("max_bytes") = 0, py::arg("dtype") = "float32")
      .def(
          "add",
          [](llmdbg::CaptureStore& self, const std::string& key, const at::Tensor& tensor,
             int64_t head_dim, int64_t token_dim, int64_t token_start, int64_t token_stop,
             bool keep, bool stats) {
            llmdbg::ReduceSpec spec{head_dim, token_dim, token_start, token_stop, keep, stats};
            without_gil([&] { self.add(key, tensor, spec); });
          },
          py::arg("key"), py::arg("tensor"), py::kw_only(), py::arg("head_dim") = -1,
          py::arg("token_dim") = -1, py::arg("token_start") = 0,
          py::arg("token_stop") = std::numeric_limits<int64_t>::max(), py::arg("keep") = true,
          py::arg("stats") = true,
          "Detach, summarise, reduce, convert and copy one tensor to host under key.")
      .def(
          "tensors",
          [](const llmdbg::CaptureStore& self, const std::string& key) {
            std::vector<at::Tensor> out;
            without_gil([&] { out = self.tensors(key); });
            return out;
          },
          py::arg("key"), "Host tensors captured under key, one per call.")
      .def(
          "summary",
          [](llmdbg::CaptureStore& self, const std::string& key) {
            llmdbg::stats::Summary s;
            without_gil([&] { s = self.summary(key); });
            return summary_to_dict(s);
          },
          py::arg("key"), "Statistics merged over every call under key.")
      .def("has_stats", &llmdbg::CaptureStore::has_stats, py::arg("key"))
      .def("keys", &llmdbg::CaptureStore::keys, "Keys in first-capture order.")
      .def("clear", &llmdbg::CaptureStore::clear)
      .def_property_readonly("nbytes", &llmdbg::CaptureStore::nbytes)
      .def_property_readonly("max_bytes", &llmdbg::CaptureStore::max_bytes)
      .def_property_readonly("saw_device_tensor", &llmdbg::CaptureStore::saw_device_tensor);
}
