// LayerNorm and RMSNorm on the GPU, forward and backward. One warp per row (lanes stride over the channels,
// coalesced); the parameter gradients are column sums over the rows, one thread per channel adding the rows in
// order (deterministic, no atomics).
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kRowsPerBlock = 8;  // warps per block, a row each
constexpr int kColumnThreads = 256;

// out (N, C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved (either may be null)
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int64_t N, int64_t C, float eps) {
  const int64_t n = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;  // whole warps leave together: no block barrier below
  const float* x = inp + n * C;
  float s = 0.f;
  for (int64_t i = lane; i < C; i += kWarp) s += x[i];
  const float m = warp_sum(s) / (float)C;
  float v = 0.f;
  for (int64_t i = lane; i < C; i += kWarp) v += (x[i] - m) * (x[i] - m);
  const float r = rsqrtf(warp_sum(v) / (float)C + eps);
  float* y = out + n * C;
  for (int64_t i = lane; i < C; i += kWarp) y[i] = (x[i] - m) * r * weight[i] + (bias ? bias[i] : 0.f);
  if (lane == 0) {
    if (mean) mean[n] = m;
    if (rstd) rstd[n] = r;
  }
}

// dinp (N, C) = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight
__global__ void layernorm_dinp_kernel(float* dinp, const float* dout, const float* inp, const float* weight,
                                      const float* mean, const float* rstd, int64_t N, int64_t C) {
  const int64_t n = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  const float* g = dout + n * C;
  const float m = mean[n], r = rstd[n];
  float s_dn = 0.f, s_dnn = 0.f;
  for (int64_t i = lane; i < C; i += kWarp) {
    const float dn = g[i] * weight[i];
    s_dn += dn;
    s_dnn += dn * (x[i] - m) * r;
  }
  const float mean_dn = warp_sum(s_dn) / (float)C, mean_dnn = warp_sum(s_dnn) / (float)C;
  float* dx = dinp + n * C;
  for (int64_t i = lane; i < C; i += kWarp) {
    const float norm = (x[i] - m) * r;
    dx[i] = r * (g[i] * weight[i] - mean_dn - norm * mean_dnn);
  }
}

// dweight (C) += sum_n dout * norm, dbias (C) += sum_n dout (either may be null)
__global__ void layernorm_dparams_kernel(float* dweight, float* dbias, const float* dout, const float* inp,
                                         const float* mean, const float* rstd, int64_t N, int64_t C) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t n = 0; n < N; n++) {
    const float g = dout[n * C + c];
    sw += g * (inp[n * C + c] - mean[n]) * rstd[n];
    sb += g;
  }
  if (dweight) dweight[c] += sw;
  if (dbias) dbias[c] += sb;
}

// RMSNorm: out = inp * rstd * weight, rstd = 1 / sqrt(mean(inp^2) + eps)
__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* inp, const float* weight, int64_t N,
                                       int64_t C, float eps) {
  const int64_t n = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  float s = 0.f;
  for (int64_t i = lane; i < C; i += kWarp) s += x[i] * x[i];
  const float r = rsqrtf(warp_sum(s) / (float)C + eps);
  float* y = out + n * C;
  for (int64_t i = lane; i < C; i += kWarp) y[i] = x[i] * r * weight[i];
  if (lane == 0 && rstd) rstd[n] = r;
}

// dinp = rstd * (dnorm - norm * mean(dnorm * norm)), norm = inp * rstd, dnorm = dout * weight
__global__ void rmsnorm_dinp_kernel(float* dinp, const float* dout, const float* inp, const float* weight,
                                    const float* rstd, int64_t N, int64_t C) {
  const int64_t n = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  const float* g = dout + n * C;
  const float r = rstd[n];
  float s = 0.f;
  for (int64_t i = lane; i < C; i += kWarp) s += g[i] * weight[i] * x[i] * r;
  const float mean_dnn = warp_sum(s) / (float)C;
  float* dx = dinp + n * C;
  for (int64_t i = lane; i < C; i += kWarp) dx[i] = r * (g[i] * weight[i] - x[i] * r * mean_dnn);
}

// dweight (C) += sum_n dout * inp * rstd
__global__ void rmsnorm_dweight_kernel(float* dweight, const float* dout, const float* inp, const float* rstd,
                                       int64_t N, int64_t C) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int64_t n = 0; n < N; n++) s += dout[n * C + c] * inp[n * C + c] * rstd[n];
  dweight[c] += s;
}

dim3 row_grid(int64_t N) { return dim3((unsigned)cdiv(N, kRowsPerBlock)); }
dim3 column_grid(int64_t C) { return dim3((unsigned)cdiv(C, kColumnThreads)); }
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps) {
  if (C == 0) return;
  launch("layernorm_forward", layernorm_forward_kernel, row_grid(N), dim3(kRowsPerBlock * kWarp), 0, out, mean,
         rstd, inp, weight, bias, N, C, eps);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  if (dinp)
    launch("layernorm_backward", layernorm_dinp_kernel, row_grid(N), dim3(kRowsPerBlock * kWarp), 0, dinp, dout,
           inp, weight, mean, rstd, N, C);
  if (dweight || dbias)
    launch("layernorm_backward", layernorm_dparams_kernel, column_grid(C), dim3(kColumnThreads), 0, dweight, dbias,
           dout, inp, mean, rstd, N, C);
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps) {
  if (C == 0) return;
  launch("rmsnorm_forward", rmsnorm_forward_kernel, row_grid(N), dim3(kRowsPerBlock * kWarp), 0, out, rstd, inp,
         weight, N, C, eps);
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  if (dinp)
    launch("rmsnorm_backward", rmsnorm_dinp_kernel, row_grid(N), dim3(kRowsPerBlock * kWarp), 0, dinp, dout, inp,
           weight, rstd, N, C);
  if (dweight)
    launch("rmsnorm_backward", rmsnorm_dweight_kernel, column_grid(C), dim3(kColumnThreads), 0, dweight, dout, inp,
           rstd, N, C);
}

}  // namespace cuda
}  // namespace pt
