// Quadrature rules for integrated gradients (torch-free; the path and accumulation kernels that
// take tensors are bound in module.cpp, the one binding file that includes torch).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common.hpp"
#include "core/attribution/patterson.hpp"
#include "core/attribution/quadrature.hpp"

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
}

}  // namespace llmdbg::bindings
