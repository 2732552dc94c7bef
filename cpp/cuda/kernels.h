// The CUDA kernels: the CPU core's ops (cpp/include/pytransformer/kernels.h) with the same names, argument order,
// shapes and gradient conventions, over device pointers. Input gradients are overwritten, parameter gradients
// accumulated (+=); a null gradient pointer means "not wanted". Every function launches on the default stream and
// returns without waiting, except those that return a value (crossentropy_forward, sum_squares), which wait for it.
// Errors raise pt::cuda::Error (pt::cuda::OutOfMemory when device memory runs out).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pt {
namespace cuda {

// A failed CUDA or cuBLAS call: the message names the call and the runtime's reason (bindings: RuntimeError).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Device memory exhausted (bindings: MemoryError).
struct OutOfMemory : Error {
  using Error::Error;
};

// --- runtime (runtime.cu) ---
int device_count();  // 0 when there is no driver or no device: never throws
std::string device_name(int device);
void* device_alloc(size_t bytes);  // cudaMalloc; 0 bytes -> nullptr
void device_free(void* ptr);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* dst, size_t bytes);
void synchronize();
bool emulated();  // built with PYTRANSFORMER_CUDA=EMULATE: kernels on CPU threads, for tests

// --- matmul.cu: products on cuBLAS (float32 sums, no TF32) ---
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t IC, int64_t OC);
// --- quant.cu: GGUF block formats (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, by ggml type id) ---
// out (N, OC) = inp (N, IC) @ dequant(weight)^T + bias; weight OC rows of the type's row bytes
void matmul_q_forward(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias, int64_t N,
                      int64_t IC, int64_t OC);
// out (N, C) = dequant(src rows ids[n]) (ids null: rows 0 .. N-1)
void dequantize_rows(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N, int64_t C);
// --- layernorm.cu ---
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C);
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps);
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C);
// --- activations.cu ---
void gelu_forward(float* out, const float* inp, int64_t n, int approximate);
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, int approximate);
void relu_forward(float* out, const float* inp, int64_t n);
// tanh (BERT's pooler; the CPU path uses NumPy): backward from the forward's output, dinp = dout (1 - out^2)
void tanh_forward(float* out, const float* inp, int64_t n);
void tanh_backward(float* dinp, const float* out, const float* dout, int64_t n);
void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n);
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
void geglu_forward(float* out, const float* gate, const float* up, int64_t n);
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
// --- softmax.cu ---
void softmax_forward(float* out, const float* inp, int64_t N, int64_t C);
void softmax_backward(float* dinp, const float* out, const float* dout, int64_t N, int64_t C);
double crossentropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets, int64_t N,
                            int64_t V, int64_t ignore_index, float smoothing);
void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int64_t* targets,
                           float dloss, int64_t N, int64_t V, int64_t ignore_index, float smoothing);
// --- embedding.cu ---
void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V, int64_t C);
void embedding_backward(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C);
// --- elementwise.cu ---
void residual_forward(float* out, const float* a, const float* b, int64_t n);
void scale_inplace(float* x, int64_t n, float factor);  // x *= factor (the CPU path scales with NumPy)
void residual_backward(float* da, float* db, const float* dout, int64_t n);
void dropout_forward(float* out, const float* inp, int64_t n, float p, uint64_t seed);
void dropout_backward(float* dinp, const float* dout, int64_t n, float p, uint64_t seed);
// --- rope.cu ---
void rope_forward(float* out, const float* inp, const float* cos, const float* sin, const int64_t* positions,
                  int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved);
void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, const int64_t* positions,
                   int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved);
// --- attention.cu ---
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                       int64_t Tkv, int64_t HS, bool causal, float scale, bool bthd);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, bool causal, float scale,
                        bool bthd);
// --- adamw.cu ---
void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);
double sum_squares(const float* x, int64_t n);

}  // namespace cuda
}  // namespace pt
