// Bindings for the attention-graph kernels in cpp/core/attention (rollout, attention flow) and
// the row-sum check the attention input validation uses. Torch-free: numpy arrays in and out.
// Every argument is checked here first (ValueError / TypeError naming it); pointers are
// collected with the GIL held, then the kernels run without it.
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "core/attention/flow.hpp"
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

void bind_attention_graph(py::module_& m) {
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
}

}  // namespace llmdbg::bindings
