// Run-time choice of the kernel variant (cpuid + OS support), overridable with PYTRANSFORMER_ISA.
#pragma once
#include <string>
#include <vector>

#include "pytransformer/kernels.h"

namespace pt {
// ISAs compiled into this build and supported by this CPU and OS, best last.
std::vector<std::string> available_isas();
// The active variant; chosen on first use (PYTRANSFORMER_ISA, else the best available).
const Kernels& active();
// Switch variant; throws std::invalid_argument when it is unknown or unsupported here.
void set_isa(const std::string& name);
// Threads: OpenMP when built with it, else 1.
bool have_openmp();
int num_threads();
void set_num_threads(int n);

// Matmul precision: "float32" (default) or "bfloat16" (inputs rounded to bf16, float32 sums, on AMX): the
// Linear products and attention's products.
// Setting "bfloat16" throws std::runtime_error where AMX-BF16 is not usable (CPU, OS or build).
std::string matmul_precision();
void set_matmul_precision(const std::string& name);
inline bool matmul_bf16() { return matmul_precision() == "bfloat16"; }

// The bf16 products (cpp/cpu/matmul_amx.cpp): same shapes and gradient conventions as the float32 kernels;
// dbias is left to them (it is a float32 column sum either way).
namespace amx {
bool supported();  // CPU has AMX-BF16 + AVX512-BF16, the OS saves tile state and granted it to this process
double probe(int64_t iters);  // benchmark probe: iters rounds of 4 independent tile products per thread -> flops
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC);
void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                     int64_t N, int64_t IC, int64_t OC);
}  // namespace amx

// attention.cpp built with its products on AMX tiles (bf16 operands, float32 softmax and sums): the
// attention kernels under the "bfloat16" precision. Same arguments as the float32 kernels.
namespace amx_attention {
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS,
                       bool causal, float scale, bool bthd);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t Tq, int64_t Tk, int64_t HS, bool causal, float scale, bool bthd);
}  // namespace amx_attention
}  // namespace pt
