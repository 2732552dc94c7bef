// GELU (tanh approximation and exact erf), ReLU, SwiGLU and GeGLU on the GPU, forward and backward; the CPU's formulas
// (cpp/cpu/activations.cpp). Flat arrays of n elements.
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// gelu_tanh(x) = x sigmoid(2u) and its derivative s + 2 x s (1 - s) u', u = sqrt(2/pi) (x + 0.044715 x^3)
__device__ __forceinline__ void gelu_tanh_and_grad(float x, float* f, float* df) {
  const float x2 = x * x;
  const float u = kSqrt2OverPi * (x + kGeluCubic * x2 * x);
  const float du = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * x2);
  const float s = sigmoid(2.f * u);
  *f = x * s;
  *df = s + 2.f * x * s * (1.f - s) * du;
}

// tanh form as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3); exact form 0.5 x (1 + erf(x / sqrt 2))
__global__ void gelu_forward_kernel(float* out, const float* inp, int64_t n, int approximate) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = inp[i];
  if (approximate) {
    const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    out[i] = x * sigmoid(2.f * u);
  } else {
    out[i] = 0.5f * x * (1.f + erff(x * kInvSqrt2));
  }
}

// d/dx: tanh form s + 2 x s (1 - s) u' with s = sigmoid(2u); exact form Phi(x) + x phi(x)
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, int64_t n, int approximate) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = inp[i];
  float d;
  if (approximate) {
    float f;
    gelu_tanh_and_grad(x, &f, &d);
  } else {
    d = 0.5f * (1.f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  }
  dinp[i] = dout[i] * d;
}

__global__ void tanh_forward_kernel(float* out, const float* inp, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tanhf(inp[i]);
}

// dinp = dout (1 - out^2), from the forward's output
__global__ void tanh_backward_kernel(float* dinp, const float* out, const float* dout, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dinp[i] = dout[i] * (1.f - out[i] * out[i]);
}

__global__ void relu_forward_kernel(float* out, const float* inp, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = inp[i] > 0.f ? inp[i] : 0.f;
}

__global__ void relu_backward_kernel(float* dinp, const float* inp, const float* dout, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dinp[i] = inp[i] > 0.f ? dout[i] : 0.f;
}

// out = silu(gate) * up, silu(g) = g sigmoid(g)
__global__ void swiglu_forward_kernel(float* out, const float* gate, const float* up, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = g * sigmoid(g) * up[i];
}

// dgate = dout up s (1 + g (1 - s)), dup = dout silu(g); either may be null
__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate,
                                       const float* up, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i], s = sigmoid(g), d = dout[i], u = up[i];
  if (dgate) dgate[i] = d * u * s * (1.f + g * (1.f - s));
  if (dup) dup[i] = d * g * s;
}

// out = gelu_tanh(gate) * up
__global__ void geglu_forward_kernel(float* out, const float* gate, const float* up, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float f, df;
  gelu_tanh_and_grad(gate[i], &f, &df);
  out[i] = f * up[i];
}

// dgate = dout up gelu_tanh'(g), dup = dout gelu_tanh(g); either may be null
__global__ void geglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate,
                                      const float* up, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float f, df;
  gelu_tanh_and_grad(gate[i], &f, &df);
  if (dgate) dgate[i] = dout[i] * up[i] * df;
  if (dup) dup[i] = dout[i] * f;
}

dim3 grid(int64_t n) { return dim3((unsigned)cdiv(n, kThreads)); }
}  // namespace

void gelu_forward(float* out, const float* inp, int64_t n, int approximate) {
  launch("gelu_forward", gelu_forward_kernel, grid(n), dim3(kThreads), 0, out, inp, n, approximate);
}
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, int approximate) {
  launch("gelu_backward", gelu_backward_kernel, grid(n), dim3(kThreads), 0, dinp, inp, dout, n, approximate);
}
void tanh_forward(float* out, const float* inp, int64_t n) {
  launch("tanh_forward", tanh_forward_kernel, grid(n), dim3(kThreads), 0, out, inp, n);
}
void tanh_backward(float* dinp, const float* out, const float* dout, int64_t n) {
  launch("tanh_backward", tanh_backward_kernel, grid(n), dim3(kThreads), 0, dinp, out, dout, n);
}
void relu_forward(float* out, const float* inp, int64_t n) {
  launch("relu_forward", relu_forward_kernel, grid(n), dim3(kThreads), 0, out, inp, n);
}
void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  launch("relu_backward", relu_backward_kernel, grid(n), dim3(kThreads), 0, dinp, inp, dout, n);
}
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  launch("swiglu_forward", swiglu_forward_kernel, grid(n), dim3(kThreads), 0, out, gate, up, n);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  launch("swiglu_backward", swiglu_backward_kernel, grid(n), dim3(kThreads), 0, dgate, dup, dout, gate, up, n);
}
void geglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  launch("geglu_forward", geglu_forward_kernel, grid(n), dim3(kThreads), 0, out, gate, up, n);
}
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  launch("geglu_backward", geglu_backward_kernel, grid(n), dim3(kThreads), 0, dgate, dup, dout, gate, up, n);
}

}  // namespace cuda
}  // namespace pt
