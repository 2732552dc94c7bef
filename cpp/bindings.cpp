// pybind11 module pytransformer._core: the raw kernels over NumPy arrays. No policy here: every op calls
// pt::active() (dispatch.cpp chooses the table: ISA variant and matmul precision).
//
// Every array argument is checked here for what memory safety needs (dtype, C-contiguity, element count,
// writeability) and never converted or copied; pytransformer/ops.py checks shapes and aliasing with friendlier
// messages and is the public face. Pointers are read with the GIL held; kernels run with it released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

#include "pytransformer/decode.h"
#include "pytransformer/dispatch.h"
#include "pytransformer/dtype_name.h"
#include "pytransformer/nogil.h"
#include "pytransformer/packed.h"

namespace py = pybind11;

namespace {

using pt::dtype_name;

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); i++) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

void check_nonneg(std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s < 0) throw py::value_error("sizes must be non-negative");
}

// The product of sizes (element counts, byte counts), or a ValueError when one is negative or the product does not
// fit in int64: a wrapped product could match a small (even empty) array and hand the kernel sizes far beyond it.
int64_t product(std::initializer_list<int64_t> sizes) {
  check_nonneg(sizes);
  int64_t n = 1;
  for (int64_t s : sizes) {
    if (__builtin_mul_overflow(n, s, &n)) {
      std::string factors;
      for (int64_t f : sizes) factors += (factors.empty() ? "" : " x ") + std::to_string(f);
      throw py::value_error("sizes " + factors + " overflow int64");
    }
  }
  return n;
}

int64_t sum(int64_t a, int64_t b) {
  int64_t n;
  if (__builtin_add_overflow(a, b, &n))
    throw py::value_error("sizes " + std::to_string(a) + " + " + std::to_string(b) + " overflow int64");
  return n;
}

// The data pointer of `obj` after checking it is a C-contiguous array of dtype (named dtype_name) with
// product(dims) elements (writeable when `out`). None gives nullptr when `optional` (the sizes are checked all the
// same).
void* checked_data(const py::object& obj, const char* name, std::initializer_list<int64_t> dims, const py::dtype& dtype,
                   const std::string& dtype_name, bool out, bool optional) {
  const int64_t size = product(dims);
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(std::string(name) + " must be a " + dtype_name + " array, got None");
  }
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array of " + dtype_name + ", got " +
                         std::string(py::str(py::type::of(obj))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(dtype))
    throw py::type_error(std::string(name) + " must be " + dtype_name + ", got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  if (a.size() != size)
    throw py::value_error(std::string(name) + " must have " + std::to_string(size) + " elements, got shape " +
                          shape_str(a));
  if (out && !a.writeable()) throw py::value_error(std::string(name) + " is read-only; outputs must be writeable");
  return const_cast<void*>(a.data());
}
template <class T>
T* array_data(const py::object& obj, const char* name, std::initializer_list<int64_t> dims, bool out = false,
              bool optional = false) {
  return static_cast<T*>(checked_data(obj, name, dims, py::dtype::of<T>(), dtype_name<T>(), out, optional));
}
// float16 (IEEE half) arrays: a KV cache's storage, as their uint16_t bits
const py::dtype& float16() {
  static const py::dtype dt("float16");
  return dt;
}
uint16_t* half_data(const py::object& obj, const char* name, std::initializer_list<int64_t> dims, bool out = false) {
  return static_cast<uint16_t*>(checked_data(obj, name, dims, float16(), "float16", out, false));
}
bool is_half(const py::object& obj) {
  return py::isinstance<py::array>(obj) && py::reinterpret_borrow<py::array>(obj).dtype().is(float16());
}

void check_ids(const int64_t* ids, int64_t n, int64_t V, const char* name, bool allow_ignore = false,
               int64_t ignore_index = 0) {
  for (int64_t i = 0; i < n; i++) {
    if (allow_ignore && ids[i] == ignore_index) continue;
    if (ids[i] < 0 || ids[i] >= V)
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                            " is outside [0, " + std::to_string(V) + ")");
  }
}

// An array a kernel writes: its bytes.
struct Written {
  const void* data;
  int64_t bytes;
  const char* name;
};
template <class T>
Written written(const T* data, int64_t n, const char* name) {
  return {data, n * static_cast<int64_t>(sizeof(T)), name};
}

// An array a kernel reads (`read`) must not lie under one it writes. Index arrays are checked in range before a
// kernel runs; an output laid over one would let the kernel rewrite the indices it is reading, and read out of
// bounds with them.
void check_apart(const Written& read, const std::vector<Written>& outputs) {
  const auto lo = reinterpret_cast<uintptr_t>(read.data), hi = lo + read.bytes;
  for (const Written& w : outputs) {
    const auto wlo = reinterpret_cast<uintptr_t>(w.data), whi = wlo + w.bytes;
    if (read.bytes && w.bytes && wlo < hi && lo < whi)
      throw py::value_error(std::string(w.name) + " overlaps " + read.name + ": the kernel reads " + read.name +
                            " while writing " + w.name);
  }
}
void check_apart(const int64_t* ids, int64_t n, const char* name, const std::vector<Written>& outputs) {
  check_apart(written(ids, n, name), outputs);
}

void check_groups(int64_t NH, int64_t NKV) {
  if (NKV < 1 || NH % NKV) throw py::value_error("key/value heads NKV must be >= 1 and divide the query heads NH");
}

// Bytes of one row of C values of a GGUF type, -1 for an unknown type or C not a whole number of its blocks:
// pt::quant_row_bytes, once its product is known to fit (a ValueError when it does not).
int64_t checked_row_bytes(int qtype, int64_t C) {
  int64_t values, bytes;
  if (!pt::quant_block(qtype, &values, &bytes) || C < 0) return -1;
  product({C / values, bytes});
  return pt::quant_row_bytes(qtype, C);
}

// int8 activations are for the integer block types only
void int8_block_type(int qtype, const char* who) {
  if (qtype == pt::kF32 || qtype == pt::kF16 || qtype == pt::kBF16)
    throw py::value_error(std::string(who) + ": int8 activations need a GGUF integer block type, got type " +
                          std::to_string(qtype) + " (a float type)");
}

int64_t row_bytes(int64_t qtype, int64_t C) {
  const int64_t rb = qtype == (int)qtype ? checked_row_bytes((int)qtype, C) : -1;
  if (rb < 0)
    throw py::value_error("unsupported GGUF type " + std::to_string(qtype) + " or a row of " + std::to_string(C) +
                          " values that is not a whole number of its blocks");
  return rb;
}

// A weight's packed rows (packed.h; None: none) checked: as many bytes as its rows, a type and row count that pack
const uint8_t* packed_rows(const py::object& packed, int qtype, int64_t OC, int64_t rb) {
  if (packed.is_none()) return nullptr;
  if (!pt::can_pack(qtype, OC))
    throw py::value_error("packed rows: type " + std::to_string(qtype) + " with " + std::to_string(OC) +
                          " rows does not pack (packable types, whole runs of 16 rows)");
  return array_data<uint8_t>(packed, "packed", {OC, rb});
}

// A weight spec from Python (nn/weights.py Weight.spec() + the layer's bias): (kind, data, extra, OC, IC, bias or
// None); kind -1 float32, -2 bfloat16 bits, -3 int8 with its row scale (extra), else a GGUF block type (+ 1000: with
// int8 activations, extra its packed rows or None). The arrays are checked and kept alive by `keep`.
pt::WeightRef weight_ref(const py::handle& spec, std::vector<py::object>& keep) {
  auto t = py::reinterpret_borrow<py::tuple>(spec);
  if (t.size() != 6) throw py::value_error("a weight spec is (kind, data, scale, OC, IC, bias)");
  pt::WeightRef w;
  w.kind = t[0].cast<int>();
  w.OC = t[3].cast<int64_t>();
  w.IC = t[4].cast<int64_t>();
  py::object data = py::reinterpret_borrow<py::object>(t[1]);
  if (w.kind >= pt::WeightRef::kInt8Activations) int8_block_type(w.qtype(), "a weight spec");
  switch (w.kind) {
    case pt::WeightRef::kFloat32: w.data = array_data<float>(data, "weight", {w.OC, w.IC}); break;
    case pt::WeightRef::kBFloat16: w.data = array_data<uint16_t>(data, "weight", {w.OC, w.IC}); break;
    case pt::WeightRef::kInt8: {
      w.data = array_data<int8_t>(data, "weight", {w.OC, w.IC});
      py::object scale = py::reinterpret_borrow<py::object>(t[2]);
      w.scale = array_data<float>(scale, "weight_scale", {w.OC});
      keep.push_back(scale);
      break;
    }
    default: {
      const int64_t rb = row_bytes(w.qtype(), w.IC);
      w.data = array_data<uint8_t>(data, "weight", {w.OC, rb});
      if (w.kind >= pt::WeightRef::kInt8Activations) {
        py::object packed = py::reinterpret_borrow<py::object>(t[2]);
        w.packed = packed_rows(packed, w.qtype(), w.OC, rb);
        keep.push_back(packed);
      }
    }
  }
  py::object bias = py::reinterpret_borrow<py::object>(t[5]);
  w.bias = array_data<float>(bias, "bias", {w.OC}, false, true);
  keep.push_back(bias);
  keep.push_back(data);
  return w;
}

// The decoding plan of a decoder (decode.h) with the Python arrays it points into.
struct PyDecodePlan {
  pt::DecodePlan plan;
  std::vector<py::object> keep;
};

using py::arg;
using O = const py::object&;
const auto& K() { return pt::active(); }

using pt::NoGil;  // (pytransformer/nogil.h: the GIL released while a kernel runs)

// Small calls keep the GIL: releasing it before a microsecond of work lets another Python thread (a server's
// event loop) take it for up to the interpreter's switch interval (5 ms) before this thread gets it back.
constexpr int64_t kReleaseWork = 1 << 16;

// Words of sign bits per row a Hamming scan takes (65,536 dimensions): its histograms are 64 W + 1 counts per query.
constexpr int64_t kMaxSignWords = 1024;
// Dimensions of an int8 row an int8 scan takes: its integer sums (at most 127 * 127 * D) stay within int32.
constexpr int64_t kMaxInt8Dims = 65536;

// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T [* scale (OC)] + bias for a weight of element WT: float32,
// bfloat16 bits (uint16) or int8 (with its scale). The arrays checked, the kernel run without the GIL.
template <class WT, class Kernel>
void product_forward(O out, O inp, O weight, O scale, O bias, int64_t N, int64_t IC, int64_t OC, Kernel kernel) {
  check_nonneg({N, IC, OC});
  float* o = array_data<float>(out, "out", {N, OC}, true);
  const float* x = array_data<float>(inp, "inp", {N, IC});
  const WT* w = array_data<WT>(weight, "weight", {OC, IC});
  const float* s = array_data<float>(scale, "weight_scale", {OC}, false, !std::is_same<WT, int8_t>::value);
  const float* b = array_data<float>(bias, "bias", {OC}, false, true);
  const NoGil nogil;
  kernel(o, x, w, s, b, N, IC, OC);
}

// The gradient and output of a product through a frozen weight (already checked, its bytes in `weight`): dout
// (N, OC) read, dinp (N, IC) written, apart from each other and from the weight.
struct DinpArgs {
  float* dinp;
  const float* dout;
};
DinpArgs dinp_args(O dinp, O dout, const Written& weight, int64_t N, int64_t IC, int64_t OC) {
  float* dx = array_data<float>(dinp, "dinp", {N, IC}, true);
  const float* g = array_data<float>(dout, "dout", {N, OC});
  const Written out = written(dx, product({N, IC}), "dinp");
  check_apart(written(g, product({N, OC}), "dout"), {out});
  check_apart(weight, {out});
  return {dx, g};
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pytransformer kernels (float32, C-contiguous); see pytransformer.ops for the checked API";

  m.def("available_isas", &pt::available_isas, "ISA variants compiled in and supported here, best last");
  m.def("active_isa", &pt::active_isa);
  m.def("int8_dot", &pt::int8_dot);
  m.def("int8_tiles", &pt::int8_tiles);
  m.def("popcount", &pt::popcount);
  m.def("set_isa", &pt::set_isa, arg("name"));
  m.def("have_openmp", &pt::have_openmp);
  m.def("get_num_threads", &pt::num_threads);
  m.def("set_num_threads", &pt::set_num_threads, arg("n"));
  m.def("in_forked_child", &pt::in_forked_child, "True in a child made by fork(): kernels run on one thread");
  m.def("threads_capped_by_load", &pt::threads_capped_by_load,
        "True while a busy machine has kernels running on one thread (load-adaptive team size)");
  m.def("busy_threads", [] {
    const pt::BusyThreads busy = pt::busy_threads({});
    return py::make_tuple(busy.own_other, busy.foreign);
  }, "(this process's running threads but the caller, other processes' running threads): what the load probe reads");
  m.def("tune_malloc", &pt::tune_malloc, "glibc's malloc keeps freed blocks up to 32 MiB (runtime.cpp); True if it took");
  m.def("have_amx", &pt::have_amx, "AMX-BF16 usable here (CPU, OS permission, build)");
  m.def("amx_probe", [](int64_t iters) {
    check_nonneg({iters});
    if (!pt::have_amx()) throw py::value_error("amx_probe: no usable AMX-BF16 here");
    const NoGil nogil;
    return pt::amx_probe(iters);
  }, "benchmark probe: flops done by independent bf16 tile products on every thread", arg("iters"));
  m.def("get_matmul_precision", &pt::matmul_precision);
  m.def("set_matmul_precision", &pt::set_matmul_precision, arg("precision"));

  m.def("matmul_forward", [](O out, O inp, O weight, O bias, int64_t N, int64_t IC, int64_t OC) {
    product_forward<float>(out, inp, weight, py::none(), bias, N, IC, OC,
                           [](float* o, const float* x, const float* w, const float*, const float* b, int64_t n,
                              int64_t ic, int64_t oc) { K().matmul_forward(o, x, w, b, n, ic, oc); });
  });
  m.def("matmul_w16_forward", [](O out, O inp, O weight, O bias, int64_t N, int64_t IC, int64_t OC) {
    product_forward<uint16_t>(out, inp, weight, py::none(), bias, N, IC, OC,
                              [](float* o, const float* x, const uint16_t* w, const float*, const float* b, int64_t n,
                                 int64_t ic, int64_t oc) { K().matmul_w16_forward(o, x, w, b, n, ic, oc); });
  });
  m.def("matmul_w8_forward", [](O out, O inp, O weight, O scale, O bias, int64_t N, int64_t IC, int64_t OC) {
    product_forward<int8_t>(out, inp, weight, scale, bias, N, IC, OC,
                            [](float* o, const float* x, const int8_t* w, const float* s, const float* b, int64_t n,
                               int64_t ic, int64_t oc) { K().matmul_w8_forward(o, x, w, s, b, n, ic, oc); });
  });
  m.def("matmul_backward", [](O dinp, O dweight, O dbias, O dout, O inp, O weight, int64_t N, int64_t IC,
                              int64_t OC) {
    check_nonneg({N, IC, OC});
    float* dx = array_data<float>(dinp, "dinp", {N, IC}, true, true);
    float* dw = array_data<float>(dweight, "dweight", {OC, IC}, true, true);
    float* db = array_data<float>(dbias, "dbias", {OC}, true, true);
    const float* g = array_data<float>(dout, "dout", {N, OC});
    const float* x = array_data<float>(inp, "inp", {N, IC});
    const float* w = array_data<float>(weight, "weight", {OC, IC});
    const NoGil nogil;
    K().matmul_backward(dx, dw, db, g, x, w, N, IC, OC);
  });

  m.def("layernorm_forward", [](O out, O mean, O rstd, O inp, O weight, O bias, int64_t N, int64_t C, float eps) {
    check_nonneg({N, C});
    float* o = array_data<float>(out, "out", {N, C}, true);
    float* mu = array_data<float>(mean, "mean", {N}, true);
    float* rs = array_data<float>(rstd, "rstd", {N}, true);
    const float* x = array_data<float>(inp, "inp", {N, C});
    const float* w = array_data<float>(weight, "weight", {C});
    const float* b = array_data<float>(bias, "bias", {C});
    const NoGil nogil;
    K().layernorm_forward(o, mu, rs, x, w, b, N, C, eps);
  });
  m.def("layernorm_backward", [](O dinp, O dweight, O dbias, O dout, O inp, O weight, O mean, O rstd, int64_t N,
                                 int64_t C) {
    check_nonneg({N, C});
    float* dx = array_data<float>(dinp, "dinp", {N, C}, true, true);
    float* dw = array_data<float>(dweight, "dweight", {C}, true, true);
    float* db = array_data<float>(dbias, "dbias", {C}, true, true);
    const float* g = array_data<float>(dout, "dout", {N, C});
    const float* x = array_data<float>(inp, "inp", {N, C});
    const float* w = array_data<float>(weight, "weight", {C});
    const float* mu = array_data<float>(mean, "mean", {N});
    const float* rs = array_data<float>(rstd, "rstd", {N});
    const NoGil nogil;
    K().layernorm_backward(dx, dw, db, g, x, w, mu, rs, N, C);
  });

  m.def("gelu_forward", [](O out, O inp, int64_t n, bool approximate_tanh) {
    check_nonneg({n});
    float* o = array_data<float>(out, "out", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    const NoGil nogil;
    K().gelu_forward(o, x, n, approximate_tanh ? 1 : 0);
  });
  m.def("gelu_backward", [](O dinp, O inp, O dout, int64_t n, bool approximate_tanh) {
    check_nonneg({n});
    float* dx = array_data<float>(dinp, "dinp", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    const float* g = array_data<float>(dout, "dout", {n});
    const NoGil nogil;
    K().gelu_backward(dx, x, g, n, approximate_tanh ? 1 : 0);
  });
  m.def("relu_forward", [](O out, O inp, int64_t n) {
    check_nonneg({n});
    float* o = array_data<float>(out, "out", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    const NoGil nogil;
    K().relu_forward(o, x, n);
  });
  m.def("relu_backward", [](O dinp, O inp, O dout, int64_t n) {
    check_nonneg({n});
    float* dx = array_data<float>(dinp, "dinp", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    const float* g = array_data<float>(dout, "dout", {n});
    const NoGil nogil;
    K().relu_backward(dx, x, g, n);
  });

  m.def("softmax_forward", [](O out, O inp, int64_t N, int64_t C) {
    check_nonneg({N, C});
    float* o = array_data<float>(out, "out", {N, C}, true);
    const float* x = array_data<float>(inp, "inp", {N, C});
    const NoGil nogil;
    K().softmax_forward(o, x, N, C);
  });
  m.def("softmax_backward", [](O dinp, O out, O dout, int64_t N, int64_t C) {
    check_nonneg({N, C});
    float* dx = array_data<float>(dinp, "dinp", {N, C}, true);
    const float* y = array_data<float>(out, "out", {N, C});
    const float* g = array_data<float>(dout, "dout", {N, C});
    const NoGil nogil;
    K().softmax_backward(dx, y, g, N, C);
  });

  // a grammar's mask on logits (N, V) in place: llguidance's bitmask words (N, ceil(vocab / 32)) int32
  m.def("mask_logits", [](O logits, O words, int64_t N, int64_t V, int64_t vocab) {
    check_nonneg({N, V, vocab});
    if (vocab > V)
      throw py::value_error("mask_logits: vocab (" + std::to_string(vocab) + ") must be <= V (" + std::to_string(V) +
                            ")");
    const int64_t NW = vocab / 32 + (vocab % 32 != 0);  // (ceil(vocab / 32), never past int64)
    float* x = array_data<float>(logits, "logits", {N, V}, true);
    const int32_t* w = array_data<int32_t>(words, "words", {N, NW});
    check_apart(written(w, product({N, NW}), "words"), {written(x, product({N, V}), "logits")});
    const NoGil nogil(product({N, V}) >= kReleaseWork);
    K().mask_logits(x, reinterpret_cast<const uint32_t*>(w), N, V, vocab);
  });

  m.def("crossentropy_forward", [](O losses, O lse, O logits, O targets, int64_t N, int64_t V,
                                   int64_t ignore_index, float smoothing) {
    check_nonneg({N, V});
    float* l = array_data<float>(losses, "losses", {N}, true);
    float* s = array_data<float>(lse, "lse", {N}, true);
    const float* x = array_data<float>(logits, "logits", {N, V});
    const int64_t* t = array_data<int64_t>(targets, "targets", {N});
    check_ids(t, N, V, "targets", true, ignore_index);
    check_apart(t, N, "targets", {written(l, N, "losses"), written(s, N, "lse")});
    if (!(smoothing >= 0.f && smoothing <= 1.f)) throw py::value_error("label smoothing must be in [0, 1]");
    const NoGil nogil;
    return K().crossentropy_forward(l, s, x, t, N, V, ignore_index, smoothing);
  });
  m.def("crossentropy_backward", [](O dlogits, O logits, O lse, O targets, float dloss, int64_t N, int64_t V,
                                    int64_t ignore_index, float smoothing) {
    check_nonneg({N, V});
    float* dx = array_data<float>(dlogits, "dlogits", {N, V}, true);
    const float* x = array_data<float>(logits, "logits", {N, V});
    const float* s = array_data<float>(lse, "lse", {N});
    const int64_t* t = array_data<int64_t>(targets, "targets", {N});
    check_ids(t, N, V, "targets", true, ignore_index);
    check_apart(t, N, "targets", {written(dx, product({N, V}), "dlogits")});
    if (!(smoothing >= 0.f && smoothing <= 1.f)) throw py::value_error("label smoothing must be in [0, 1]");
    const NoGil nogil;
    K().crossentropy_backward(dx, x, s, t, dloss, N, V, ignore_index, smoothing);
  });

  m.def("embedding_forward", [](O out, O ids, O table, int64_t N, int64_t V, int64_t C) {
    check_nonneg({N, V, C});
    float* o = array_data<float>(out, "out", {N, C}, true);
    const int64_t* id = array_data<int64_t>(ids, "ids", {N});
    const float* w = array_data<float>(table, "table", {V, C});
    check_ids(id, N, V, "ids");
    check_apart(id, N, "ids", {written(o, product({N, C}), "out")});
    const NoGil nogil;
    K().embedding_forward(o, id, w, N, V, C);
  });
  m.def("embedding_backward", [](O dtable, O dout, O ids, int64_t N, int64_t V, int64_t C) {
    check_nonneg({N, V, C});
    float* dw = array_data<float>(dtable, "dtable", {V, C}, true);
    const float* g = array_data<float>(dout, "dout", {N, C});
    const int64_t* id = array_data<int64_t>(ids, "ids", {N});
    check_ids(id, N, V, "ids");
    check_apart(id, N, "ids", {written(dw, product({V, C}), "dtable")});
    const NoGil nogil;
    K().embedding_backward(dw, g, id, N, V, C);
  });

  m.def("residual_forward", [](O out, O a, O b, int64_t n) {
    check_nonneg({n});
    float* o = array_data<float>(out, "out", {n}, true);
    const float* x = array_data<float>(a, "a", {n});
    const float* y = array_data<float>(b, "b", {n});
    const NoGil nogil;
    K().residual_forward(o, x, y, n);
  });
  m.def("float16_from_float", [](O out, O inp, int64_t n) {
    check_nonneg({n});
    uint16_t* o = half_data(out, "out", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    check_apart(written(x, n, "inp"), {written(o, n, "out")});
    const NoGil nogil;
    K().float16_from_float(o, x, n);
  });
  m.def("residual_backward", [](O da, O db, O dout, int64_t n) {
    check_nonneg({n});
    float* dx = array_data<float>(da, "da", {n}, true, true);
    float* dy = array_data<float>(db, "db", {n}, true, true);
    const float* g = array_data<float>(dout, "dout", {n});
    const NoGil nogil;
    K().residual_backward(dx, dy, g, n);
  });

  m.def("dropout_forward", [](O out, O inp, int64_t n, float p, uint64_t seed) {
    check_nonneg({n});
    if (!(p >= 0.f && p < 1.f)) throw py::value_error("dropout p must be in [0, 1)");
    float* o = array_data<float>(out, "out", {n}, true);
    const float* x = array_data<float>(inp, "inp", {n});
    const NoGil nogil;
    K().dropout_forward(o, x, n, p, seed);
  });
  m.def("dropout_backward", [](O dinp, O dout, int64_t n, float p, uint64_t seed) {
    check_nonneg({n});
    if (!(p >= 0.f && p < 1.f)) throw py::value_error("dropout p must be in [0, 1)");
    float* dx = array_data<float>(dinp, "dinp", {n}, true);
    const float* g = array_data<float>(dout, "dout", {n});
    const NoGil nogil;
    K().dropout_backward(dx, g, n, p, seed);
  });

  m.def("attention_forward", [](O out, O lse, O q, O k, O v, O key_mask, int64_t B, int64_t NH, int64_t NKV,
                                int64_t Tq, int64_t Tk, int64_t Tkv, int64_t HS, bool causal, int64_t window,
                                float scale, bool bthd) {
    check_nonneg({B, NH, Tq, Tk, Tkv, HS, window});
    check_groups(NH, NKV);
    if (Tk > Tkv) throw py::value_error("attention_forward: Tk must not exceed the k/v rows Tkv");
    float* o = array_data<float>(out, "out", {B, NH, Tq, HS}, true);
    float* l = array_data<float>(lse, "lse", {B, NH, Tq}, true);
    const float* qp = array_data<float>(q, "q", {B, NH, Tq, HS});
    const uint8_t* mk = array_data<uint8_t>(key_mask, "key_mask", {B, Tk}, false, true);
    if (is_half(k)) {  // a cache of halves: k and v both
      const uint16_t* kp = half_data(k, "k", {B, NKV, Tkv, HS});
      const uint16_t* vp = half_data(v, "v (like k)", {B, NKV, Tkv, HS});
      const NoGil nogil;
      return K().attention_forward_f16(o, l, qp, kp, vp, mk, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd);
    }
    const float* kp = array_data<float>(k, "k", {B, NKV, Tkv, HS});
    const float* vp = array_data<float>(v, "v", {B, NKV, Tkv, HS});
    const NoGil nogil;
    K().attention_forward(o, l, qp, kp, vp, mk, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd);
  });
  m.def("attention_backward", [](O dq, O dk, O dv, O dout, O out, O lse, O q, O k, O v, O key_mask, int64_t B,
                                 int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, bool causal,
                                 int64_t window, float scale, bool bthd) {
    check_nonneg({B, NH, Tq, Tk, HS, window});
    check_groups(NH, NKV);
    float* dqp = array_data<float>(dq, "dq", {B, NH, Tq, HS}, true);
    float* dkp = array_data<float>(dk, "dk", {B, NKV, Tk, HS}, true);
    float* dvp = array_data<float>(dv, "dv", {B, NKV, Tk, HS}, true);
    const float* g = array_data<float>(dout, "dout", {B, NH, Tq, HS});
    const float* o = array_data<float>(out, "out", {B, NH, Tq, HS});
    const float* l = array_data<float>(lse, "lse", {B, NH, Tq});
    const float* qp = array_data<float>(q, "q", {B, NH, Tq, HS});
    const float* kp = array_data<float>(k, "k", {B, NKV, Tk, HS});
    const float* vp = array_data<float>(v, "v", {B, NKV, Tk, HS});
    const uint8_t* mk = array_data<uint8_t>(key_mask, "key_mask", {B, Tk}, false, true);
    const NoGil nogil;
    K().attention_backward(dqp, dkp, dvp, g, o, l, qp, kp, vp, mk, B, NH, NKV, Tq, Tk, HS, causal, window, scale,
                           bthd);
  });

  m.def("rmsnorm_forward", [](O out, O rstd, O inp, O weight, int64_t N, int64_t C, float eps) {
    check_nonneg({N, C});
    float* o = array_data<float>(out, "out", {N, C}, true);
    float* rs = array_data<float>(rstd, "rstd", {N}, true);
    const float* x = array_data<float>(inp, "inp", {N, C});
    const float* w = array_data<float>(weight, "weight", {C});
    const NoGil nogil;
    K().rmsnorm_forward(o, rs, x, w, N, C, eps);
  });
  m.def("rmsnorm_backward", [](O dinp, O dweight, O dout, O inp, O weight, O rstd, int64_t N, int64_t C) {
    check_nonneg({N, C});
    float* dx = array_data<float>(dinp, "dinp", {N, C}, true, true);
    float* dw = array_data<float>(dweight, "dweight", {C}, true, true);
    const float* g = array_data<float>(dout, "dout", {N, C});
    const float* x = array_data<float>(inp, "inp", {N, C});
    const float* w = array_data<float>(weight, "weight", {C});
    const float* rs = array_data<float>(rstd, "rstd", {N});
    const NoGil nogil;
    K().rmsnorm_backward(dx, dw, g, x, w, rs, N, C);
  });
  auto rope = [](bool forward) {
    return [forward](O out, O inp, O cos, O sin, O positions, int64_t N, int64_t NH, int64_t HS, int64_t P,
                     bool interleaved) {
      check_nonneg({N, NH, HS, P});
      if (HS % 2) throw py::value_error("rope: the head size must be even");
      float* o = array_data<float>(out, forward ? "out" : "dinp", {N, NH, HS}, true);
      const float* x = array_data<float>(inp, forward ? "inp" : "dout", {N, NH, HS});
      const float* c = array_data<float>(cos, "cos", {P, HS / 2});
      const float* s = array_data<float>(sin, "sin", {P, HS / 2});
      const int64_t* pos = array_data<int64_t>(positions, "positions", {N});
      check_ids(pos, N, P, "positions");
      check_apart(pos, N, "positions", {written(o, product({N, NH, HS}), forward ? "out" : "dinp")});
      const NoGil nogil;
      (forward ? K().rope_forward : K().rope_backward)(o, x, c, s, pos, N, NH, HS, P, interleaved);
    };
  };
  m.def("rope_forward", rope(true));
  m.def("rope_backward", rope(false));
  // the gated products (SwiGLU, GeGLU): out = act(gate) * up and its backward, n elements each
  const auto gated = [&](const char* forward, const char* backward, auto kernels_forward, auto kernels_backward) {
    m.def(forward, [kernels_forward](O out, O gate, O up, int64_t n) {
      check_nonneg({n});
      float* o = array_data<float>(out, "out", {n}, true);
      const float* g = array_data<float>(gate, "gate", {n});
      const float* u = array_data<float>(up, "up", {n});
      const NoGil nogil;
      (K().*kernels_forward)(o, g, u, n);
    });
    m.def(backward, [kernels_backward](O dgate, O dup, O dout, O gate, O up, int64_t n) {
      check_nonneg({n});
      float* dg = array_data<float>(dgate, "dgate", {n}, true);
      float* du = array_data<float>(dup, "dup", {n}, true);
      const float* d = array_data<float>(dout, "dout", {n});
      const float* g = array_data<float>(gate, "gate", {n});
      const float* u = array_data<float>(up, "up", {n});
      const NoGil nogil;
      (K().*kernels_backward)(dg, du, d, g, u, n);
    });
  };
  gated("swiglu_forward", "swiglu_backward", &pt::Kernels::swiglu_forward, &pt::Kernels::swiglu_backward);
  gated("geglu_forward", "geglu_backward", &pt::Kernels::geglu_forward, &pt::Kernels::geglu_backward);
  m.attr("small_batch_rows") = pt::kSmallBatchRows;
  m.def("quant_row_bytes", &checked_row_bytes,
        "bytes of one row of C values of a GGUF tensor type (-1: unknown type or C not whole blocks)");
  // the GGUF products, float32 activations
  using QuantProduct = decltype(pt::Kernels::matmul_q_forward);
  auto quant_product = [](QuantProduct pt::Kernels::*kernel) {
    return [kernel](O out, O inp, O weight, int qtype, O bias, int64_t N, int64_t IC, int64_t OC) {
      check_nonneg({N, IC, OC});
      const int64_t rb = row_bytes(qtype, IC);
      float* o = array_data<float>(out, "out", {N, OC}, true);
      const float* x = array_data<float>(inp, "inp", {N, IC});
      const uint8_t* w = array_data<uint8_t>(weight, "weight", {OC, rb});
      const float* b = array_data<float>(bias, "bias", {OC}, false, true);
      const NoGil nogil;
      (K().*kernel)(o, x, w, qtype, b, N, IC, OC);
    };
  };
  m.def("matmul_q_forward", quant_product(&pt::Kernels::matmul_q_forward));
  // int8 activations (integer types only): one product, or a group of one input's (q|k|v, gate|up), its rows
  // quantised once; each weight (OC, row bytes) uint8, out (N, OC), bias (OC) or None
  auto q8_products = [](const std::vector<py::object>& outs, O inp, const std::vector<py::object>& weights,
                        const std::vector<py::object>& packed, const std::vector<int>& qtypes,
                        const std::vector<py::object>& biases, int64_t N, int64_t IC) {
    const size_t n = qtypes.size();
    if (outs.size() != n || weights.size() != n || packed.size() != n || biases.size() != n)
      throw py::value_error("matmul_q8_group_forward: outs, weights, packed, qtypes and biases must be as many");
    check_nonneg({N, IC});
    const float* x = array_data<float>(inp, "inp", {N, IC});
    std::vector<pt::QProduct> group;
    std::vector<Written> outputs;
    for (size_t i = 0; i < n; i++) {
      int8_block_type(qtypes[i], "matmul_q8_forward");
      const int64_t rb = row_bytes(qtypes[i], IC);
      if (!py::isinstance<py::array>(weights[i]) || py::reinterpret_borrow<py::array>(weights[i]).ndim() != 2)
        throw py::type_error("weight must be a 2-D uint8 array (OC, bytes of a row)");
      const int64_t OC = py::reinterpret_borrow<py::array>(weights[i]).shape(0);
      float* out = array_data<float>(outs[i], "out", {N, OC}, true);
      group.push_back({out, OC, array_data<uint8_t>(weights[i], "weight", {OC, rb}), qtypes[i],
                       array_data<float>(biases[i], "bias", {OC}, false, true), OC,
                       packed_rows(packed[i], qtypes[i], OC, rb)});
      outputs.push_back(written(out, product({N, OC}), "out"));
    }
    check_apart(written(x, product({N, IC}), "inp"), outputs);
    for (size_t i = 1; i < n; i++) check_apart(outputs[i], {outputs.begin(), outputs.begin() + i});
    const NoGil nogil;
    K().matmul_q8_forward(group.data(), (int64_t)n, x, N, IC);
  };
  // (packed: the weight's rows packed, ops.packed_rows, or None)
  m.def("matmul_q8_forward", [q8_products](O out, O inp, O weight, O packed, int qtype, O bias, int64_t N,
                                           int64_t IC, int64_t OC) {
    check_nonneg({OC});
    const int64_t rb = row_bytes(qtype, IC);
    array_data<uint8_t>(weight, "weight", {OC, rb});
    q8_products({out}, inp, {weight.attr("reshape")(OC, rb)}, {packed}, {qtype}, {bias}, N, IC);
  });
  m.def("matmul_q8_group_forward", q8_products);
  // packed rows (packed.h): whether a weight of OC rows of qtype packs, and out (OC, row bytes) = weight packed
  m.def("can_pack", [](int qtype, int64_t OC) { return pt::can_pack(qtype, OC); });
  m.def("pack_rows", [](O out, O weight, int qtype, int64_t OC, int64_t IC) {
    check_nonneg({OC, IC});
    if (!pt::can_pack(qtype, OC)) throw py::value_error("pack_rows: this type and row count do not pack");
    const int64_t rb = row_bytes(qtype, IC);
    uint8_t* o = array_data<uint8_t>(out, "out", {OC, rb}, true);
    const uint8_t* w = array_data<uint8_t>(weight, "weight", {OC, rb});
    check_apart(written(w, product({OC, rb}), "weight"), {written(o, product({OC, rb}), "out")});
    const NoGil nogil;
    pt::pack_rows(o, w, qtype, OC, IC);
  });
  // the gradients through frozen narrow weights: GGUF rows of any type (bfloat16 bits as BF16), int8 + row scale
  m.def("matmul_q_dinp", [](O dinp, O dout, O weight, int64_t qtype, int64_t N, int64_t IC, int64_t OC) {
    check_nonneg({N, IC, OC});
    const int64_t rb = row_bytes(qtype, IC);
    const uint8_t* w = array_data<uint8_t>(weight, "weight", {OC, rb});
    const DinpArgs a = dinp_args(dinp, dout, written(w, product({OC, rb}), "weight"), N, IC, OC);
    const NoGil nogil(product({N, IC, OC}) >= kReleaseWork);
    K().matmul_q_dinp(a.dinp, a.dout, w, (int)qtype, N, IC, OC);  // (a type id row_bytes knows)
  });
  m.def("matmul_w8_dinp", [](O dinp, O dout, O weight, O scale, int64_t N, int64_t IC, int64_t OC) {
    check_nonneg({N, IC, OC});
    const int8_t* w = array_data<int8_t>(weight, "weight", {OC, IC});
    const float* s = array_data<float>(scale, "weight_scale", {OC});
    const DinpArgs a = dinp_args(dinp, dout, written(w, product({OC, IC}), "weight"), N, IC, OC);
    check_apart(written(s, OC, "weight_scale"), {written(a.dinp, product({N, IC}), "dinp")});
    const NoGil nogil(product({N, IC, OC}) >= kReleaseWork);
    K().matmul_w8_dinp(a.dinp, a.dout, w, s, N, IC, OC);
  });
  m.def("dequantize_rows", [](O out, O src, int qtype, O ids, int64_t rows, int64_t N, int64_t C) {
    check_nonneg({rows, N, C});
    const int64_t rb = row_bytes(qtype, C);
    float* o = array_data<float>(out, "out", {N, C}, true);
    const uint8_t* s = array_data<uint8_t>(src, "src", {rows, rb});
    const int64_t* id = array_data<int64_t>(ids, "ids", {N}, false, true);
    if (id) {
      check_ids(id, N, rows, "ids");
      check_apart(id, N, "ids", {written(o, product({N, C}), "out")});
    } else if (N > rows) {
      throw py::value_error("dequantize_rows: N exceeds the rows of src");
    }
    const NoGil nogil(product({N, C}) >= kReleaseWork);  // (an embedding lookup per decoding step: keep the GIL)
    K().dequantize_rows(o, s, qtype, id, N, C);
  });

  py::class_<PyDecodePlan>(m, "DecodePlan", "one decoding step of a decoder described as data, in C++ (decode.h)")
      .def(py::init([](py::dict desc, py::list layers, py::tuple final_norm, py::tuple head) {
             auto p = std::make_unique<PyDecodePlan>();
             pt::DecodePlan& d = p->plan;
             auto get = [&](const char* key) {
               if (!desc.contains(key)) throw py::value_error(std::string("the plan's description lacks ") + key);
               return desc[key];
             };
             // (the parts a GPT-2 or Llama does not use may be left out: the struct's defaults)
             auto get_or = [&](const char* key, auto fallback) {
               return desc.contains(key) ? desc[key].cast<decltype(fallback)>() : fallback;
             };
             d.C = get("C").cast<int64_t>(); d.NH = get("NH").cast<int64_t>(); d.NKV = get("NKV").cast<int64_t>();
             d.HS = get("HS").cast<int64_t>(); d.F = get("F").cast<int64_t>(); d.V = get("V").cast<int64_t>();
             check_nonneg({d.C, d.NH, d.NKV, d.HS, d.F, d.V});
             product({sum(d.NH, product({2, d.NKV})), d.HS});
             product({d.V, d.C});
             check_groups(d.NH, d.NKV);
             d.eps = get("eps").cast<float>();
             d.attn_scale = get("attn_scale").cast<float>();
             d.layernorm = get("layernorm").cast<bool>();
             d.rotary = get("rotary").cast<bool>();
             d.interleaved = get("interleaved").cast<bool>();
             d.gated = get("gated").cast<bool>();
             d.activation = get("activation").cast<int>();
             d.norm_offset = get_or("norm_offset", d.norm_offset);
             d.sandwich = get_or("sandwich", d.sandwich);
             d.qk_norm = get_or("qk_norm", d.qk_norm);
             d.rotary_tables = get_or("rotary_tables", d.rotary_tables);
             if (d.activation < pt::DecodePlan::kSiLU || d.activation > pt::DecodePlan::kReLU ||
                 (d.gated && d.activation > pt::DecodePlan::kGeluTanh) || (!d.gated && d.activation == pt::DecodePlan::kSiLU))
               throw py::value_error("the plan's activation: SiLU or tanh GELU when gated, else GELU (tanh or erf) or "
                                     "ReLU");
             if (d.rotary && (d.HS < 2 || d.HS % 2))
               throw py::value_error("rotary attention needs an even head size HS >= 2");
             if (d.HS < 1) throw py::value_error("the head size must be >= 1");
             if (d.rotary_tables != 1 && d.rotary_tables != 2)
               throw py::value_error("the plan's rotary_tables must be 1 or 2, got " + std::to_string(d.rotary_tables));
             if ((d.layernorm && (d.norm_offset != 0.f || d.qk_norm)) || !std::isfinite(d.norm_offset))
               throw py::value_error("norm_offset and qk_norm are RMSNorm parts (a finite offset)");
             auto norm = [&](const py::handle& obj, const char* name, int64_t n) {
               auto t = py::reinterpret_borrow<py::tuple>(obj);
               if (t.size() != 2) throw py::value_error(std::string(name) + " is (weight, bias or None)");
               pt::NormRef r;
               py::object w = py::reinterpret_borrow<py::object>(t[0]), b = py::reinterpret_borrow<py::object>(t[1]);
               r.weight = array_data<float>(w, name, {n});
               r.bias = array_data<float>(b, name, {n}, false, true);
               if (d.layernorm != (r.bias != nullptr))
                 throw py::value_error(std::string(name) + ": a LayerNorm has a bias, an RMSNorm none");
               p->keep.push_back(w);
               p->keep.push_back(b);
               return r;
             };
             auto group = [&](const py::handle& specs, int64_t in, int64_t total, const char* what) {
               std::vector<pt::WeightRef> ws;
               int64_t out = 0;
               for (const py::handle& s : specs) {
                 ws.push_back(weight_ref(s, p->keep));
                 if (ws.back().IC != in) throw py::value_error(std::string(what) + ": wrong input width");
                 out = sum(out, ws.back().OC);
               }
               if (out != total) throw py::value_error(std::string(what) + ": output widths do not add up");
               return ws;
             };
             for (const py::handle& item : layers) {
               auto t = py::reinterpret_borrow<py::dict>(item);
               std::vector<const char*> keys = {"attn_norm", "qkv", "o", "ffn_norm", "up", "down"};
               if (d.sandwich) keys.insert(keys.end(), {"post_attn_norm", "post_ffn_norm"});
               if (d.qk_norm) keys.insert(keys.end(), {"q_norm", "k_norm"});
               for (const char* key : keys)
                 if (!t.contains(key)) throw py::value_error(std::string("a layer lacks ") + key);
               pt::DecodeLayer L;
               L.attn_norm = norm(t["attn_norm"], "attn_norm", d.C);
               L.qkv = group(t["qkv"], d.C, product({sum(d.NH, product({2, d.NKV})), d.HS}), "qkv");
               L.o = weight_ref(t["o"], p->keep);
               L.ffn_norm = norm(t["ffn_norm"], "ffn_norm", d.C);
               L.up = group(t["up"], d.C, d.gated ? product({2, d.F}) : d.F, "up");
               L.down = weight_ref(t["down"], p->keep);
               if (L.o.IC != product({d.NH, d.HS}) || L.o.OC != d.C || L.down.IC != d.F || L.down.OC != d.C)
                 throw py::value_error("o or down has the wrong shape");
               if (d.gated && L.up.size() == 2 && L.up[0].OC != d.F) throw py::value_error("up: gate width");
               if (d.sandwich) {
                 L.post_attn_norm = norm(t["post_attn_norm"], "post_attn_norm", d.C);
                 L.post_ffn_norm = norm(t["post_ffn_norm"], "post_ffn_norm", d.C);
               }
               if (d.qk_norm) {
                 L.q_norm = norm(t["q_norm"], "q_norm", d.HS);
                 L.k_norm = norm(t["k_norm"], "k_norm", d.HS);
               }
               L.window = t.contains("window") ? t["window"].cast<int64_t>() : 0;
               L.rotary_table = t.contains("rotary_table") ? t["rotary_table"].cast<int>() : 0;
               if (L.window < 0) throw py::value_error("a layer's window must be >= 0 (0: none), got " +
                                                       std::to_string(L.window));
               if (L.rotary_table < 0 || L.rotary_table >= d.rotary_tables)
                 throw py::value_error("a layer's rotary_table must lie in [0, " + std::to_string(d.rotary_tables) +
                                       "), got " + std::to_string(L.rotary_table));
               d.layers.push_back(std::move(L));
             }
             d.final_norm = norm(final_norm, "final_norm", d.C);
             d.head = weight_ref(head, p->keep);
             if (d.head.IC != d.C || d.head.OC != d.V) throw py::value_error("head has the wrong shape");
             return p;
           }),
           arg("description"), arg("layers"), arg("final_norm"), arg("head"))
      .def("step", [](const PyDecodePlan& p, O x, O logits, O slots, O positions, py::list k, py::list v,
                      O cos, O sin, O logit_rows, O local_cos, O local_sin) {
             const pt::DecodePlan& d = p.plan;
             const size_t n = d.layers.size();
             if (k.size() != n || v.size() != n) throw py::value_error("one k and one v cache per layer");
             if (!py::isinstance<py::array>(slots)) throw py::type_error("slots must be a numpy array");
             const int64_t B = py::reinterpret_borrow<py::array>(slots).size();
             float* xp = array_data<float>(x, "x", {B, d.C}, true);
             int64_t R = B;
             const int64_t* rows = nullptr;
             if (!logit_rows.is_none()) {
               if (!py::isinstance<py::array>(logit_rows)) throw py::type_error("logit_rows must be a numpy array");
               R = py::reinterpret_borrow<py::array>(logit_rows).size();
               rows = array_data<int64_t>(logit_rows, "logit_rows", {R});
             }
             float* lp = array_data<float>(logits, "logits", {R, d.V}, true);
             const int64_t* sp = array_data<int64_t>(slots, "slots", {B});
             const int64_t* pp = array_data<int64_t>(positions, "positions", {B});
             std::vector<void*> kp(n), vp(n);
             int64_t S = 0, capacity = 0;
             const bool half = n && is_half(k[0]);  // (every cache float32, or every one float16)
             for (size_t l = 0; l < n; l++) {
               for (int which = 0; which < 2; which++) {
                 py::object c = which ? v[l] : k[l];
                 if (!py::isinstance<py::array>(c)) throw py::type_error("caches must be numpy arrays");
                 py::array a = py::reinterpret_borrow<py::array>(c);
                 if (a.ndim() != 4 || a.shape(2) != d.NKV || a.shape(3) != d.HS ||
                     ((l || which) && (a.shape(0) != S || a.shape(1) != capacity)))
                   throw py::value_error("every cache must be (slots, capacity, NKV, HS), all alike");
                 S = a.shape(0);
                 capacity = a.shape(1);
                 (which ? vp : kp)[l] = half ? (void*)half_data(c, "cache (like the first)", {a.size()}, true)
                                             : (void*)array_data<float>(c, "cache (like the first)", {a.size()}, true);
               }
             }
             pt::RotaryTables rope;
             if (d.rotary) {
               if (!py::isinstance<py::array>(cos)) throw py::type_error("cos must be a numpy array");
               rope.P = py::reinterpret_borrow<py::array>(cos).size() / std::max<int64_t>(1, d.HS / 2);
               rope.cos[0] = array_data<float>(cos, "cos", {rope.P, d.HS / 2});
               rope.sin[0] = array_data<float>(sin, "sin", {rope.P, d.HS / 2});
               if (d.rotary_tables == 2) {  // (the sliding layers' tables: as many positions)
                 rope.cos[1] = array_data<float>(local_cos, "local_cos", {rope.P, d.HS / 2});
                 rope.sin[1] = array_data<float>(local_sin, "local_sin", {rope.P, d.HS / 2});
               }
             }
             std::vector<Written> outputs = {written(xp, product({B, d.C}), "x"),
                                             written(lp, product({R, d.V}), "logits")};
             const int64_t cache = product({S, capacity, d.NKV, d.HS}) * (half ? 2 : 4);
             for (size_t l = 0; l < n; l++) {
               outputs.push_back(written((const uint8_t*)kp[l], cache, "a k cache"));
               outputs.push_back(written((const uint8_t*)vp[l], cache, "a v cache"));
             }
             check_apart(sp, B, "slots", outputs);
             check_apart(pp, B, "positions", outputs);
             if (rows) check_apart(rows, R, "logit_rows", outputs);
             d.validate(B, sp, pp, S, capacity, rope.P, rows, R);
             if (n == 0 || B == 0) return;
             const NoGil nogil;
             d.step(xp, lp, B, sp, pp, pt::CacheRefs{kp.data(), vp.data(), S, capacity, half}, rope, rows, R);
           }, arg("x"), arg("logits"), arg("slots"), arg("positions"), arg("k"), arg("v"), arg("cos") = py::none(),
           arg("sin") = py::none(), arg("logit_rows") = py::none(), arg("local_cos") = py::none(),
           arg("local_sin") = py::none());

  m.def("adamw_step", [](O params, O m_, O v_, O grads, int64_t n, float lr, float beta1, float beta2, float eps,
                         float weight_decay, int64_t step) {
    check_nonneg({n});
    if (step < 1) throw py::value_error("adamw step must be >= 1");
    float* p = array_data<float>(params, "params", {n}, true);
    float* mm = array_data<float>(m_, "m", {n}, true);
    float* vv = array_data<float>(v_, "v", {n}, true);
    const float* g = array_data<float>(grads, "grads", {n});
    const NoGil nogil;
    K().adamw_step(p, mm, vv, g, n, lr, beta1, beta2, eps, weight_decay, step);
  });
  m.def("fma_probe", [](int64_t iters) {
    check_nonneg({iters});
    float sink = 0.f;
    const NoGil nogil;
    return K().fma_probe(&sink, iters);
  }, "benchmark probe: flops done by independent FMA chains on every thread", arg("iters"));
  m.def("int8_dot_probe", [](int64_t iters) {
    check_nonneg({iters});
    int32_t sink = 0;
    const NoGil nogil;
    return K().int8_dot_probe(&sink, iters);
  }, "benchmark probe: multiply-adds done by independent integer dot-product chains (cpu_info()['int8_dot']) on "
     "every thread", arg("iters"));
  m.def("sum_squares", [](O x, int64_t n) {
    check_nonneg({n});
    const float* p = array_data<float>(x, "x", {n});
    const NoGil nogil;
    return K().sum_squares(p, n);
  });

  // search's first pass over sign bits: ids (Q, capacity) and counts (Q) written, apart from the rows and queries
  m.def("hamming_candidates_forward", [](O ids, O counts, O signs, O queries, int64_t N, int64_t W, int64_t Q,
                                         int64_t n, int64_t capacity) {
    check_nonneg({N, W, Q, n, capacity});
    if (W < 1 || W > kMaxSignWords)
      throw py::value_error("W (words of sign bits per row) must be in [1, " + std::to_string(kMaxSignWords) +
                            "], got " + std::to_string(W));
    int64_t* id = array_data<int64_t>(ids, "ids", {Q, capacity}, true);
    int64_t* count = array_data<int64_t>(counts, "counts", {Q}, true);
    const uint64_t* rows = array_data<uint64_t>(signs, "signs", {W, N});
    const uint64_t* q = array_data<uint64_t>(queries, "queries", {Q, W});
    const Written out_ids = written(id, product({Q, capacity}), "ids"), out_counts = written(count, Q, "counts");
    check_apart(out_ids, {out_counts});
    check_apart(written(rows, product({W, N}), "signs"), {out_ids, out_counts});
    check_apart(written(q, product({Q, W}), "queries"), {out_ids, out_counts});
    const NoGil nogil(product({N, W, Q}) >= kReleaseWork);
    K().hamming_candidates_forward(id, count, rows, q, N, W, Q, n, capacity);
  });
  // ... and over int8 rows: ids (Q, n) written, apart from the rows, their scales and the queries
  m.def("int8_candidates_forward", [](O ids, O codes, O scale, O queries, int64_t N, int64_t D, int64_t Q,
                                      int64_t n) {
    check_nonneg({N, D, Q, n});
    if (n > N)
      throw py::value_error("n (" + std::to_string(n) + ") must be at most the rows N (" + std::to_string(N) + ")");
    if (D > kMaxInt8Dims)
      throw py::value_error("D (dimensions of an int8 row) must be at most " + std::to_string(kMaxInt8Dims) +
                            ", got " + std::to_string(D));
    int64_t* id = array_data<int64_t>(ids, "ids", {Q, n}, true);
    const int8_t* rows = array_data<int8_t>(codes, "codes", {N, D});
    const float* s = array_data<float>(scale, "scale", {N});
    const int8_t* q = array_data<int8_t>(queries, "queries", {Q, D});
    const Written out = written(id, product({Q, n}), "ids");
    check_apart(written(rows, product({N, D}), "codes"), {out});
    check_apart(written(s, N, "scale"), {out});
    check_apart(written(q, product({Q, D}), "queries"), {out});
    const NoGil nogil(product({N, D, Q}) >= kReleaseWork);
    K().int8_candidates_forward(id, rows, s, q, N, D, Q, n);
  });
}
