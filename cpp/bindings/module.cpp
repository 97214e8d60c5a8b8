// The pybind11 module llmdbg._core: creates the module and calls one bind_* function per binding
// file (see common.hpp). Nothing is bound here.
#include <pybind11/pybind11.h>

#include "common.hpp"

PYBIND11_MODULE(_core, m) {
  namespace b = llmdbg::bindings;
  m.doc() = "llmdbg's compiled core (private; use the llmdbg package).";
  b::bind_common(m);  // first: creates CaptureBudgetError, which the others may raise
  b::bind_stats(m);
  b::bind_attention(m);
  b::bind_qk_attention(m);
  b::bind_attribution(m);
  b::bind_data(m);
  b::bind_tsne(m);
  b::bind_capture(m);
}
