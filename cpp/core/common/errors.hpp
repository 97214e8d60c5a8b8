#pragma once
// Error types the kernels throw; the bindings translate them to Python exceptions.
#include <stdexcept>

namespace llmdbg {

// A memory budget would be exceeded (llmdbg.CaptureBudgetError, a MemoryError, in Python).
class BudgetExceeded : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A kernel stopped early because its cancellation poll asked it to (Ctrl-C in Python: the binding
// raises the KeyboardInterrupt that the poll left pending). Outputs are then incomplete.
class Interrupted : public std::runtime_error {
 public:
  Interrupted() : std::runtime_error("interrupted") {}
  using std::runtime_error::runtime_error;
};

}  // namespace llmdbg
