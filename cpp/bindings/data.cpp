// Bindings for the data-profiling counters in cpp/core/data. Torch-free: Python strings and
// numpy arrays in, numpy arrays and lists out. Strings are read in place through their UTF-8
// representation (cached by CPython, no copy for ASCII), then counted without the GIL, polling for
// Ctrl-C (KeyboardInterrupt).
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arrays.hpp"
#include "common.hpp"
#include "core/data/profile.hpp"
#include "scalars.hpp"

namespace llmdbg::bindings {

namespace {

namespace dp = llmdbg::data;

// UTF-8 views of a sequence of str. `keep` holds a tuple of the strings (a copy of a list's
// references, so another thread that mutates the list cannot free a string we read without the
// GIL), and the views stay valid while the GIL is released.
std::vector<std::string_view> text_views(const py::handle& texts, const char* fn,
                                         py::object& keep) {
  if (!PySequence_Check(texts.ptr()) || PyUnicode_Check(texts.ptr())) {
    throw py::type_error(std::string(fn) + ": texts must be a sequence of str");
  }
  PyObject* seq = PySequence_Tuple(texts.ptr());
  if (seq == nullptr) throw py::error_already_set();
  keep = py::reinterpret_steal<py::object>(seq);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  std::vector<std::string_view> out;
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (i + 16 < n)
      __builtin_prefetch(items[i + 16]);  // the str header: one cache miss per item otherwise
    if (!PyUnicode_Check(items[i])) {
      throw py::type_error(std::string(fn) + ": texts[" + std::to_string(i) +
                           "] must be str, got " + Py_TYPE(items[i])->tp_name);
    }
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(items[i], &size);
    if (data == nullptr) {
      PyErr_Clear();
      throw py::value_error(std::string(fn) + ": texts[" + std::to_string(i) +
                            "] cannot be encoded as UTF-8 (lone surrogate?)");
    }
    out.emplace_back(data, static_cast<size_t>(size));
  }
  return out;
}

py::list token_list(const std::vector<std::string_view>& views) {
  py::list tokens(views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    PyObject* s =
        PyUnicode_DecodeUTF8(views[i].data(), static_cast<Py_ssize_t>(views[i].size()), "strict");
    if (s == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(tokens.ptr(), static_cast<Py_ssize_t>(i), s);
  }
  return tokens;
}

py::tuple count_whitespace_tokens(const py::object& texts,
                                  Threads<"count_whitespace_tokens"> threads) {
  py::object keep;
  const auto views = text_views(texts, "count_whitespace_tokens", keep);
  const CancelFn poll = interrupt_poll();
  dp::TokenCounts r;
  without_gil([&] { r = dp::count_whitespace_tokens(views, threads.value, poll); });
  return py::make_tuple(token_list(r.tokens), to_numpy(std::move(r.counts)),
                        to_numpy(std::move(r.lengths)));
}

py::tuple profile_whitespace(const py::object& texts, Threads<"profile_whitespace"> threads) {
  py::object keep;
  const auto views = text_views(texts, "profile_whitespace", keep);
  const CancelFn poll = interrupt_poll();
  dp::TextProfile r;
  without_gil([&] { r = dp::profile_whitespace(views, threads.value, poll); });
  return py::make_tuple(token_list(r.tokens.tokens), to_numpy(std::move(r.tokens.counts)),
                        to_numpy(std::move(r.tokens.lengths)), to_numpy(std::move(r.groups)));
}

py::tuple duplicate_summary(const py::object& groups_obj, const py::object& codes) {
  const py::array groups =
      checked_array(groups_obj, "duplicate_summary: groups", kInt64, Shape{"n"});
  const int64_t n = groups.shape(0);
  const auto code_array =
      checked_array_or_none(codes, "duplicate_summary: codes", kInt64, Shape{"n"});
  if (code_array && code_array->shape(0) != n) {
    throw py::value_error("duplicate_summary: codes has " + std::to_string(code_array->shape(0)) +
                          " entries but groups has " + std::to_string(n));
  }
  const int64_t* c = data_of<int64_t>(code_array);
  const int64_t* g = data_of<int64_t>(groups);
  dp::DuplicateSummary r;
  without_gil([&] { r = dp::duplicate_summary(g, n, c); });
  return py::make_tuple(to_numpy(std::move(r.first)), to_numpy(std::move(r.count)),
                        to_numpy(std::move(r.n_labels)));
}

// A list or tuple of Python ints (exactly int, not bool) as int64; None if any item is not an
// int or does not fit in int64 (the caller then falls back to numpy). Replaces np.asarray(list),
// which needs a type-discovery pass over Python objects.
py::object int64_array(const py::object& items) {
  if (!PyList_Check(items.ptr()) && !PyTuple_Check(items.ptr())) return py::none();
  PyObject* seq = items.ptr();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** it = PySequence_Fast_ITEMS(seq);
  py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
  int64_t* o = out.mutable_data();
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_CheckExact(it[i])) return py::none();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(it[i], &overflow);
    if (overflow != 0) return py::none();
    o[i] = static_cast<int64_t>(v);
  }
  return py::object(std::move(out));
}

py::array_t<int64_t> duplicate_groups(const py::object& texts,
                                      Threads<"duplicate_groups"> threads) {
  py::object keep;
  const auto views = text_views(texts, "duplicate_groups", keep);
  const CancelFn poll = interrupt_poll();
  std::vector<int64_t> g;
  without_gil([&] { g = dp::duplicate_groups(views, threads.value, ~uint64_t{0}, poll); });
  return to_numpy(std::move(g));
}

py::tuple count_ids(const py::object& ids_obj, const py::object& offsets_obj,
                    Int<"count_ids: vocab_size"> vocab, Threads<"count_ids"> threads) {
  // Types, then sizes, then the one call.
  const py::array ids = checked_array(ids_obj, "count_ids: ids", kInt64, Shape{"n"});
  const py::array offsets = checked_array(offsets_obj, "count_ids: offsets", kInt64, Shape{"n"});
  const int64_t vocab_size = vocab.value;
  const int num_threads = threads.value;
  if (offsets.shape(0) < 1)
    throw py::value_error("count_ids: offsets needs n_seqs + 1 >= 1 entries");
  const int64_t n_seqs = offsets.shape(0) - 1;
  const int64_t* off = data_of<int64_t>(offsets);
  if (off[n_seqs] != ids.shape(0)) {
    throw py::value_error("count_ids: offsets[-1] = " + std::to_string(off[n_seqs]) +
                          " but ids has " + std::to_string(ids.shape(0)) + " entries");
  }
  const int64_t* p = data_of<int64_t>(ids);
  const CancelFn poll = interrupt_poll();
  dp::IdCounts r;
  without_gil([&] { r = dp::count_ids(p, off, n_seqs, vocab_size, num_threads, poll); });
  return py::make_tuple(to_numpy(std::move(r.counts)), to_numpy(std::move(r.lengths)));
}

}  // namespace

void bind_data(py::module_& m) {
  m.def("count_whitespace_tokens", &count_whitespace_tokens, py::arg("texts"),
        py::arg("num_threads") = 0,
        R"doc(Split each str on whitespace (exactly str.split()) and count the tokens.

Returns (tokens, counts, lengths): unique tokens in first-occurrence order (list of str), their
counts (int64, same length) and the number of tokens of each text (int64, len(texts)).)doc");
  m.def("profile_whitespace", &profile_whitespace, py::arg("texts"), py::arg("num_threads") = 0,
        R"doc(count_whitespace_tokens and duplicate_groups in one pass over the texts.

Returns (tokens, counts, lengths, groups), each as those two functions return them.)doc");
  m.def("duplicate_summary", &duplicate_summary, py::arg("groups"), py::arg("codes") = py::none(),
        R"doc(Groups of identical texts from duplicate_groups' output.

Returns (first, count, n_labels), int64 arrays with one entry per group of two or more texts, most
frequent first (ties: smaller first index first): the group's first index, its size and the
number of distinct label codes in it (0 when codes is None). codes: int64 (len(groups),) or None.)doc");
  m.def(
      "int64_array", &int64_array, py::arg("items"),
      R"doc(A list or tuple of Python ints as an int64 array (len(items),); None if an item is not an
int (bools excluded) or does not fit in int64.)doc");
  m.def(
      "duplicate_groups", &duplicate_groups, py::arg("texts"), py::arg("num_threads") = 0,
      R"doc(For each text the index of the first identical text (itself if first); int64, len(texts).
64-bit hashes, every match confirmed byte by byte.)doc");
  m.def("count_ids", &count_ids, py::arg("ids"), py::arg("offsets"), py::arg("vocab_size"),
        py::arg("num_threads") = 0,
        R"doc(Counts of token ids stored flat (sequence s is ids[offsets[s]:offsets[s+1]]).

Returns (counts, lengths): int64 (vocab_size,) and int64 (len(offsets) - 1,). ValueError for an id
outside [0, vocab_size) or a vocab_size outside [1, 2**32].)doc");
}

}  // namespace llmdbg::bindings
