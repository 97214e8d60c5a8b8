// Bindings for the attention kernels in cpp/core/attention: the attention graph (rollout,
// attention flow), the row-sum check the attention input validation uses, per-head diagnostics
// (entropy, sink scores, ...) and the Jensen-Shannon drift between runs. Torch-free: numpy arrays
// in and out.
// Every argument is checked here first (ValueError / TypeError naming it); pointers are
// collected with the GIL held, then the kernels run without it.
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "core/attention/flow.hpp"
#include "core/attention/head_stats.hpp"
#include "core/attention/rollout.hpp"

namespace llmdbg::bindings {

namespace {

namespace att = llmdbg::attention;

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checked views of the arguments shared by rollout and flow. Holds references to every array.
struct GraphArgs {
  std::vector<py::array> keep;
  std::vector<att::GraphLayer> layers;
  int64_t batch = 0, tokens = 0;
  py::array_t<uint8_t> mask;
  bool has_mask = false;
  py::array_t<int64_t> rows;
  bool has_rows = false;
  att::GraphOptions options;

  att::AttentionGraph graph() const {
    return {layers.data(), static_cast<int64_t>(layers.size()), batch, tokens,
            has_mask ? mask.data() : nullptr};
  }
  int64_t out_rows() const { return has_rows ? static_cast<int64_t>(rows.size()) : tokens; }
};

att::HeadFusion parse_fusion(const std::string& name) {
  if (name == "mean") return att::HeadFusion::mean;
  if (name == "max") return att::HeadFusion::max;
  if (name == "min") return att::HeadFusion::min;
  throw py::value_error("head_fusion must be 'mean', 'max' or 'min', got '" + name + "'");
}

GraphArgs parse(const py::sequence& layers, const py::object& mask, const py::object& rows,
                const std::string& head_fusion, bool residual, double discard_ratio) {
  GraphArgs g;
  g.options = {parse_fusion(head_fusion), residual, discard_ratio};
  if (!(discard_ratio >= 0.0 && discard_ratio < 1.0)) {
    throw py::value_error("discard_ratio must be in [0, 1), got " + std::to_string(discard_ratio));
  }
  if (py::isinstance<py::str>(layers) || py::len(layers) == 0) {
    throw py::value_error("layers must be a non-empty list of (B, H, T, T) arrays");
  }
  for (size_t l = 0; l < py::len(layers); ++l) {
    const py::object item = layers[l];
    const std::string what = "layers[" + std::to_string(l) + "]";
    if (!py::isinstance<py::array>(item)) throw py::type_error(what + " must be a numpy array");
    auto a = py::reinterpret_borrow<py::array>(item);
    const bool f32 = py::isinstance<py::array_t<float>>(a), f64 = py::isinstance<py::array_t<double>>(a);
    if (!f32 && !f64) throw py::type_error(what + " must be float32 or float64, got " + dtype_name(a));
    if (a.ndim() != 4) throw py::value_error(what + " must be (B, H, T, T), got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(what + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    if (a.shape(2) != a.shape(3)) {
      throw py::value_error(what + " must hold square (T, T) maps, got shape " + shape_str(a));
    }
    if (a.shape(0) < 1 || a.shape(1) < 1 || a.shape(2) < 1) {
      throw py::value_error(what + " has an empty dimension: shape " + shape_str(a));
    }
    if (l == 0) {
      g.batch = a.shape(0), g.tokens = a.shape(2);
    } else if (a.shape(0) != g.batch || a.shape(2) != g.tokens) {
      throw py::value_error(what + " has shape " + shape_str(a) + " but layers[0] has batch " +
                            std::to_string(g.batch) + " and T " + std::to_string(g.tokens));
    }
    att::GraphLayer view;
    view.heads = a.shape(1);
    if (f32) view.f32 = static_cast<const float*>(a.data());
    else view.f64 = static_cast<const double*>(a.data());
    g.layers.push_back(view);
    g.keep.push_back(std::move(a));
  }
  if (!mask.is_none()) {
    g.mask = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
    if (!g.mask) throw py::type_error("mask must be a (B, T) array of 0/1 or bool");
    if (g.mask.ndim() != 2 || g.mask.shape(0) != g.batch || g.mask.shape(1) != g.tokens) {
      throw py::value_error("mask must have shape (B, T) = (" + std::to_string(g.batch) + ", " +
                            std::to_string(g.tokens) + "), got " + shape_str(g.mask));
    }
    for (int64_t b = 0; b < g.batch; ++b) {
      const uint8_t* m = g.mask.data() + b * g.tokens;
      bool any = false;
      for (int64_t t = 0; t < g.tokens; ++t) any |= m[t] != 0;
      if (!any) throw py::value_error("mask: sequence " + std::to_string(b) + " has no real token");
    }
    g.has_mask = true;
  }
  if (!rows.is_none()) {
    const auto arr = py::array::ensure(rows);
    if (!arr || (arr.dtype().kind() != 'i' && arr.dtype().kind() != 'u')) {
      throw py::type_error("rows must be a 1-D array of integers");
    }
    g.rows = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    if (g.rows.ndim() != 1) throw py::value_error("rows must be 1-D, got shape " + shape_str(g.rows));
    for (py::ssize_t r = 0; r < g.rows.size(); ++r) {
      const int64_t v = g.rows.data()[r];
      if (v < 0 || v >= g.tokens) {
        throw py::value_error("rows[" + std::to_string(r) + "] = " + std::to_string(v) +
                              " is outside [0, " + std::to_string(g.tokens) + ")");
      }
    }
    g.has_rows = true;
  }
  return g;
}

template <typename Kernel>
py::array_t<float> run(const GraphArgs& g, int num_threads, Kernel kernel) {
  py::array_t<float> out({static_cast<py::ssize_t>(g.batch), static_cast<py::ssize_t>(g.out_rows()),
                          static_cast<py::ssize_t>(g.tokens)});
  float* dst = out.mutable_data();
  const att::AttentionGraph graph = g.graph();
  const int64_t* rows = g.has_rows ? g.rows.data() : nullptr;
  const int64_t n_rows = g.out_rows();
  without_gil([&] { kernel(graph, g.options, rows, n_rows, dst, num_threads); });
  return out;
}

}  // namespace

void bind_head_stats(py::module_& m);

void bind_attention(py::module_& m) {
  m.def(
      "attention_rollout",
      [](const py::sequence& layers, const py::object& mask, const py::object& rows,
         const std::string& head_fusion, bool residual, double discard_ratio, int num_threads) {
        const GraphArgs g = parse(layers, mask, rows, head_fusion, residual, discard_ratio);
        return run(g, num_threads, att::rollout);
      },
      py::arg("layers"), py::kw_only(), py::arg("mask") = py::none(), py::arg("rows") = py::none(),
      py::arg("head_fusion") = "mean", py::arg("residual") = true, py::arg("discard_ratio") = 0.0,
      py::arg("num_threads") = 0,
      R"doc(Attention rollout over a list of C-contiguous (B, H, T, T) float32/float64 layers.

Returns float32 (B, T, T), or (B, len(rows), T) for the given query rows (int64, in [0, T)).
mask: (B, T) 0/1, nonzero for real tokens. Accumulated in float64. Use llmdbg.attention_rollout.)doc");
  m.def(
      "attention_flow",
      [](const py::sequence& layers, const py::object& mask, const py::object& rows,
         const std::string& head_fusion, bool residual, int num_threads) {
        const GraphArgs g = parse(layers, mask, rows, head_fusion, residual, 0.0);
        return run(g, num_threads, att::attention_flow);
      },
      py::arg("layers"), py::kw_only(), py::arg("mask") = py::none(), py::arg("rows") = py::none(),
      py::arg("head_fusion") = "mean", py::arg("residual") = true, py::arg("num_threads") = 0,
      R"doc(Attention flow (max-flow per output/input pair, rows normalised) over a list of
C-contiguous (B, H, T, T) float32/float64 layers; same arguments and output as
attention_rollout. Use llmdbg.attention_flow.)doc");
  m.def(
      "attention_row_sums",
      [](const py::array& array, int num_threads) {
        const bool f32 = py::isinstance<py::array_t<float>>(array);
        if (!f32 && !py::isinstance<py::array_t<double>>(array)) {
          throw py::type_error("array must be float32 or float64, got " + dtype_name(array));
        }
        if (!(array.flags() & py::array::c_style) || array.ndim() < 1) {
          throw py::value_error("array must be C-contiguous with at least one dimension");
        }
        std::vector<py::ssize_t> shape(array.shape(), array.shape() + array.ndim() - 1);
        py::array_t<double> out(shape);
        const int64_t cols = array.shape(array.ndim() - 1);
        const int64_t rows =
            cols == 0 ? static_cast<int64_t>(out.size()) : static_cast<int64_t>(array.size()) / cols;
        double* dst = out.mutable_data();
        const void* src = array.data();
        without_gil([&] {
          if (f32) att::row_sums(static_cast<const float*>(src), rows, cols, dst, num_threads);
          else att::row_sums(static_cast<const double*>(src), rows, cols, dst, num_threads);
        });
        return out;
      },
      py::arg("array"), py::arg("num_threads") = 0,
      "Sums over the last axis in float64, in one parallel pass (NaN/Inf propagate).");
  bind_head_stats(m);
}

namespace {

// ---- per-head statistics and drift ----

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
