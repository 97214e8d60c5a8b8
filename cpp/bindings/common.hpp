#pragma once
// Shared by the binding files: GIL release with error translation, and the bind_* entry points
// that module.cpp calls (one binding file per core folder, plus the capture store). Array
// arguments are checked with arrays.hpp, torch dtype names parsed with tensors.hpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <new>
#include <stdexcept>
#include <string>

#include "core/common/errors.hpp"
#include "core/stats/stats.hpp"

namespace llmdbg::bindings {

namespace py = pybind11;

// llmdbg._core.CaptureBudgetError (a MemoryError), created in common.cpp. Made by hand rather
// than through py::register_exception so that translation does not depend on the pybind11
// copy torch was built with.
extern PyObject* g_budget_error;

// Run f without the GIL. No C++ exception may cross the GIL release: errors are caught there
// and raised as Python errors once the GIL is held again (BudgetExceeded -> CaptureBudgetError,
// std::invalid_argument -> ValueError, std::out_of_range -> KeyError, std::bad_alloc and
// std::length_error -> MemoryError, Interrupted -> the exception that python_interrupted() left
// pending, normally KeyboardInterrupt; others -> RuntimeError).
template <typename F>
void without_gil(F&& f) {
  enum class Kind { none, budget, value, key, memory, interrupted, runtime } kind = Kind::none;
  std::string message;
  {
    py::gil_scoped_release release;
    try {
      f();
    } catch (const BudgetExceeded& e) {
      kind = Kind::budget, message = e.what();
    } catch (const Interrupted&) {
      kind = Kind::interrupted;
    } catch (const std::invalid_argument& e) {
      kind = Kind::value, message = e.what();
    } catch (const std::out_of_range& e) {
      kind = Kind::key, message = e.what();
    } catch (const std::bad_alloc&) {
      kind = Kind::memory, message = "out of memory";
    } catch (const std::length_error&) {
      kind = Kind::memory, message = "an allocation larger than the address space was requested";
    } catch (const std::exception& e) {
      kind = Kind::runtime, message = e.what();
    }
  }
  switch (kind) {
    case Kind::none: return;
    case Kind::budget:
      PyErr_SetString(g_budget_error, message.c_str());
      throw py::error_already_set();
    case Kind::interrupted:
      if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
      throw py::error_already_set();
    case Kind::value: throw py::value_error(message);
    case Kind::key: throw py::key_error(message);
    case Kind::memory:
      PyErr_SetString(PyExc_MemoryError, message.c_str());
      throw py::error_already_set();
    case Kind::runtime: throw std::runtime_error(message);
  }
}

// The cancellation poll of an interruptible kernel run inside without_gil (it is called on the
// thread that released the GIL): takes the GIL, runs Python's signal handlers and returns true
// when one raised (Ctrl-C: KeyboardInterrupt). The exception stays pending; the kernel then
// throws llmdbg::Interrupted and without_gil raises it.
inline bool python_interrupted() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// Whether the calling thread is Python's main thread. The main thread's ident is cached (every
// capture hook asks), and asked again from threading for any other thread (after a fork the
// main thread may change). Call with the GIL held.
inline bool on_main_thread() {
  static unsigned long main_ident = 0;  // written with the GIL held only
  const unsigned long me = PyThread_get_thread_ident();
  if (me == main_ident) return true;
  const py::module_ threading = py::module_::import("threading");
  const bool main = threading.attr("current_thread")().is(threading.attr("main_thread")());
  if (main) main_ident = me;
  return main;
}

// python_interrupted as a kernel's poll, or an empty poll where no signal handler can run: only
// the main thread runs them, so a kernel started from another thread never takes the GIL back.
// Call with the GIL held.
inline std::function<bool()> interrupt_poll() {
  if (!on_main_thread()) return {};
  return python_interrupted;
}

void bind_common(py::module_& m);        // common.cpp: CaptureBudgetError, OpenMP threads
void bind_stats(py::module_& m);         // stats.cpp: fused summary statistics
void bind_attention(py::module_& m);     // attention.cpp: rollout, flow, head stats, drift
void bind_qk_attention(py::module_& m);  // qk_attention.cpp: attention recomputed from Q and K
void bind_attribution(py::module_& m);   // attribution.cpp: IG quadrature rules, IG kernels
void bind_data(py::module_& m);          // data.cpp: token/id counts, duplicates
void bind_tsne(py::module_& m);          // tsne.cpp: kNN, affinities, repulsion, optimiser
void bind_capture(py::module_& m);       // capture.cpp: CaptureStore, device statistics

// stats::Summary as the dict summarize() returns (stats.cpp; capture.cpp uses it too).
py::dict summary_to_dict(const stats::Summary& s);

}  // namespace llmdbg::bindings
