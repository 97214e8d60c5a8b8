// Bindings for the attention kernels in cpp/core/attention. Torch-free: numpy arrays in and out.
// Per-head diagnostics (entropy, sink scores, ...) and the Jensen-Shannon drift between runs.
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "core/attention/head_stats.hpp"

namespace llmdbg::bindings {

namespace {

namespace att = llmdbg::attention;

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checked per-layer (B, H, T, T) arrays: one float dtype, C-contiguous, same B and T.
struct Layers {
  std::vector<py::array> arrays;  // keeps the buffers alive while the GIL is released
  bool is_double = false;
  int64_t batch = 0, tokens = 0;

  template <typename T>
  std::vector<att::LayerMaps<T>> views() const {
    std::vector<att::LayerMaps<T>> v;
    for (const auto& a : arrays) {
      v.push_back({static_cast<const T*>(a.data()), static_cast<int64_t>(a.shape(1))});
    }
    return v;
  }
};

Layers check_layers(const py::sequence& seq, const char* fn, const char* what) {
  Layers out;
  const std::string where = std::string(fn) + ": " + what;
  if (py::len(seq) == 0) throw py::value_error(where + " is empty");
  for (size_t i = 0; i < py::len(seq); ++i) {
    py::object obj = seq[i];
    if (!py::isinstance<py::array>(obj)) {
      throw py::type_error(where + "[" + std::to_string(i) + "] must be a numpy array");
    }
    auto a = py::reinterpret_borrow<py::array>(obj);
    const std::string name = where + "[" + std::to_string(i) + "]";
    const bool is_f32 = py::isinstance<py::array_t<float>>(a);
    const bool is_f64 = py::isinstance<py::array_t<double>>(a);
    if (!is_f32 && !is_f64) {
      throw py::type_error(name + " must be float32 or float64, got " +
                           py::str(a.dtype()).cast<std::string>());
    }
    if (i == 0) out.is_double = is_f64;
    if (is_f64 != out.is_double) {
      throw py::type_error(where + ": every layer must have the same dtype (float32 or float64)");
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    if (a.ndim() != 4 || a.shape(2) != a.shape(3)) {
      throw py::value_error(name + " has shape " + shape_of(a) + "; expected (B, H, T, T)");
    }
    if (i == 0) out.batch = a.shape(0), out.tokens = a.shape(2);
    if (a.shape(0) != out.batch || a.shape(2) != out.tokens) {
      throw py::value_error(name + " has shape " + shape_of(a) + " but layer 0 has B=" +
                            std::to_string(out.batch) + ", T=" + std::to_string(out.tokens));
    }
    out.arrays.push_back(std::move(a));
  }
  return out;
}

// A (B, T) bool/uint8 C-contiguous mask, or nullptr for None.
const uint8_t* check_mask(const py::object& obj, const Layers& layers, const char* fn,
                          const char* what, py::array& keep) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(fn) + ": " + what + " must be a numpy array or None");
  }
  keep = py::reinterpret_borrow<py::array>(obj);
  const char kind = keep.dtype().kind();
  if (!((kind == 'b' || kind == 'u') && keep.itemsize() == 1)) {
    throw py::type_error(std::string(fn) + ": " + what + " must be bool or uint8, got " +
                         py::str(keep.dtype()).cast<std::string>());
  }
  if (!(keep.flags() & py::array::c_style)) {
    throw py::value_error(std::string(fn) + ": " + what + " must be C-contiguous");
  }
  if (keep.ndim() != 2 || keep.shape(0) != layers.batch || keep.shape(1) != layers.tokens) {
    throw py::value_error(std::string(fn) + ": " + what + " has shape " + shape_of(keep) +
                          "; expected (B, T) = (" + std::to_string(layers.batch) + ", " +
                          std::to_string(layers.tokens) + ")");
  }
  return static_cast<const uint8_t*>(keep.data());
}

// Hand a vector to numpy without copying: the array owns it through a capsule.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, owned->data(), free);
}

py::dict head_stats(const py::sequence& layers_in, const py::object& mask_in,
                    const py::object& special_in, int num_threads) {
  const Layers layers = check_layers(layers_in, "head_stats", "attentions");
  py::array mask_keep, special_keep;
  const uint8_t* mask = check_mask(mask_in, layers, "head_stats", "mask", mask_keep);
  const uint8_t* special = check_mask(special_in, layers, "head_stats", "special", special_keep);
  att::HeadStats r;
  without_gil([&] {
    const int64_t b = layers.batch, t = layers.tokens;
    r = layers.is_double ? att::head_stats(layers.views<double>(), b, t, mask, special, num_threads)
                         : att::head_stats(layers.views<float>(), b, t, mask, special, num_threads);
  });
  const py::ssize_t l = r.layers, b = r.batch, h = r.heads, t = r.tokens;
  py::dict d;
  d["entropy"] = to_numpy(std::move(r.entropy), {l, h});
  d["entropy_norm_bidirectional"] = to_numpy(std::move(r.entropy_norm_bidirectional), {l, h});
  d["entropy_norm_causal"] = to_numpy(std::move(r.entropy_norm_causal), {l, h});
  d["max_weight"] = to_numpy(std::move(r.max_weight), {l, h});
  d["special_mass"] = to_numpy(std::move(r.special_mass), {l, h});
  d["upper_max"] = to_numpy(std::move(r.upper_max), {l, h});
  d["sink"] = to_numpy(std::move(r.sink), {l, b, h, t});
  d["sink_all"] = to_numpy(std::move(r.sink_all), {l, b, h, t});
  d["sink_max"] = to_numpy(std::move(r.sink_max), {l, b, h});
  d["sink_argmax"] = to_numpy(std::move(r.sink_argmax), {l, b, h});
  d["queries"] = to_numpy(std::move(r.queries), {b});
  d["norm_queries_bidirectional"] = to_numpy(std::move(r.norm_queries_bidirectional), {b});
  d["norm_queries_causal"] = to_numpy(std::move(r.norm_queries_causal), {b});
  return d;
}

py::array_t<double> js_divergence(const py::sequence& a_in, const py::sequence& b_in,
                                  const py::object& mask_in, int num_threads) {
  const Layers a = check_layers(a_in, "js_divergence", "a");
  const Layers b = check_layers(b_in, "js_divergence", "b");
  if (a.arrays.size() != b.arrays.size()) {
    throw py::value_error("js_divergence: a has " + std::to_string(a.arrays.size()) +
                          " layers but b has " + std::to_string(b.arrays.size()));
  }
  if (a.is_double != b.is_double) {
    throw py::type_error("js_divergence: a and b must have the same dtype");
  }
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    if (shape_of(a.arrays[i]) != shape_of(b.arrays[i])) {
      throw py::value_error("js_divergence: layer " + std::to_string(i) + " has shape " +
                            shape_of(a.arrays[i]) + " in a but " + shape_of(b.arrays[i]) + " in b");
    }
  }
  py::array mask_keep;
  const uint8_t* mask = check_mask(mask_in, a, "js_divergence", "mask", mask_keep);
  std::vector<double> out;
  int64_t heads = 0;
  for (const auto& arr : a.arrays) heads = std::max<int64_t>(heads, arr.shape(1));
  without_gil([&] {
    const int64_t batch = a.batch, t = a.tokens;
    out = a.is_double
              ? att::js_divergence(a.views<double>(), b.views<double>(), batch, t, mask, num_threads)
              : att::js_divergence(a.views<float>(), b.views<float>(), batch, t, mask, num_threads);
  });
  const auto n_layers = static_cast<py::ssize_t>(a.arrays.size());
  return to_numpy(std::move(out), {n_layers, static_cast<py::ssize_t>(heads)});
}

}  // namespace

void bind_head_stats(py::module_& m) {
  m.def("attention_head_stats", &head_stats, py::arg("layers"), py::arg("mask"), py::arg("special"),
        py::arg("num_threads") = 0,
        R"doc(Fused per-(layer, head) attention statistics (double accumulation).

layers: per-layer C-contiguous (B, H_l, T, T) arrays of one dtype (float32 or float64); mask and
special: (B, T) bool/uint8 or None. Returns a dict of numpy arrays: entropy,
entropy_norm_bidirectional, entropy_norm_causal, max_weight, special_mass, upper_max (L, H);
sink, sink_all (L, B, H, T); sink_max, sink_argmax (L, B, H); queries, norm_queries_bidirectional,
norm_queries_causal (B). NaN marks heads a layer does not have.)doc");
  m.def("attention_js_divergence", &js_divergence, py::arg("a"), py::arg("b"), py::arg("mask"),
        py::arg("num_threads") = 0,
        R"doc(Mean Jensen-Shannon divergence (nats) per (layer, head) between corresponding rows of
two lists of (B, H, T, T) maps with equal shapes and dtype, over real queries.
Returns (L, H).)doc");
}

}  // namespace llmdbg::bindings
