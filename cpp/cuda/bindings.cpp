// pybind11 module pytransformer._cuda: the CUDA kernels over device arrays (pytransformer.cuda.DeviceArray, or
// anything with the same `ptr`, `size` and `dtype`). As in _core, this layer checks what memory safety needs
// (dtype and element count of every array) and nothing else; pytransformer/ops.py checks shapes, aliasing and
// index ranges with friendlier messages. Pointers are read with the GIL held; kernels run with it released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "kernels.h"
#include "pytransformer/kernels.h"  // (the GGUF block table: quant_row_bytes)
#include "pytransformer/nogil.h"

namespace py = pybind11;
namespace cu = pt::cuda;

namespace {

template <class T>
const char* dtype_str();
template <>
const char* dtype_str<float>() { return "float32"; }
template <>
const char* dtype_str<int64_t>() { return "int64"; }
template <>
const char* dtype_str<uint8_t>() { return "uint8"; }

// The device pointer of `obj` after checking it is a device array of T with `size` elements; None -> nullptr
// when optional.
template <class T>
T* dev(const py::object& obj, const char* name, int64_t size, bool optional = false) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(std::string(name) + " must be a device array of " + dtype_str<T>() + ", got None");
  }
  if (!py::hasattr(obj, "ptr") || !py::hasattr(obj, "dtype") || !py::hasattr(obj, "size"))
    throw py::type_error(std::string(name) + " must be a device array (pytransformer.cuda.DeviceArray), got " +
                         std::string(py::str(py::type::of(obj))));
  if (!py::dtype::from_args(obj.attr("dtype")).is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must be " + dtype_str<T>() + ", got " +
                         std::string(py::str(obj.attr("dtype"))));
  const int64_t n = obj.attr("size").cast<int64_t>();
  if (n != size)
    throw py::value_error(std::string(name) + " has " + std::to_string(n) + " elements, expected " +
                          std::to_string(size));
  return reinterpret_cast<T*>(obj.attr("ptr").cast<uintptr_t>());
}

// Device memory owned by a Python object: freed when the last DeviceArray viewing it goes.
struct Buffer {
  explicit Buffer(size_t bytes) : ptr(cu::device_alloc(bytes)), nbytes(bytes) {}
  ~Buffer() { cu::device_free(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* ptr;
  size_t nbytes;
};

void* host_ptr(py::array& a, size_t bytes, bool writeable) {
  if (!(a.flags() & py::array::c_style)) throw py::value_error("host array must be C-contiguous");
  if ((size_t)a.nbytes() != bytes)
    throw py::value_error("host array has " + std::to_string(a.nbytes()) + " bytes, expected " +
                          std::to_string(bytes));
  if (writeable) {
    if (!a.writeable()) throw py::value_error("host array is read-only");
    return a.mutable_data();
  }
  return const_cast<void*>(a.data());  // (only read)
}

// Every index in ids (a device array of n int64) must lie in [0, hi), or equal `ignore` when allow_ignore: the
// ids are copied back and read here, since an index out of range would be a fault on the device.
void check_device_ids(const int64_t* ids, int64_t n, int64_t hi, const char* name, bool allow_ignore = false,
                      int64_t ignore = 0) {
  std::vector<int64_t> host((size_t)n);
  cu::copy_to_host(host.data(), ids, (size_t)n * sizeof(int64_t));
  for (int64_t i = 0; i < n; i++) {
    const int64_t id = host[(size_t)i];
    if ((id < 0 || id >= hi) && !(allow_ignore && id == ignore))
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(id) +
                            " is out of range [0, " + std::to_string(hi) + ")");
  }
}

// Bytes of a row of C values of a GGUF type (the CPU core's table), or a ValueError.
int64_t quant_row_bytes(int qtype, int64_t C) {
  const int64_t rb = pt::quant_row_bytes(qtype, C);
  if (rb < 0) throw py::value_error("quantised type " + std::to_string(qtype) + ": unsupported, or " +
                                    std::to_string(C) + " values are not whole blocks");
  return rb;
}

// Elementwise kernels over n floats, fn(out, inp, n) and fn(out, a, b, n): one binding each, checked alike.
void bind_map(py::module_& m, const char* name, void (*fn)(float*, const float*, int64_t), const char* out_name,
              const char* in_name) {
  m.def(name, [=](py::object out, py::object inp, int64_t n) {
    auto* o = dev<float>(out, out_name, n);
    auto* x = dev<float>(inp, in_name, n);
    const pt::NoGil release;
    fn(o, x, n);
  });
}
// Sliding-window attention runs on the CPU only (the CPU kernels' window argument).
void no_window(int64_t window) {
  if (window != 0) throw py::value_error("attention window " + std::to_string(window) + ": the CUDA kernels run no window");
}

void bind_map2(py::module_& m, const char* name, void (*fn)(float*, const float*, const float*, int64_t),
               const char* out_name, const char* a_name, const char* b_name) {
  m.def(name, [=](py::object out, py::object a, py::object b, int64_t n) {
    auto* o = dev<float>(out, out_name, n);
    auto* x = dev<float>(a, a_name, n);
    auto* y = dev<float>(b, b_name, n);
    const pt::NoGil release;
    fn(o, x, y, n);
  });
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pytransformer CUDA kernels (device arrays in, nothing copied)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cu::OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  using py::arg;
  const auto nogil = py::call_guard<pt::NoGil>();

  // --- runtime ---
  m.def("device_count", &cu::device_count);
  m.def("device_name", &cu::device_name, arg("device") = 0);
  m.def("emulated", &cu::emulated);
  m.def("synchronize", &cu::synchronize, nogil);
  py::class_<Buffer>(m, "Buffer")
      .def(py::init<size_t>(), arg("nbytes"))
      .def_property_readonly("ptr", [](const Buffer& b) { return reinterpret_cast<uintptr_t>(b.ptr); })
      .def_readonly("nbytes", &Buffer::nbytes);
  m.def("copy_to_device", [](uintptr_t dst, py::array src, size_t bytes) {
    const void* p = host_ptr(src, bytes, false);
    const pt::NoGil release;
    cu::copy_to_device(reinterpret_cast<void*>(dst), p, bytes);
  });
  m.def("copy_to_host", [](py::array dst, uintptr_t src, size_t bytes) {
    void* p = host_ptr(dst, bytes, true);
    const pt::NoGil release;
    cu::copy_to_host(p, reinterpret_cast<const void*>(src), bytes);
  });
  m.def("copy_on_device", [](uintptr_t dst, uintptr_t src, size_t bytes) {
    cu::copy_on_device(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
  }, nogil);
  m.def("fill_zero", [](uintptr_t dst, size_t bytes) { cu::fill_zero(reinterpret_cast<void*>(dst), bytes); },
        nogil);

  // --- kernels: the _core signatures (outputs, saved, inputs, parameters, sizes, options) ---
  m.def("matmul_forward", [](py::object out, py::object inp, py::object weight, py::object bias, int64_t N,
                             int64_t IC, int64_t OC) {
    auto* o = dev<float>(out, "out", N * OC);
    auto* x = dev<float>(inp, "inp", N * IC);
    auto* w = dev<float>(weight, "weight", OC * IC);
    auto* b = dev<float>(bias, "bias", OC, true);
    const pt::NoGil release;
    cu::matmul_forward(o, x, w, b, N, IC, OC);
  });
  m.def("matmul_backward", [](py::object dinp, py::object dweight, py::object dbias, py::object dout,
                              py::object inp, py::object weight, int64_t N, int64_t IC, int64_t OC) {
    auto* dx = dev<float>(dinp, "dinp", N * IC, true);
    auto* dw = dev<float>(dweight, "dweight", OC * IC, true);
    auto* db = dev<float>(dbias, "dbias", OC, true);
    auto* g = dev<float>(dout, "dout", N * OC);
    auto* x = dev<float>(inp, "inp", N * IC);
    auto* w = dev<float>(weight, "weight", OC * IC);
    const pt::NoGil release;
    cu::matmul_backward(dx, dw, db, g, x, w, N, IC, OC);
  });
  m.def("matmul_q_forward", [](py::object out, py::object inp, py::object weight, int qtype, py::object bias,
                               int64_t N, int64_t IC, int64_t OC) {
    const int64_t rb = quant_row_bytes(qtype, IC);
    auto* o = dev<float>(out, "out", N * OC);
    auto* x = dev<float>(inp, "inp", N * IC);
    auto* w = dev<uint8_t>(weight, "weight", OC * rb);
    auto* b = dev<float>(bias, "bias", OC, true);
    const pt::NoGil release;
    cu::matmul_q_forward(o, x, w, qtype, b, N, IC, OC);
  });
  m.def("dequantize_rows", [](py::object out, py::object src, int qtype, py::object ids, int64_t rows, int64_t N,
                              int64_t C) {
    const int64_t rb = quant_row_bytes(qtype, C);
    auto* o = dev<float>(out, "out", N * C);
    auto* s = dev<uint8_t>(src, "src", rows * rb);
    auto* id = dev<int64_t>(ids, "ids", N, true);
    if (!id && N > rows) throw py::value_error("dequantize_rows: N exceeds the rows of src");
    const pt::NoGil release;
    if (id) check_device_ids(id, N, rows, "ids");
    cu::dequantize_rows(o, s, qtype, id, N, C);
  });
  m.def("layernorm_forward", [](py::object out, py::object mean, py::object rstd, py::object inp,
                                py::object weight, py::object bias, int64_t N, int64_t C, float eps) {
    auto* o = dev<float>(out, "out", N * C);
    auto* mu = dev<float>(mean, "mean", N, true);
    auto* rs = dev<float>(rstd, "rstd", N, true);
    auto* x = dev<float>(inp, "inp", N * C);
    auto* w = dev<float>(weight, "weight", C);
    auto* b = dev<float>(bias, "bias", C, true);
    const pt::NoGil release;
    cu::layernorm_forward(o, mu, rs, x, w, b, N, C, eps);
  });
  m.def("layernorm_backward", [](py::object dinp, py::object dweight, py::object dbias, py::object dout,
                                 py::object inp, py::object weight, py::object mean, py::object rstd, int64_t N,
                                 int64_t C) {
    auto* dx = dev<float>(dinp, "dinp", N * C, true);
    auto* dw = dev<float>(dweight, "dweight", C, true);
    auto* db = dev<float>(dbias, "dbias", C, true);
    auto* g = dev<float>(dout, "dout", N * C);
    auto* x = dev<float>(inp, "inp", N * C);
    auto* w = dev<float>(weight, "weight", C);
    auto* mu = dev<float>(mean, "mean", N);
    auto* rs = dev<float>(rstd, "rstd", N);
    const pt::NoGil release;
    cu::layernorm_backward(dx, dw, db, g, x, w, mu, rs, N, C);
  });
  m.def("rmsnorm_forward", [](py::object out, py::object rstd, py::object inp, py::object weight, int64_t N,
                              int64_t C, float eps) {
    auto* o = dev<float>(out, "out", N * C);
    auto* rs = dev<float>(rstd, "rstd", N, true);
    auto* x = dev<float>(inp, "inp", N * C);
    auto* w = dev<float>(weight, "weight", C);
    const pt::NoGil release;
    cu::rmsnorm_forward(o, rs, x, w, N, C, eps);
  });
  m.def("rmsnorm_backward", [](py::object dinp, py::object dweight, py::object dout, py::object inp,
                               py::object weight, py::object rstd, int64_t N, int64_t C) {
    auto* dx = dev<float>(dinp, "dinp", N * C, true);
    auto* dw = dev<float>(dweight, "dweight", C, true);
    auto* g = dev<float>(dout, "dout", N * C);
    auto* x = dev<float>(inp, "inp", N * C);
    auto* w = dev<float>(weight, "weight", C);
    auto* rs = dev<float>(rstd, "rstd", N);
    const pt::NoGil release;
    cu::rmsnorm_backward(dx, dw, g, x, w, rs, N, C);
  });
  m.def("gelu_forward", [](py::object out, py::object inp, int64_t n, int approximate) {
    auto* o = dev<float>(out, "out", n);
    auto* x = dev<float>(inp, "inp", n);
    const pt::NoGil release;
    cu::gelu_forward(o, x, n, approximate);
  });
  m.def("gelu_backward", [](py::object dinp, py::object inp, py::object dout, int64_t n, int approximate) {
    auto* dx = dev<float>(dinp, "dinp", n);
    auto* x = dev<float>(inp, "inp", n);
    auto* g = dev<float>(dout, "dout", n);
    const pt::NoGil release;
    cu::gelu_backward(dx, x, g, n, approximate);
  });
  bind_map(m, "tanh_forward", cu::tanh_forward, "out", "inp");
  bind_map2(m, "tanh_backward", cu::tanh_backward, "dinp", "out", "dout");
  bind_map(m, "relu_forward", cu::relu_forward, "out", "inp");
  bind_map2(m, "relu_backward", cu::relu_backward, "dinp", "inp", "dout");
  // the gated products: out = act(gate) * up, and dgate, dup
  const auto gated = [&](const char* forward, const char* backward, auto kernel_forward, auto kernel_backward) {
    bind_map2(m, forward, kernel_forward, "out", "gate", "up");
    m.def(backward, [kernel_backward](py::object dgate, py::object dup, py::object dout, py::object gate,
                                      py::object up, int64_t n) {
      auto* dg = dev<float>(dgate, "dgate", n, true);
      auto* du = dev<float>(dup, "dup", n, true);
      auto* g = dev<float>(dout, "dout", n);
      auto* x = dev<float>(gate, "gate", n);
      auto* u = dev<float>(up, "up", n);
      const pt::NoGil release;
      kernel_backward(dg, du, g, x, u, n);
    });
  };
  gated("swiglu_forward", "swiglu_backward", cu::swiglu_forward, cu::swiglu_backward);
  gated("geglu_forward", "geglu_backward", cu::geglu_forward, cu::geglu_backward);
  m.def("softmax_forward", [](py::object out, py::object inp, int64_t N, int64_t C) {
    auto* o = dev<float>(out, "out", N * C);
    auto* x = dev<float>(inp, "inp", N * C);
    const pt::NoGil release;
    cu::softmax_forward(o, x, N, C);
  });
  m.def("softmax_backward", [](py::object dinp, py::object out, py::object dout, int64_t N, int64_t C) {
    auto* dx = dev<float>(dinp, "dinp", N * C);
    auto* o = dev<float>(out, "out", N * C);
    auto* g = dev<float>(dout, "dout", N * C);
    const pt::NoGil release;
    cu::softmax_backward(dx, o, g, N, C);
  });
  m.def("crossentropy_forward", [](py::object losses, py::object lse, py::object logits, py::object targets,
                                   int64_t N, int64_t V, int64_t ignore_index, float smoothing) {
    auto* l = dev<float>(losses, "losses", N);
    auto* s = dev<float>(lse, "lse", N);
    auto* x = dev<float>(logits, "logits", N * V);
    auto* t = dev<int64_t>(targets, "targets", N);
    const pt::NoGil release;
    check_device_ids(t, N, V, "targets", true, ignore_index);
    return cu::crossentropy_forward(l, s, x, t, N, V, ignore_index, smoothing);
  });
  m.def("crossentropy_backward", [](py::object dlogits, py::object logits, py::object lse, py::object targets,
                                    float dloss, int64_t N, int64_t V, int64_t ignore_index, float smoothing) {
    auto* dx = dev<float>(dlogits, "dlogits", N * V);
    auto* x = dev<float>(logits, "logits", N * V);
    auto* s = dev<float>(lse, "lse", N);
    auto* t = dev<int64_t>(targets, "targets", N);
    const pt::NoGil release;
    check_device_ids(t, N, V, "targets", true, ignore_index);
    cu::crossentropy_backward(dx, x, s, t, dloss, N, V, ignore_index, smoothing);
  });
  m.def("embedding_forward", [](py::object out, py::object ids, py::object table, int64_t N, int64_t V,
                                int64_t C) {
    auto* o = dev<float>(out, "out", N * C);
    auto* i = dev<int64_t>(ids, "ids", N);
    auto* t = dev<float>(table, "table", V * C);
    const pt::NoGil release;
    check_device_ids(i, N, V, "ids");
    cu::embedding_forward(o, i, t, N, V, C);
  });
  m.def("embedding_backward", [](py::object dtable, py::object dout, py::object ids, int64_t N, int64_t V,
                                 int64_t C) {
    auto* dt = dev<float>(dtable, "dtable", V * C);
    auto* g = dev<float>(dout, "dout", N * C);
    auto* i = dev<int64_t>(ids, "ids", N);
    const pt::NoGil release;
    check_device_ids(i, N, V, "ids");
    cu::embedding_backward(dt, g, i, N, V, C);
  });
  bind_map2(m, "residual_forward", cu::residual_forward, "out", "a", "b");
  m.def("scale_inplace", [](py::object x, int64_t n, float factor) {
    auto* p = dev<float>(x, "x", n);
    const pt::NoGil release;
    cu::scale_inplace(p, n, factor);
  });
  m.def("residual_backward", [](py::object da, py::object db, py::object dout, int64_t n) {
    auto* x = dev<float>(da, "da", n, true);
    auto* y = dev<float>(db, "db", n, true);
    auto* g = dev<float>(dout, "dout", n);
    const pt::NoGil release;
    cu::residual_backward(x, y, g, n);
  });
  m.def("dropout_forward", [](py::object out, py::object inp, int64_t n, float p, uint64_t seed) {
    auto* o = dev<float>(out, "out", n);
    auto* x = dev<float>(inp, "inp", n);
    const pt::NoGil release;
    cu::dropout_forward(o, x, n, p, seed);
  });
  m.def("dropout_backward", [](py::object dinp, py::object dout, int64_t n, float p, uint64_t seed) {
    auto* dx = dev<float>(dinp, "dinp", n);
    auto* g = dev<float>(dout, "dout", n);
    const pt::NoGil release;
    cu::dropout_backward(dx, g, n, p, seed);
  });
  m.def("rope_forward", [](py::object out, py::object inp, py::object cos, py::object sin, py::object positions,
                           int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved) {
    auto* o = dev<float>(out, "out", N * NH * HS);
    auto* x = dev<float>(inp, "inp", N * NH * HS);
    auto* c = dev<float>(cos, "cos", P * (HS / 2));
    auto* s = dev<float>(sin, "sin", P * (HS / 2));
    auto* pos = dev<int64_t>(positions, "positions", N);
    const pt::NoGil release;
    check_device_ids(pos, N, P, "positions");
    cu::rope_forward(o, x, c, s, pos, N, NH, HS, P, interleaved);
  });
  m.def("rope_backward", [](py::object dinp, py::object dout, py::object cos, py::object sin,
                            py::object positions, int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved) {
    auto* dx = dev<float>(dinp, "dinp", N * NH * HS);
    auto* g = dev<float>(dout, "dout", N * NH * HS);
    auto* c = dev<float>(cos, "cos", P * (HS / 2));
    auto* s = dev<float>(sin, "sin", P * (HS / 2));
    auto* pos = dev<int64_t>(positions, "positions", N);
    const pt::NoGil release;
    check_device_ids(pos, N, P, "positions");
    cu::rope_backward(dx, g, c, s, pos, N, NH, HS, P, interleaved);
  });
  m.def("attention_forward", [](py::object out, py::object lse, py::object q, py::object k, py::object v,
                                py::object key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                                int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale, bool bthd) {
    no_window(window);
    auto* o = dev<float>(out, "out", B * NH * Tq * HS);
    auto* l = dev<float>(lse, "lse", B * NH * Tq);
    auto* qp = dev<float>(q, "q", B * NH * Tq * HS);
    auto* kp = dev<float>(k, "k", B * NKV * Tkv * HS);
    auto* vp = dev<float>(v, "v", B * NKV * Tkv * HS);
    auto* mk = dev<uint8_t>(key_mask, "key_mask", B * Tk, true);
    if (NKV <= 0 || NH % NKV || Tk > Tkv) throw py::value_error("attention_forward: inconsistent sizes");
    const pt::NoGil release;
    cu::attention_forward(o, l, qp, kp, vp, mk, B, NH, NKV, Tq, Tk, Tkv, HS, causal, scale, bthd);
  });
  m.def("attention_backward", [](py::object dq, py::object dk, py::object dv, py::object dout, py::object out,
                                 py::object lse, py::object q, py::object k, py::object v, py::object key_mask,
                                 int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, bool causal,
                                 int64_t window, float scale, bool bthd) {
    no_window(window);
    auto* dqp = dev<float>(dq, "dq", B * NH * Tq * HS);
    auto* dkp = dev<float>(dk, "dk", B * NKV * Tk * HS);
    auto* dvp = dev<float>(dv, "dv", B * NKV * Tk * HS);
    auto* g = dev<float>(dout, "dout", B * NH * Tq * HS);
    auto* o = dev<float>(out, "out", B * NH * Tq * HS);
    auto* l = dev<float>(lse, "lse", B * NH * Tq);
    auto* qp = dev<float>(q, "q", B * NH * Tq * HS);
    auto* kp = dev<float>(k, "k", B * NKV * Tk * HS);
    auto* vp = dev<float>(v, "v", B * NKV * Tk * HS);
    auto* mk = dev<uint8_t>(key_mask, "key_mask", B * Tk, true);
    if (NKV <= 0 || NH % NKV) throw py::value_error("attention_backward: inconsistent sizes");
    const pt::NoGil release;
    cu::attention_backward(dqp, dkp, dvp, g, o, l, qp, kp, vp, mk, B, NH, NKV, Tq, Tk, HS, causal, scale, bthd);
  });
  m.def("adamw_step", [](py::object params, py::object m_, py::object v, py::object grads, int64_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int64_t step) {
    auto* p = dev<float>(params, "params", n);
    auto* mm = dev<float>(m_, "m", n);
    auto* vv = dev<float>(v, "v", n);
    auto* g = dev<float>(grads, "grads", n);
    const pt::NoGil release;
    cu::adamw_step(p, mm, vv, g, n, lr, beta1, beta2, eps, weight_decay, step);
  });
  m.def("sum_squares", [](py::object x, int64_t n) {
    auto* p = dev<float>(x, "x", n);
    const pt::NoGil release;
    return cu::sum_squares(p, n);
  });
}
