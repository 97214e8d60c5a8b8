// Bindings for the t-SNE core in cpp/core/tsne. Torch-free: numpy arrays in and out. Each stage
// (kNN, calibration, joint P, repulsion, gradient, KL) is exposed on its own so tests can check
// it; tsne_optimize runs the whole loop without the GIL and re-acquires it for the callback.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "arrays.hpp"
#include "common.hpp"
#include "core/tsne/affinity.hpp"
#include "core/tsne/fft_repulsion.hpp"
#include "core/tsne/format.hpp"
#include "core/tsne/knn.hpp"
#include "core/tsne/knn_approx.hpp"
#include "core/tsne/optimize.hpp"
#include "core/tsne/repulsion.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

namespace {

namespace ts = llmdbg::tsne;

ts::Csr to_csr(const py::object& indptr_in, const py::object& indices_in, const py::object& data_in,
               const std::string& fn) {
  const auto indptr = checked_array(indptr_in, fn + ": indptr", kInt64, Shape{"n"});
  const auto indices = checked_array(indices_in, fn + ": indices", kInt64, Shape{"n"});
  const auto data = checked_array(data_in, fn + ": data", kFloat64, Shape{"n"});
  if (indptr.size() < 2) throw py::value_error(fn + ": indptr needs n + 1 >= 3 entries");
  if (indices.size() != data.size()) {
    throw py::value_error(fn + ": indices and data must have the same length");
  }
  ts::Csr P;
  P.n = indptr.size() - 1;
  P.indptr.assign(data_of<int64_t>(indptr), data_of<int64_t>(indptr) + indptr.size());
  P.indices.assign(data_of<int64_t>(indices), data_of<int64_t>(indices) + indices.size());
  P.data.assign(data_of<double>(data), data_of<double>(data) + data.size());
  if (P.indptr.front() != 0 || P.indptr.back() != static_cast<int64_t>(P.indices.size())) {
    throw py::value_error(fn + ": indptr must start at 0 and end at len(indices)");
  }
  for (int64_t i = 0; i < P.n; ++i) {
    if (P.indptr[i] > P.indptr[i + 1]) throw py::value_error(fn + ": indptr must not decrease");
  }
  for (size_t e = 0; e < P.indices.size(); ++e) {
    if (P.indices[e] < 0 || P.indices[e] >= P.n) {
      throw py::value_error(fn + ": indices[" + std::to_string(e) +
                            "] = " + std::to_string(P.indices[e]) + " is out of range [0, " +
                            std::to_string(P.n) + ")");
    }
    if (!(P.data[e] >= 0.0) || !std::isfinite(P.data[e])) {
      throw py::value_error(fn + ": data[" + std::to_string(e) + "] = " + ts::num(P.data[e]) +
                            " is not a finite probability >= 0");
    }
  }
  return P;
}

// A (n, 2) float64 embedding, finite and within ±1e150; n >= 0: the number of rows P has.
py::array embedding_arg(const py::object& Y_in, const std::string& fn, int64_t n) {
  auto Y = checked_array(Y_in, fn + ": Y", kFloat64, Shape{"n", "2"});
  if (n >= 0 && Y.shape(0) != n) {
    throw py::value_error(fn + ": Y has " + std::to_string(Y.shape(0)) + " rows but P has " +
                          std::to_string(n));
  }
  try {
    ts::check_embedding(data_of<double>(Y), Y.shape(0));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(fn + ": " + e.what());
  }
  return Y;
}

// phases: a sequence of (n_iter: int, exaggeration, learning_rate, momentum: float) tuples.
// Parsed by hand so that a wrong type gives a TypeError naming phases, not pybind11's
// signature dump; the values are checked by the core (ts::optimize).
std::vector<ts::Phase> phases_arg(const py::object& phases) {
  const std::string expected =
      "tsne_optimize: phases must be a list of (n_iter, exaggeration, learning_rate, momentum)";
  if (!py::isinstance<py::sequence>(phases) || py::isinstance<py::str>(phases)) {
    throw py::type_error(expected);
  }
  std::vector<ts::Phase> out;
  for (const py::handle item : py::reinterpret_borrow<py::sequence>(phases)) {
    if (!py::isinstance<py::sequence>(item) || py::isinstance<py::str>(item) ||
        py::len(item) != 4) {
      throw py::type_error(expected + " tuples, got " + py::repr(item).cast<std::string>());
    }
    const auto t = py::reinterpret_borrow<py::sequence>(item);
    ts::Phase ph;
    try {
      const py::object it = t[0];
      if (py::isinstance<py::bool_>(it) || !PyIndex_Check(it.ptr())) throw py::cast_error();
      const auto n_iter = it.cast<int64_t>();
      if (n_iter < 0 || n_iter > std::numeric_limits<int>::max()) {
        throw py::value_error("tsne_optimize: phases: n_iter must be in [0, 2^31), got " +
                              std::to_string(n_iter));
      }
      ph.n_iter = static_cast<int>(n_iter);
      ph.exaggeration = py::float_(t[1]).cast<double>();
      ph.learning_rate = py::float_(t[2]).cast<double>();
      ph.momentum = py::float_(t[3]).cast<double>();
    } catch (const py::cast_error&) {
      throw py::type_error(expected + " with an int and three numbers, got " +
                           py::repr(item).cast<std::string>());
    } catch (const py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError) && !e.matches(PyExc_ValueError)) throw;
      throw py::type_error(expected + " with an int and three numbers, got " +
                           py::repr(item).cast<std::string>());
    }
    out.push_back(ph);
  }
  return out;
}

ts::Metric parse_metric(const std::string& name) {
  if (name == "euclidean") return ts::Metric::euclidean;
  if (name == "cosine") return ts::Metric::cosine;
  throw py::value_error("tsne_knn: metric must be 'euclidean' or 'cosine', got '" + name + "'");
}

ts::Method method_arg(const std::string& name) {
  try {
    return ts::parse_method(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

py::tuple knn(const py::object& X_in, Int<"tsne_knn: k"> k_arg, Str<"tsne_knn: metric"> metric,
              Threads<"tsne_knn"> threads) {
  const int64_t k = k_arg.value;
  const int num_threads = threads.value;
  const auto X = checked_array(X_in, "tsne_knn: X", kFloat, Shape{"n", "d"}.nonempty());
  const bool f32 = py::isinstance<py::array_t<float>>(X);
  const int64_t n = X.shape(0), d = X.shape(1);
  if (k < 1 || k >= n) {
    throw py::value_error("tsne_knn: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                          "], got " + std::to_string(k));
  }
  const ts::Metric m = parse_metric(metric.value);
  py::array_t<int64_t> idx({n, k});
  py::array_t<double> d2({n, k});
  int64_t* pi = idx.mutable_data();
  double* pd = d2.mutable_data();
  const void* px = X.data();
  const CancelFn poll = interrupt_poll();
  without_gil([&] {
    if (f32) ts::knn_exact(static_cast<const float*>(px), n, d, k, m, pi, pd, num_threads, poll);
    else ts::knn_exact(static_cast<const double*>(px), n, d, k, m, pi, pd, num_threads, poll);
  });
  return py::make_tuple(idx, d2);
}

py::tuple knn_approx(
    const py::object& X_in, Int<"tsne_knn_approx: k"> k_arg, Int<"tsne_knn_approx: M", 2, 512> M,
    Int<"tsne_knn_approx: ef_construction", 1, std::numeric_limits<int>::max()> ef_construction,
    Int<"tsne_knn_approx: ef_search", 0, std::numeric_limits<int>::max()> ef_search,
    Int<"tsne_knn_approx: seed", 0, std::numeric_limits<int64_t>::max()> seed,
    Int<"tsne_knn_approx: refine", 0, 1 << 20> refine,
    Int<"tsne_knn_approx: refine_rounds", 0, 64> refine_rounds,
    Threads<"tsne_knn_approx"> threads) {
  const int64_t k = k_arg.value;
  const auto X = checked_array(X_in, "tsne_knn_approx: X", kFloat, Shape{"n", "d"}.nonempty());
  const bool f32 = py::isinstance<py::array_t<float>>(X);
  const int64_t n = X.shape(0), d = X.shape(1);
  if (k < 1 || k >= n) {
    throw py::value_error("tsne_knn_approx: k must be in [1, n-1] = [1, " + std::to_string(n - 1) +
                          "], got " + std::to_string(k));
  }
  ts::HnswParams prm;
  prm.M = static_cast<int>(M.value);
  prm.ef_construction = static_cast<int>(ef_construction.value);
  prm.ef_search = static_cast<int>(ef_search.value);
  prm.seed = static_cast<uint64_t>(seed.value);
  prm.refine = static_cast<int>(refine.value);
  prm.refine_rounds = static_cast<int>(refine_rounds.value);
  const int num_threads = threads.value;
  py::array_t<int64_t> idx({n, k});
  py::array_t<double> d2({n, k});
  int64_t* pi = idx.mutable_data();
  double* pd = d2.mutable_data();
  const void* px = X.data();
  const CancelFn poll = interrupt_poll();
  without_gil([&] {
    if (f32) ts::knn_approx(static_cast<const float*>(px), n, d, k, prm, pi, pd, num_threads, poll);
    else ts::knn_approx(static_cast<const double*>(px), n, d, k, prm, pi, pd, num_threads, poll);
  });
  return py::make_tuple(idx, d2);
}

py::tuple calibrate(
    const py::object& sqdist_in, Real<"tsne_calibrate: perplexity"> perplexity_arg,
    Real<"tsne_calibrate: tol"> tol_arg,
    Int<"tsne_calibrate: max_iter", 1, std::numeric_limits<int>::max()> max_iter_arg,
    Threads<"tsne_calibrate"> threads) {
  const double perplexity = perplexity_arg.value, tol = tol_arg.value;
  const int max_iter = static_cast<int>(max_iter_arg.value), num_threads = threads.value;
  const auto d2 = checked_array(sqdist_in, "tsne_calibrate: sqdist", kFloat64, Shape{"n", "k"});
  const int64_t n = d2.shape(0), k = d2.shape(1);
  if (!(perplexity >= 1.0) || !std::isfinite(perplexity)) {
    throw py::value_error("tsne_calibrate: perplexity must be a finite number >= 1, got " +
                          ts::num(perplexity));
  }
  if (k < 1) throw py::value_error("tsne_calibrate: sqdist needs at least one column");
  py::array_t<double> P({n, k}), perp(n);
  double* pp = P.mutable_data();
  double* pe = perp.mutable_data();
  const double* pd = data_of<double>(d2);
  without_gil([&] { ts::calibrate(pd, n, k, perplexity, tol, max_iter, pp, pe, num_threads); });
  return py::make_tuple(P, perp);
}

py::tuple joint(const py::object& indices_in, const py::object& P_in,
                Threads<"tsne_joint_probabilities"> threads) {
  const int num_threads = threads.value;
  const auto idx =
      checked_array(indices_in, "tsne_joint_probabilities: indices", kInt64, Shape{"n", "k"});
  const auto P = checked_array(P_in, "tsne_joint_probabilities: P", kFloat64, Shape{"n", "k"});
  if (idx.shape(0) != P.shape(0) || idx.shape(1) != P.shape(1)) {
    throw py::value_error("tsne_joint_probabilities: indices " + shape_str(idx) + " and P " +
                          shape_str(P) + " must have the same shape");
  }
  ts::Csr J;
  without_gil([&] {
    J = ts::joint_probabilities(data_of<int64_t>(idx), data_of<double>(P), idx.shape(0),
                                idx.shape(1), num_threads);
  });
  return py::make_tuple(py::array_t<int64_t>(J.indptr.size(), J.indptr.data()),
                        py::array_t<int64_t>(J.indices.size(), J.indices.data()),
                        py::array_t<double>(J.data.size(), J.data.data()));
}

py::tuple repulsion(
    const py::object& Y_in, Str<"tsne_repulsion: method"> method_name,
    Real<"tsne_repulsion: theta"> theta_arg, Int<"tsne_repulsion: n_interp", 1, 16> n_interp,
    Int<"tsne_repulsion: min_intervals", 1, std::numeric_limits<int>::max()> min_intervals,
    Real<"tsne_repulsion: intervals_per_unit"> intervals_per_unit,
    Threads<"tsne_repulsion"> threads) {
  const double theta = theta_arg.value;
  const int num_threads = threads.value;
  const std::string& method = method_name.value;
  const auto Y = embedding_arg(Y_in, "tsne_repulsion", -1);
  const int64_t n = Y.shape(0);
  if (n < 2) throw py::value_error("tsne_repulsion: Y needs at least 2 rows");
  const ts::Method m = method_arg(method);
  if (m == ts::Method::bh && !(theta >= 0))
    throw py::value_error("tsne_repulsion: theta must be >= 0");
  py::array_t<double> rep({n, int64_t{2}});
  double* pr = rep.mutable_data();
  const double* py_ = data_of<double>(Y);
  double z = 0.0;
  without_gil([&] {
    if (m == ts::Method::exact) z = ts::repulsion_exact(py_, n, pr, num_threads);
    else if (m == ts::Method::bh) z = ts::repulsion_bh(py_, n, theta, pr, num_threads);
    else
      z = ts::repulsion_fft(
          py_, n,
          ts::FftParams{static_cast<int>(n_interp.value), static_cast<int>(min_intervals.value),
                        intervals_per_unit.value},
          pr, num_threads);
  });
  return py::make_tuple(rep, z);
}

py::tuple gradient(const py::object& indptr, const py::object& indices, const py::object& data,
                   const py::object& Y_in, Real<"tsne_gradient: exaggeration"> exaggeration_arg,
                   Str<"tsne_gradient: method"> method_name, Real<"tsne_gradient: theta"> theta_arg,
                   Threads<"tsne_gradient"> threads) {
  const double exaggeration = exaggeration_arg.value, theta = theta_arg.value;
  const int num_threads = threads.value;
  const std::string& method = method_name.value;
  const ts::Csr P = to_csr(indptr, indices, data, "tsne_gradient");
  const auto Y = embedding_arg(Y_in, "tsne_gradient", P.n);
  const ts::Method m = method_arg(method);
  py::array_t<double> g({P.n, int64_t{2}});
  double* pg = g.mutable_data();
  double z = 0.0;
  const double* py_ = data_of<double>(Y);
  without_gil([&] { z = ts::gradient(P, py_, exaggeration, m, theta, pg, num_threads); });
  return py::make_tuple(g, z);
}

double kl(const py::object& indptr, const py::object& indices, const py::object& data,
          const py::object& Y_in, Threads<"tsne_kl_divergence"> threads) {
  const int num_threads = threads.value;
  const ts::Csr P = to_csr(indptr, indices, data, "tsne_kl_divergence");
  const auto Y = embedding_arg(Y_in, "tsne_kl_divergence", P.n);
  double out = 0.0;
  const double* py_ = data_of<double>(Y);
  const CancelFn poll = interrupt_poll();
  without_gil([&] { out = ts::kl_divergence(P, py_, num_threads, poll); });
  return out;
}

py::dict optimize(
    const py::object& indptr, const py::object& indices, const py::object& data,
    const py::object& Y_in, const py::object& phases, Str<"tsne_optimize: method"> method,
    Real<"tsne_optimize: theta"> theta, Real<"tsne_optimize: max_step_norm"> max_step_norm,
    Real<"tsne_optimize: min_gain"> min_gain, Int<"tsne_optimize: n_interp", 1, 16> n_interp,
    Int<"tsne_optimize: min_intervals", 1, std::numeric_limits<int>::max()> min_intervals,
    Real<"tsne_optimize: intervals_per_unit"> intervals_per_unit, const py::object& callback,
    Int<"tsne_optimize: callback_every", std::numeric_limits<int>::min(),
        std::numeric_limits<int>::max()>
        callback_every,
    Int<"tsne_optimize: kl_every", std::numeric_limits<int>::min(), std::numeric_limits<int>::max()>
        kl_every,
    Threads<"tsne_optimize"> threads) {
  const ts::Csr P = to_csr(indptr, indices, data, "tsne_optimize");
  const auto Y0 = embedding_arg(Y_in, "tsne_optimize", P.n);
  ts::OptimizeParams prm;
  prm.phases = phases_arg(phases);
  prm.method = method_arg(method.value);
  prm.theta = theta.value;
  prm.max_step_norm = max_step_norm.value;
  prm.min_gain = min_gain.value;
  prm.fft_n_interp = static_cast<int>(n_interp.value);
  prm.fft_min_intervals = static_cast<int>(min_intervals.value);
  prm.fft_intervals_per_unit = intervals_per_unit.value;
  prm.callback_every = static_cast<int>(callback_every.value);
  prm.kl_every = static_cast<int>(kl_every.value);
  prm.num_threads = threads.value;
  prm.cancelled = interrupt_poll();  // Ctrl-C within ~10 ms, with or without a callback
  if (prm.method == ts::Method::bh && !(prm.theta >= 0)) {
    throw py::value_error("tsne_optimize: theta must be >= 0");
  }
  py::array_t<double> Y({P.n, int64_t{2}});
  std::copy_n(data_of<double>(Y0), 2 * P.n, Y.mutable_data());
  double* py_ = Y.mutable_data();

  // The callback runs on this thread between iterations, with the GIL re-acquired. Signals are
  // checked there too and by prm.cancelled between iterations. A Python exception is parked in
  // the interpreter's error indicator and raised once the loop is out.
  bool failed = false;
  const bool have_callback = !callback.is_none();
  ts::ProgressCallback cb = [&](int it, double kl_estimate) {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!have_callback) return true;
      const py::object stop = callback(it, kl_estimate);
      const int truth = PyObject_IsTrue(stop.ptr());
      if (truth < 0) throw py::error_already_set();
      return truth == 0;
    } catch (py::error_already_set& e) {
      e.restore();
      failed = true;
      return false;
    }
  };
  ts::OptimizeResult r;
  without_gil([&] { r = ts::optimize(P, py_, prm, cb); });
  if (failed) throw py::error_already_set();
  py::dict out;
  out["embedding"] = Y;
  out["n_iter"] = r.n_iter;
  out["kl_divergence"] = r.kl;
  out["stopped"] = r.stopped;
  return out;
}

}  // namespace

void bind_tsne(py::module_& m) {
  m.def(
      "tsne_knn", &knn, py::arg("X"), py::arg("k"), py::arg("metric") = "euclidean",
      py::arg("num_threads") = 0,
      R"doc(Exact k nearest neighbours of each row of X (float32/float64, C-contiguous (n, d), d >= 1).

Self is excluded (duplicates are neighbours at distance 0). Returns (indices int64 (n, k),
squared distances float64 (n, k)) sorted by (distance, index). metric 'cosine' L2-normalises the
rows first, so the squared distance is 2 (1 - cos). Ranked at unit scale (exact power-of-two
rescaling): X * 2**s gives the same indices and distances * 4**s. ValueError for NaN/Inf rows or
squared distances that overflow float64. Ctrl-C stops it (KeyboardInterrupt).)doc");
  m.def(
      "tsne_knn_approx", &knn_approx, py::arg("X"), py::arg("k"), py::kw_only(), py::arg("M") = 24,
      py::arg("ef_construction") = 64, py::arg("ef_search") = 0, py::arg("seed") = 100,
      py::arg("refine") = 16, py::arg("refine_rounds") = 1, py::arg("num_threads") = 0,
      R"doc(Approximate k nearest neighbours (Euclidean) of each row of X from an HNSW graph (hnswlib).

X: float32/float64, C-contiguous (n, d). Self is excluded. Returns (indices int64 (n, k), squared
distances float64 (n, k), recomputed exactly) sorted by (distance, index). M: graph degree;
ef_construction / ef_search: candidate lists while inserting / querying (ef_search 0:
max(k + 32, 1.5 k)); each search starts at the point itself. refine: the neighbours of each
point's first `refine` neighbours are candidates too, for up to `refine_rounds` NN-descent rounds
(0: off). Bitwise reproducible for a fixed seed on one thread only: parallel inserts
race for the graph's locks. ValueError for NaN/Inf rows; Ctrl-C stops it (KeyboardInterrupt).)doc");
  m.def("tsne_calibrate", &calibrate, py::arg("sqdist"), py::arg("perplexity"),
        py::arg("tol") = 1e-5, py::arg("max_iter") = 200, py::arg("num_threads") = 0,
        R"doc(Bisect each row's precision so its entropy is log(perplexity) (tol in nats).

Returns (conditional P float64 (n, k) with rows summing to 1, achieved perplexity (n,)).)doc");
  m.def("tsne_joint_probabilities", &joint, py::arg("indices"), py::arg("P"),
        py::arg("num_threads") = 0,
        "Symmetric joint P = (P_cond + P_cond^T) / sum as CSR (indptr, indices, data).");
  m.def("tsne_repulsion", &repulsion, py::arg("Y"), py::arg("method") = "bh",
        py::arg("theta") = 0.5, py::arg("n_interp") = 3, py::arg("min_intervals") = 50,
        py::arg("intervals_per_unit") = 1.0, py::arg("num_threads") = 0,
        R"doc(Unnormalised repulsion of a (n, 2) float64 embedding: method 'exact', 'bh' or 'fft'.

Returns (rep (n, 2) with rep_i = sum_{j!=i} w_ij^2 (y_i - y_j), Z = sum_{i!=j} w_ij).)doc");
  m.def("tsne_gradient", &gradient, py::arg("indptr"), py::arg("indices"), py::arg("data"),
        py::arg("Y"), py::arg("exaggeration") = 1.0, py::arg("method") = "bh",
        py::arg("theta") = 0.5, py::arg("num_threads") = 0,
        "t-SNE gradient (no factor 4) at Y for CSR P; returns (grad (n, 2), Z).");
  m.def("tsne_kl_divergence", &kl, py::arg("indptr"), py::arg("indices"), py::arg("data"),
        py::arg("Y"), py::arg("num_threads") = 0, "Exact KL(P || Q) in double (O(n^2) for Z).");
  m.def("tsne_optimize", &optimize, py::arg("indptr"), py::arg("indices"), py::arg("data"),
        py::arg("Y"), py::arg("phases"), py::kw_only(), py::arg("method") = "bh",
        py::arg("theta") = 0.5, py::arg("max_step_norm") = 5.0, py::arg("min_gain") = 0.01,
        py::arg("n_interp") = 3, py::arg("min_intervals") = 50, py::arg("intervals_per_unit") = 1.0,
        py::arg("callback") = py::none(), py::arg("callback_every") = 10, py::arg("kl_every") = 50,
        py::arg("num_threads") = 0,
        R"doc(Run the t-SNE optimisation from the initial (n, 2) float64 embedding Y (not modified).

phases: list of (n_iter, exaggeration, learning_rate, momentum). callback(iteration, kl_estimate)
is called every callback_every iterations with the GIL held and the latest KL estimate (made every
kl_every iterations; NaN before the first; kl_every <= 0: never); return True to stop. Signals
(Ctrl-C) are checked at least every 10 ms (KeyboardInterrupt). method 'fft' runs an iteration
with Barnes-Hut when the map is too wide for a grid of about 4 sqrt(n) nodes per side. Y must be
finite and within +-1e150. Returns a dict with embedding, n_iter, kl_divergence (exact, of the
final embedding) and stopped.)doc");
}

}  // namespace llmdbg::bindings
