// Linear layers on the GPU: the products on cuBLAS (float32 inputs and sums; TF32 is not enabled, so results
// match the CPU's float32 within rounding); the forward's bias in cuBLASLt's epilogue (no second pass over the
// output), its gradient in a small kernel.
//
// cuBLAS is column-major; a row-major (R, C) array is the column-major (C, R) matrix, its transpose. So each
// row-major product below is written as the column-major product of the transposes (comments give both).
#include <mutex>

#include "device.h"
#include "kernels.h"

#ifndef PT_CUDA_EMULATE
#include <cublasLt.h>
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

#ifndef PT_CUDA_EMULATE
cublasLtHandle_t lt_handle() {
  static std::once_flag once;
  static cublasLtHandle_t h = nullptr;
  std::call_once(once, [] { check_cublas(cublasLtCreate(&h), "cublasLtCreate"); });
  return h;
}

// The descriptors of one cuBLASLt call, destroyed however the call ends.
struct LtCall {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
#endif

// C (m, n) = op(A) op(B) + bias (m) added to every column: cuBLASLt with its bias epilogue (float32 compute, no
// TF32), one pass over C. Returns false when cuBLASLt offers no algorithm for it (the caller adds the bias itself).
bool sgemm_bias(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                int64_t ldb, const float* bias, float* C, int64_t ldc) {
#ifdef PT_CUDA_EMULATE
  sgemm(ta, tb, m, n, k, A, lda, B, ldb, 0.f, C, ldc);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) C[i + j * ldc] += bias[i];
  return true;
#else
  LtCall call;
  check_cublas(cublasLtMatmulDescCreate(&call.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  check_cublas(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)),
               "cublasLtMatmulDescSetAttribute");
  check_cublas(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)),
               "cublasLtMatmulDescSetAttribute");
  check_cublas(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
               "cublasLtMatmulDescSetAttribute");
  check_cublas(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
               "cublasLtMatmulDescSetAttribute");
  check_cublas(cublasLtMatrixLayoutCreate(&call.a, CUDA_R_32F, ta ? k : m, ta ? m : k, lda), "cublasLtMatrixLayoutCreate");
  check_cublas(cublasLtMatrixLayoutCreate(&call.b, CUDA_R_32F, tb ? n : k, tb ? k : n, ldb), "cublasLtMatrixLayoutCreate");
  check_cublas(cublasLtMatrixLayoutCreate(&call.c, CUDA_R_32F, m, n, ldc), "cublasLtMatrixLayoutCreate");
  check_cublas(cublasLtMatmulPreferenceCreate(&call.pref), "cublasLtMatmulPreferenceCreate");
  const size_t workspace = 0;
  check_cublas(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof(workspace)),
               "cublasLtMatmulPreferenceSetAttribute");
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  check_cublas(cublasLtMatmulAlgoGetHeuristic(lt_handle(), call.op, call.a, call.b, call.c, call.c, call.pref, 1,
                                              &result, &found),
               "cublasLtMatmulAlgoGetHeuristic");
  if (found == 0) return false;
  const float one = 1.f, zero = 0.f;
  check_cublas(cublasLtMatmul(lt_handle(), call.op, &one, A, call.a, B, call.b, &zero, C, call.c, C, call.c,
                              &result.algo, nullptr, 0, 0),
               "cublasLtMatmul");
  return true;
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
  if (bias && sgemm_bias(true, false, OC, N, IC, weight, IC, inp, IC, bias, out, OC)) return;
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
