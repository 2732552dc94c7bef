// AdamW over one flat parameter buffer, and the sum of squares behind global-norm gradient clipping.
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

// torch.optim.AdamW: p -= lr * wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). params, m, v (n) updated in place.
void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
  const float bc1 = 1.f / (float)(1.0 - std::pow((double)beta1, (double)step));
  const float bc2_sqrt = 1.f / (float)std::sqrt(1.0 - std::pow((double)beta2, (double)step));
  const V b1 = set1(beta1), b2 = set1(beta2), omb1 = set1(1.f - beta1), omb2 = set1(1.f - beta2);
  const V decay = set1(1.f - lr * weight_decay), step_size = set1(lr * bc1), vscale = set1(bc2_sqrt),
          veps = set1(eps);
  parallel_chunks(n, kElementChunk, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i += W) {
      int64_t r = hi - i < W ? hi - i : W;
      V g = loadn(grads + i, r);
      V mi = fma(b1, loadn(m + i, r), mul(omb1, g));
      V vi = fma(b2, loadn(v + i, r), mul(omb2, mul(g, g)));
      V denom = add(mul(sqrt_v(vi), vscale), veps);
      V p = mul(loadn(params + i, r), decay);
      p = fnma(step_size, div(mi, denom), p);
      storen(m + i, mi, r);
      storen(v + i, vi, r);
      storen(params + i, p, r);
    }
  });
}

// sum of x[i]^2 in double: float vector partials per chunk, chunks added in order (deterministic).
double sum_squares(const float* x, int64_t n) {
  const int64_t chunk = 1 << 14;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  static thread_local ScratchBuffer buf;  // the calling thread's, one slot per chunk
  double* partial = buf.doubles(nchunks > 0 ? nchunks : 1);
  parallel_chunks(n, chunk, [&](int64_t lo, int64_t hi) {
    V acc0 = zero(), acc1 = zero();
    int64_t i = lo;
    for (; i + 2 * W <= hi; i += 2 * W) {
      V a = load(x + i), b = load(x + i + W);
      acc0 = fma(a, a, acc0);
      acc1 = fma(b, b, acc1);
    }
    for (; i < hi; i += W) {
      V a = loadn(x + i, hi - i);
      acc0 = fma(a, a, acc0);
    }
    partial[lo / chunk] = (double)reduce_add(add(acc0, acc1));
  });
  double total = 0.0;
  for (int64_t c = 0; c < nchunks; c++) total += partial[c];
  return total;
}

}  // namespace PT_NS
}  // namespace pt
