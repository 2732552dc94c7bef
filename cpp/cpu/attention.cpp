// Multi-head scaled dot-product attention, fused and tiled with an online softmax (FlashAttention-style).
//
// q (B, NH, Tq, HS), k, v (B, NH, Tk, HS), key_mask (B, Tk) with 1 = attend (or null), out (B, NH, Tq, HS),
// lse (B, NH, Tq) = log-sum-exp of each row's scaled scores, saved for backward (-inf for a fully masked row).
// causal: key j is visible to query i when j <= i + (Tk - Tq), the bottom-right alignment used with a KV cache
// (identical to the usual lower triangle when Tq == Tk).
// Memory: per thread a BK-key tile of K (and V) transposed, one row of scores and BQ accumulator rows, so
// the extra memory is O(BK * HS + BQ * HS) per thread, plus Tq floats per head in backward: never Tq * Tk.
#include <algorithm>
#include <limits>
#include <vector>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
constexpr int64_t BK = 64;  // keys per tile
constexpr int64_t BQ = 32;  // queries per forward task
constexpr int KV = (int)(BK / W);  // vectors per row of scores
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Visibility {
  const uint8_t* key_mask;  // (Tk) of this batch row, or null
  bool causal;
  int64_t offset;  // Tk - Tq
  bool operator()(int64_t i, int64_t j) const {
    if (key_mask && !key_mask[j]) return false;
    return !causal || j <= i + offset;
  }
  // last key (exclusive) that any of queries [i0, i1) may see
  int64_t key_end(int64_t i1, int64_t Tk) const { return causal ? std::min(Tk, i1 - 1 + offset + 1) : Tk; }
};

// KT (HS x BK) = X[j0 : j0 + nk, :]^T, columns past nk zeroed
void transpose_tile(float* KT, const float* X, int64_t nk, int64_t HS) {
  for (int64_t d = 0; d < HS; d++) {
    float* row = KT + d * BK;
    for (int64_t j = 0; j < nk; j++) row[j] = X[j * HS + d];
    for (int64_t j = nk; j < BK; j++) row[j] = 0.f;
  }
}

// s (BK) = x (HS) . KT (HS x BK) * scale
inline void row_times_tile(float* s, const float* x, const float* KT, int64_t HS, float scale) {
  V acc[KV];
#pragma GCC unroll 16
  for (int v = 0; v < KV; v++) acc[v] = zero();
  for (int64_t d = 0; d < HS; d++) {
    const V xd = set1(x[d]);
    const float* kt = KT + d * BK;
#pragma GCC unroll 16
    for (int v = 0; v < KV; v++) acc[v] = fma(xd, load(kt + v * W), acc[v]);
  }
  const V sc = set1(scale);
#pragma GCC unroll 16
  for (int v = 0; v < KV; v++) store(s + v * W, mul(acc[v], sc));
}

// y (HS) = y * keep + sum_j p[j] * X[j, :] for j < nk (X rows of length HS); four vectors at a time
inline void accumulate_rows(float* y, float keep, const float* p, const float* X, int64_t nk, int64_t HS) {
  const V kv = set1(keep);
  for (int64_t d0 = 0; d0 < HS; d0 += 4 * W) {
    V acc[4];
    int64_t rem[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
      rem[u] = HS - d0 - u * W;
      acc[u] = rem[u] > 0 ? mul(loadn(y + d0 + u * W, rem[u]), kv) : zero();
    }
    for (int64_t j = 0; j < nk; j++) {
      const V pj = set1(p[j]);
      const float* x = X + j * HS + d0;
#pragma GCC unroll 4
      for (int u = 0; u < 4; u++)
        if (rem[u] > 0) acc[u] = fma(pj, loadn(x + u * W, rem[u]), acc[u]);
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++)
      if (rem[u] > 0) storen(y + d0 + u * W, acc[u], rem[u]);
  }
}

// y (HS) += a * x (HS)
inline void axpy(float* y, float a, const float* x, int64_t HS) {
  const V av = set1(a);
  for (int64_t d = 0; d < HS; d += W) {
    const int64_t r = std::min<int64_t>(W, HS - d);
    storen(y + d, fma(av, loadn(x + d, r), loadn(y + d, r)), r);
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  V acc = zero();
  for (int64_t d = 0; d < n; d += W) {
    const int64_t r = std::min<int64_t>(W, n - d);
    acc = fma(loadn(a + d, r), loadn(b + d, r), acc);
  }
  return reduce_add(acc);
}
}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS,
                       bool causal, float scale) {
  const int64_t nqb = (Tq + BQ - 1) / BQ;
  const int64_t ntasks = B * NH * nqb;
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1) if (ntasks > 1)
  for (int64_t t = 0; t < ntasks; t++) {
    const int64_t bh = t / nqb, qb = t % nqb, b = bh / NH;
    const int64_t i0 = qb * BQ, nq = std::min(BQ, Tq - i0);
    const float* Q = q + (bh * Tq + i0) * HS;
    const float* K = k + bh * Tk * HS;
    const float* Vv = v + bh * Tk * HS;
    float* O = out + (bh * Tq + i0) * HS;
    float* L = lse + bh * Tq + i0;
    const Visibility visible{key_mask ? key_mask + b * Tk : nullptr, causal, Tk - Tq};

    static thread_local ScratchBuffer buf;
    float* KT = buf.floats((size_t)HS * BK + BK + 2 * BQ);
    float* s = KT + HS * BK;
    float* m = s + BK;
    float* l = m + BQ;
    std::fill(m, m + nq, kNegInf);
    std::fill(l, l + nq, 0.f);
    std::fill(O, O + nq * HS, 0.f);  // the output rows double as accumulators

    const int64_t kend = visible.key_end(i0 + nq, Tk);
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
      const int64_t nk = std::min(BK, kend - j0);
      transpose_tile(KT, K + j0 * HS, nk, HS);
      for (int64_t i = 0; i < nq; i++) {
        row_times_tile(s, Q + i * HS, KT, HS, scale);
        float mx = kNegInf;
        for (int64_t j = 0; j < nk; j++) {
          if (!visible(i0 + i, j0 + j)) s[j] = kNegInf;
          mx = std::max(mx, s[j]);
        }
        if (mx == kNegInf) continue;  // nothing visible in this tile
        const float m_new = std::max(m[i], mx);
        float sum = 0.f;
        for (int64_t j = 0; j < nk; j += W) {
          const int64_t r = std::min<int64_t>(W, nk - j);
          V p = keep_first(exp(sub(loadn(s + j, r), set1(m_new))), r);
          storen(s + j, p, r);
          sum += reduce_add(p);
        }
        const float keep = m[i] == kNegInf ? 0.f : std::exp(m[i] - m_new);
        l[i] = l[i] * keep + sum;
        m[i] = m_new;
        accumulate_rows(O + i * HS, keep, s, Vv + j0 * HS, nk, HS);
      }
    }
    for (int64_t i = 0; i < nq; i++) {
      if (l[i] > 0.f) {
        const V inv = set1(1.f / l[i]);
        for (int64_t d = 0; d < HS; d += W) {
          const int64_t r = std::min<int64_t>(W, HS - d);
          storen(O + i * HS + d, mul(loadn(O + i * HS + d, r), inv), r);
        }
        L[i] = m[i] + std::log(l[i]);
      } else {
        std::fill(O + i * HS, O + (i + 1) * HS, 0.f);
        L[i] = kNegInf;
      }
    }
  }
}

// dq (B, NH, Tq, HS), dk, dv (B, NH, Tk, HS) overwritten. Recomputes the probabilities from lse, tile by tile;
// one task per (batch, head) so no two threads touch the same gradient row.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t Tq, int64_t Tk, int64_t HS, bool causal, float scale) {
  const int64_t ntasks = B * NH;
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1) if (ntasks > 1)
  for (int64_t bh = 0; bh < ntasks; bh++) {
    const int64_t b = bh / NH;
    const float* Q = q + bh * Tq * HS;
    const float* K = k + bh * Tk * HS;
    const float* Vv = v + bh * Tk * HS;
    const float* dO = dout + bh * Tq * HS;
    const float* O = out + bh * Tq * HS;
    const float* L = lse + bh * Tq;
    float* dQ = dq + bh * Tq * HS;
    float* dK = dk + bh * Tk * HS;
    float* dV = dv + bh * Tk * HS;
    const Visibility visible{key_mask ? key_mask + b * Tk : nullptr, causal, Tk - Tq};

    static thread_local ScratchBuffer buf;
    float* KT = buf.floats((size_t)2 * HS * BK + 3 * BK + Tq);
    float* VT = KT + HS * BK;
    float* p = VT + HS * BK;
    float* dp = p + BK;
    float* ds = dp + BK;
    float* D = ds + BK;  // D_i = dout_i . out_i
    for (int64_t i = 0; i < Tq; i++) D[i] = dot(dO + i * HS, O + i * HS, HS);
    std::fill(dQ, dQ + Tq * HS, 0.f);
    std::fill(dK, dK + Tk * HS, 0.f);
    std::fill(dV, dV + Tk * HS, 0.f);

    for (int64_t j0 = 0; j0 < Tk; j0 += BK) {
      const int64_t nk = std::min(BK, Tk - j0);
      transpose_tile(KT, K + j0 * HS, nk, HS);
      transpose_tile(VT, Vv + j0 * HS, nk, HS);
      const int64_t i_start = causal ? std::max<int64_t>(0, j0 - visible.offset) : 0;
      for (int64_t i = i_start; i < Tq; i++) {
        if (L[i] == kNegInf) continue;  // fully masked row: no gradient flows
        row_times_tile(p, Q + i * HS, KT, HS, scale);
        row_times_tile(dp, dO + i * HS, VT, HS, 1.f);
        const V li = set1(L[i]), Di = set1(D[i]), sc = set1(scale);
        for (int64_t j = 0; j < nk; j += W) {
          const int64_t r = std::min<int64_t>(W, nk - j);
          V pj = keep_first(exp(sub(loadn(p + j, r), li)), r);
          storen(p + j, pj, r);
          storen(ds + j, mul(mul(pj, sub(loadn(dp + j, r), Di)), sc), r);
        }
        for (int64_t j = 0; j < nk; j++)
          if (!visible(i, j0 + j)) p[j] = ds[j] = 0.f;
        for (int64_t j = 0; j < nk; j++) {
          if (p[j] == 0.f && ds[j] == 0.f) continue;
          axpy(dV + (j0 + j) * HS, p[j], dO + i * HS, HS);
          axpy(dK + (j0 + j) * HS, ds[j], Q + i * HS, HS);
        }
        accumulate_rows(dQ + i * HS, 1.f, ds, K + j0 * HS, nk, HS);
      }
    }
  }
}

}  // namespace PT_NS
}  // namespace pt
