// Token embedding on the GPU: a row gather forward; backward a scatter-add that is deterministic: each thread
// owns one channel and adds the rows in token order, so repeated ids accumulate in the same order every run
// (float atomics would add them in whatever order the threads arrive).
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;

// out (N, C) = table (V, C)[ids (N)]; grid (channel blocks, N)
__global__ void embedding_forward_kernel(float* out, const int64_t* ids, const float* table, int64_t C) {
  const int64_t n = blockIdx.y, c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c < C) out[n * C + c] = table[ids[n] * C + c];
}

// dtable (V, C) += dout (N, C) scattered to rows ids (N)
__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int64_t* ids, int64_t N,
                                          int64_t C) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t n = 0; n < N; n++) dtable[ids[n] * C + c] += dout[n * C + c];
}
}  // namespace

// ids are checked to lie in [0, V) by the caller (ops.py), which reads them before the launch
void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V, int64_t C) {
  for (int64_t n0 = 0; n0 < N; n0 += 65535) {  // grid.y is at most 65535
    const int64_t rows = N - n0 < 65535 ? N - n0 : 65535;
    launch("embedding_forward", embedding_forward_kernel, dim3((unsigned)cdiv(C, kThreads), (unsigned)rows),
           dim3(kThreads), 0, out + n0 * C, ids + n0, table, C);
  }
}

void embedding_backward(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C) {
  if (N == 0) return;
  launch("embedding_backward", embedding_backward_kernel, dim3((unsigned)cdiv(C, kThreads)), dim3(kThreads), 0,
         dtable, dout, ids, N, C);
}

}  // namespace cuda
}  // namespace pt
