#pragma once
// Shared by the binding files that take torch tensors (capture.cpp, attribution.cpp): tensor
// arguments checked at the boundary, the dtype names they accept, and a GIL release that keeps
// ATen's C++ backtraces out of Python error messages.
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/python.h>  // the at::Tensor <-> torch.Tensor caster (results)

#include <stdexcept>
#include <string>

#include "common.hpp"
#include "scalars.hpp"

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

// Tensors whose data the kernels can read: dense (strided), materialised, not quantized or
// nested. TypeError naming the argument otherwise.
inline void check_tensor(const at::Tensor& t, const std::string& name) {
  if (!t.defined()) throw py::type_error(name + " is an undefined tensor");
  if (t.is_meta()) {
    throw py::type_error(name +
                         " is a meta tensor; meta tensors hold no data (materialise it "
                         "first, e.g. load real weights instead of init_empty_weights)");
  }
  if (t.is_sparse() || t.is_sparse_csr()) {
    throw py::type_error(name +
                         " is a sparse tensor; sparse tensors are not supported; call "
                         ".to_dense()");
  }
  if (t.is_nested()) {
    throw py::type_error(name + " is a nested tensor; pass a dense (padded) tensor");
  }
  if (t.layout() != at::kStrided) {
    throw py::type_error(name + " has layout " + c10::str(t.layout()) +
                         "; only dense (strided) tensors are supported");
  }
  if (t.is_quantized()) {
    throw py::type_error(name + " is a quantized tensor; call .dequantize() first");
  }
}

// A torch.Tensor argument, checked by check_tensor. Optional: None gives an undefined tensor.
template <ArgName Name, bool Optional = false>
struct TensorArg {
  at::Tensor value;
};

// without_gil for code that calls ATen: a c10::Error reaches Python with its message but without
// the C++ backtrace that its what() appends (c10::ValueError and IndexError as ValueError).
template <typename F>
void aten_without_gil(F&& f) {
  without_gil([&] {
    try {
      f();
    } catch (const c10::ValueError& e) {
      throw std::invalid_argument(e.what_without_backtrace());
    } catch (const c10::IndexError& e) {
      throw std::invalid_argument(e.what_without_backtrace());
    } catch (const c10::Error& e) {
      throw std::runtime_error(e.what_without_backtrace());
    }
  });
}

}  // namespace llmdbg::bindings

namespace pybind11::detail {

template <llmdbg::bindings::ArgName Name, bool Optional>
struct type_caster<llmdbg::bindings::TensorArg<Name, Optional>> {
  using Arg = llmdbg::bindings::TensorArg<Name, Optional>;
  PYBIND11_TYPE_CASTER(Arg, const_name<Optional>("torch.Tensor | None", "torch.Tensor"));
  bool load(handle src, bool) {
    if (Optional && src.is_none()) {
      value.value = at::Tensor();
      return true;
    }
    if (!THPVariable_Check(src.ptr())) {
      throw type_error(Name.str() + " must be a torch.Tensor" + (Optional ? " or None" : "") +
                       ", got " + llmdbg::bindings::detail::type_name(src));
    }
    value.value = THPVariable_Unpack(src.ptr());
    llmdbg::bindings::check_tensor(value.value, Name.str());
    return true;
  }
  static handle cast(const llmdbg::bindings::TensorArg<Name, Optional>&, return_value_policy,
                     handle) {
    return none().release();
  }
};

}  // namespace pybind11::detail
