// Bindings for integrated gradients: the quadrature rules of cpp/core/attribution (numpy out)
// and the device kernels of cpp/aten/attribution_kernels (path points, gradient accumulation;
// torch tensors in and out, shapes checked by the Python caller).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "aten/attribution_kernels.hpp"
#include "common.hpp"
#include "core/attribution/patterson.hpp"
#include "core/attribution/quadrature.hpp"
#include "tensors.hpp"

namespace llmdbg::bindings {

namespace {

py::tuple to_arrays(const attribution::Rule& r) {
  py::array_t<double> nodes(static_cast<py::ssize_t>(r.nodes.size()));
  py::array_t<double> weights(static_cast<py::ssize_t>(r.weights.size()));
  std::copy(r.nodes.begin(), r.nodes.end(), nodes.mutable_data());
  std::copy(r.weights.begin(), r.weights.end(), weights.mutable_data());
  return py::make_tuple(nodes, weights);
}

}  // namespace

void bind_attribution(py::module_& m) {
  m.def(
      "quadrature",
      [](const std::string& method, int n) {
        attribution::Rule r;
        without_gil([&] { r = attribution::fixed_rule(method, n); });
        return to_arrays(r);
      },
      py::arg("method"), py::arg("n"),
      R"doc(Nodes and weights (float64 arrays of length n) of a quadrature rule on [0, 1].

method: riemann_left, riemann_right, riemann_middle, trapezoid, gausslegendre, clenshaw_curtis or
captum_trapezoid (Captum's riemann_trapezoid, whose weights sum to 1 - 1/n). ValueError for an
unknown method or too few nodes.)doc");
  m.def(
      "patterson_quadrature",
      [](int level) {
        attribution::Rule r;
        without_gil([&] { r = attribution::patterson_rule(level); });
        return to_arrays(r);
      },
      py::arg("level"),
      R"doc(Nested Gauss–Kronrod–Patterson rule of `level` in [0, 4] (5, 11, 23, 47, 95 nodes on [0, 1]),
nodes in the order they were first added, so level k's new nodes follow all of level k - 1's.
ValueError for a level out of range.)doc");
  m.attr("PATTERSON_MAX_LEVEL") = attribution::kPattersonMaxLevel;
  m.def(
      "ig_path",
      [](const at::Tensor& baseline, const at::Tensor& diff, const at::Tensor& alphas,
         const std::string& dtype) {
        const auto st = parse_dtype(dtype);
        at::Tensor out;
        without_gil([&] { out = llmdbg::ig_path(baseline, diff, alphas, st); });
        return out;
      },
      py::arg("baseline"), py::arg("diff"), py::arg("alphas"), py::arg("dtype"),
      "Path points (K*B, ...) = baseline + alphas[k] * diff, step-major, float32 math, "
      "cast to dtype\n('float16', 'bfloat16', 'float32' or 'float64').");
  m.def(
      "ig_accumulate",
      [](at::Tensor acc, const at::Tensor& grads, const at::Tensor& weights,
         std::optional<at::Tensor> rows) {
        without_gil(
            [&] { llmdbg::ig_accumulate(acc, grads, weights, rows ? *rows : at::Tensor()); });
      },
      py::arg("acc"), py::arg("grads"), py::arg("weights"), py::arg("rows") = py::none(),
      "acc[g, rows[b]] += sum_k weights[k] * grads[g, k*R + b] in float32, in place.");
}

}  // namespace llmdbg::bindings
