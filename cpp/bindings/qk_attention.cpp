// Binding of cpp/core/attention/qk_attention: attention statistics, maps and the rollout row
// product recomputed from recorded queries and keys. Every argument is checked here (arrays.hpp,
// messages "qk_attention: <argument> ..."), the outputs are allocated as numpy arrays, and the
// kernel runs without the GIL, polling for Ctrl-C (KeyboardInterrupt is raised once it stops).
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "common.hpp"
#include "core/attention/qk_attention.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

namespace {

namespace att = llmdbg::attention;

const std::string kFn = "qk_attention: ";

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// A 1-D array of integers in [0, bound) (any integer dtype, cast to int64; floats and bools are
// refused, not truncated), or std::nullopt for None.
std::optional<Int64Array> index_array(const py::object& obj, const std::string& arg, int64_t bound,
                                      bool nonempty) {
  if (obj.is_none()) return std::nullopt;
  const std::string name = kFn + arg;
  const auto arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(name + " must be a 1-D array of integers");
  check_dtype(arr, name, kInteger);
  Int64Array a(arr);
  check_array(a, name, kInt64, Shape{"n"});
  if (nonempty && a.size() == 0) throw py::value_error(name + " must not be empty");
  for (py::ssize_t r = 0; r < a.size(); ++r) {
    const int64_t v = a.data()[r];
    if (v < 0 || v >= bound) {
      throw py::value_error(name + "[" + std::to_string(r) + "] = " + std::to_string(v) +
                            " is outside [0, " + std::to_string(bound) + ")");
    }
  }
  return a;
}

std::string repr(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A (Bm, Hm, Tq, Tk) mask with Bm in {1, B} and Hm in {1, Hq}, or std::nullopt.
std::optional<py::array> mask_array(const py::object& obj, const std::string& arg, DTypes dtypes,
                                    int64_t B, int64_t Hq, int64_t Tq, int64_t Tk) {
  const std::string name = kFn + arg;
  auto a = checked_array_or_none(obj, name, dtypes,
                                 Shape{"Bm", "Hm", "Tq", "Tk"}.with("Tq", Tq).with("Tk", Tk));
  if (a && !((a->shape(0) == 1 || a->shape(0) == B) && (a->shape(1) == 1 || a->shape(1) == Hq))) {
    throw py::value_error(name + " has shape " + shape_str(*a) +
                          "; expected (Bm, Hm, Tq, Tk) with Bm in {1, " + std::to_string(B) +
                          "} and Hm in {1, " + std::to_string(Hq) + "}");
  }
  return a;
}

att::MapFusion parse_fusion(const std::string& word) {
  if (word == "none") return att::MapFusion::none;
  if (word == "mean") return att::MapFusion::mean;
  if (word == "max") return att::MapFusion::max;
  throw py::value_error(kFn + "map_fusion must be 'none', 'mean' or 'max', got '" + word + "'");
}

py::dict qk_attention(const py::object& q_obj, const py::object& k_obj,
                      Real<"qk_attention: scaling"> scaling_arg,
                      Real<"qk_attention: softcap"> softcap_arg,
                      Flag<"qk_attention: causal"> causal, Int<"qk_attention: window"> window_arg,
                      Int<"qk_attention: offset"> offset_arg, const py::object& bool_mask_obj,
                      const py::object& add_mask_obj, const py::object& special_obj,
                      const py::object& sink_index_obj, const py::object& sinks_obj,
                      Flag<"qk_attention: stats"> stats_arg, Flag<"qk_attention: maps"> maps_arg,
                      const py::object& map_heads_obj, const py::object& map_rows_obj,
                      Str<"qk_attention: map_fusion"> map_fusion_arg,
                      const py::object& row_weights_obj, const py::object& row_heads_obj,
                      Threads<"qk_attention"> threads) {
  const double scaling = scaling_arg.value, softcap = softcap_arg.value;
  const int64_t window = window_arg.value, offset = offset_arg.value;
  const bool stats = stats_arg.value, maps = maps_arg.value;
  const std::string& map_fusion = map_fusion_arg.value;
  const int num_threads = threads.value;
  // Every array read without the GIL is held by a local below until the kernel returns.
  const py::array q =
      checked_array(q_obj, kFn + "q", kFloat32, Shape{"B", "Hq", "Tq", "D"}.nonempty());
  const int64_t B = q.shape(0), Hq = q.shape(1), Tq = q.shape(2), D = q.shape(3);
  const py::array k =
      checked_array(k_obj, kFn + "k", kFloat32,
                    Shape{"B", "Hkv", "Tk", "D"}.with("B", B).with("D", D).nonempty());
  const int64_t Hkv = k.shape(1), Tk = k.shape(2);
  if (Hq % Hkv != 0) {
    throw py::value_error(kFn + "q has " + std::to_string(Hq) + " heads and k has " +
                          std::to_string(Hkv) +
                          "; the query heads must be a multiple of the key heads");
  }
  if (!std::isfinite(scaling)) {
    throw py::value_error(kFn + "scaling must be finite, got " + repr(scaling));
  }
  if (!(softcap >= 0.0 && std::isfinite(softcap))) {
    throw py::value_error(kFn + "softcap must be >= 0 and finite (0 = off), got " + repr(softcap));
  }
  if (window < 0) {
    throw py::value_error(kFn + "window must be >= 0 (0 = no sliding window), got " +
                          std::to_string(window));
  }
  if (offset < 0) {
    throw py::value_error(kFn + "offset must be >= 0, got " + std::to_string(offset));
  }
  if (!bool_mask_obj.is_none() && !add_mask_obj.is_none()) {
    throw py::value_error(kFn + "pass bool_mask or add_mask, not both");
  }
  const auto bool_mask = mask_array(bool_mask_obj, "bool_mask", kBool | kUInt8, B, Hq, Tq, Tk);
  const auto add_mask = mask_array(add_mask_obj, "add_mask", kFloat32, B, Hq, Tq, Tk);
  const auto special = checked_array_or_none(special_obj, kFn + "special", kBool | kUInt8,
                                             Shape{"B", "Tk"}.with("B", B).with("Tk", Tk));
  std::optional<Int64Array> sink_index = index_array(sink_index_obj, "sink_index", Tk, false);
  if (sink_index && sink_index->size() != B) {
    throw py::value_error(kFn + "sink_index has shape " + shape_str(*sink_index) +
                          "; expected (B,) = (" + std::to_string(B) + ",)");
  }
  const auto sinks =
      checked_array_or_none(sinks_obj, kFn + "sinks", kFloat32, Shape{"Hq"}.with("Hq", Hq));
  if (sinks) {
    const float* s = data_of<float>(*sinks);
    for (int64_t h = 0; h < Hq; ++h) {
      if (!std::isfinite(s[h])) {
        throw py::value_error(kFn + "sinks must be finite; sinks[" + std::to_string(h) +
                              "] = " + repr(s[h]));
      }
    }
  }

  if (!maps) {
    for (const auto& [arg, given] : {std::pair{"map_heads", !map_heads_obj.is_none()},
                                     std::pair{"map_rows", !map_rows_obj.is_none()},
                                     std::pair{"map_fusion", map_fusion != "none"}}) {
      if (given) {
        throw py::value_error(kFn + arg + " is given but maps=False; pass maps=True for maps");
      }
    }
  }
  const att::MapFusion fusion = parse_fusion(map_fusion);
  const auto map_heads = index_array(map_heads_obj, "map_heads", Hq, true);
  const auto map_rows = index_array(map_rows_obj, "map_rows", Tq, false);
  if (row_weights_obj.is_none() && !row_heads_obj.is_none()) {
    throw py::value_error(kFn + "row_heads is given but row_weights is None");
  }
  // row_weights: (B, Tq), or (B, R, Tq) for R weight sets at once.
  const auto row_weights =
      checked_array_or_none(row_weights_obj, kFn + "row_weights", kFloat64, Shape());
  int64_t row_sets = 0;
  if (row_weights) {
    const py::array& w = *row_weights;
    const bool two = w.ndim() == 2 && w.shape(0) == B && w.shape(1) == Tq;
    const bool three = w.ndim() == 3 && w.shape(0) == B && w.shape(1) >= 1 && w.shape(2) == Tq;
    if (!two && !three) {
      const std::string b = std::to_string(B), t = std::to_string(Tq);
      throw py::value_error(kFn + "row_weights has shape " + shape_str(w) +
                            "; expected (B, Tq) = (" + b + ", " + t + ") or (B, R, Tq) = (" + b +
                            ", R, " + t + ") with R >= 1");
    }
    row_sets = three ? w.shape(1) : 0;
    const double* data = data_of<double>(w);
    for (py::ssize_t f = 0; f < w.size(); ++f) {
      if (!std::isfinite(data[f])) {
        std::string where;
        for (py::ssize_t d = w.ndim() - 1, rest = f; d >= 0; rest /= w.shape(d), --d) {
          where = std::to_string(rest % w.shape(d)) + (where.empty() ? "" : ", ") + where;
        }
        throw py::value_error(kFn + "row_weights must be finite; row_weights[" + where +
                              "] = " + repr(data[f]));
      }
    }
  }
  const auto row_heads = index_array(row_heads_obj, "row_heads", Hq, true);

  att::QKProblem p;
  p.q = data_of<float>(q), p.k = data_of<float>(k);
  p.batch = B, p.q_heads = Hq, p.kv_heads = Hkv, p.q_len = Tq, p.k_len = Tk, p.dim = D;
  p.scaling = scaling, p.softcap = softcap, p.causal = causal.value, p.window = window;
  p.offset = offset;
  p.bool_mask = data_of<uint8_t>(bool_mask);
  p.add_mask = data_of<float>(add_mask);
  const auto& mask = bool_mask ? bool_mask : add_mask;
  if (mask) p.mask_batch = mask->shape(0), p.mask_heads = mask->shape(1);
  p.special = data_of<uint8_t>(special);
  p.sink_index = sink_index ? sink_index->data() : nullptr;
  p.sinks = data_of<float>(sinks);

  att::QKRequest r;
  r.stats = stats, r.maps = maps, r.map_fusion = fusion;
  if (map_heads) r.map_heads = map_heads->data(), r.num_map_heads = map_heads->size();
  if (map_rows) r.map_rows = map_rows->data(), r.num_map_rows = map_rows->size();
  r.row_weights = data_of<double>(row_weights), r.row_sets = row_sets;
  if (row_heads) r.row_heads = row_heads->data(), r.num_row_heads = row_heads->size();

  // Outputs, allocated with the GIL held.
  py::dict result;
  att::QKOutputs o;
  const std::vector<py::ssize_t> stat_shape = {B, Hq, Tq};
  if (stats) {
    std::vector<std::pair<const char*, float**>> outs = {
        {"entropy", &o.entropy}, {"max_prob", &o.max_prob}, {"sink_mass", &o.sink_mass}};
    if (special) outs.emplace_back("special_mass", &o.special_mass);
    for (auto& [key, ptr] : outs) {
      py::array_t<float> a(stat_shape);
      *ptr = a.mutable_data();
      result[key] = a;
    }
  }
  if (maps) {
    const py::ssize_t nh = map_heads ? map_heads->size() : Hq;
    const py::ssize_t nr = map_rows ? map_rows->size() : Tq;
    std::vector<py::ssize_t> shape = {B, nh, nr, Tk};
    if (fusion != att::MapFusion::none) shape = {B, nr, Tk};
    py::array_t<float> a(shape);
    o.maps = a.mutable_data();
    result["maps"] = a;
  }
  if (row_weights) {
    std::vector<py::ssize_t> shape = {B, Tk};
    if (row_sets > 0) shape = {B, row_sets, Tk};
    py::array_t<double> a(shape);
    o.row_product = a.mutable_data();
    result["row_product"] = a;
  }

  const std::function<bool()> poll = interrupt_poll();
  without_gil([&] { att::qk_attention(p, r, o, num_threads, poll); });
  return result;
}

}  // namespace

void bind_qk_attention(py::module_& m) {
  m.def("qk_attention", &qk_attention, py::arg("q"), py::arg("k"), py::kw_only(),
        py::arg("scaling"), py::arg("softcap") = 0.0, py::arg("causal") = false,
        py::arg("window") = 0, py::arg("offset") = 0, py::arg("bool_mask") = py::none(),
        py::arg("add_mask") = py::none(), py::arg("special") = py::none(),
        py::arg("sink_index") = py::none(), py::arg("sinks") = py::none(), py::arg("stats") = false,
        py::arg("maps") = false, py::arg("map_heads") = py::none(),
        py::arg("map_rows") = py::none(), py::arg("map_fusion") = "none",
        py::arg("row_weights") = py::none(), py::arg("row_heads") = py::none(),
        py::arg("num_threads") = 0,
        R"doc(Attention probabilities recomputed from queries and keys (eager-attention semantics).

q: float32 (B, Hq, Tq, D), k: float32 (B, Hkv, Tk, D), C-contiguous and finite; Hq % Hkv == 0
and query head h uses key head h // (Hq // Hkv). Logits w = q.k * scaling, then
softcap * tanh(w / softcap) when softcap > 0, then + add_mask. A key is excluded (p = 0) when
causal and j > i + offset, when window > 0 and j <= i + offset - window, where bool_mask is 0, or
where w == -inf. sinks (float32 (Hq,)) adds a logit per head to the softmax's max and
denominator only. bool_mask (bool/uint8, nonzero = attend) or add_mask (float32), not both:
(Bm, Hm, Tq, Tk) with Bm in {1, B} and Hm in {1, Hq}, broadcast without copies.

Returns a dict with only what was asked for:
- stats=True: "entropy" (nats), "max_prob", "sink_mass" (p at key sink_index[b], int64 (B,),
  default 0) and, when special (bool/uint8 (B, Tk)) is given, "special_mass": float32
  (B, Hq, Tq); NaN for rows whose keys are all excluded.
- maps=True: "maps", float32 (B, nh, nr, Tk) of the heads map_heads and rows map_rows (int64
  1-D; None = all), or (B, nr, Tk) fused over those heads with map_fusion 'mean' or 'max'.
  map_heads, map_rows or map_fusion without maps=True is an error.
- row_weights (float64 (B, Tq)): "row_product", float64 (B, Tk),
  sum_i row_weights[b, i] * mean over row_heads (None = all) of p_h[b, i, :]; rows of weight 0
  are not computed. (B, R, Tq) weights give R such products at once, (B, R, Tk).
Nothing requested gives an empty dict. Fully excluded rows are all zeros. Results are bitwise
equal for every num_threads (0 = OpenMP default). Ctrl-C raises KeyboardInterrupt within ~10 ms.)doc");
}

}  // namespace llmdbg::bindings
