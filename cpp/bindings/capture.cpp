// Bindings for the capture store in cpp/aten: the host-side store the capture hooks feed, and
// the on-device statistics path it uses for CUDA tensors (exposed for tests).
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "aten/capture_store.hpp"
#include "common.hpp"
#include "tensors.hpp"

namespace llmdbg::bindings {

void bind_capture(py::module_& m) {
  m.def(
      "device_summary",
      [](const at::Tensor& x) {
        at::Tensor packed;
        without_gil([&] { packed = llmdbg::device_summary(x).cpu(); });
        return summary_to_dict(llmdbg::unpack_summary(packed));
      },
      py::arg("tensor"), "The ATen (on-device) statistics path, exposed for tests.");

  py::class_<llmdbg::CaptureStore>(m, "CaptureStore", "Host-side store of captured tensors.")
      .def(py::init([](int64_t max_bytes, const std::string& dtype) {
             return std::make_unique<llmdbg::CaptureStore>(max_bytes, parse_dtype(dtype));
           }),
           py::arg("max_bytes") = 0, py::arg("dtype") = "float32")
      .def(
          "add",
          [](llmdbg::CaptureStore& self, const std::string& key, const at::Tensor& tensor,
             int64_t head_dim, int64_t token_dim, int64_t token_start, int64_t token_stop,
             bool keep, bool stats) {
            llmdbg::ReduceSpec spec{head_dim, token_dim, token_start, token_stop, keep, stats};
            without_gil([&] { self.add(key, tensor, spec); });
          },
          py::arg("key"), py::arg("tensor"), py::kw_only(), py::arg("head_dim") = -1,
          py::arg("token_dim") = -1, py::arg("token_start") = 0,
          py::arg("token_stop") = std::numeric_limits<int64_t>::max(), py::arg("keep") = true,
          py::arg("stats") = true,
          "Detach, summarise, reduce, convert and copy one tensor to host under key.")
      .def(
          "tensors",
          [](const llmdbg::CaptureStore& self, const std::string& key) {
            std::vector<at::Tensor> out;
            without_gil([&] { out = self.tensors(key); });
            return out;
          },
          py::arg("key"), "Host tensors captured under key, one per call.")
      .def(
          "summary",
          [](llmdbg::CaptureStore& self, const std::string& key) {
            llmdbg::stats::Summary s;
            without_gil([&] { s = self.summary(key); });
            return summary_to_dict(s);
          },
          py::arg("key"), "Statistics merged over every call under key.")
      .def("has_stats", &llmdbg::CaptureStore::has_stats, py::arg("key"))
      .def("keys", &llmdbg::CaptureStore::keys, "Keys in first-capture order.")
      .def("clear", &llmdbg::CaptureStore::clear)
      .def_property_readonly("nbytes", &llmdbg::CaptureStore::nbytes)
      .def_property_readonly("max_bytes", &llmdbg::CaptureStore::max_bytes)
      .def_property_readonly("saw_device_tensor", &llmdbg::CaptureStore::saw_device_tensor);
}

}  // namespace llmdbg::bindings
