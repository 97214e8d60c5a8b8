#pragma once
// Error types the kernels throw; the bindings translate them to Python exceptions.
#include <stdexcept>

namespace llmdbg {

// A memory budget would be exceeded (llmdbg.CaptureBudgetError, a MemoryError, in Python).
class BudgetExceeded : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace llmdbg
