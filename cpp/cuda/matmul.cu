// Linear layers on the GPU: the products on cuBLAS (float32 inputs and sums; TF32 is not enabled, so results
// match the CPU's float32 within rounding), the bias and its gradient in small kernels.
//
// cuBLAS is column-major; a row-major (R, C) array is the column-major (C, R) matrix, its transpose. So each
// row-major product below is written as the column-major product of the transposes (comments give both).
#include <mutex>

#include "device.h"
#include "kernels.h"

#ifndef PT_CUDA_EMULATE
#include <cublas_v2.h>
#endif

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;

#ifndef PT_CUDA_EMULATE
void check_cublas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::string msg = std::string(what) + " failed: " + cublasGetStatusName(status) + " (" +
                    cublasGetStatusString(status) + ")";
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw Error(msg);
}

cublasHandle_t handle() {
  static std::once_flag once;
  static cublasHandle_t h = nullptr;
  std::call_once(once, [] {
    check_cublas(cublasCreate(&h), "cublasCreate");
    check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");  // no TF32
  });
  return h;
}
#endif

// C (m, n) = op(A) (m, k) op(B) (k, n) + beta C, all column-major with leading dimensions lda, ldb, ldc; op
// transposes when ta / tb. The emulated build runs the same column-major definition on the CPU, so the
// argument conventions above it are tested without a GPU.
void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
           int64_t ldb, float beta, float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef PT_CUDA_EMULATE
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      double s = 0.0;
      for (int64_t p = 0; p < k; p++)
        s += (double)(ta ? A[p + i * lda] : A[i + p * lda]) * (double)(tb ? B[j + p * ldb] : B[p + j * ldb]);
      float& c = C[i + j * ldc];
      c = (float)s + (beta == 0.f ? 0.f : beta * c);
    }
#else
  const float one = 1.f;
  check_cublas(cublasSgemm_64(handle(), ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                              &one, A, lda, B, ldb, &beta, C, ldc),
               "cublasSgemm");
#endif
}

// out (N, OC) += bias (OC), or = bias when `assign` (an empty product: IC = 0)
__global__ void add_bias_kernel(float* out, const float* bias, int64_t N, int64_t OC, bool assign) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= N * OC) return;
  const float b = bias ? bias[idx % OC] : 0.f;
  out[idx] = assign ? b : out[idx] + b;
}

// dbias (OC) += sum_n dout (N, OC): a thread per column, the rows in order (deterministic)
__global__ void column_sum_kernel(float* dbias, const float* dout, int64_t N, int64_t OC) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float s = 0.f;
  for (int64_t n = 0; n < N; n++) s += dout[n * OC + c];
  dbias[c] += s;
}
}  // namespace

// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias. Column-major: out^T (OC, N) = weight (OC, IC) inp^T,
// where weight's memory is the column-major (IC, OC) matrix (so op T) and inp's is inp^T (op N).
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC) {
  if (N == 0 || OC == 0) return;
  if (IC == 0) {
    launch("matmul_forward", add_bias_kernel, dim3((unsigned)cdiv(N * OC, kThreads)), dim3(kThreads), 0, out, bias,
           N, OC, true);
    return;
  }
  sgemm(true, false, OC, N, IC, weight, IC, inp, IC, 0.f, out, OC);
  if (bias)
    launch("matmul_forward", add_bias_kernel, dim3((unsigned)cdiv(N * OC, kThreads)), dim3(kThreads), 0, out, bias,
           N, OC, false);
}

// dinp (N, IC) = dout (N, OC) @ weight (OC, IC)      column-major: dinp^T (IC, N) = weight^T (IC, OC) dout^T
// dweight (OC, IC) += dout^T @ inp (N, IC)           column-major: dweight^T (IC, OC) += inp^T (IC, N) dout (N, OC)
// dbias (OC) += sum over rows of dout. Any of the three may be null.
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t IC, int64_t OC) {
  if (dinp && N > 0 && IC > 0) {
    if (OC == 0)
      fill_zero(dinp, N * IC * sizeof(float));
    else
      sgemm(false, false, IC, N, OC, weight, IC, dout, OC, 0.f, dinp, IC);
  }
  if (dweight && N > 0) sgemm(false, true, IC, OC, N, inp, IC, dout, OC, 1.f, dweight, IC);
  if (dbias && N > 0 && OC > 0)
    launch("matmul_backward", column_sum_kernel, dim3((unsigned)cdiv(OC, kThreads)), dim3(kThreads), 0, dbias, dout,
           N, OC);
}

}  // namespace cuda
}  // namespace pt
