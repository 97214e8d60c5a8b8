#pragma once
// Scalar and tensor arguments with readable errors. pybind11 answers an argument it cannot
// convert (2**40 for a C int, 1e300 for an integer, "x" for a float, a numpy array for a tensor)
// with a dump of the whole signature; the argument types below accept any Python object of the
// right kind instead and raise TypeError/ValueError naming the argument ("function: argument",
// the style of arrays.hpp). A binding takes e.g. `Int<"quadrature: n", 1>` and reads `.value`.
//
//   Threads<"fn">       num_threads: any Python int; <= 0 is the OpenMP default, huge counts
//                       are clamped to four per processor (resolve_threads), 10**30 included
//   Int<"fn: x", lo, hi>  an int (Python int or numpy integer, not bool) in [lo, hi]
//   Real<"fn: x">       a real number (int, float, numpy scalar; not bool); NaN/inf pass through
//   Flag<"fn: x">       True/False (bool or numpy.bool_; 0 and 1 too)
//   Str<"fn: x">        a str
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "core/common/parallel.hpp"

namespace llmdbg::bindings {

namespace py = pybind11;

// A string literal as a template argument (C++20).
template <size_t N>
struct ArgName {
  char text[N];
  constexpr ArgName(const char (&s)[N]) { std::copy_n(s, N, text); }  // NOLINT: implicit
  std::string str() const { return std::string(text, N - 1); }
};

template <ArgName Name>
struct Threads {
  int value = 0;
};
template <ArgName Name, int64_t Lo = std::numeric_limits<int64_t>::min(),
          int64_t Hi = std::numeric_limits<int64_t>::max()>
struct Int {
  int64_t value = 0;
};
template <ArgName Name>
struct Real {
  double value = 0.0;
};
template <ArgName Name>
struct Flag {
  bool value = false;
};
template <ArgName Name>
struct Str {
  std::string value;
};

namespace detail {

inline std::string type_name(py::handle src) { return Py_TYPE(src.ptr())->tp_name; }

inline bool is_bool(py::handle src) {
  return PyBool_Check(src.ptr()) || type_name(src) == std::string("numpy.bool") ||
         type_name(src) == std::string("numpy.bool_");
}

// A Python int (or numpy integer: anything with __index__) as a Python int; TypeError otherwise.
inline py::int_ index_of(py::handle src, const std::string& name) {
  if (PyLong_CheckExact(src.ptr())) return py::reinterpret_borrow<py::int_>(src);  // fast path
  if (is_bool(src) || PyFloat_Check(src.ptr())) {
    throw py::type_error(name + " must be an int, got " + type_name(src));
  }
  PyObject* idx = PyNumber_Index(src.ptr());
  if (idx == nullptr) {
    PyErr_Clear();
    throw py::type_error(name + " must be an int, got " + type_name(src));
  }
  return py::reinterpret_steal<py::int_>(idx);
}

// Sign of a Python int and, when it fits, its value (overflow: true when it does not).
inline int64_t to_int64(const py::int_& v, bool* overflow) {
  int over = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &over);
  *overflow = over != 0;
  if (*overflow) return over > 0 ? std::numeric_limits<int64_t>::max() : 0;
  return static_cast<int64_t>(x);
}

}  // namespace detail

}  // namespace llmdbg::bindings

namespace pybind11::detail {

template <llmdbg::bindings::ArgName Name>
struct type_caster<llmdbg::bindings::Threads<Name>> {
  PYBIND11_TYPE_CASTER(llmdbg::bindings::Threads<Name>, const_name("int"));
  bool load(handle src, bool) {
    namespace b = llmdbg::bindings;
    const int_ v = b::detail::index_of(src, Name.str() + ": num_threads");
    bool overflow = false;
    const int64_t n = b::detail::to_int64(v, &overflow);
    // Negative (however large) means "the default"; positive is clamped like resolve_threads.
    if (PyObject_RichCompareBool(v.ptr(), int_(0).ptr(), Py_LE) == 1) {
      value.value = 0;
    } else {
      value.value = static_cast<int>(
          overflow ? llmdbg::max_threads()
                   : std::min<int64_t>(n, static_cast<int64_t>(llmdbg::max_threads())));
    }
    return true;
  }
  static handle cast(const llmdbg::bindings::Threads<Name>& t, return_value_policy, handle) {
    return PyLong_FromLong(t.value);
  }
};

template <llmdbg::bindings::ArgName Name, int64_t Lo, int64_t Hi>
struct type_caster<llmdbg::bindings::Int<Name, Lo, Hi>> {
  using Arg = llmdbg::bindings::Int<Name, Lo, Hi>;
  PYBIND11_TYPE_CASTER(Arg, const_name("int"));
  bool load(handle src, bool) {
    namespace b = llmdbg::bindings;
    const std::string name = Name.str();
    const int_ v = b::detail::index_of(src, name);
    bool overflow = false;
    const int64_t x = b::detail::to_int64(v, &overflow);
    if (overflow || x < Lo || x > Hi) {
      throw value_error(name + " must be " + range() + ", got " + str(v).cast<std::string>());
    }
    value.value = x;
    return true;
  }
  static handle cast(const llmdbg::bindings::Int<Name, Lo, Hi>& i, return_value_policy, handle) {
    return PyLong_FromLongLong(i.value);
  }
  // "in [1, 100000]", ">= 0", "<= 5" or "an int64".
  static std::string range() {
    constexpr bool low = Lo != std::numeric_limits<int64_t>::min();
    constexpr bool high = Hi != std::numeric_limits<int64_t>::max();
    if (low && high) return "in [" + std::to_string(Lo) + ", " + std::to_string(Hi) + "]";
    if (low) return ">= " + std::to_string(Lo);
    if (high) return "<= " + std::to_string(Hi);
    return "an int64 (within +-2**63)";
  }
};

template <llmdbg::bindings::ArgName Name>
struct type_caster<llmdbg::bindings::Real<Name>> {
  PYBIND11_TYPE_CASTER(llmdbg::bindings::Real<Name>, const_name("float"));
  bool load(handle src, bool) {
    namespace b = llmdbg::bindings;
    if (b::detail::is_bool(src) || PyUnicode_Check(src.ptr()) || PyBytes_Check(src.ptr()) ||
        PyComplex_Check(src.ptr())) {
      throw type_error(Name.str() + " must be a real number, got " + b::detail::type_name(src));
    }
    const double x = PyFloat_AsDouble(src.ptr());  // ints beyond float range raise OverflowError
    if (x == -1.0 && PyErr_Occurred()) {
      const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
      PyErr_Clear();
      if (overflow) throw value_error(Name.str() + " is too large for a float64");
      throw type_error(Name.str() + " must be a real number, got " + b::detail::type_name(src));
    }
    value.value = x;
    return true;
  }
  static handle cast(const llmdbg::bindings::Real<Name>& r, return_value_policy, handle) {
    return PyFloat_FromDouble(r.value);
  }
};

template <llmdbg::bindings::ArgName Name>
struct type_caster<llmdbg::bindings::Flag<Name>> {
  PYBIND11_TYPE_CASTER(llmdbg::bindings::Flag<Name>, const_name("bool"));
  bool load(handle src, bool) {
    namespace b = llmdbg::bindings;
    if (b::detail::is_bool(src)) {
      value.value = PyObject_IsTrue(src.ptr()) == 1;
      return true;
    }
    if (PyLong_Check(src.ptr())) {
      const int_ v = reinterpret_borrow<int_>(src);
      bool overflow = false;
      const int64_t x = b::detail::to_int64(v, &overflow);
      if (!overflow && (x == 0 || x == 1)) {
        value.value = x == 1;
        return true;
      }
    }
    throw type_error(Name.str() + " must be True or False, got " +
                     repr(src).cast<std::string>().substr(0, 80));
  }
  static handle cast(const llmdbg::bindings::Flag<Name>& f, return_value_policy, handle) {
    return handle(f.value ? Py_True : Py_False).inc_ref();
  }
};

template <llmdbg::bindings::ArgName Name>
struct type_caster<llmdbg::bindings::Str<Name>> {
  PYBIND11_TYPE_CASTER(llmdbg::bindings::Str<Name>, const_name("str"));
  bool load(handle src, bool) {
    if (!PyUnicode_Check(src.ptr())) {
      throw type_error(Name.str() + " must be a str, got " +
                       llmdbg::bindings::detail::type_name(src));
    }
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(src.ptr(), &size);
    if (data == nullptr) {
      PyErr_Clear();
      throw value_error(Name.str() + " cannot be encoded as UTF-8 (lone surrogate?)");
    }
    value.value.assign(data, static_cast<size_t>(size));
    return true;
  }
  static handle cast(const llmdbg::bindings::Str<Name>& s, return_value_policy, handle) {
    return PyUnicode_DecodeUTF8(s.value.data(), static_cast<Py_ssize_t>(s.value.size()), "strict");
  }
};

}  // namespace pybind11::detail
