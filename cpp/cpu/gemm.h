// matmul.cpp's blocked GEMM for a B that is not float32 in memory: B (K, N) read by row segments, each widened into
// L1 and laid into the packed panels as it comes (no float32 copy of B beyond one task's panels). The products
// through a frozen narrow weight (quant/dinp.cpp) run on it. Per ISA variant, like every kernel source.
#pragma once
#include <cstdint>

namespace pt {
namespace PT_NS {

// B (K, N) by rows: fill(source, k, j0, n, dst) writes B[k, j0 .. j0 + n) as n floats to dst. j0 is a multiple of
// align, and so is n unless j0 + n = N (a weight's quantisation block: align 32 or 256, 1 for plain elements).
struct RowSource {
  void (*fill)(const void* source, int64_t k, int64_t j0, int64_t n, float* dst);
  const void* source;
  int64_t align;
};

// C (M, N) = A (M, K; row i at A + i * lda) @ B (K, N), overwritten; C's rows ldc apart.
void gemm_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, RowSource B, float* C, int64_t ldc);

}  // namespace PT_NS
}  // namespace pt
