// Linear layers: out = inp @ weight^T + bias, and its backward (dinp, dweight, dbias).
//
// One blocked GEMM serves all three products: C (M, N) [+]= A (M, K) @ B (K, N), where A and B are strided
// views, so transposes cost nothing but a different packing order. The structure is the classic one
// (Goto / BLIS): B is packed into KC x NR micro-panels shared by the threads, each thread packs an MC x KC
// block of A into MR x KC micro-panels, and a register-blocked MR x NR micro-kernel (MR broadcasts of A,
// NR / W vector loads of B per k) accumulates in vector registers. Small-M products (decode, M < 4) skip the
// packing: one dot product per output over contiguous weight rows.
#include <algorithm>
#include <vector>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
#if defined(PT_ISA_AVX512)
constexpr int MR = 12, NV = 2;  // 12 x 32 tile: 24 zmm accumulators
#elif defined(PT_ISA_AVX2)
constexpr int MR = 6, NV = 2;   // 6 x 16 tile: 12 ymm accumulators
#else
constexpr int MR = 4, NV = 2;   // 4 x 8 (SSE2) or 4 x 2 (scalar)
#endif
constexpr int NR = NV * W;
constexpr int64_t KC = 256;        // k-depth of packed panels (an MR x KC and a KC x NR panel stay in L1/L2)
constexpr int64_t MC_MAX = MR * 16;  // rows of A packed per task (~200 KB at KC = 256: in L2)
constexpr int64_t NC = 3072;       // columns of B packed per round (KC x NC floats, 3 MB: in L3)

struct View {  // element (i, j) at p[i * rs + j * cs]
  const float* p;
  int64_t rs, cs;
  const float* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};

template <class T>
T* scratch(std::vector<T>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// dst: ceil(mc / MR) panels, each kc x MR (k-major), rows past mc zero-filled.
void pack_A(float* dst, View A, int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
  for (int64_t p = 0; p < mc; p += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - p);
    float* d = dst + p * kc;
    if (A.rs == 1) {  // MR rows are contiguous for each k
      for (int64_t k = 0; k < kc; k++) {
        const float* s = A.at(i0 + p, k0 + k);
        for (int64_t r = 0; r < mr; r++) d[k * MR + r] = s[r];
        for (int64_t r = mr; r < MR; r++) d[k * MR + r] = 0.f;
      }
    } else {
      for (int64_t r = 0; r < MR; r++) {
        if (r < mr) {
          const float* s = A.at(i0 + p + r, k0);
          for (int64_t k = 0; k < kc; k++) d[k * MR + r] = s[k * A.cs];
        } else {
          for (int64_t k = 0; k < kc; k++) d[k * MR + r] = 0.f;
        }
      }
    }
  }
}

// dst: panels [p0, p1) of NR columns each, kc x NR (k-major), columns past nc zero-filled.
void pack_B(float* dst, View B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; p++) {
    const int64_t j = p * NR, nr = std::min<int64_t>(NR, nc - j);
    float* d = dst + p * kc * NR;
    if (B.cs == 1) {  // row-major B: NR contiguous floats per k
      for (int64_t k = 0; k < kc; k++) {
        const float* s = B.at(k0 + k, j0 + j);
        for (int64_t v = 0; v < NV; v++) {
          int64_t r = nr - v * W;
          store(d + k * NR + v * W, r >= W ? load(s + v * W) : r > 0 ? load_partial(s + v * W, r) : zero());
        }
      }
    } else {  // B^T row-major (weight in forward): each column is contiguous along k
      for (int64_t c = 0; c < NR; c++) {
        if (c < nr) {
          const float* s = B.at(k0, j0 + j + c);
          for (int64_t k = 0; k < kc; k++) d[k * NR + c] = s[k * B.rs];
        } else {
          for (int64_t k = 0; k < kc; k++) d[k * NR + c] = 0.f;
        }
      }
    }
  }
}

// C (mr x nr, leading dim ldc) = or += Ap (kc x MR) . Bp (kc x NR); bias (nr) added when overwriting.
inline void micro_kernel(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int64_t mr,
                         int64_t nr, bool overwrite, const float* bias) {
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = zero();
  for (int64_t k = 0; k < kc; k++) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = load(Bp + k * NR + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
      V a = set1(Ap[k * MR + r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = fma(a, b[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < mr; r++) {
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      const int64_t n = nr - v * W;
      if (n <= 0) break;
      V x = acc[r][v];
      if (overwrite) {
        if (bias) x = add(x, loadn(bias + v * W, n));
      } else {
        x = add(x, loadn(c + v * W, n));
      }
      storen(c + v * W, x, n);
    }
  }
}

// C (M, N) = A @ B (+ bias), or C += A @ B when accumulate.
void gemm(int64_t M, int64_t N, int64_t K, View A, View B, float* C, int64_t ldc, bool accumulate,
          const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = bias ? bias[j] : 0.f;
    return;
  }
  const int nt = threads();
  // A rows per task: as many as fit in L2, but at least 2 tasks per thread when M allows.
  int64_t mblocks = std::max<int64_t>((M + MC_MAX - 1) / MC_MAX, std::min<int64_t>(2 * nt, (M + MR - 1) / MR));
  int64_t mc = ((M + mblocks - 1) / mblocks + MR - 1) / MR * MR;
  mblocks = (M + mc - 1) / mc;

  static thread_local std::vector<float> b_buf;
  float* Bp = scratch(b_buf, (size_t)KC * ((std::min(N, NC) + NR - 1) / NR * NR));

  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    const int64_t npanels = (nc + NR - 1) / NR;
    // split the columns too when there are few row blocks, so every thread has work
    const int64_t nsplit = std::min<int64_t>(npanels, std::max<int64_t>(1, (2 * nt + mblocks - 1) / mblocks));
    const int64_t ntasks = mblocks * nsplit;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool overwrite = !accumulate && pc == 0;
#pragma omp parallel num_threads(nt) if (M * N * kc > 32768)
      {
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; p++) pack_B(Bp, B, pc, kc, jc, nc, p, p + 1);
        static thread_local std::vector<float> a_buf;
        float* Ap = scratch(a_buf, (size_t)mc * KC + MR * KC);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
          const int64_t ib = t / nsplit, js = t % nsplit;
          const int64_t i0 = ib * mc, mcur = std::min(mc, M - i0);
          const int64_t p0 = npanels * js / nsplit, p1 = npanels * (js + 1) / nsplit;
          pack_A(Ap, A, i0, mcur, pc, kc);
          for (int64_t p = p0; p < p1; p++) {
            const int64_t j = p * NR, nr = std::min<int64_t>(NR, nc - j);
            const float* bias_j = bias ? bias + jc + j : nullptr;
            for (int64_t ir = 0; ir < mcur; ir += MR)
              micro_kernel(kc, Ap + ir * kc, Bp + p * kc * NR, C + (i0 + ir) * ldc + jc + j, ldc,
                           std::min<int64_t>(MR, mcur - ir), nr, overwrite, bias_j);
          }
        }
      }
    }
  }
}

// out (M, OC) = inp (M, IC) @ weight (OC, IC)^T + bias, for M < 4: one pass over each weight row.
void matmul_forward_small_m(float* out, const float* inp, const float* weight, const float* bias, int64_t M,
                            int64_t IC, int64_t OC) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (OC * IC > 65536)
  for (int64_t o = 0; o < OC; o++) {
    const float* w = weight + o * IC;
    V acc[4] = {zero(), zero(), zero(), zero()};
    for (int64_t i = 0; i < IC; i += W) {
      const int64_t r = std::min<int64_t>(W, IC - i);
      const V wv = loadn(w + i, r);
      for (int64_t m = 0; m < M; m++) acc[m] = fma(wv, loadn(inp + m * IC + i, r), acc[m]);
    }
    for (int64_t m = 0; m < M; m++) out[m * OC + o] = reduce_add(acc[m]) + (bias ? bias[o] : 0.f);
  }
}
}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC) {
  if (N < 4) return matmul_forward_small_m(out, inp, weight, bias, N, IC, OC);
  // B (IC, OC) = weight^T: element (k, j) at weight[j * IC + k]
  gemm(N, OC, IC, View{inp, IC, 1}, View{weight, 1, IC}, out, OC, false, bias);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t IC, int64_t OC) {
  // dinp (N, IC) = dout (N, OC) @ weight (OC, IC)
  if (dinp) gemm(N, IC, OC, View{dout, OC, 1}, View{weight, IC, 1}, dinp, IC, false, nullptr);
  // dweight (OC, IC) += dout^T (OC, N) @ inp (N, IC)
  if (dweight) gemm(OC, IC, N, View{dout, 1, OC}, View{inp, IC, 1}, dweight, IC, true, nullptr);
  // dbias (OC) += column sums of dout; threads split the columns
  if (dbias) {
    const int64_t slice = 16 * W;
#pragma omp parallel for num_threads(threads()) schedule(static) if (N * OC > 65536)
    for (int64_t j0 = 0; j0 < OC; j0 += slice) {
      const int64_t j1 = std::min(OC, j0 + slice);
      for (int64_t j = j0; j < j1; j += W) {
        const int64_t r = std::min<int64_t>(W, j1 - j);
        V acc = zero();
        for (int64_t n = 0; n < N; n++) acc = add(acc, loadn(dout + n * OC + j, r));
        storen(dbias + j, add(loadn(dbias + j, r), acc), r);
      }
    }
  }
}

}  // namespace PT_NS
}  // namespace pt
