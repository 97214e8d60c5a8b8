#pragma once
// Typed numpy arguments for the binding files: the one check of dtype, shape and memory layout
// (check_array), one message style, and numpy <-> std::vector conversions.
//
// Every message names the argument (callers pass "function: argument") and what was expected,
// checked in this order:
//   TypeError   "tsne_kl_divergence: Y must be a numpy array"
//   TypeError   "tsne_knn: X must be float32 or float64, got int64"
//   ValueError  "summarize: array must be C-contiguous (use numpy.ascontiguousarray)"
//   ValueError  "tsne_repulsion: Y has shape (5, 3); expected (n, 2)"
//   ValueError  "attention_head_stats: mask has shape (2, 3); expected (B, T) = (2, 9)"
// Checks that relate two arguments ("Y has 49 rows but P has 50") stay with the caller, in the
// same "function: argument" form.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cctype>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmdbg::bindings {

namespace py = pybind11;

// Accepted dtypes, as a bit set.
enum DType : unsigned {
  kFloat32 = 1u << 0,
  kFloat64 = 1u << 1,
  kInt64 = 1u << 2,
  kUInt8 = 1u << 3,
  kBool = 1u << 4,
  kInteger = 1u << 5,  // any signed or unsigned integer dtype (not bool)
};
using DTypes = unsigned;
inline constexpr DTypes kFloat = kFloat32 | kFloat64;

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// "(2, 3)", "(5,)", "()": numpy's spelling of a shape.
inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline bool has_dtype(const py::array& a, DTypes dtypes) {
  const char kind = a.dtype().kind();
  return ((dtypes & kFloat32) && py::isinstance<py::array_t<float>>(a)) ||
         ((dtypes & kFloat64) && py::isinstance<py::array_t<double>>(a)) ||
         ((dtypes & kInt64) && py::isinstance<py::array_t<int64_t>>(a)) ||
         ((dtypes & kUInt8) && kind == 'u' && a.itemsize() == 1) ||
         ((dtypes & kBool) && kind == 'b') || ((dtypes & kInteger) && (kind == 'i' || kind == 'u'));
}

// "float32 or float64", "bool or uint8", "int64", "an integer type".
inline std::string dtypes_str(DTypes dtypes) {
  std::vector<std::string> names;
  if (dtypes & kBool) names.emplace_back("bool");
  if (dtypes & kUInt8) names.emplace_back("uint8");
  if (dtypes & kInt64) names.emplace_back("int64");
  if (dtypes & kFloat32) names.emplace_back("float32");
  if (dtypes & kFloat64) names.emplace_back("float64");
  if (dtypes & kInteger) names.emplace_back("an integer type");
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) {
    s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  }
  return s;
}

// A mask or flag array must hold only 0 and 1: a cast to uint8 would read 256 as 0 and 0.5 as 0,
// silently turning real tokens into padding. Checked through numpy before any cast.
inline void check_zero_one(const py::handle& obj, const std::string& name) {
  const auto np = py::module_::import("numpy");
  const py::object arr = np.attr("asarray")(obj);
  const auto kind = arr.attr("dtype").attr("kind").cast<std::string>();
  if (kind == "b") return;
  if (kind.size() != 1 || kind.find_first_of("iuf") == std::string::npos) {
    // complex, object or str: a cast to uint8 would not say what was meant
    throw py::type_error(name + " must be a (B, T) array of 0/1 or bool, got dtype " +
                         py::str(arr.attr("dtype")).cast<std::string>());
  }
  const py::object bad =
      np.attr("logical_and")(np.attr("not_equal")(arr, 0), np.attr("not_equal")(arr, 1));
  if (np.attr("any")(bad).cast<bool>()) {
    const py::object first =
        arr.attr("__getitem__")(np.attr("nonzero")(bad)).attr("__getitem__")(0);
    throw py::value_error(name + " must hold only 0 (padding) and 1 (real token); got " +
                          py::repr(first).cast<std::string>());
  }
}

// The shape an argument must have: one label per dimension, e.g. {"B", "H", "T", "T"}. A label
// that repeats names one size ((T, T) is square); a number ("2") is a fixed size; a leading "..."
// stands for any number of leading dimensions. with(label, size) fixes a label's size (the
// message then reads "(B, T) = (2, 9)"); nonempty() also requires every dimension to be >= 1.
// Shape() accepts any shape.
class Shape {
 public:
  Shape() : any_(true) {}
  Shape(std::initializer_list<const char*> labels) {
    for (const char* l : labels) {
      if (std::string(l) == "...") {
        leading_ = true;
      } else {
        labels_.emplace_back(l);
      }
    }
  }
  Shape& with(const std::string& label, int64_t size) {
    known_.emplace_back(label, size);
    return *this;
  }
  Shape& nonempty() {
    nonempty_ = true;
    return *this;
  }

  bool matches(const py::array& a) const {
    if (any_) return true;
    const auto n = static_cast<py::ssize_t>(labels_.size());
    if (leading_ ? a.ndim() < n : a.ndim() != n) return false;
    if (nonempty_) {
      for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.shape(d) < 1) return false;
      }
    }
    const py::ssize_t offset = a.ndim() - n;
    for (py::ssize_t i = 0; i < n; ++i) {
      if (a.shape(offset + i) != size_of(labels_[i], a, offset)) return false;
    }
    return true;
  }

  // "(n, 2)", "(..., n)", "(B, T) = (2, 9)", "(B, H, T, T) with no empty dimension".
  std::string expected() const {
    std::string labels = "(", sizes = "(";
    if (leading_) labels += labels_.empty() ? "..." : "..., ";
    for (size_t i = 0; i < labels_.size(); ++i) {
      const std::string sep = i ? ", " : "";
      labels += sep + labels_[i];
      const int64_t* k = known(labels_[i]);
      sizes += sep + (k ? std::to_string(*k) : labels_[i]);
    }
    const std::string close = labels_.size() == 1 && !leading_ ? ",)" : ")";
    std::string s = labels + close;
    if (!known_.empty()) s += " = " + sizes + close;
    if (nonempty_) s += " with no empty dimension";
    return s;
  }

 private:
  const int64_t* known(const std::string& label) const {
    for (const auto& [l, size] : known_) {
      if (l == label) return &size;
    }
    return nullptr;
  }
  // The size a dimension labelled `label` must have: fixed, known, or that of the label's first
  // occurrence in `a`.
  int64_t size_of(const std::string& label, const py::array& a, py::ssize_t offset) const {
    if (std::isdigit(static_cast<unsigned char>(label[0]))) return std::stoll(label);
    if (const int64_t* k = known(label)) return *k;
    size_t first = 0;
    while (labels_[first] != label) ++first;
    return a.shape(offset + static_cast<py::ssize_t>(first));
  }

  bool any_ = false, leading_ = false, nonempty_ = false;
  std::vector<std::string> labels_;
  std::vector<std::pair<std::string, int64_t>> known_;
};

// The dtype step of check_array on its own, for arguments that are converted afterwards (an
// integer array cast to int64 must first be shown to hold integers). TypeError.
inline void check_dtype(const py::array& a, const std::string& name, DTypes dtypes) {
  if (!has_dtype(a, dtypes)) {
    throw py::type_error(name + " must be " + dtypes_str(dtypes) + ", got " + dtype_name(a));
  }
}

// The one check: dtype (TypeError), then C-contiguity and shape (ValueError). Returns `a`.
template <typename Array>
const Array& check_array(const Array& a, const std::string& name, DTypes dtypes,
                         const Shape& shape) {
  check_dtype(a, name, dtypes);
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(name + " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  if (!shape.matches(a)) {
    throw py::value_error(name + " has shape " + shape_str(a) + "; expected " + shape.expected());
  }
  return a;
}

// check_array for an argument that must already be a numpy array (TypeError otherwise).
inline py::array checked_array(const py::handle& obj, const std::string& name, DTypes dtypes,
                               const Shape& shape) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(name + " must be a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  check_array(a, name, dtypes, shape);
  return a;
}

// The same for an optional argument: None gives std::nullopt.
inline std::optional<py::array> checked_array_or_none(const py::handle& obj,
                                                      const std::string& name, DTypes dtypes,
                                                      const Shape& shape) {
  if (obj.is_none()) return std::nullopt;
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(name + " must be a numpy array or None");
  }
  return checked_array(obj, name, dtypes, shape);
}

// Typed data pointer of a checked array, or of an optional one (nullptr for None).
template <typename T>
const T* data_of(const py::array& a) {
  return static_cast<const T*>(a.data());
}
template <typename T>
const T* data_of(const std::optional<py::array>& a) {
  return a ? data_of<T>(*a) : nullptr;
}

// Hand a vector to numpy without copying: the array owns it through a capsule.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::move(shape), owned->data(), free);
}

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  const auto n = static_cast<py::ssize_t>(v.size());
  return to_numpy(std::move(v), {n});
}

}  // namespace llmdbg::bindings
