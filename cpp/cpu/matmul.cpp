// Linear layers: out = inp @ weight^T + bias, and its backward (dinp, dweight, dbias).
//
// One blocked GEMM serves all three products: C (M, N) [+]= A (M, K) @ B (K, N), where A and B are strided
// views, so transposes cost nothing but a different packing order. The structure follows Goto / BLIS with the
// roles chosen for row-major C: vectors run along N. A task is a block of columns (and rows): it packs its
// KC x NB block of B (sized for its L2) into NR-wide micro-panels, then walks the rows MR at a time, reading
// each MR x KC sliver of A in place or from a packed MC x KC block (L2), and sweeps the sliver (now in L1)
// across the B micro-panels streamed from L2 with a register-blocked MR x NR micro-kernel (MR broadcasts of
// A, NR / W vector loads of B per k). Threads split the rows when C is taller than wide, else the columns.
// Small-M products (decode, M < 4) skip the packing: one dot product per output over contiguous weight rows.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "gemm.h"
#include "pytransformer/kernels.h"
#include "quant/quant.h"

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
constexpr int64_t KC = 384;      // max k-depth of packed panels: an MR x KC sliver of A is 18 KB (L1)
constexpr int64_t NB_MAX = 1024; // columns of B packed per block: KC x NB_MAX floats = 1 MB (half an L2)
constexpr int64_t MC = 16 * MR;  // rows of A packed at a time (when packed): MC x KC floats, 288 KB on AVX-512

struct View {  // element (i, j) at p[i * rs + j * cs]
  const float* p;
  int64_t rs, cs;
  const float* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};

// dst = rows [i0, i0 + mc) of A over k in [k0, k0 + kc) as consecutive MR-row slivers, each kc x MR
// (k-major); rows past mc zero-filled.
void pack_A(float* dst, View A, int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
  const int64_t ns = (mc + MR - 1) / MR;
  if (A.rs == 1) {  // A^T (dweight's dout^T): the mc rows are contiguous for each k, so each k reads one
                    // segment whole; sliver by sliver, every cache line was fetched (from L3) once per sliver
    for (int64_t k = 0; k < kc; k++) {
      const float* s = A.at(i0, k0 + k);
      for (int64_t sl = 0; sl < ns; sl++) {
        const int64_t r0 = sl * MR, mr = std::min<int64_t>(MR, mc - r0);
        float* d = dst + sl * kc * MR + k * MR;
        for (int64_t r = 0; r < MR; r += W) {  // masked vectors: lanes past mr load as zero
          const int64_t n = std::min<int64_t>(W, MR - r);
          storen(d + r, mr > r ? loadn(s + r0 + r, std::min(n, mr - r)) : zero(), n);
        }
      }
    }
  } else {
    for (int64_t sl = 0; sl < ns; sl++) {
      float* d = dst + sl * kc * MR;
      for (int64_t r = 0; r < MR; r++) {
        const int64_t i = sl * MR + r;
        if (i < mc) {
          const float* s = A.at(i0 + i, k0);
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
    } else {  // B^T row-major (the forward's weight, B.rs == 1): each column is contiguous along k
      // W columns at a time, transposed W x W in registers into the panel's rows (scalar gathers of 32
      // column streams cost 8% of the forward GEMM)
      for (int64_t g = 0; g < NV; g++)
        transpose_rows(d + g * W, NR, B.at(k0, j0 + j + g * W), B.cs, nr - g * W, kc, W);
    }
  }
}

// C (mr x nr, leading dim ldc) = or += A (MR x kc) . Bp (kc x NR); bias (nr) added when overwriting.
// A element (r, k) at A[r * a_rs + k * a_cs]: a packed sliver (a_rs = 1, a_cs = MR), or rows of a row-major
// matrix read in place (a_rs = lda, a_cs = 1), which saves transposing them into a sliver.
template <bool kPacked>
inline void micro_kernel(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C, int64_t ldc,
                         int64_t mr, int64_t nr, bool overwrite, const float* bias) {
  // the C tile is read (or written) after the k loop: ask for its lines now, so they arrive from L3 meanwhile
  for (int64_t r = 0; r < mr; r++)
    for (int64_t c = 0; c < nr; c += 64 / sizeof(float)) __builtin_prefetch(C + r * ldc + c, 1, 3);
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
      V a = set1(kPacked ? A[k * MR + r] : A[r * lda + k]);
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

// C (M, N) = A @ B (+ bias), or C += A @ B when accumulate. B reaches the panels through pack(dst, k0, kc, j0, nc,
// np): pack_B's layout of B (k0 .. k0 + kc, j0 .. j0 + nc) as np panels. Column blocks start at multiples of
// `align` columns (a weight's quantisation block: whole blocks per task).
template <class PackB>
void gemm_packed(int64_t M, int64_t N, int64_t K, View A, PackB pack, int64_t align, float* C, int64_t ldc,
                 bool accumulate, const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = bias ? bias[j] : 0.f;
    return;
  }
  const int64_t nt = threads();
  const int64_t npanels = (N + NR - 1) / NR;
  // column blocks: at most NB_MAX wide, a multiple of the thread count when there are enough panels
  int64_t ncb = (N + NB_MAX - 1) / NB_MAX;
  // Threads split the rows when C is taller than wide: each then reads half of A (the larger operand) and packs
  // all of B, instead of every thread reading all of A (+5-9% on the (4096 x 384) products of a GPT training
  // step). Otherwise the columns, in a multiple of the thread count of blocks.
  const bool rows_first = M > N && (M + MR - 1) / MR >= nt;
  if (!rows_first) ncb = std::min(npanels, (ncb + nt - 1) / nt * nt);
  const int64_t group = std::max<int64_t>(1, align / NR);            // panels per quantisation block
  const int64_t nb = ((npanels + ncb - 1) / ncb + group - 1) / group * group * NR;  // whole micro-panels
  ncb = (N + nb - 1) / nb;
  // row blocks: one per thread, or as many as the column blocks alone leave threads unfed
  const int64_t rows_panels = (M + MR - 1) / MR;
  const int64_t nrb = rows_first ? nt : std::min(rows_panels, (nt + ncb - 1) / ncb);
  const int64_t mb = (rows_panels + nrb - 1) / nrb * MR;
  const int64_t ntasks = ncb * ((M + mb - 1) / mb);
  const int64_t nrb_real = (M + mb - 1) / mb;

  parallel_for(ntasks, M * N * K >= kParallelMacs ? (int)nt : 1, [&](int64_t t) {
    // consecutive tasks (one thread's share under the static schedule) keep to one row block when splitting rows
    const int64_t jb = rows_first ? t % ncb : t / nrb_real, ib = rows_first ? t / ncb : t % nrb_real;
    const int64_t j0 = jb * nb, ncur = std::min(nb, N - j0);
    const int64_t i0 = ib * mb, mcur = std::min(mb, M - i0);
    const int64_t np = (ncur + NR - 1) / NR;
    static thread_local ScratchBuffer b_buf, a_buf;
    float* Bp = b_buf.floats((size_t)KC * np * NR);
    float* Ap = a_buf.floats((size_t)KC * MC);
    // equal k-blocks of at most KC (K = 384 is one block, 512 two of 256): no thin last block
    const int64_t nkb = (K + KC - 1) / KC, kstep = (K + nkb - 1) / nkb;
    for (int64_t pc = 0; pc < K; pc += kstep) {
      const int64_t kc = std::min(kstep, K - pc);
      const bool overwrite = !accumulate && pc == 0;
      pack(Bp, pc, kc, j0, ncur, np);
      for (int64_t ic = 0; ic < mcur; ic += MC) {
        const int64_t mc = std::min(MC, mcur - ic), ns = (mc + MR - 1) / MR;
        // full slivers of a row-major A are read in place, others packed (zero-padded rows); so are all slivers
        // of A^T and of rows a multiple of 4 KB apart (K = 1024, 3072, ...: in place all MR rows share L1 sets)
        const bool pack_all = A.cs != 1 || (A.rs * sizeof(float)) % 4096 == 0;
        if (pack_all)
          pack_A(Ap, A, i0 + ic, mc, pc, kc);
        else if (mc % MR)  // the last, partial sliver
          pack_A(Ap + (ns - 1) * kc * MR, A, i0 + ic + (ns - 1) * MR, mc % MR, pc, kc);
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const int64_t mr = std::min<int64_t>(MR, mc - ir);
          const bool in_place = !pack_all && mr == MR;
          const float* a = in_place ? A.at(i0 + ic + ir, pc) : Ap + (ir / MR) * kc * MR;
          float* c_row = C + (i0 + ic + ir) * ldc + j0;
          for (int64_t p = 0; p < np; p++) {
            const int64_t j = p * NR, nr = std::min<int64_t>(NR, ncur - j);
            const float* bias_j = bias ? bias + j0 + j : nullptr;
            if (in_place)
              micro_kernel<false>(kc, a, A.rs, Bp + p * kc * NR, c_row + j, ldc, mr, nr, overwrite, bias_j);
            else
              micro_kernel<true>(kc, a, 0, Bp + p * kc * NR, c_row + j, ldc, mr, nr, overwrite, bias_j);
          }
        }
      }
    }
  });
}

void gemm(int64_t M, int64_t N, int64_t K, View A, View B, float* C, int64_t ldc, bool accumulate,
          const float* bias) {
  const auto pack = [B](float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t np) {
    pack_B(dst, B, k0, kc, j0, nc, 0, np);
  };
  gemm_packed(M, N, K, A, pack, 1, C, ldc, accumulate, bias);
}

// out (M, OC) = inp (M, IC) @ weight (OC, IC)^T + bias, for M < 4: one pass over each weight row. Four output
// channels at a time, two accumulators each, so 8 (M = 1) to 24 (M = 3) independent FMA chains hide the latency.
// The weight's element: float32, or bfloat16 bits widened in registers (inference weights, half the bytes).
inline V loadw(const float* p) { return load(p); }
inline V loadw(const uint16_t* p) { return load_bf16(p); }
inline V loadwn(const float* p, int64_t r) { return loadn(p, r); }
inline V loadwn(const uint16_t* p, int64_t r) { return loadn_bf16(p, r); }
inline V loadw(const int8_t* p) { return load_i8(p); }
inline V loadwn(const int8_t* p, int64_t r) { return loadn_i8(p, r); }

// Output channels o0 .. o0 + no (no <= 4); their weight rows start at row w0 of weight (w0 = o0, or 0 for rows
// widened into scratch).
template <int M, class WT>
void small_m_block(float* out, const float* inp, const WT* weight, const float* scale, const float* bias, int64_t IC,
                   int64_t OC, int64_t o0, int64_t no, int64_t w0) {
  V acc[4][M][2];
  for (int u = 0; u < 4; u++)
    for (int m = 0; m < M; m++) acc[u][m][0] = acc[u][m][1] = zero();
  const WT* w[4];
  for (int u = 0; u < 4; u++) w[u] = weight + (w0 + (u < no ? u : 0)) * IC;
  int64_t i = 0;
  for (; i + 2 * W <= IC; i += 2 * W) {
    V x[M][2];
#pragma GCC unroll 4
    for (int m = 0; m < M; m++) {
      x[m][0] = load(inp + m * IC + i);
      x[m][1] = load(inp + m * IC + i + W);
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
      const V w0 = loadw(w[u] + i), w1 = loadw(w[u] + i + W);
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        acc[u][m][0] = fma(w0, x[m][0], acc[u][m][0]);
        acc[u][m][1] = fma(w1, x[m][1], acc[u][m][1]);
      }
    }
  }
  for (; i < IC; i += W) {
    const int64_t r = std::min<int64_t>(W, IC - i);
    for (int u = 0; u < 4; u++) {
      const V wv = loadwn(w[u] + i, r);
      for (int m = 0; m < M; m++) acc[u][m][0] = fma(wv, loadn(inp + m * IC + i, r), acc[u][m][0]);
    }
  }
  for (int u = 0; u < no; u++)
    for (int m = 0; m < M; m++)
      out[m * OC + o0 + u] = reduce_add(add(acc[u][m][0], acc[u][m][1])) * (scale ? scale[o0 + u] : 1.f) +
                             (bias ? bias[o0 + u] : 0.f);
}

template <class WT>
inline void small_m_dispatch(float* out, const float* inp, const WT* weight, const float* scale, const float* bias,
                             int64_t M, int64_t IC, int64_t OC, int64_t o0, int64_t no, int64_t w0) {
  if (M == 1)  // M is 1, 2 or 3 here
    small_m_block<1>(out, inp, weight, scale, bias, IC, OC, o0, no, w0);
  else if (M == 2)
    small_m_block<2>(out, inp, weight, scale, bias, IC, OC, o0, no, w0);
  else
    small_m_block<3>(out, inp, weight, scale, bias, IC, OC, o0, no, w0);
}

template <class WT>
void matmul_forward_small_m(float* out, const float* inp, const WT* weight, const float* scale, const float* bias,
                            int64_t M, int64_t IC, int64_t OC) {
  if (M <= 0) return;
  const int64_t nblocks = (OC + 3) / 4;
  parallel_for(nblocks, M * OC * IC >= kParallelGemvMacs ? threads() : 1, [&](int64_t blk) {
    const int64_t o0 = blk * 4, no = std::min<int64_t>(4, OC - o0);
    small_m_dispatch(out, inp, weight, scale, bias, M, IC, OC, o0, no, o0);
  });
}
}  // namespace

// B's row segments widened one at a time into L1 and laid out as pack_B lays them (gemm.h).
void gemm_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, RowSource B, float* C, int64_t ldc) {
  const auto pack = [&B](float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t np) {
    static thread_local ScratchBuffer row_buf;
    float* row = row_buf.floats((size_t)np * NR);
    std::fill(row + nc, row + np * NR, 0.f);  // (columns past nc: zero, as pack_B pads them)
    for (int64_t k = 0; k < kc; k++) {
      B.fill(B.source, k0 + k, j0, nc, row);
      for (int64_t p = 0; p < np; p++)
        for (int v = 0; v < NV; v++) store(dst + p * kc * NR + k * NR + v * W, load(row + p * NR + v * W));
    }
  };
  gemm_packed(M, N, K, View{A, lda, 1}, pack, B.align, C, ldc, false, nullptr);
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC) {
  if (N == 0 || OC == 0) return;
  if (N < 4) return matmul_forward_small_m(out, inp, weight, nullptr, bias, N, IC, OC);
  // B (IC, OC) = weight^T: element (k, j) at weight[j * IC + k]
  gemm(N, OC, IC, View{inp, IC, 1}, View{weight, 1, IC}, out, OC, false, bias);
}

namespace {
// Many rows of a narrow weight (prefill, batches): blocks of weight rows widened into float32 scratch (about
// 4 MB; widen(row, dst) writes one row) and the float32 GEMM run on each block.
template <class Widen>
void widened_gemm(float* out, const float* inp, const float* bias, int64_t N, int64_t IC, int64_t OC, Widen widen) {
  const int64_t rows = std::max<int64_t>(16, (int64_t(1) << 20) / std::max<int64_t>(IC, 1));
  static thread_local ScratchBuffer buf;
  float* wf = buf.floats((size_t)std::min(rows, OC) * IC);
  for (int64_t j0 = 0; j0 < OC; j0 += rows) {
    const int64_t nr = std::min(rows, OC - j0);
    parallel_for(nr, nr * IC >= kParallelElements ? threads() : 1, [&](int64_t r) {
      widen(j0 + r, wf + r * IC);
    });
    gemm(N, nr, IC, View{inp, IC, 1}, View{wf, 1, IC}, out + j0, OC, false, bias ? bias + j0 : nullptr);
  }
}

// Narrow weights (inference): few rows (decoding) read them straight into registers, so a token streams their
// bytes only; more rows go through widened_gemm (the row scale applied while widening).
template <class WT>
void narrow_weight_forward(float* out, const float* inp, const WT* weight, const float* scale, const float* bias,
                           int64_t N, int64_t IC, int64_t OC) {
  if (N == 0 || OC == 0) return;
  if (N < 4) return matmul_forward_small_m(out, inp, weight, scale, bias, N, IC, OC);
  widened_gemm(out, inp, bias, N, IC, OC, [&](int64_t row, float* dst) {
    const WT* src = weight + row * IC;
    const V s = set1(scale ? scale[row] : 1.f);
    for (int64_t i = 0; i < IC; i += W) storen(dst + i, mul(loadwn(src + i, IC - i), s), IC - i);
  });
}
}  // namespace

// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias, the weight stored as bfloat16 bits: widened exactly,
// float32 sums.
void matmul_w16_forward(float* out, const float* inp, const uint16_t* weight, const float* bias, int64_t N,
                        int64_t IC, int64_t OC) {
  narrow_weight_forward(out, inp, weight, nullptr, bias, N, IC, OC);
}

// The same with int8 weights and a float32 scale per output row: out = (inp @ weight^T) * scale + bias.
void matmul_w8_forward(float* out, const float* inp, const int8_t* weight, const float* scale, const float* bias,
                       int64_t N, int64_t IC, int64_t OC) {
  narrow_weight_forward(out, inp, weight, scale, bias, N, IC, OC);
}


namespace {

// out[m, o] for the output rows o of [o0, o1) of M inputs: each weight row's 32-value blocks read in registers as
// their quantised values v (Block32::values) and multiplied with every input row as they are read, sum v x over
// the block before one multiply by the block's d (one vector operation fewer per half than widening x = v d
// first), alternate blocks into two accumulators per input row (two fma chains); a stored min's term is m times
// the block's sum of x (sums: per input row and block, made once per call).
template <int M, int QT>
void q_small_m_rows(float* out, const float* inp, const uint8_t* weight, int64_t rb, const float* bias, int64_t IC,
                    int64_t OC, int64_t o0, int64_t o1) {
  using Block = Block32<QT>;
  constexpr int64_t kB = Block::kBytes;
  const int64_t nb = IC / 32;
  static thread_local ScratchBuffer buf;
  float* sums = Block::kMin ? buf.floats((size_t)(M * nb)) : nullptr;  // (M, nb)
  if (Block::kMin)
    for (int m = 0; m < M; m++)
      for (int64_t b = 0; b < nb; b++) {
        V s = zero();
        for (int64_t j = 0; j < 32; j += W) s = add(s, load(inp + m * IC + b * 32 + j));
        sums[m * nb + b] = reduce_add(s);
      }
  for (int64_t o = o0; o < o1; o++) {
    V acc[M][2];
    float mins[M] = {};
    for (int m = 0; m < M; m++) acc[m][0] = acc[m][1] = zero();
    const uint8_t* w = weight + o * rb;
    auto block = [&](int64_t b, int u) {
      __builtin_prefetch(w + b * kB + kStreamAhead, 0, 3);
      const Block blk(w + b * kB);
      V t[M];
#pragma GCC unroll 4
      for (int64_t j = 0; j < 16; j += W) {
        V lo, hi;
        blk.values(j, lo, hi);
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
          const float* x = inp + m * IC + b * 32 + j;
          t[m] = fma(hi, load(x + 16), j == 0 ? mul(lo, load(x)) : fma(lo, load(x), t[m]));
        }
      }
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        acc[m][u] = fma(t[m], blk.d, acc[m][u]);
        if (Block::kMin) mins[m] += blk.mf * sums[m * nb + b];
      }
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      block(b, 0);
      block(b + 1, 1);
    }
    if (b < nb) block(b, 0);
    for (int m = 0; m < M; m++)
      out[m * OC + o] = reduce_add(add(acc[m][0], acc[m][1])) + mins[m] + (bias ? bias[o] : 0.f);
  }
}

// The same for the 256-value types (RowBlocks): each block's values as Visit decodes them (v = its dequantised
// value, W at a time), multiplied as they come, alternately into two accumulators per input row.
template <int M, class B>
void q_small_m_visit_rows(float* out, const float* inp, const uint8_t* weight, int64_t rb, const float* bias,
                          int64_t IC, int64_t OC, int64_t o0, int64_t o1) {
  constexpr int64_t kB = sizeof(B), kV = B::kValues;
  for (int64_t o = o0; o < o1; o++) {
    V acc[M][2];
    for (int m = 0; m < M; m++) acc[m][0] = acc[m][1] = zero();
    const uint8_t* w = weight + o * rb;
    for (int64_t b = 0; b < IC / kV; b++) {
      for (int64_t at = 0; at < kB; at += 64) __builtin_prefetch(w + b * kB + at + kStreamAhead, 0, 3);
      const float* x = inp + b * kV;
      Visit<B>::run(w + b * kB, [&](int64_t i, V v) {
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
          acc[m][0] = fma(v, load(x + m * IC + i), acc[m][0]);
          std::swap(acc[m][0], acc[m][1]);
        }
      });
    }
    for (int m = 0; m < M; m++) out[m * OC + o] = reduce_add(add(acc[m][0], acc[m][1])) + (bias ? bias[o] : 0.f);
  }
}

// f(std::integral_constant<int, N>{}) for N = 1, 2, 3 rows: the few-row kernels' row count as a constant
template <class F>
inline void with_rows(int64_t N, F&& f) {
  if (N == 1) f(std::integral_constant<int, 1>{});
  else if (N == 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 3>{});
}

// A small batch of rows (continuous batching's decode step, 4 <= N <= kSmallBatchRows) with the inputs
// transposed into lanes (xT, see q_batch_block), so one output channel's N sums are NV vectors and each
// dequantised weight (or group of G) is one broadcast FMA per vector: no horizontal sums in the loop, and every
// dequantised weight serves all N rows. kR output channels at a time (kR * NV independent FMA chains); their
// 32-value blocks are dequantised into a 1 KiB tile (QT = -1: whole rows dequantised into L1 first, for the
// other block types). The loops run over whole tiles of 32 columns: a row of another width (F32, F16, BF16 rows
// of any length) is padded with zero columns, in the dequantised rows and in the transposed inputs alike.
constexpr int64_t kTile = 32;
inline int64_t tiled_columns(int64_t IC) { return (IC + kTile - 1) / kTile * kTile; }

// G consecutive floats from p repeated across a vector (G = 2 and 4 on AVX2 / AVX-512 only: one broadcast load).
template <int G>
inline V broadcast_group(const float* p) {
  if constexpr (G == 1) {
    return set1(*p);
  } else if constexpr (G == 2) {
    double d;  // (a pair of floats as one 64-bit broadcast)
    std::memcpy(&d, p, sizeof d);
#if defined(PT_ISA_AVX512)
    return {_mm512_castpd_ps(_mm512_set1_pd(d))};
#elif defined(PT_ISA_AVX2)
    return {_mm256_castpd_ps(_mm256_set1_pd(d))};
#endif
  } else {
#if defined(PT_ISA_AVX512)
    return {_mm512_broadcast_f32x4(_mm_loadu_ps(p))};
#elif defined(PT_ISA_AVX2)
    return {_mm256_broadcast_ps((const __m128*)p)};
#endif
  }
}
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
constexpr int kMaxLaneGroup = 4;
#else
constexpr int kMaxLaneGroup = 1;
#endif
constexpr int kVectorRegs = W == 16 ? 32 : 16;

template <int NV>
constexpr int batch_rows() {  // accumulators that fit the vector registers beside the inputs and a broadcast
  return (kVectorRegs - NV - 2) / NV < 16 ? (kVectorRegs - NV - 2) / NV : 16;
}

// Output channels o0 .. o0 + no (no <= kR) of the batch in xT: per group of G input columns, NV vectors whose lane
// m * G + j holds input row m's column j of the group; each channel's G weights of the group are one broadcast
// load, one FMA per vector, and at the end each row's G lanes are added up.
template <int NV, int G, int QT>
void q_batch_block(float* out, const float* xT, const uint8_t* weight, int64_t rb, const float* bias, int64_t N,
                   int64_t IC, int64_t OC, int64_t o0, int64_t no, int qtype) {
  constexpr int kR = batch_rows<NV>(), NP = NV * W;
  alignas(64) float tiles[2][kR * kTile];  // block b's values in tiles[b & 1], written one block ahead: the
                                           // broadcast loads never wait on the vector stores that wrote them
  V acc[kR][NV];
  for (int r = 0; r < kR; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = zero();
  const uint8_t* w[kR];
  for (int r = 0; r < kR; r++) w[r] = weight + (o0 + (r < no ? r : 0)) * rb;
  const int64_t ICt = tiled_columns(IC);
  float* rows = nullptr;
  if (QT < 0) {
    static thread_local ScratchBuffer buf;
    rows = buf.floats((size_t)kR * ICt);
    for (int r = 0; r < kR; r++) {
      dequantize_row(rows + r * ICt, w[r], qtype, IC);
      std::fill(rows + r * ICt + IC, rows + (r + 1) * ICt, 0.f);
    }
  }
  // the rows two blocks of channels on are fetched along, block by block (a burst of prefetches at the start
  // overran the outstanding-miss slots and the block loads stalled on memory)
  const bool ahead = o0 + 3 * kR <= OC;
  auto dequantize_block = [&](int64_t b, float* tile) {
    if constexpr (QT >= 0) {
      constexpr int64_t kB = Block32<QT>::kBytes;
      if (ahead)
        for (int r = 0; r < kR; r++) __builtin_prefetch(w[r] + 2 * kR * rb + b * kB, 0, 0);
      for (int r = 0; r < kR; r++) {
        const Block32<QT> blk(w[r] + b * kB);
        for (int64_t j = 0; j < 16; j += W) {
          V lo, hi;
          blk.halves(j, lo, hi);
          store(tile + r * 32 + j, lo);
          store(tile + r * 32 + 16 + j, hi);
        }
      }
    }
  };
  const int64_t nb = ICt / kTile;
  if (nb > 0) dequantize_block(0, tiles[0]);
  for (int64_t b = 0; b < nb; b++) {
    if (b + 1 < nb) dequantize_block(b + 1, tiles[(b + 1) & 1]);
    const float* wt = QT >= 0 ? tiles[b & 1] : rows + b * kTile;
    const int64_t ld = QT >= 0 ? kTile : ICt;
    const float* xb = xT + b * (kTile / G) * NP;
#pragma GCC unroll 2
    for (int k = 0; k < kTile / G; k++) {
      V x[NV];
      for (int v = 0; v < NV; v++) x[v] = load(xb + k * NP + v * W);
#pragma GCC unroll 16
      for (int r = 0; r < kR; r++) {
        const V wv = broadcast_group<G>(wt + r * ld + k * G);
        for (int v = 0; v < NV; v++) acc[r][v] = fma(wv, x[v], acc[r][v]);
      }
    }
  }
  alignas(64) float lanes[NP];
  for (int r = 0; r < no; r++) {
    for (int v = 0; v < NV; v++) store(lanes + v * W, acc[r][v]);
    const float bo = bias ? bias[o0 + r] : 0.f;
    for (int64_t m = 0; m < N; m++) {
      float sum = lanes[m * G];
      for (int j = 1; j < G; j++) sum += lanes[m * G + j];
      out[m * OC + o0 + r] = sum + bo;
    }
  }
}

// xT (tiled_columns(IC) / G groups of NP lanes) in q_batch_block's layout: per group of G columns NP lanes, lane
// m * G + j = inp[m, group's column j], zero from row N and from column IC on.
template <int NP, int G>
void transpose_inputs(float* xT, const float* inp, int64_t N, int64_t IC) {
  constexpr int64_t rows = NP / G;
  for (int64_t k = 0; k < tiled_columns(IC); k += G) {
    float* dst = xT + (k / G) * NP;
    if (k + G <= IC) {  // (a whole group: a copy of G floats the compiler inlines, the hot loop of every product)
      for (int64_t m = 0; m < rows; m++) {
        if (m < N)
          std::memcpy(dst + m * G, inp + m * IC + k, sizeof(float) * G);
        else
          std::fill(dst + m * G, dst + (m + 1) * G, 0.f);
      }
      continue;
    }
    const int64_t n = std::max<int64_t>(0, IC - k);  // the row's last columns, zero past them
    for (int64_t m = 0; m < rows; m++) {
      if (m < N) std::memcpy(dst + m * G, inp + m * IC + k, sizeof(float) * n);
      std::fill(dst + m * G + (m < N ? n : 0), dst + (m + 1) * G, 0.f);
    }
  }
}

// The output channels' blocks across the threads, each thread with its own xT from inp (N, IC): transposed in
// parallel and read from its own cache (one shared copy made the other threads wait for it, then fetch it from
// the writer's cache). Guided chunks: the threads woken at the fork start later than the caller, and with equal
// static shares the caller waited ~5% of the time at the end (contiguous chunks keep the prefetch ahead useful).
template <int NV, int G, int QT>
void q_batch_run(float* out, const float* inp, const uint8_t* weight, int64_t rb, const float* bias, int64_t N,
                 int64_t IC, int64_t OC, int qtype) {
  constexpr int kR = batch_rows<NV>(), NP = NV * W;
  const int64_t nblocks = (OC + kR - 1) / kR;
#pragma omp parallel num_threads(threads()) if (N * OC * IC >= kParallelGemvMacs)
  {
    static thread_local ScratchBuffer buf;
    float* xT = buf.floats((size_t)(tiled_columns(IC) / G) * NP);
    transpose_inputs<NP, G>(xT, inp, N, IC);
#pragma omp for schedule(guided, 4) nowait
    for (int64_t blk = 0; blk < nblocks; blk++) {
      const int64_t o0 = blk * kR, no = std::min<int64_t>(kR, OC - o0);
      q_batch_block<NV, G, QT>(out, xT, weight, rb, bias, N, IC, OC, o0, no, qtype);
    }
  }
}

// A batch of 3 .. 4 * W rows: the fewer the rows, the more input columns share a vector (G = 4 for up to W / 4
// rows, 2 for up to W / 2): the multiply-adds scale with the rows instead of the vector width.
template <int QT>
void q_batch_forward(float* out, const float* inp, const uint8_t* weight, int64_t rb, const float* bias, int64_t N,
                     int64_t IC, int64_t OC, int qtype = -1) {
  if (N > 4 * W) {  // (narrow vectors: the batch in chunks of at most 4 vectors)
    for (int64_t m0 = 0; m0 < N; m0 += 4 * W)
      q_batch_forward<QT>(out + m0 * OC, inp + m0 * IC, weight, rb, bias, std::min<int64_t>(4 * W, N - m0), IC, OC,
                          qtype);
    return;
  }
  if constexpr (kMaxLaneGroup >= 4) {
    if (4 * N <= W) return q_batch_run<1, 4, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    if (2 * N <= W) return q_batch_run<1, 2, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    // a full vector of rows as two vectors of pairs: each broadcast weight pair serves two FMAs (AVX-512: 8-10%
    // faster than one FMA per broadcast load at 12..16 rows)
    if (W == 16 && N <= W) return q_batch_run<2, 2, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
  }
  switch ((N + W - 1) / W) {
    case 1: return q_batch_run<1, 1, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    case 2: return q_batch_run<2, 1, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    case 3: return q_batch_run<3, 1, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    default: return q_batch_run<4, 1, QT>(out, inp, weight, rb, bias, N, IC, OC, qtype);
  }
}
}  // namespace

// GGUF block-quantised weight (OC rows of quant_row_bytes(qtype, IC) bytes; the weights stay quantised in
// memory). Few rows (decoding, N < 4): the block types (quant/quant.h: RegisterBlocks, RowBlocks) are decoded in
// registers and multiplied as they are read, each weight row streamed once; the float types (F32, F16, BF16)
// widen four rows into L1 scratch and run the float32 dot products. A decode batch (N <= kSmallBatchRows): q_batch_forward, the inputs
// transposed into lanes so that each dequantised weight (group) is one broadcast FMA for every row. More rows
// widen blocks of rows for the GEMM.
void matmul_q_forward(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias, int64_t N,
                      int64_t IC, int64_t OC) {
  const int64_t rb = quant_row_bytes(qtype, IC);
  if (N == 0 || OC == 0 || rb < 0) return;
  if (N < 4) {
    const bool parallel = N * OC * IC >= kParallelGemvMacs;
    // chunks of contiguous rows (256 KiB, or a thread's share of a smaller matrix) taken as threads come free,
    // each through rows(o0, o1) (the block type chosen once, outside the parallel loop)
    auto stream = [&](auto rows) {
      const int64_t nt = parallel ? threads() : 1;
      const int64_t chunk = std::min((OC + nt - 1) / nt, std::max<int64_t>(4, (256 << 10) / rb));
      parallel_for<true>((OC + chunk - 1) / chunk, (int)nt, [&](int64_t c) {
        const int64_t o0 = c * chunk;
        with_rows(N, [&](auto M) { rows(M, o0, std::min(OC, o0 + chunk)); });
      });
    };
    if (with_block(RegisterBlocks{}, qtype, [&](auto block) {
          stream([&](auto M, int64_t o0, int64_t o1) {
            q_small_m_rows<decltype(M)::value, decltype(block)::kType>(out, inp, weight, rb, bias, IC, OC, o0, o1);
          });
        }))
      return;
    if (with_block(RowBlocks{}, qtype, [&](auto block) {
          stream([&](auto M, int64_t o0, int64_t o1) {
            q_small_m_visit_rows<decltype(M)::value, decltype(block)>(out, inp, weight, rb, bias, IC, OC, o0, o1);
          });
        }))
      return;
    const int64_t nblocks = (OC + 3) / 4;
    parallel_for(nblocks, parallel ? threads() : 1, [&](int64_t blk) {
      const int64_t o0 = blk * 4, no = std::min<int64_t>(4, OC - o0);
      static thread_local ScratchBuffer buf;
      float* rows = buf.floats((size_t)4 * IC);
      for (int64_t u = 0; u < no; u++) {
        const uint8_t* row = weight + (o0 + u) * rb;
        for (int64_t off = 0; off < rb; off += 64) __builtin_prefetch(row + kStreamAhead + off, 0, 3);
        dequantize_row(rows + u * IC, row, qtype, IC);
      }
      small_m_dispatch(out, inp, rows, (const float*)nullptr, bias, N, IC, OC, o0, no, 0);
    });
    return;
  }
  if (N <= kSmallBatchRows) {
    const bool done = with_block(RegisterBlocks{}, qtype, [&](auto block) {
      q_batch_forward<decltype(block)::kType>(out, inp, weight, rb, bias, N, IC, OC);
    });
    if (!done) q_batch_forward<-1>(out, inp, weight, rb, bias, N, IC, OC, qtype);
    return;
  }
  widened_gemm(out, inp, bias, N, IC, OC,
               [&](int64_t row, float* dst) { dequantize_row(dst, weight + row * rb, qtype, IC); });
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t IC, int64_t OC) {
  // dinp (N, IC) = dout (N, OC) @ weight (OC, IC)
  if (dinp) gemm(N, IC, OC, View{dout, OC, 1}, View{weight, IC, 1}, dinp, IC, false, nullptr);
  // dweight (OC, IC) += dout^T (OC, N) @ inp (N, IC)
  if (dweight) gemm(OC, IC, N, View{dout, 1, OC}, View{inp, IC, 1}, dweight, IC, true, nullptr);
  // dbias (OC) += column sums of dout: threads split the columns into slices of SV vectors, each slice summed
  // in SV registers while streaming down the rows (one pass over dout, contiguous within every row)
  if (dbias) {
    constexpr int SV = 8;
    const int64_t slice = SV * W, nslices = (OC + slice - 1) / slice;
    parallel_for(nslices, N * OC >= kParallelElements ? threads() : 1, [&](int64_t s) {
      const int64_t j0 = s * slice, nj = std::min(slice, OC - j0);
      V acc[SV];
      for (int v = 0; v < SV; v++) acc[v] = zero();
      if (nj == slice) {
        for (int64_t n = 0; n < N; n++) {
          const float* row = dout + n * OC + j0;
#pragma GCC unroll 8
          for (int v = 0; v < SV; v++) acc[v] = add(acc[v], load(row + v * W));
        }
      } else {
        for (int64_t n = 0; n < N; n++) {
          const float* row = dout + n * OC + j0;
          for (int v = 0; v * W < nj; v++) acc[v] = add(acc[v], loadn(row + v * W, std::min<int64_t>(W, nj - v * W)));
        }
      }
      for (int v = 0; v * W < nj; v++) {
        const int64_t r = std::min<int64_t>(W, nj - v * W);
        storen(dbias + j0 + v * W, add(loadn(dbias + j0 + v * W, r), acc[v]), r);
      }
    });
  }
}

}  // namespace PT_NS
}  // namespace pt
