// Softmax over the last axis, and cross-entropy fused with softmax, forward and backward.
#include <limits>
#include <vector>

#include <algorithm>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
// four independent accumulators: one chain of vector max / fma would wait 4 cycles per vector
inline float row_max(const float* x, int64_t C) {
  const V ninf = set1(-std::numeric_limits<float>::infinity());
  V m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t i = 0;
  for (; i + 4 * W <= C; i += 4 * W) {
    m0 = max(m0, load(x + i));
    m1 = max(m1, load(x + i + W));
    m2 = max(m2, load(x + i + 2 * W));
    m3 = max(m3, load(x + i + 3 * W));
  }
  for (; i + W <= C; i += W) m0 = max(m0, load(x + i));
  float s = reduce_max(max(max(m0, m1), max(m2, m3)));
  for (; i < C; i++) s = x[i] > s ? x[i] : s;
  return s;
}

// y = exp(x - shift), returns sum(y); y may be null (sum only). Blocked summation (float vectors within a
// block of 64 vectors, blocks added in double) keeps long rows (V = 50k) accurate.
inline float row_exp_shifted(float* y, const float* x, float shift, int64_t C) {
  const V sh = set1(shift);
  double total = 0.0;
  for (int64_t b = 0; b < C; b += 64 * W) {
    const int64_t e = b + 64 * W < C ? b + 64 * W : C;
    V acc = zero();
    for (int64_t i = b; i < e; i += W) {
      const int64_t r = e - i < W ? e - i : W;
      V ex = keep_first(exp(sub(loadn(x + i, r), sh)), r);
      acc = add(acc, ex);
      if (y) storen(y + i, ex, r);
    }
    total += reduce_add(acc);
  }
  return (float)total;
}

inline float row_dot(const float* a, const float* b, int64_t C) {
  V acc0 = zero(), acc1 = zero(), acc2 = zero(), acc3 = zero();
  int64_t i = 0;
  for (; i + 4 * W <= C; i += 4 * W) {
    acc0 = fma(load(a + i), load(b + i), acc0);
    acc1 = fma(load(a + i + W), load(b + i + W), acc1);
    acc2 = fma(load(a + i + 2 * W), load(b + i + 2 * W), acc2);
    acc3 = fma(load(a + i + 3 * W), load(b + i + 3 * W), acc3);
  }
  for (; i < C; i += W) {
    int64_t r = C - i < W ? C - i : W;
    acc0 = fma(loadn(a + i, r), loadn(b + i, r), acc0);  // masked tails load zeros
  }
  return reduce_add(add(add(acc0, acc1), add(acc2, acc3)));
}
}  // namespace

// out (N, C) = softmax(inp) over C
void softmax_forward(float* out, const float* inp, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;  // nothing to write: never loop over empty rows
  map_rows(out, inp, N, C, [&](int64_t, const float* x, float* y) {
    float sum = row_exp_shifted(y, x, row_max(x, C), C);
    V inv = set1(1.f / sum);
    for (int64_t i = 0; i < C; i += W) {
      int64_t r = C - i < W ? C - i : W;
      storen(y + i, mul(loadn(y + i, r), inv), r);
    }
  });
}

// dinp (N, C) = out * (dout - sum(dout * out)); dinp may alias dout
void softmax_backward(float* dinp, const float* out, const float* dout, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  parallel_for(N, N * C >= kParallelElements ? threads() : 1, [&](int64_t n) {
    const float* y = out + n * C;
    const float* g = dout + n * C;
    float* dx = dinp + n * C;
    if (n + 1 < N) {
      prefetch_row(y + C, C);
      prefetch_row(g + C, C);
    }
    V d = set1(row_dot(g, y, C));
    for (int64_t i = 0; i < C; i += W) {
      int64_t r = C - i < W ? C - i : W;
      storen(dx + i, mul(loadn(y + i, r), sub(loadn(g + i, r), d)), r);
    }
  });
}

// losses (N): lse - (1 - eps) logits[target] - eps mean(logits) (eps = label smoothing: the target distribution
// is (1 - eps) onehot + eps / V, as torch's label_smoothing); 0 where target == ignore_index; lse (N) saved (0
// where ignored). Returns the mean over rows that count (NaN when none does, as torch).
double crossentropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets, int64_t N,
                            int64_t vocab, int64_t ignore_index, float smoothing) {
  parallel_for(N, N * vocab >= kParallelElements ? threads() : 1, [&](int64_t n) {
    if (targets[n] == ignore_index) {
      losses[n] = 0.f;
      lse[n] = 0.f;
      return;
    }
    const float* x = logits + n * vocab;
    if (n + 1 < N) prefetch_row(x + vocab, vocab);
    float m = row_max(x, vocab);
    float l = m + std::log(row_exp_shifted(nullptr, x, m, vocab));
    lse[n] = l;
    if (smoothing == 0.f) {
      losses[n] = l - x[targets[n]];
    } else {
      V acc = zero();
      for (int64_t i = 0; i < vocab; i += W) acc = add(acc, loadn(x + i, std::min<int64_t>(W, vocab - i)));
      losses[n] = l - (1.f - smoothing) * x[targets[n]] - smoothing * reduce_add(acc) / (float)vocab;
    }
  });
  // the mean in row order, whatever the thread count (a parallel reduction's order would depend on it)
  double total = 0.0;
  int64_t count = 0;
  for (int64_t n = 0; n < N; n++) {
    if (targets[n] == ignore_index) continue;
    total += losses[n];
    count += 1;
  }
  return count ? total / (double)count : std::numeric_limits<double>::quiet_NaN();
}

// dlogits (N, V) = (softmax(logits) - (1 - eps) onehot(target) - eps / V) * dloss / count; rows that are ignored
// get 0. dlogits may be the logits buffer itself (each row is read before it is written).
void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int64_t* targets,
                           float dloss, int64_t N, int64_t vocab, int64_t ignore_index, float smoothing) {
  int64_t count = 0;
  for (int64_t n = 0; n < N; n++) count += targets[n] != ignore_index;
  const float scale = count ? dloss / (float)count : 0.f;
  parallel_for(N, N * vocab >= kParallelElements ? threads() : 1, [&](int64_t n) {
    const float* x = logits + n * vocab;
    float* dx = dlogits + n * vocab;
    if (targets[n] == ignore_index) {
      std::memset(dx, 0, vocab * sizeof(float));
      return;
    }
    if (n + 1 < N) prefetch_row(x + vocab, vocab);
    const V l = set1(lse[n]), s = set1(scale), uniform = set1(smoothing / (float)vocab);
    for (int64_t i = 0; i < vocab; i += W) {
      int64_t r = vocab - i < W ? vocab - i : W;
      storen(dx + i, mul(sub(exp(sub(loadn(x + i, r), l)), uniform), s), r);
    }
    dx[targets[n]] -= scale * (1.f - smoothing);
  });
}

}  // namespace PT_NS
}  // namespace pt
