// LayerNorm and RMSNorm over the last axis, forward and backward.
#include <algorithm>
#include <cstring>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
inline float row_sum(const float* x, int64_t C) {
  V acc0 = zero(), acc1 = zero();
  int64_t i = 0;
  for (; i + 2 * W <= C; i += 2 * W) {
    acc0 = add(acc0, load(x + i));
    acc1 = add(acc1, load(x + i + W));
  }
  for (; i + W <= C; i += W) acc0 = add(acc0, load(x + i));
  if (i < C) acc1 = add(acc1, load_partial(x + i, C - i));
  return reduce_add(add(acc0, acc1));
}

inline float row_centered_sumsq(const float* x, float mean, int64_t C) {
  V m = set1(mean), acc0 = zero(), acc1 = zero();
  int64_t i = 0;
  for (; i + 2 * W <= C; i += 2 * W) {
    V d0 = sub(load(x + i), m), d1 = sub(load(x + i + W), m);
    acc0 = fma(d0, d0, acc0);
    acc1 = fma(d1, d1, acc1);
  }
  for (; i + W <= C; i += W) {
    V d = sub(load(x + i), m);
    acc0 = fma(d, d, acc0);
  }
  float s = reduce_add(add(acc0, acc1));
  for (; i < C; i++) s += (x[i] - mean) * (x[i] - mean);
  return s;
}
}  // namespace

// out (N, C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved. Two passes over each row.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps) {
  if (N == 0 || C == 0) return;  // C = 0 is refused by ops.layernorm_forward
  map_rows(out, inp, N, C, [&](int64_t n, const float* x, float* y) {
    float mu = row_sum(x, C) / (float)C;
    float rs = 1.f / std::sqrt(row_centered_sumsq(x, mu, C) / (float)C + eps);
    mean[n] = mu;
    rstd[n] = rs;
    V vm = set1(mu), vr = set1(rs);
    int64_t i = 0;
    for (; i + W <= C; i += W)
      store(y + i, fma(mul(sub(load(x + i), vm), vr), load(weight + i), load(bias + i)));
    if (i < C) {
      int64_t r = C - i;
      store_partial(y + i,
                    fma(mul(sub(load_partial(x + i, r), vm), vr), load_partial(weight + i, r),
                        load_partial(bias + i, r)),
                    r);
    }
  });
}

// dinp (N, C) overwritten; dweight, dbias (C) accumulated. dweight/dbias are summed per block of rows (the
// blocks depend on N alone) and the block sums added in block order, so the result is bit-identical for any
// thread count (the team size may change with the machine's load, runtime.cpp).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  const int nt = (N * C >= kParallelElements) ? threads() : 1;
  const int64_t rows = std::max<int64_t>(16, (N + 63) / 64), nblocks = (N + rows - 1) / rows;  // <= 64 blocks
  static thread_local ScratchBuffer buf;  // the calling thread's, shared by its team
  float* partial = buf.floats((size_t)nblocks * 2 * C);  // [block][dweight | dbias]
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; blk++) {
      float* pw = partial + (size_t)blk * 2 * C;
      float* pb = pw + C;
      std::memset(pw, 0, sizeof(float) * 2 * C);
      const int64_t n0 = blk * rows, n1 = std::min(N, n0 + rows);
      for (int64_t n = n0; n < n1; n++) {
        const float* x = inp + n * C;
        const float* g = dout + n * C;
        if (n + 1 < n1) {
          prefetch_row(x + C, C);
          prefetch_row(g + C, C);
          if (dinp) prefetch_row_for_write(dinp + (n + 1) * C, C);
        }
        const V vm = set1(mean[n]), vr = set1(rstd[n]);
        // pass 1: sums of dnorm and dnorm * norm; parameter partials
        V s_dn = zero(), s_dnn = zero();
        int64_t i = 0;
        for (; i < C; i += W) {
          int64_t r = C - i < W ? C - i : W;
          V xv = loadn(x + i, r);
          V gv = loadn(g + i, r);
          V wv = loadn(weight + i, r);
          V norm = mul(sub(xv, vm), vr);
          V dn = mul(gv, wv);
          s_dn = add(s_dn, dn);
          s_dnn = fma(dn, norm, s_dnn);
          storen(pw + i, fma(gv, norm, loadn(pw + i, r)), r);
          storen(pb + i, add(loadn(pb + i, r), gv), r);
        }
        const V mean_dn = set1(reduce_add(s_dn) / (float)C), mean_dnn = set1(reduce_add(s_dnn) / (float)C);
        // pass 2: dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
        if (dinp) {
          float* dx = dinp + n * C;
          for (i = 0; i < C; i += W) {
            int64_t r = C - i < W ? C - i : W;
            V norm = mul(sub(loadn(x + i, r), vm), vr);
            V dx_v = mul(vr, fnma(norm, mean_dnn, sub(mul(loadn(g + i, r), loadn(weight + i, r)), mean_dn)));
            storen(dx + i, dx_v, r);
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; c++) {
      float sw = 0.f, sb = 0.f;
      for (int64_t blk = 0; blk < nblocks; blk++) {
        sw += partial[(size_t)blk * 2 * C + c];
        sb += partial[(size_t)blk * 2 * C + C + c];
      }
      if (dweight) dweight[c] += sw;
      if (dbias) dbias[c] += sb;
    }
  }
}

namespace {
inline float row_sumsq(const float* x, int64_t C) {
  V acc0 = zero(), acc1 = zero();
  int64_t i = 0;
  for (; i + 2 * W <= C; i += 2 * W) {
    const V a = load(x + i), b = load(x + i + W);
    acc0 = fma(a, a, acc0);
    acc1 = fma(b, b, acc1);
  }
  for (; i < C; i += W) {
    const V a = loadn(x + i, C - i);
    acc0 = fma(a, a, acc0);
  }
  return reduce_add(add(acc0, acc1));
}
}  // namespace

// RMSNorm (Llama): out (N, C) = inp * rstd * weight, rstd (N) = 1 / sqrt(mean(inp^2) + eps) saved.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps) {
  if (N == 0 || C == 0) return;
  parallel_for(N, N * C >= kParallelElements ? threads() : 1, [&](int64_t n) {
    const float* x = inp + n * C;
    float* y = out + n * C;
    const float rs = 1.f / std::sqrt(row_sumsq(x, C) / (float)C + eps);
    rstd[n] = rs;
    const V vr = set1(rs);
    for (int64_t i = 0; i < C; i += W) {
      const int64_t r = std::min<int64_t>(W, C - i);
      storen(y + i, mul(mul(loadn(x + i, r), vr), loadn(weight + i, r)), r);
    }
  });
}

// dinp = rstd * (dnorm - norm * mean(dnorm * norm)), dnorm = dout * weight, norm = inp * rstd; dweight (C)
// accumulated from per-block partial sums added in block order (bit-identical for any thread count).
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  const int nt = (N * C >= kParallelElements) ? threads() : 1;
  const int64_t rows = std::max<int64_t>(16, (N + 63) / 64), nblocks = (N + rows - 1) / rows;
  static thread_local ScratchBuffer buf;
  float* partial = buf.floats((size_t)nblocks * C);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; blk++) {
      float* pw = partial + (size_t)blk * C;
      std::memset(pw, 0, sizeof(float) * C);
      const int64_t n0 = blk * rows, n1 = std::min(N, n0 + rows);
      for (int64_t n = n0; n < n1; n++) {
        const float* x = inp + n * C;
        const float* g = dout + n * C;
        const V vr = set1(rstd[n]);
        V s_dnn = zero();
        for (int64_t i = 0; i < C; i += W) {
          const int64_t r = std::min<int64_t>(W, C - i);
          const V norm = mul(loadn(x + i, r), vr), gv = loadn(g + i, r);
          s_dnn = fma(mul(gv, loadn(weight + i, r)), norm, s_dnn);
          storen(pw + i, fma(gv, norm, loadn(pw + i, r)), r);
        }
        if (dinp) {
          const V mean_dnn = set1(reduce_add(s_dnn) / (float)C);
          float* dx = dinp + n * C;
          for (int64_t i = 0; i < C; i += W) {
            const int64_t r = std::min<int64_t>(W, C - i);
            const V norm = mul(loadn(x + i, r), vr);
            storen(dx + i, mul(vr, fnma(norm, mean_dnn, mul(loadn(g + i, r), loadn(weight + i, r)))), r);
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; c++) {
      float sw = 0.f;
      for (int64_t blk = 0; blk < nblocks; blk++) sw += partial[(size_t)blk * C + c];
      if (dweight) dweight[c] += sw;
    }
  }
}

}  // namespace PT_NS
}  // namespace pt
