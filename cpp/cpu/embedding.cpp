// Embedding lookup (token and learned position tables), forward and backward.
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

// out (N, C) = table (V, C)[ids (N)]; ids are checked to lie in [0, V) by the caller.
void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V, int64_t C) {
  if (N == 0 || C == 0) return;
  parallel_for(N, N * C >= kParallelElements ? threads() : 1, [&](int64_t n) {
    std::memcpy(out + n * C, table + ids[n] * C, C * sizeof(float));
  });
}

// dtable (V, C) += scatter-add of dout (N, C) by ids (N). Threads split the channels, not the rows, so
// repeated ids never race and the summation order (rows in order) is the same for any thread count.
void embedding_backward(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C) {
  if (N == 0 || C == 0) return;  // (the slice width divides by C)
  const int64_t nt = (N * C >= kParallelElements) ? threads() : 1;
  // column slices of whole vectors, at least 4 vectors wide
  int64_t slice = (C + nt - 1) / nt;
  slice = (slice + 4 * W - 1) / (4 * W) * (4 * W);
  const int64_t nslices = (C + slice - 1) / slice;
  parallel_for(nslices, (int)nt, [&](int64_t s) {
    const int64_t c0 = s * slice, c1 = c0 + slice < C ? c0 + slice : C;
    for (int64_t n = 0; n < N; n++) {
      float* dst = dtable + ids[n] * C;
      const float* src = dout + n * C;
      for (int64_t c = c0; c < c1; c += W) {
        int64_t r = c1 - c < W ? c1 - c : W;
        storen(dst + c, add(loadn(dst + c, r), loadn(src + c, r)), r);
      }
    }
  });
}

}  // namespace PT_NS
}  // namespace pt
