// Bindings for cpp/core/common: the error type the kernels throw when a memory budget would be
// exceeded (llmdbg._core.CaptureBudgetError) and the OpenMP thread plumbing.
#include "common.hpp"

#include "core/common/parallel.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

PyObject* g_budget_error = nullptr;

void bind_common(py::module_& m) {
  g_budget_error =
      PyErr_NewException("llmdbg._core.CaptureBudgetError", PyExc_MemoryError, nullptr);
  m.add_object("CaptureBudgetError", py::reinterpret_borrow<py::object>(g_budget_error));
  m.def("openmp_max_threads", &llmdbg::openmp_max_threads,
        "omp_get_max_threads() of the OpenMP runtime our kernels use.");
  m.def(
      "openmp_team_size",
      [](Threads<"openmp_team_size"> threads) { return llmdbg::openmp_team_size(threads.value); },
      py::arg("num_threads") = 0,
      "Size of the team an OpenMP region gets for num_threads (<= 0: runtime default; above four "
      "per processor: clamped).");
}

}  // namespace llmdbg::bindings
