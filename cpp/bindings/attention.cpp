// Bindings for the attention kernels in cpp/core/attention: the attention graph (rollout,
// attention flow), per-head diagnostics (entropy, sinks, ...), the Jensen-Shannon drift between
// runs, and the row-sum check the attention input validation uses. Torch-free: numpy arrays in
// and out. Every argument is checked here first (arrays.hpp), pointers are collected with the
// GIL held, then the kernels run without it, polling for Ctrl-C (KeyboardInterrupt). Weights must
// be finite and >= 0 (checked by the kernels while they read them: ValueError naming
// layers[l] and the position).
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arrays.hpp"
#include "common.hpp"
#include "core/attention/flow.hpp"
#include "core/attention/head_stats.hpp"
#include "core/attention/rollout.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

namespace {

namespace att = llmdbg::attention;

// A checked list of per-layer (B, H_l, T, T) float32/float64 maps that agree on B and T. Holds
// a reference to every array, so the buffers stay alive while the GIL is released.
struct Layers {
  std::vector<py::array> arrays;
  int64_t batch = 0, tokens = 0;
  bool is_double = false;  // the dtype of layers[0]

  // Views for the head-statistics kernels (one dtype across layers).
  template <typename T>
  std::vector<att::LayerMaps<T>> views() const {
    std::vector<att::LayerMaps<T>> v;
    for (const auto& a : arrays) {
      v.push_back({static_cast<const T*>(a.data()), static_cast<int64_t>(a.shape(1))});
    }
    return v;
  }
};

// The argument `arg` of function `fn`. same_dtype: every layer has layers[0]'s dtype (the graph
// kernels take a dtype per layer, the head statistics one for all). nonempty: no dimension of
// size 0.
Layers check_layers(const std::string& fn, const std::string& arg, const py::object& obj,
                    bool same_dtype, bool nonempty) {
  const std::string name = fn + ": " + arg;
  if (!PySequence_Check(obj.ptr()) || PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()) ||
      py::isinstance<py::array>(obj)) {
    throw py::type_error(name + " must be a list of (B, H, T, T) arrays, got " +
                         std::string(Py_TYPE(obj.ptr())->tp_name));
  }
  // A tuple of the items: another thread that mutates a list cannot change what is checked.
  const auto seq = py::reinterpret_steal<py::tuple>(PySequence_Tuple(obj.ptr()));
  if (!seq) throw py::error_already_set();
  if (seq.empty()) throw py::value_error(name + " must be a non-empty list of (B, H, T, T) arrays");
  Layers out;
  for (size_t i = 0; i < seq.size(); ++i) {
    const std::string what = name + "[" + std::to_string(i) + "]";
    Shape shape{"B", "H", "T", "T"};
    if (nonempty) shape.nonempty();
    const py::object item = seq[i];
    py::array a = checked_array(item, what, kFloat, shape);
    const bool is_double = py::isinstance<py::array_t<double>>(a);
    if (i == 0) {
      out.batch = a.shape(0), out.tokens = a.shape(2), out.is_double = is_double;
    } else if (a.shape(0) != out.batch || a.shape(2) != out.tokens) {
      throw py::value_error(what + " has shape " + shape_str(a) + " but " + arg + "[0] has batch " +
                            std::to_string(out.batch) + " and T " + std::to_string(out.tokens));
    } else if (same_dtype && is_double != out.is_double) {
      throw py::type_error(what + " is " + dtype_name(a) + " but " + arg + "[0] is " +
                           dtype_name(out.arrays[0]) + "; every layer must have the same dtype");
    }
    out.arrays.push_back(std::move(a));
  }
  return out;
}

// The (B, T) shape of a mask that goes with `layers`.
Shape mask_shape(const Layers& layers) {
  return Shape{"B", "T"}.with("B", layers.batch).with("T", layers.tokens);
}

// ---- attention graph: rollout and attention flow ----

// Checked arguments shared by rollout and flow.
struct GraphArgs {
  Layers layers;
  std::vector<att::GraphLayer> views;
  py::array_t<uint8_t, py::array::c_style | py::array::forcecast> mask;
  bool has_mask = false;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> rows;
  bool has_rows = false;
  att::GraphOptions options;

  att::AttentionGraph graph() const {
    return {views.data(), static_cast<int64_t>(views.size()), layers.batch, layers.tokens,
            has_mask ? mask.data() : nullptr};
  }
  int64_t out_rows() const { return has_rows ? static_cast<int64_t>(rows.size()) : layers.tokens; }
};

att::HeadFusion parse_fusion(const std::string& name) {
  if (name == "mean") return att::HeadFusion::mean;
  if (name == "max") return att::HeadFusion::max;
  if (name == "min") return att::HeadFusion::min;
  throw py::value_error("head_fusion must be 'mean', 'max' or 'min', got '" + name + "'");
}

GraphArgs parse_graph(const std::string& fn, const py::object& layers, const py::object& mask,
                      const py::object& rows, const std::string& head_fusion, bool residual,
                      double discard_ratio) {
  const std::string prefix = fn + ": ";
  GraphArgs g;
  g.options = {parse_fusion(head_fusion), residual, discard_ratio};
  if (!(discard_ratio >= 0.0 && discard_ratio < 1.0)) {
    throw py::value_error("discard_ratio must be in [0, 1), got " + std::to_string(discard_ratio));
  }
  g.layers = check_layers(fn, "layers", layers, /*same_dtype=*/false, /*nonempty=*/true);
  for (const auto& a : g.layers.arrays) {
    att::GraphLayer view;
    view.heads = a.shape(1);
    if (py::isinstance<py::array_t<double>>(a)) {
      view.f64 = static_cast<const double*>(a.data());
    } else {
      view.f32 = static_cast<const float*>(a.data());
    }
    g.views.push_back(view);
  }
  const int64_t batch = g.layers.batch, tokens = g.layers.tokens;
  if (!mask.is_none()) {
    // Anything numpy can cast to uint8 (bool, 0/1 integers or floats, nested lists).
    const std::string name = prefix + "mask";
    check_zero_one(mask, name);
    g.mask = decltype(g.mask)::ensure(mask);
    if (!g.mask) throw py::type_error(name + " must be a (B, T) array of 0/1 or bool");
    check_array(g.mask, name, kUInt8, mask_shape(g.layers));
    for (int64_t b = 0; b < batch; ++b) {
      const uint8_t* row = g.mask.data() + b * tokens;
      if (std::none_of(row, row + tokens, [](uint8_t v) { return v != 0; })) {
        throw py::value_error(name + ": sequence " + std::to_string(b) + " has no real token");
      }
    }
    g.has_mask = true;
  }
  if (!rows.is_none()) {
    // Any integer array (or a list of ints), cast to int64; floats are refused, not truncated.
    const std::string name = prefix + "rows";
    const auto arr = py::array::ensure(rows);
    if (!arr) throw py::type_error(name + " must be a 1-D array of integers");
    check_dtype(arr, name, kInteger);
    g.rows = decltype(g.rows)(arr);
    check_array(g.rows, name, kInt64, Shape{"n"});
    for (py::ssize_t r = 0; r < g.rows.size(); ++r) {
      const int64_t v = g.rows.data()[r];
      if (v < 0 || v >= tokens) {
        throw py::value_error(name + "[" + std::to_string(r) + "] = " + std::to_string(v) +
                              " is outside [0, " + std::to_string(tokens) + ")");
      }
    }
    g.has_rows = true;
  }
  return g;
}

template <typename Kernel>
py::array_t<float> run_graph(const GraphArgs& g, int num_threads, Kernel kernel) {
  const CancelFn poll = interrupt_poll();
  py::array_t<float> out({static_cast<py::ssize_t>(g.layers.batch),
                          static_cast<py::ssize_t>(g.out_rows()),
                          static_cast<py::ssize_t>(g.layers.tokens)});
  float* dst = out.mutable_data();
  const att::AttentionGraph graph = g.graph();
  const int64_t* rows = g.has_rows ? g.rows.data() : nullptr;
  const int64_t n_rows = g.out_rows();
  without_gil([&] { kernel(graph, g.options, rows, n_rows, dst, num_threads, poll); });
  return out;
}

py::object row_sums(const py::object& obj, Threads<"attention_row_sums"> threads,
                    Flag<"attention_row_sums: with_min"> with_min_arg) {
  const py::array array =
      checked_array(obj, "attention_row_sums: array", kFloat, Shape{"...", "n"});
  const int num_threads = threads.value;
  const bool with_min = with_min_arg.value;
  const CancelFn poll = interrupt_poll();
  const bool f32 = py::isinstance<py::array_t<float>>(array);
  std::vector<py::ssize_t> shape(array.shape(), array.shape() + array.ndim() - 1);
  py::array_t<double> out(shape);
  py::array_t<double> mins(with_min ? shape : std::vector<py::ssize_t>{0});
  const int64_t cols = array.shape(array.ndim() - 1);
  const int64_t rows =
      cols == 0 ? static_cast<int64_t>(out.size()) : static_cast<int64_t>(array.size()) / cols;
  double* dst = out.mutable_data();
  double* dmin = with_min ? mins.mutable_data() : nullptr;
  const void* src = array.data();
  without_gil([&] {
    if (f32) {
      att::row_sums(static_cast<const float*>(src), rows, cols, dst, num_threads, dmin, poll);
    } else {
      att::row_sums(static_cast<const double*>(src), rows, cols, dst, num_threads, dmin, poll);
    }
  });
  if (with_min) return py::make_tuple(out, mins);
  return std::move(out);
}

// ---- per-head statistics and drift ----

// A (B, T) bool/uint8 mask that goes with `layers`, or std::nullopt for None.
std::optional<py::array> check_mask(const py::object& obj, const Layers& layers,
                                    const std::string& name) {
  auto checked = checked_array_or_none(obj, name, kBool | kUInt8, mask_shape(layers));
  if (checked) check_zero_one(*checked, name);
  return checked;
}

py::dict head_stats(const py::object& layers_in, const py::object& mask_in,
                    const py::object& special_in, Threads<"attention_head_stats"> threads) {
  const int num_threads = threads.value;
  const CancelFn poll = interrupt_poll();
  const Layers layers = check_layers("attention_head_stats", "layers", layers_in,
                                     /*same_dtype=*/true, /*nonempty=*/false);
  const auto mask_keep = check_mask(mask_in, layers, "attention_head_stats: mask");
  const auto special_keep = check_mask(special_in, layers, "attention_head_stats: special");
  const uint8_t* mask = data_of<uint8_t>(mask_keep);
  const uint8_t* special = data_of<uint8_t>(special_keep);
  att::HeadStats r;
  without_gil([&] {
    const int64_t b = layers.batch, t = layers.tokens;
    r = layers.is_double
            ? att::head_stats(layers.views<double>(), b, t, mask, special, num_threads, poll)
            : att::head_stats(layers.views<float>(), b, t, mask, special, num_threads, poll);
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

py::array_t<double> js_divergence(const py::object& a_in, const py::object& b_in,
                                  const py::object& mask_in,
                                  Threads<"attention_js_divergence"> threads) {
  const int num_threads = threads.value;
  const CancelFn poll = interrupt_poll();
  const std::string fn = "attention_js_divergence: ";
  const Layers a = check_layers("attention_js_divergence", "a", a_in, true, false);
  const Layers b = check_layers("attention_js_divergence", "b", b_in, true, false);
  if (a.arrays.size() != b.arrays.size()) {
    throw py::value_error(fn + "a has " + std::to_string(a.arrays.size()) + " layers but b has " +
                          std::to_string(b.arrays.size()));
  }
  if (a.is_double != b.is_double) {
    throw py::type_error(fn + "a and b must have the same dtype");
  }
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    if (shape_str(a.arrays[i]) != shape_str(b.arrays[i])) {
      throw py::value_error(fn + "layer " + std::to_string(i) + " has shape " +
                            shape_str(a.arrays[i]) + " in a but " + shape_str(b.arrays[i]) +
                            " in b");
    }
  }
  const auto mask_keep = check_mask(mask_in, a, fn + "mask");
  const uint8_t* mask = data_of<uint8_t>(mask_keep);
  std::vector<double> out;
  int64_t heads = 0;
  for (const auto& arr : a.arrays) heads = std::max<int64_t>(heads, arr.shape(1));
  without_gil([&] {
    const int64_t batch = a.batch, t = a.tokens;
    out = a.is_double ? att::js_divergence(a.views<double>(), b.views<double>(), batch, t, mask,
                                           num_threads, poll)
                      : att::js_divergence(a.views<float>(), b.views<float>(), batch, t, mask,
                                           num_threads, poll);
  });
  const auto n_layers = static_cast<py::ssize_t>(a.arrays.size());
  return to_numpy(std::move(out), {n_layers, static_cast<py::ssize_t>(heads)});
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def(
      "attention_rollout",
      [](const py::object& layers, const py::object& mask, const py::object& rows,
         Str<"attention_rollout: head_fusion"> head_fusion,
         Flag<"attention_rollout: residual"> residual,
         Real<"attention_rollout: discard_ratio"> discard_ratio,
         Threads<"attention_rollout"> threads) {
        const GraphArgs g = parse_graph("attention_rollout", layers, mask, rows, head_fusion.value,
                                        residual.value, discard_ratio.value);
        return run_graph(g, threads.value, att::rollout);
      },
      py::arg("layers"), py::kw_only(), py::arg("mask") = py::none(), py::arg("rows") = py::none(),
      py::arg("head_fusion") = "mean", py::arg("residual") = true, py::arg("discard_ratio") = 0.0,
      py::arg("num_threads") = 0,
      R"doc(Attention rollout over a list of C-contiguous (B, H, T, T) float32/float64 layers.

Returns float32 (B, T, T), or (B, len(rows), T) for the given query rows (int64, in [0, T)).
mask: (B, T) 0/1, nonzero for real tokens. Weights must be finite and >= 0 (ValueError naming the
layer and position). Accumulated in float64; Ctrl-C raises KeyboardInterrupt. Use
llmdbg.attention_rollout.)doc");
  m.def(
      "attention_flow",
      [](const py::object& layers, const py::object& mask, const py::object& rows,
         Str<"attention_flow: head_fusion"> head_fusion, Flag<"attention_flow: residual"> residual,
         Threads<"attention_flow"> threads) {
        const GraphArgs g = parse_graph("attention_flow", layers, mask, rows, head_fusion.value,
                                        residual.value, 0.0);
        return run_graph(g, threads.value, att::attention_flow);
      },
      py::arg("layers"), py::kw_only(), py::arg("mask") = py::none(), py::arg("rows") = py::none(),
      py::arg("head_fusion") = "mean", py::arg("residual") = true, py::arg("num_threads") = 0,
      R"doc(Attention flow (max-flow per output/input pair, rows normalised) over a list of
C-contiguous (B, H, T, T) float32/float64 layers; same arguments and output as
attention_rollout. Use llmdbg.attention_flow.)doc");
  m.def(
      "attention_row_sums", &row_sums, py::arg("array"), py::arg("num_threads") = 0,
      py::arg("with_min") = false,
      "Sums over the last axis in float64, in one parallel pass (NaN/Inf propagate); with_min=True "
      "returns (sums, row minima).");
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
