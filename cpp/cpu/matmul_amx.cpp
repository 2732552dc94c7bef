// Linear layers in bfloat16 on Intel AMX: the same products as matmul.cpp (forward, dinp, dweight), with the
// inputs rounded to bfloat16 (round to nearest even) and every sum accumulated in float32 -- torch's
// set_float32_matmul_precision("medium"). Used when pytransformer.set_matmul_precision("bfloat16") is on, and then
// also for weights stored as bfloat16 (forward and dinp: LoRA fine-tuning on a bf16 base) from MIN_TILE_ROWS rows;
// fewer rows (decoding) keep the AVX-512 products, which stream the weight once instead of packing it.
//
// The tiles, packing and the 2 x 2 tile kernel are in amx_tiles.h. The register block is 2 x 2 C tiles
// (32 x 32 outputs) and the whole k range runs in the tiles, so C is written once. Blocking: all of A is packed
// once into bf16 tiles (row tile-major, k-tiles contiguous); B is packed one column block at a time, sized to
// stay in L2 (<= 1 MB), and the threads split the 32 x 32 blocks of C.
//
// This file is compiled only for x86-64 with AMX flags on it alone; supported() checks cpuid, XCR0 and asks
// Linux for the tile-data permission before any tile instruction runs.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include <cpuid.h>

#include "amx_tiles.h"
#include "pytransformer/kernels.h"
#include "pytransformer/runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pt {
namespace amx {
namespace {

constexpr int64_t B_BLOCK_BYTES = 1 << 20;    // packed B column block: half of this CPU's 2 MB L2
constexpr int64_t MIN_TILE_ROWS = 16;         // a bf16 weight's products on tiles from one A tile's rows

// C (M, N) = A @ B (+ bias), or C += A @ B when accumulate; A and B rounded to bf16 (B float32 or bf16 bits).
template <class BView>
void gemm(int64_t M, int64_t N, int64_t K, View A, BView B, float* C, int64_t ldc, bool accumulate,
          const float* bias) {
  if (M <= 0 || N <= 0) return;
  const int64_t nkb = std::max<int64_t>(1, (K + 31) / 32);
  const int64_t mt = (M + 31) / 32 * 2, nt = (N + 31) / 32 * 2;  // 16-row / 16-column tiles, even counts
  // column blocks of B: whole pairs of tiles, at most B_BLOCK_BYTES packed, all blocks about the same width
  const int64_t max_nbt = std::max<int64_t>(2, B_BLOCK_BYTES / (nkb * TILE * 2) / 2 * 2);
  const int64_t ncb = (nt + max_nbt - 1) / max_nbt;
  const int64_t nbt = ((nt / 2 + ncb - 1) / ncb) * 2;
  static thread_local Scratch a_buf, b_buf;
  uint16_t* Ap = a_buf.get((size_t)(mt * nkb * TILE));
  uint16_t* Bp = b_buf.get((size_t)(nbt * nkb * TILE + nbt * 16 * 16 * 2));
  float* bias_rows = reinterpret_cast<float*>(Bp + nbt * nkb * TILE);  // 16 x (nbt * 16), 64-byte aligned
  const int nthreads = pt::kernel_threads();
  const bool parallel = M * N * K > (1 << 18);

#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    configure_tiles();
    // tiles are packed in the order that reads memory sequentially: along k when A's rows are contiguous,
    // else across the row tiles of one k-tile (k rows of A^T), so every cache line is used whole at once
    const bool a_k_inner = A.cs == 1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < mt * nkb; t++) {
      const int64_t it = a_k_inner ? t / nkb : t % mt, kb = a_k_inner ? t % nkb : t / mt;
      pack_A_tile(Ap + (it * nkb + kb) * TILE, A, it * 16, kb * 32, M, K);
    }
    for (int64_t jb = 0; jb < nt; jb += nbt) {
      const int64_t nbc = std::min(nbt, nt - jb);  // tiles in this column block
      if (bias) {  // 16 identical rows of this block's bias (nbt * 16 floats each): the C tiles start from it
#pragma omp for schedule(static)
        for (int64_t r = 0; r < 16; r++)
          for (int64_t j = 0; j < nbc * 16; j++) bias_rows[r * nbt * 16 + j] = jb * 16 + j < N ? bias[jb * 16 + j] : 0.f;
      }
      const bool b_k_inner = B.rs == 1 && B.cs != 1;  // columns contiguous along k
#pragma omp for schedule(static)
      for (int64_t t = 0; t < nbc * nkb; t++) {
        const int64_t jt = b_k_inner ? t / nkb : t % nbc, kb = b_k_inner ? t % nkb : t / nbc;
        pack_B_tile(Bp + (jt * nkb + kb) * TILE, B, kb * 32, (jb + jt) * 16, K, N);
      }
      // implicit barrier: the block is packed
#pragma omp for collapse(2) schedule(static)
      for (int64_t ip = 0; ip < mt / 2; ip++)
        for (int64_t jp = 0; jp < nbc / 2; jp++) {
          block_2x2(Ap + 2 * ip * nkb * TILE, Bp + 2 * jp * nkb * TILE, nkb, C, ldc, ip * 32, (jb + 2 * jp) * 16, M,
                    N, accumulate, bias, bias ? bias_rows + 2 * jp * 16 : nullptr, nbt * 64);
        }
      // implicit barrier: nobody still reads the block when the next one is packed
    }
    _tile_release();
  }
}

bool detect() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512_bf16 = a & (1u << 5);
  if (!(avx512 && amx_bf16 && amx_tile && avx512_bf16)) return false;
  __get_cpuid(1, &a, &b, &c, &d);
  if (!(c & (1u << 27))) return false;  // OSXSAVE
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
  if ((xcr0 & 0x600e6) != 0x600e6) return false;  // AVX-512 state and XTILECFG + XTILEDATA
#ifdef __linux__
  // Linux hands out the 8 KB tile state on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return false;
#endif
  return true;
}

}  // namespace

bool supported() {
  static const bool ok = detect();
  return ok;
}

double probe(int64_t iters) {
  double flops = 0.0;
#pragma omp parallel num_threads(pt::kernel_threads()) reduction(+ : flops)
  {
    configure_tiles();
    _tile_zero(0);  // zeros: no denormal or overflow slow paths
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (int64_t i = 0; i < iters; i++) {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    alignas(64) float sink[256];
    _tile_stored(0, sink, 64);
    _tile_release();
    flops += 4.0 * 2.0 * 16 * 16 * 32 * (double)iters + 0.0 * sink[0];
  }
  return flops;
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC) {
  gemm(N, OC, IC, View{inp, IC, 1}, View{weight, 1, IC}, out, OC, false, bias);
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                     int64_t N, int64_t IC, int64_t OC) {
  if (dinp) gemm(N, IC, OC, View{dout, OC, 1}, View{weight, IC, 1}, dinp, IC, false, nullptr);
  if (dweight) gemm(OC, IC, N, View{dout, 1, OC}, View{inp, IC, 1}, dweight, IC, true, nullptr);
}

void matmul_w16_forward(float* out, const float* inp, const uint16_t* weight, const float* bias, int64_t N,
                        int64_t IC, int64_t OC) {
  if (N < MIN_TILE_ROWS) return avx512::kernels()->matmul_w16_forward(out, inp, weight, bias, N, IC, OC);
  gemm(N, OC, IC, View{inp, IC, 1}, Bf16View{weight, 1, IC}, out, OC, false, bias);
}

void matmul_q_dinp(float* dinp, const float* dout, const uint8_t* weight, int qtype, int64_t N, int64_t IC,
                   int64_t OC) {
  if (qtype != kBF16 || N < MIN_TILE_ROWS) return avx512::kernels()->matmul_q_dinp(dinp, dout, weight, qtype, N, IC, OC);
  gemm(N, IC, OC, View{dout, OC, 1}, Bf16View{reinterpret_cast<const uint16_t*>(weight), IC, 1}, dinp, IC, false,
       nullptr);
}

}  // namespace amx
}  // namespace pt
