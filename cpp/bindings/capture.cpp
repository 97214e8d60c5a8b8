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
      [](TensorArg<"device_summary: tensor"> x) {
        at::Tensor packed;
        aten_without_gil([&] { packed = llmdbg::device_summary(x.value).cpu(); });
        return summary_to_dict(llmdbg::unpack_summary(packed));
      },
      py::arg("tensor"), "The ATen (on-device) statistics path, exposed for tests.");

  using Store = llmdbg::CaptureStore;
  py::class_<Store>(m, "CaptureStore",
                    "Host-side store of captured tensors. Thread-safe: adds from several threads "
                    "are all recorded, in the order they arrive.")
      .def(py::init(
               [](Int<"CaptureStore: max_bytes", 0> max_bytes, Str<"CaptureStore: dtype"> dtype) {
                 return std::make_unique<Store>(max_bytes.value, parse_dtype(dtype.value));
               }),
           py::arg("max_bytes") = 0, py::arg("dtype") = "float32")
      .def(
          "add",
          [](Store& self, Str<"CaptureStore.add: key"> key,
             TensorArg<"CaptureStore.add: tensor"> tensor,
             Int<"CaptureStore.add: head_dim"> head_dim,
             Int<"CaptureStore.add: token_dim"> token_dim,
             Int<"CaptureStore.add: token_start"> token_start,
             Int<"CaptureStore.add: token_stop"> token_stop, Flag<"CaptureStore.add: keep"> keep,
             Flag<"CaptureStore.add: stats"> stats) {
            const llmdbg::ReduceSpec spec{head_dim.value,   token_dim.value, token_start.value,
                                          token_stop.value, keep.value,      stats.value};
            const CancelFn poll = interrupt_poll();
            aten_without_gil([&] { self.add(key.value, tensor.value, spec, poll); });
          },
          py::arg("key"), py::arg("tensor"), py::kw_only(), py::arg("head_dim") = -1,
          py::arg("token_dim") = -1, py::arg("token_start") = 0,
          py::arg("token_stop") = std::numeric_limits<int64_t>::max(), py::arg("keep") = true,
          py::arg("stats") = true,
          "Detach, summarise, reduce, convert and copy one tensor to host under key (Ctrl-C "
          "raises KeyboardInterrupt and records nothing).")
      .def(
          "tensors",
          [](const Store& self, Str<"CaptureStore.tensors: key"> key) {
            std::vector<at::Tensor> out;
            without_gil([&] { out = self.tensors(key.value); });
            return out;
          },
          py::arg("key"), "Host tensors captured under key, one per call.")
      .def(
          "summary",
          [](Store& self, Str<"CaptureStore.summary: key"> key) {
            llmdbg::stats::Summary s;
            aten_without_gil([&] { s = self.summary(key.value); });
            return summary_to_dict(s);
          },
          py::arg("key"), "Statistics merged over every call under key.")
      .def(
          "has_stats",
          [](const Store& self, Str<"CaptureStore.has_stats: key"> key) {
            return self.has_stats(key.value);
          },
          py::arg("key"))
      .def("keys", &Store::keys, "Keys in first-capture order.")
      .def("clear", &Store::clear)
      .def_property_readonly("nbytes", &Store::nbytes)
      .def_property_readonly("max_bytes", &Store::max_bytes)
      .def_property_readonly("saw_device_tensor", &Store::saw_device_tensor);
}

}  // namespace llmdbg::bindings
