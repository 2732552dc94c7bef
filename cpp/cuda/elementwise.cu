// Residual add and dropout on the GPU, forward and backward. Flat arrays of n elements.
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;

__global__ void scale_kernel(float* x, int64_t n, float factor) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= factor;
}

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

// The CPU's counter-based hash (cpp/cpu/elementwise.cpp): element i is kept when its 24-bit uniform of
// (seed, i) is >= p * 2^24, so masks are bit-identical across devices and thread counts.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void dropout_kernel(float* out, const float* in, int64_t n, uint32_t threshold, float scale,
                               uint64_t seed) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t u24 = (uint32_t)(mix64(seed * 0xD1B54A32D192ED03ull + (uint64_t)i) >> 40);
  out[i] = u24 >= threshold ? in[i] * scale : 0.f;
}
}  // namespace

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  launch("residual_forward", residual_forward_kernel, dim3((unsigned)cdiv(n, kThreads)), dim3(kThreads), 0, out, a,
         b, n);
}

// x (n) *= factor, in place (gradient clipping)
void scale_inplace(float* x, int64_t n, float factor) {
  launch("scale_inplace", scale_kernel, dim3((unsigned)cdiv(n, kThreads)), dim3(kThreads), 0, x, n, factor);
}

// da = db = dout (overwritten; either may be null or dout itself)
void residual_backward(float* da, float* db, const float* dout, int64_t n) {
  if (da && da != dout) copy_on_device(da, dout, n * sizeof(float));
  if (db && db != dout) copy_on_device(db, dout, n * sizeof(float));
}

void dropout_forward(float* out, const float* inp, int64_t n, float p, uint64_t seed) {
  launch("dropout_forward", dropout_kernel, dim3((unsigned)cdiv(n, kThreads)), dim3(kThreads), 0, out, inp, n,
         (uint32_t)((double)p * 16777216.0), 1.f / (1.f - p), seed);
}

void dropout_backward(float* dinp, const float* dout, int64_t n, float p, uint64_t seed) {
  launch("dropout_backward", dropout_kernel, dim3((unsigned)cdiv(n, kThreads)), dim3(kThreads), 0, dinp, dout, n,
         (uint32_t)((double)p * 16777216.0), 1.f / (1.f - p), seed);
}

}  // namespace cuda
}  // namespace pt
