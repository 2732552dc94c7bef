// Rotary positions (RoPE) on the GPU, forward and backward: one thread per rotated pair. inp, out (N, NH, HS)
// (out may be inp), positions (N) into the cos / sin tables (P, HS / 2). Pairs (i, i + HS / 2) (Hugging Face's
// rotate_half) or (2i, 2i + 1) when interleaved (llama.cpp's). Backward rotates by minus the angle.
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;

__global__ void rope_kernel(float* out, const float* inp, const float* cos, const float* sin,
                            const int64_t* positions, int64_t N, int64_t NH, int64_t HS, float sign,
                            bool interleaved) {
  const int64_t half = HS / 2;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // over (n, h, i < half)
  if (idx >= N * NH * half) return;
  const int64_t i = idx % half, nh = idx / half, n = nh / NH;
  const float c = cos[positions[n] * half + i], s = sign * sin[positions[n] * half + i];
  const int64_t a = nh * HS + (interleaved ? 2 * i : i), b = a + (interleaved ? 1 : half);
  const float x1 = inp[a], x2 = inp[b];
  out[a] = x1 * c - x2 * s;
  out[b] = x2 * c + x1 * s;
}
}  // namespace

void rope_forward(float* out, const float* inp, const float* cos, const float* sin, const int64_t* positions,
                  int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved) {
  launch("rope_forward", rope_kernel, dim3((unsigned)cdiv(N * NH * (HS / 2), kThreads)), dim3(kThreads), 0, out,
         inp, cos, sin, positions, N, NH, HS, 1.f, interleaved);
}

void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, const int64_t* positions,
                   int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved) {
  launch("rope_backward", rope_kernel, dim3((unsigned)cdiv(N * NH * (HS / 2), kThreads)), dim3(kThreads), 0, dinp,
         dout, cos, sin, positions, N, NH, HS, -1.f, interleaved);
}

}  // namespace cuda
}  // namespace pt
