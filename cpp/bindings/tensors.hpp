#pragma once
// Shared by the binding files that take torch tensors (capture.cpp, attribution.cpp): the
// at::Tensor <-> torch.Tensor caster and the dtype names they accept.
#include <pybind11/pybind11.h>
#include <torch/python.h>  // the at::Tensor <-> torch.Tensor caster

#include <string>

namespace llmdbg::bindings {

namespace py = pybind11;

inline c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw py::value_error("dtype must be 'float16', 'bfloat16', 'float32' or 'float64', got '" +
                        name + "'");
}

}  // namespace llmdbg::bindings
