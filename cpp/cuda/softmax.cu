// Softmax and the fused softmax cross-entropy on the GPU, forward and backward. One block per row (rows can be
// a vocabulary wide); block reductions in a fixed order.
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;

// out (N, C) = softmax(inp) over C
__global__ void softmax_forward_kernel(float* out, const float* inp, int64_t C) {
  PT_SHARED(float, scratch, kWarp);
  const float* x = inp + (int64_t)blockIdx.x * C;
  float* y = out + (int64_t)blockIdx.x * C;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) m = fmaxf(m, x[i]);
  m = block_max(m, scratch);
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += expf(x[i] - m);
  const float inv = 1.f / block_sum(s, scratch);
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) y[i] = expf(x[i] - m) * inv;
}

// dinp = out * (dout - sum(dout * out)); dinp may be dout
__global__ void softmax_backward_kernel(float* dinp, const float* out, const float* dout, int64_t C) {
  PT_SHARED(float, scratch, kWarp);
  const int64_t row = (int64_t)blockIdx.x * C;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += dout[row + i] * out[row + i];
  const float d = block_sum(s, scratch);
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dinp[row + i] = out[row + i] * (dout[row + i] - d);
}

// losses (N) = lse - (1 - eps) x[target] - eps mean(x), lse (N) saved; both 0 where target == ignore_index
__global__ void crossentropy_forward_kernel(float* losses, float* lse, const float* logits, const int64_t* targets,
                                            int64_t V, int64_t ignore_index, float smoothing) {
  PT_SHARED(float, scratch, kWarp);
  const int64_t n = blockIdx.x;
  const int64_t t = targets[n];
  if (t == ignore_index) {  // the whole block leaves: no barrier is skipped by part of it
    if (threadIdx.x == 0) losses[n] = lse[n] = 0.f;
    return;
  }
  const float* x = logits + n * V;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
  m = block_max(m, scratch);
  float s = 0.f, total = 0.f;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    s += expf(x[i] - m);
    total += x[i];
  }
  const float l = m + logf(block_sum(s, scratch));
  total = block_sum(total, scratch);
  if (threadIdx.x == 0) {
    lse[n] = l;
    losses[n] = smoothing == 0.f ? l - x[t] : l - (1.f - smoothing) * x[t] - smoothing * total / (float)V;
  }
}

// result[0] = sum of counted losses (double), count[0] = rows counted: one block, a fixed order
__global__ void crossentropy_mean_kernel(double* result, int64_t* count, const float* losses,
                                         const int64_t* targets, int64_t N, int64_t ignore_index) {
  PT_SHARED(double, scratch, kWarp);
  double s = 0.0, c = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x)
    if (targets[n] != ignore_index) {
      s += losses[n];
      c += 1.0;
    }
  s = block_sum(s, scratch);
  c = block_sum(c, scratch);
  if (threadIdx.x == 0) {
    result[0] = s;
    count[0] = (int64_t)c;
  }
}

// dlogits (N, V) = (softmax(x) - (1 - eps) onehot - eps / V) * dloss / count, 0 in ignored rows; may be logits
__global__ void crossentropy_backward_kernel(float* dlogits, const float* logits, const float* lse,
                                             const int64_t* targets, const int64_t* count, float dloss, int64_t V,
                                             int64_t ignore_index, float smoothing) {
  const int64_t n = blockIdx.x;
  const int64_t t = targets[n];
  const float* x = logits + n * V;
  float* dx = dlogits + n * V;
  if (t == ignore_index) {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) dx[i] = 0.f;
    return;
  }
  const float scale = count[0] ? dloss / (float)count[0] : 0.f;
  const float l = lse[n], uniform = smoothing / (float)V;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
    dx[i] = (expf(x[i] - l) - uniform - (i == t ? 1.f - smoothing : 0.f)) * scale;
}

// count[0] = rows whose target is not ignore_index
__global__ void count_targets_kernel(int64_t* count, const int64_t* targets, int64_t N, int64_t ignore_index) {
  PT_SHARED(double, scratch, kWarp);
  double c = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) c += targets[n] != ignore_index ? 1.0 : 0.0;
  c = block_sum(c, scratch);
  if (threadIdx.x == 0) count[0] = (int64_t)c;
}
}  // namespace

void softmax_forward(float* out, const float* inp, int64_t N, int64_t C) {
  if (C == 0) return;
  launch("softmax_forward", softmax_forward_kernel, dim3((unsigned)N), dim3(kThreads), 0, out, inp, C);
}

void softmax_backward(float* dinp, const float* out, const float* dout, int64_t N, int64_t C) {
  if (C == 0) return;
  launch("softmax_backward", softmax_backward_kernel, dim3((unsigned)N), dim3(kThreads), 0, dinp, out, dout, C);
}

// Returns the mean over counted rows (NaN when none counts), as the CPU kernel; waits for the result.
double crossentropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets, int64_t N,
                            int64_t V, int64_t ignore_index, float smoothing) {
  if (N == 0) return std::nan("");
  launch("crossentropy_forward", crossentropy_forward_kernel, dim3((unsigned)N), dim3(kThreads), 0, losses, lse,
         logits, targets, V, ignore_index, smoothing);
  Scratch scratch(2 * sizeof(double));
  double* sums = scratch.as<double>();
  launch("crossentropy_forward", crossentropy_mean_kernel, dim3(1), dim3(1024), 0, sums,
         reinterpret_cast<int64_t*>(sums + 1), losses, targets, N, ignore_index);
  double host[2];
  copy_to_host(host, sums, sizeof(host));
  int64_t count;
  std::memcpy(&count, &host[1], sizeof(count));
  return count ? host[0] / (double)count : std::nan("");
}

void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int64_t* targets,
                           float dloss, int64_t N, int64_t V, int64_t ignore_index, float smoothing) {
  if (N == 0) return;
  Scratch scratch(sizeof(int64_t));
  int64_t* count = scratch.as<int64_t>();
  launch("crossentropy_backward", count_targets_kernel, dim3(1), dim3(1024), 0, count, targets, N, ignore_index);
  launch("crossentropy_backward", crossentropy_backward_kernel, dim3((unsigned)N), dim3(kThreads), 0, dlogits,
         logits, lse, targets, count, dloss, V, ignore_index, smoothing);
}

}  // namespace cuda
}  // namespace pt
