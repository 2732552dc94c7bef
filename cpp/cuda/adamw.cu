// AdamW over one flat parameter buffer, and the sum of squares behind global-norm clipping, on the GPU.
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kSumBlocks = 256;  // a fixed grid: every element lands in the same partial each run

// torch.optim.AdamW, as cpp/cpu/adamw.cpp: bias corrections folded into step_size and vscale
__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, int64_t n, float beta1,
                             float beta2, float eps, float decay, float step_size, float vscale) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = grads[i];
  // the CPU kernel's roundings, fused where it fuses (so a tiny m or v comes out the same)
  const float mi = fmaf(beta1, m[i], mul_rn(1.f - beta1, g));
  const float vi = fmaf(beta2, v[i], mul_rn(1.f - beta2, mul_rn(g, g)));
  const float denom = mul_rn(sqrtf(vi), vscale) + eps;
  params[i] = fmaf(-step_size, mi / denom, mul_rn(params[i], decay));
  m[i] = mi;
  v[i] = vi;
}

// partial[block] = sum of x[i]^2 over the block's grid-stride share, in double
__global__ void sum_squares_kernel(double* partial, const float* x, int64_t n) {
  PT_SHARED(double, scratch, kWarp);
  double s = 0.0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    s += (double)x[i] * (double)x[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* total, const double* partial, int count) {
  PT_SHARED(double, scratch, kWarp);
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) total[0] = s;
}
}  // namespace

void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
  const float bc1 = 1.f / (float)(1.0 - std::pow((double)beta1, (double)step));
  const float bc2_sqrt = 1.f / (float)std::sqrt(1.0 - std::pow((double)beta2, (double)step));
  launch("adamw_step", adamw_kernel, dim3((unsigned)cdiv(n, kThreads)), dim3(kThreads), 0, params, m, v, grads, n,
         beta1, beta2, eps, 1.f - lr * weight_decay, lr * bc1, bc2_sqrt);
}

double sum_squares(const float* x, int64_t n) {
  if (n == 0) return 0.0;
  Scratch scratch((kSumBlocks + 1) * sizeof(double));
  double* partial = scratch.as<double>();
  launch("sum_squares", sum_squares_kernel, dim3(kSumBlocks), dim3(kThreads), 0, partial, x, n);
  launch("sum_squares", sum_partials_kernel, dim3(1), dim3(kThreads), 0, partial + kSumBlocks, partial,
         kSumBlocks);
  double total;
  copy_to_host(&total, partial + kSumBlocks, sizeof(total));
  return total;
}

}  // namespace cuda
}  // namespace pt
