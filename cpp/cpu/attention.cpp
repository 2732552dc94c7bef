// Multi-head scaled dot-product attention, fused and tiled with an online softmax (FlashAttention-style).
//
// q (B, NH, Tq, HS), k, v (B, NH, Tk, HS), key_mask (B, Tk) with 1 = attend (or null), out (B, NH, Tq, HS),
// lse (B, NH, Tq) = log-sum-exp of each row's scaled scores, saved for backward (-inf for a fully masked row).
// With bthd every (B, NH, T, HS) array (q, k, v, out and their gradients) is laid out (B, T, NH, HS) instead:
// the (B, T, C) output of a Linear read per head in place, rows of one head NH * HS floats apart.
// causal: key j is visible to query i when j <= i + (Tk - Tq), the bottom-right alignment used with a KV cache
// (identical to the usual lower triangle when Tq == Tk).
//
// Every product is a small register-blocked GEMM over tiles (tile_gemm): scores S = Q K^T for a BQ x BK tile,
// O += P V, and in backward dP = dO V^T, dV += P^T dO, dK += dS^T Q, dQ += dS K. Memory: per thread one tile of
// K and V (transposed and padded), a BQ x BK tile of scores and BQ accumulator rows in forward; in backward
// also padded copies of one head's Q, dO and dQ. Extra memory is O(T * HS) per thread, never O(Tq * Tk).
#include <algorithm>
#include <limits>

#include "simd.h"
#ifdef PT_ATTENTION_AMX
#include "amx_tiles.h"
#endif

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
constexpr int64_t BK = 64;  // keys per tile
constexpr int64_t BQ = 64;  // queries per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
#if defined(PT_ISA_AVX512)
constexpr int TM = 6, TV = 4;  // tile_gemm register block: 6 rows x 4 vectors (24 zmm accumulators)
#elif defined(PT_ISA_AVX2)
constexpr int TM = 6, TV = 2;  // 6 x 2 ymm
#else
constexpr int TM = 4, TV = 2;
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Where head (b, h) of a (B, NH, T, HS) array starts, and how far apart its rows are, in either layout.
struct Heads {
  int64_t NH, HS;
  bool bthd;
  int64_t row_stride() const { return bthd ? NH * HS : HS; }
  int64_t offset(int64_t b, int64_t h, int64_t T) const { return bthd ? (b * T * NH + h) * HS : (b * NH + h) * T * HS; }
};

// C (R x NV*W) [+]= A (R x k) . B (k x NV*W). A element (r, p) at A[r * ars + p * acs]; B row-major (ldb).
template <int R, int NV>
inline void tile_block(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B,
                       int64_t ldb, int64_t k, bool accumulate) {
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = accumulate ? load(C + r * ldc + v * W) : zero();
  for (int64_t p = 0; p < k; p++) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = load(B + p * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const V a = set1(A[r * ars + p * acs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) store(C + r * ldc + v * W, acc[r][v]);
}

template <int NV>
void tile_rows(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t k, bool accumulate) {
  int64_t i = 0;
  for (; i + TM <= m; i += TM) tile_block<TM, NV>(C + i * ldc, ldc, A + i * ars, ars, acs, B, ldb, k, accumulate);
  for (; i < m; i++) tile_block<1, NV>(C + i * ldc, ldc, A + i * ars, ars, acs, B, ldb, k, accumulate);
}

#ifdef PT_ATTENTION_AMX
// The bf16 build (matmul precision "bfloat16"): every product on AMX tiles, operands rounded to bf16, float32
// sums; the softmax and everything else stays float32.
void tile_gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  amx::tile_product(C, ldc, amx::View{A, ars, acs}, amx::View{B, ldb, 1}, m, n, k, accumulate);
}
struct TileUse : amx::TileScope {};
#else
struct TileUse {};  // the float32 builds hold no tile state

// C (m x n) [+]= A (m x k) . B (k x n), n a multiple of W (callers pad their tiles).
void tile_gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t j = 0; j < n; j += TV * W) {
    const int64_t nv = std::min<int64_t>(TV, (n - j) / W);
    if (nv == TV) {
      tile_rows<TV>(C + j, ldc, A, ars, acs, B + j, ldb, m, k, accumulate);
    } else {
      for (int64_t v = 0; v < nv; v++)
        tile_rows<1>(C + j + v * W, ldc, A, ars, acs, B + j + v * W, ldb, m, k, accumulate);
    }
  }
}
#endif

// dst (HS x BK) = the nk x HS rows of X (rs apart) transposed, columns past nk zeroed; W x W blocks in registers
void transpose_tile(float* dst, const float* X, int64_t nk, int64_t HS, int64_t rs) {
  for (int64_t j0 = 0; j0 < BK; j0 += W) {
    for (int64_t d0 = 0; d0 < HS; d0 += W) {
      const int64_t nd = std::min<int64_t>(W, HS - d0);
      V r[W];
      for (int64_t jj = 0; jj < W; jj++) r[jj] = j0 + jj < nk ? loadn(X + (j0 + jj) * rs + d0, nd) : zero();
      transpose(r);
      for (int64_t dd = 0; dd < nd; dd++) store(dst + (d0 + dd) * BK + j0, r[dd]);
    }
  }
}

// dst (n x HSP) = X (n x HS, rows rs apart) with the columns from HS to HSP zeroed
void pad_rows(float* dst, const float* X, int64_t n, int64_t HS, int64_t HSP, int64_t rs) {
  for (int64_t i = 0; i < n; i++) {
    std::memcpy(dst + i * HSP, X + i * rs, HS * sizeof(float));
    std::fill(dst + i * HSP + HS, dst + (i + 1) * HSP, 0.f);
  }
}

// Scores of one tile are masked with kbias (BK): 0 for visible keys, -inf for padded-out keys and for the
// columns past the tile's last key; on tiles that cross the causal diagonal also per row (iota > limit).
struct TileMask {
  alignas(64) float kbias[BK];
  alignas(64) float iota[BK];
  TileMask() {
    for (int64_t j = 0; j < BK; j++) iota[j] = (float)j;
  }
  void set(const uint8_t* key_mask, int64_t j0, int64_t nk) {
    for (int64_t j = 0; j < BK; j++) kbias[j] = (j < nk && (!key_mask || key_mask[j0 + j])) ? 0.f : kNegInf;
  }
  // s = s * scale + kbias, and -inf where j > limit (limit < BK: causal); returns the row max
  float apply(float* s, float scale, int64_t limit) const {
    const V sc = set1(scale), lim = set1((float)limit), ninf = set1(kNegInf);
    V mx = ninf;
    for (int64_t j = 0; j < BK; j += W) {
      V x = fma(load(s + j), sc, load(kbias + j));
      if (limit < BK) x = select_gt(load(iota + j), lim, ninf, x);
      store(s + j, x);
      mx = max(mx, x);
    }
    return reduce_max(mx);
  }
};
}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS,
                       bool causal, float scale, bool bthd) {
  const int64_t HSP = round_up(HS, W);
  const Heads heads{NH, HS, bthd};
  const int64_t rs = heads.row_stride();
  const int64_t offset = Tk - Tq;
  const int64_t nqb = (Tq + BQ - 1) / BQ;
  const int64_t ntasks = B * NH * nqb;
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1) if (ntasks > 1)
  for (int64_t t = 0; t < ntasks; t++) {
    [[maybe_unused]] const TileUse tiles;
    const int64_t bh = t / nqb, qb = t % nqb, b = bh / NH, h = bh % NH;
    const int64_t i0 = qb * BQ, nq = std::min(BQ, Tq - i0);
    const float* Q = q + heads.offset(b, h, Tq) + i0 * rs;
    const float* K = k + heads.offset(b, h, Tk);
    const float* Vv = v + heads.offset(b, h, Tk);
    const uint8_t* mask = key_mask ? key_mask + b * Tk : nullptr;

    static thread_local ScratchBuffer buf;
    static thread_local TileMask tm;
    float* Kt = buf.floats((size_t)HS * BK + BK * HSP + BQ * BK + BQ * HSP + 2 * BQ);
    float* Vp = Kt + HS * BK;
    float* S = Vp + BK * HSP;
    float* O = S + BQ * BK;
    float* m = O + BQ * HSP;
    float* l = m + BQ;
    std::fill(m, m + nq, kNegInf);
    std::fill(l, l + nq, 0.f);
    std::fill(O, O + nq * HSP, 0.f);

    const int64_t kend = causal ? std::min(Tk, i0 + nq + offset) : Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
      const int64_t nk = std::min(BK, kend - j0);
      transpose_tile(Kt, K + j0 * rs, nk, HS, rs);
      pad_rows(Vp, Vv + j0 * rs, nk, HS, HSP, rs);
      tm.set(mask, j0, nk);
      tile_gemm(S, BK, Q, rs, 1, Kt, BK, nq, BK, HS, false);
      for (int64_t i = 0; i < nq; i++) {
        float* s = S + i * BK;
        const int64_t limit = causal ? i0 + i + offset - j0 : BK;
        const float mx = limit < 0 ? kNegInf : tm.apply(s, scale, limit);
        if (mx == kNegInf) {  // nothing visible in this tile: the row adds nothing
          std::fill(s, s + BK, 0.f);
          continue;
        }
        const float m_new = std::max(m[i], mx);
        const float keep = m[i] == kNegInf ? 0.f : std::exp(m[i] - m_new);
        V sum = zero();
        const V mn = set1(m_new);
        for (int64_t j = 0; j < BK; j += W) {
          V p = exp(sub(load(s + j), mn));
          store(s + j, p);
          sum = add(sum, p);
        }
        l[i] = l[i] * keep + reduce_add(sum);
        m[i] = m_new;
        if (keep != 1.f) {
          const V kv = set1(keep);
          for (int64_t d = 0; d < HSP; d += W) store(O + i * HSP + d, mul(load(O + i * HSP + d), kv));
        }
      }
      tile_gemm(O, HSP, S, BK, 1, Vp, HSP, nq, HSP, nk, true);
    }
    for (int64_t i = 0; i < nq; i++) {
      float* dst = out + heads.offset(b, h, Tq) + (i0 + i) * rs;
      if (l[i] > 0.f) {
        const float inv = 1.f / l[i];
        for (int64_t d = 0; d < HS; d++) dst[d] = O[i * HSP + d] * inv;
        lse[bh * Tq + i0 + i] = m[i] + std::log(l[i]);
      } else {
        std::fill(dst, dst + HS, 0.f);
        lse[bh * Tq + i0 + i] = kNegInf;
      }
    }
  }
}

// dq (B, NH, Tq, HS), dk, dv (B, NH, Tk, HS) overwritten. Recomputes the probabilities from lse, tile by tile;
// one task per (batch, head) so no two threads touch the same gradient row.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t Tq, int64_t Tk, int64_t HS, bool causal, float scale, bool bthd) {
  const int64_t HSP = round_up(HS, W);
  const Heads heads{NH, HS, bthd};
  const int64_t rs = heads.row_stride();
  const int64_t offset = Tk - Tq;
  const int64_t ntasks = B * NH;
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1) if (ntasks > 1)
  for (int64_t bh = 0; bh < ntasks; bh++) {
    [[maybe_unused]] const TileUse tiles;
    const int64_t b = bh / NH, h = bh % NH;
    const int64_t q_off = heads.offset(b, h, Tq), k_off = heads.offset(b, h, Tk);
    const float* Q = q + q_off;
    const float* K = k + k_off;
    const float* Vv = v + k_off;
    const float* dO = dout + q_off;
    const float* O = out + q_off;
    const float* L = lse + bh * Tq;
    const uint8_t* mask = key_mask ? key_mask + b * Tk : nullptr;

    static thread_local ScratchBuffer buf;
    static thread_local TileMask tm;
    float* Qp = buf.floats((size_t)3 * Tq * HSP + Tq + 2 * HS * BK + 3 * BK * HSP + 2 * BQ * BK);
    float* dOp = Qp + Tq * HSP;
    float* dQp = dOp + Tq * HSP;
    float* D = dQp + Tq * HSP;  // D_i = dout_i . out_i
    float* Kt = D + Tq;
    float* Vt = Kt + HS * BK;
    float* Kp = Vt + HS * BK;
    float* dKa = Kp + BK * HSP;
    float* dVa = dKa + BK * HSP;
    float* P = dVa + BK * HSP;
    float* dS = P + BQ * BK;
    pad_rows(Qp, Q, Tq, HS, HSP, rs);
    pad_rows(dOp, dO, Tq, HS, HSP, rs);
    std::fill(dQp, dQp + Tq * HSP, 0.f);
    for (int64_t i = 0; i < Tq; i++) {
      float acc = 0.f;
      for (int64_t d = 0; d < HS; d++) acc += dO[i * rs + d] * O[i * rs + d];
      D[i] = acc;
    }

    for (int64_t j0 = 0; j0 < Tk; j0 += BK) {
      const int64_t nk = std::min(BK, Tk - j0);
      transpose_tile(Kt, K + j0 * rs, nk, HS, rs);
      transpose_tile(Vt, Vv + j0 * rs, nk, HS, rs);
      pad_rows(Kp, K + j0 * rs, nk, HS, HSP, rs);
      std::fill(dKa, dKa + 2 * BK * HSP, 0.f);  // dKa and dVa
      tm.set(mask, j0, nk);
      const int64_t i_first = causal ? std::max<int64_t>(0, j0 - offset) : 0;
      for (int64_t i0 = i_first; i0 < Tq; i0 += BQ) {
        const int64_t nq = std::min(BQ, Tq - i0);
        tile_gemm(P, BK, Q + i0 * rs, rs, 1, Kt, BK, nq, BK, HS, false);
        tile_gemm(dS, BK, dO + i0 * rs, rs, 1, Vt, BK, nq, BK, HS, false);
        for (int64_t i = 0; i < nq; i++) {
          float* p = P + i * BK;
          float* ds = dS + i * BK;
          const float li = L[i0 + i];
          const int64_t limit = causal ? i0 + i + offset - j0 : BK;
          if (li == kNegInf || limit < 0) {  // the row sees no key here: no gradient flows
            std::fill(p, p + BK, 0.f);
            std::fill(ds, ds + BK, 0.f);
            continue;
          }
          tm.apply(p, scale, limit);
          const V lv = set1(li), Dv = set1(D[i0 + i]), sc = set1(scale);
          for (int64_t j = 0; j < BK; j += W) {
            const V pj = exp(sub(load(p + j), lv));
            store(p + j, pj);
            store(ds + j, mul(mul(pj, sub(load(ds + j), Dv)), sc));
          }
        }
        tile_gemm(dVa, HSP, P, 1, BK, dOp + i0 * HSP, HSP, nk, HSP, nq, true);   // dV += P^T dO
        tile_gemm(dKa, HSP, dS, 1, BK, Qp + i0 * HSP, HSP, nk, HSP, nq, true);   // dK += dS^T Q
        tile_gemm(dQp + i0 * HSP, HSP, dS, BK, 1, Kp, HSP, nq, HSP, nk, true);   // dQ += dS K
      }
      for (int64_t j = 0; j < nk; j++) {
        std::memcpy(dk + k_off + (j0 + j) * rs, dKa + j * HSP, HS * sizeof(float));
        std::memcpy(dv + k_off + (j0 + j) * rs, dVa + j * HSP, HS * sizeof(float));
      }
    }
    for (int64_t i = 0; i < Tq; i++) std::memcpy(dq + q_off + i * rs, dQp + i * HSP, HS * sizeof(float));
  }
}

}  // namespace PT_NS
}  // namespace pt
