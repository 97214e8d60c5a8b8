// Bindings for integrated gradients: the quadrature rules of cpp/core/attribution (numpy out)
// and the device kernels of cpp/aten/attribution_kernels (path points, gradient accumulation;
// torch tensors in and out). Tensor arguments are checked at the boundary (tensors.hpp: meta,
// sparse, nested and quantized tensors are refused with a TypeError naming them), shapes by the
// kernels; ATen errors reach Python without C++ backtraces.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
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
      [](Str<"quadrature: method"> method, Int<"quadrature: n", INT_MIN, INT_MAX> n) {
        attribution::Rule r;
        const CancelFn poll = interrupt_poll();
        without_gil(
            [&] { r = attribution::fixed_rule(method.value, static_cast<int>(n.value), poll); });
        return to_arrays(r);
      },
      py::arg("method"), py::arg("n"),
      R"doc(Nodes and weights (float64 arrays of length n) of a quadrature rule on [0, 1].

method: riemann_left, riemann_right, riemann_middle, trapezoid, gausslegendre, clenshaw_curtis or
captum_trapezoid (Captum's riemann_trapezoid, whose weights sum to 1 - 1/n). ValueError for an
unknown method, too few nodes or more than 100000. Ctrl-C raises KeyboardInterrupt.)doc");
  m.def(
      "patterson_quadrature",
      [](Int<"patterson_quadrature: level", INT_MIN, INT_MAX> level) {
        attribution::Rule r;
        without_gil([&] { r = attribution::patterson_rule(static_cast<int>(level.value)); });
        return to_arrays(r);
      },
      py::arg("level"),
      R"doc(Nested Gauss–Kronrod–Patterson rule of `level` in [0, 4] (5, 11, 23, 47, 95 nodes on [0, 1]),
nodes in the order they were first added, so level k's new nodes follow all of level k - 1's.
ValueError for a level out of range.)doc");
  m.attr("PATTERSON_MAX_LEVEL") = attribution::kPattersonMaxLevel;
  m.def(
      "ig_path",
      [](TensorArg<"ig_path: baseline"> baseline, TensorArg<"ig_path: diff"> diff,
         TensorArg<"ig_path: alphas"> alphas, Str<"ig_path: dtype"> dtype) {
        const auto st = parse_dtype(dtype.value);
        at::Tensor out;
        aten_without_gil(
            [&] { out = llmdbg::ig_path(baseline.value, diff.value, alphas.value, st); });
        return out;
      },
      py::arg("baseline"), py::arg("diff"), py::arg("alphas"), py::arg("dtype"),
      "Path points (K*B, ...) = baseline + alphas[k] * diff, step-major, float32 math, "
      "cast to dtype\n('float16', 'bfloat16', 'float32' or 'float64').");
  m.def(
      "ig_accumulate",
      [](TensorArg<"ig_accumulate: acc"> acc, TensorArg<"ig_accumulate: grads"> grads,
         TensorArg<"ig_accumulate: weights"> weights,
         TensorArg<"ig_accumulate: rows", /*Optional=*/true> rows) {
        aten_without_gil(
            [&] { llmdbg::ig_accumulate(acc.value, grads.value, weights.value, rows.value); });
      },
      py::arg("acc"), py::arg("grads"), py::arg("weights"), py::arg("rows") = py::none(),
      "acc[g, rows[b]] += sum_k weights[k] * grads[g, k*R + b] in float32, in place.");
}

}  // namespace llmdbg::bindings
