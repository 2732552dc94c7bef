// Linear layers in bfloat16 on Intel AMX: the same products as matmul.cpp (forward, dinp, dweight), with the
// inputs rounded to bfloat16 (round to nearest even) and every sum accumulated in float32 -- torch's
// set_float32_matmul_precision("medium"). Used when pytransformer.set_matmul_precision("bfloat16") is on.
//
// AMX has eight tile registers of 16 rows x 64 bytes. One TDPBF16PS multiplies an A tile (16 rows x 32 bf16
// along k) by a B tile in "VNNI" order (16 rows of k-pairs x 16 columns, each dword = (B[2r][n], B[2r+1][n]))
// into a 16 x 16 float32 C tile. The register block is 2 x 2 C tiles (32 x 32 outputs): tmm0-3 accumulate,
// tmm4-5 hold A, tmm6-7 hold B, and the whole k range runs in the tiles, so C is written once.
// Blocking: all of A is packed once into bf16 tiles (row tile-major, k-tiles contiguous); B is packed one
// column block at a time, sized to stay in L2 (<= 1 MB), and the threads split the 32 x 32 blocks of C.
// Packing converts two float32 vectors to one bf16 vector (VCVTNE2PS2BF16); the layouts that run against
// memory order go through a 16 x 16 dword transpose.
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

#include "pytransformer/dispatch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pt {
namespace amx {
namespace {

constexpr int64_t TILE = 512;                 // bf16 elements in one 16 x 32 tile (1 KB)
constexpr int64_t B_BLOCK_BYTES = 1 << 20;    // packed B column block: half of this CPU's 2 MB L2

struct View {  // element (i, j) at p[i * rs + j * cs]
  const float* p;
  int64_t rs, cs;
  const float* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};

struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}

inline __mmask16 mask16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u); }

// 16 floats at p (the first n of them; the rest read as 0)
inline __m512 load16(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask16(n), p); }

// 32 bf16 in order: lo then hi
inline __m512i to_bf16(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

// 16 dwords (lo[i], hi[i]) as bf16 pairs: a VNNI row from two k rows of 16 columns
inline __m512i interleave_bf16(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, to_bf16(lo, hi));
}

// r[i][j] <- r[j][i] for a 16 x 16 matrix of dwords, one row per register.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // now u[4i + c], lane L = column 4L + c of rows 4i .. 4i + 3
  __m512i u[16];
  for (int i = 0; i < 4; i++) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // 4 x 4 transpose of 128-bit lanes across u[c], u[4 + c], u[8 + c], u[12 + c]: row 4j + c = lane j of each
  for (int c = 0; c < 4; c++) {
    __m512i p0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), p1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    __m512i p2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), p3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(p0, p2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(p0, p2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(p1, p3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(p1, p3, 0xDD);
  }
}

// dst: A tile, 16 rows x 32 k (row-major bf16) = A[i0 .. i0 + 16, k0 .. k0 + 32), zero outside (M, K).
void pack_A_tile(uint16_t* dst, View A, int64_t i0, int64_t k0, int64_t M, int64_t K) {
  const int64_t mr = std::min<int64_t>(16, M - i0), kr = K - k0;
  __m512i rows[16];
  if (A.cs == 1) {  // rows contiguous along k
    for (int r = 0; r < 16; r++) {
      if (r < mr) {
        const float* s = A.at(i0 + r, k0);
        rows[r] = to_bf16(load16(s, kr), load16(s + 16, kr - 16));
      } else {
        rows[r] = _mm512_setzero_si512();
      }
    }
  } else if (A.rs == 1) {  // columns contiguous along i: pairs of k columns, then transpose
    for (int j = 0; j < 16; j++) {
      const int64_t k = 2 * j;
      __m512 lo = k < kr ? load16(A.at(i0, k0 + k), mr) : _mm512_setzero_ps();
      __m512 hi = k + 1 < kr ? load16(A.at(i0, k0 + k + 1), mr) : _mm512_setzero_ps();
      rows[j] = interleave_bf16(lo, hi);
    }
    transpose16(rows);
  } else {  // any other strides: gather through a float tile
    alignas(64) float tmp[16][32];
    for (int r = 0; r < 16; r++)
      for (int k = 0; k < 32; k++) tmp[r][k] = (r < mr && k < kr) ? *A.at(i0 + r, k0 + k) : 0.f;
    for (int r = 0; r < 16; r++) rows[r] = to_bf16(_mm512_load_ps(tmp[r]), _mm512_load_ps(tmp[r] + 16));
  }
  for (int r = 0; r < 16; r++) _mm512_store_si512(dst + r * 32, rows[r]);
}

// dst: B tile in VNNI order, 16 k-pairs x 16 columns = B[k0 .. k0 + 32, j0 .. j0 + 16), zero outside (K, N).
void pack_B_tile(uint16_t* dst, View B, int64_t k0, int64_t j0, int64_t K, int64_t N) {
  const int64_t kr = K - k0, nr = std::min<int64_t>(16, N - j0);
  __m512i rows[16];
  if (B.cs == 1) {  // rows contiguous along n: interleave rows 2r and 2r + 1
    for (int r = 0; r < 16; r++) {
      const int64_t k = 2 * r;
      __m512 lo = k < kr ? load16(B.at(k0 + k, j0), nr) : _mm512_setzero_ps();
      __m512 hi = k + 1 < kr ? load16(B.at(k0 + k + 1, j0), nr) : _mm512_setzero_ps();
      rows[r] = interleave_bf16(lo, hi);
    }
  } else if (B.rs == 1) {  // columns contiguous along k: each column is one row of k-pairs, then transpose
    for (int n = 0; n < 16; n++) {
      if (n < nr) {
        const float* s = B.at(k0, j0 + n);
        rows[n] = to_bf16(load16(s, kr), load16(s + 16, kr - 16));
      } else {
        rows[n] = _mm512_setzero_si512();
      }
    }
    transpose16(rows);
  } else {
    alignas(64) float lo[16], hi[16];
    for (int r = 0; r < 16; r++) {
      for (int n = 0; n < 16; n++) {
        lo[n] = (2 * r < kr && n < nr) ? *B.at(k0 + 2 * r, j0 + n) : 0.f;
        hi[n] = (2 * r + 1 < kr && n < nr) ? *B.at(k0 + 2 * r + 1, j0 + n) : 0.f;
      }
      rows[r] = interleave_bf16(_mm512_load_ps(lo), _mm512_load_ps(hi));
    }
  }
  for (int r = 0; r < 16; r++) _mm512_store_si512(dst + r * 32, rows[r]);
}

// Four 16 x 16 float32 tiles [a0 b0, a0 b1, a1 b0, a1 b1] = init + A rows (two tiles) . B columns (two tiles),
// over nkb k-tiles; a0/a1/b0/b1 point at their first k-tile, the next ones follow every TILE elements. Tile t
// starts from init + init_off[t] (stride init_stride bytes), or from zero when init is null, and is stored at
// out + off[t] (stride out_stride bytes): C itself for whole blocks, a scratch block at the edges.
// Software-pipelined: each tile register is reloaded for k-tile kb + 1 right after its last reader for kb is
// issued, and the products come first. Tile registers are not renamed, so loading a register that a queued
// product still reads, or multiplying a just-loaded one, stalls; the naive order (load, multiply, load, ...)
// measured 29 ns per product against 8.9 for this one (bench/NOTES.md).
inline void kernel_2x2(const uint16_t* a0, const uint16_t* a1, const uint16_t* b0, const uint16_t* b1,
                       int64_t nkb, const float* init, int64_t init_stride, const int64_t init_off[4], float* out,
                       int64_t out_stride, const int64_t off[4]) {
  if (init) {
    _tile_loadd(0, init + init_off[0], init_stride);
    _tile_loadd(1, init + init_off[1], init_stride);
    _tile_loadd(2, init + init_off[2], init_stride);
    _tile_loadd(3, init + init_off[3], init_stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  _tile_loadd(4, a0, 64);
  _tile_loadd(5, a1, 64);
  _tile_loadd(6, b0, 64);
  _tile_loadd(7, b1, 64);
  for (int64_t kb = 1; kb < nkb; kb++) {
    const int64_t o = kb * TILE;
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    _tile_loadd(6, b0 + o, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(4, a0 + o, 64);
    _tile_dpbf16ps(3, 5, 7);
    _tile_loadd(7, b1 + o, 64);
    _tile_loadd(5, a1 + o, 64);
  }
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(3, 5, 7);
  _tile_stored(0, out + off[0], out_stride);
  _tile_stored(1, out + off[1], out_stride);
  _tile_stored(2, out + off[2], out_stride);
  _tile_stored(3, out + off[3], out_stride);
}

// C[i0 .., j0 ..] (a 16 x 16 tile clipped to M x N) = acc + bias, or += acc.
inline void write_tile(float* C, int64_t ldc, const float* acc, int64_t i0, int64_t j0, int64_t M, int64_t N,
                       bool accumulate, const float* bias) {
  const int64_t mr = std::min<int64_t>(16, M - i0), nr = N - j0;
  if (mr <= 0 || nr <= 0) return;
  const __mmask16 m = mask16(nr);
  const __m512 b = (!accumulate && bias) ? _mm512_maskz_loadu_ps(m, bias + j0) : _mm512_setzero_ps();
  for (int64_t r = 0; r < mr; r++) {
    float* c = C + (i0 + r) * ldc + j0;
    __m512 x = _mm512_add_ps(_mm512_load_ps(acc + r * 16), accumulate ? _mm512_maskz_loadu_ps(m, c) : b);
    _mm512_mask_storeu_ps(c, m, x);
  }
}

// 64-byte aligned scratch of the calling thread, kept between calls.
class Scratch {
 public:
  ~Scratch() { std::free(p_); }
  uint16_t* get(size_t n) {
    if (n > n_) {
      std::free(p_);
      p_ = static_cast<uint16_t*>(std::aligned_alloc(64, (n * 2 + 63) / 64 * 64));
      if (!p_) std::abort();
      n_ = n;
    }
    return p_;
  }

 private:
  uint16_t* p_ = nullptr;
  size_t n_ = 0;
};

// C (M, N) = A @ B (+ bias), or C += A @ B when accumulate; A and B rounded to bf16.
void gemm(int64_t M, int64_t N, int64_t K, View A, View B, float* C, int64_t ldc, bool accumulate,
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
  const int nthreads = pt::num_threads();
  const bool parallel = M * N * K > (1 << 18);

#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    configure_tiles();
    alignas(64) float acc[4 * 256];
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
          const uint16_t* a0 = Ap + (2 * ip) * nkb * TILE;
          const uint16_t* b0 = Bp + (2 * jp) * nkb * TILE;
          const int64_t i0 = ip * 32, j0 = (jb + 2 * jp) * 16;
          if (i0 + 32 <= M && j0 + 32 <= N) {  // whole block: start from C or the bias rows, store into C
            float* c = C + i0 * ldc + j0;
            const int64_t off[4] = {0, 16, 16 * ldc, 16 * ldc + 16}, boff[4] = {0, 16, 0, 16};
            if (accumulate)
              kernel_2x2(a0, a0 + nkb * TILE, b0, b0 + nkb * TILE, nkb, c, ldc * 4, off, c, ldc * 4, off);
            else if (bias)
              kernel_2x2(a0, a0 + nkb * TILE, b0, b0 + nkb * TILE, nkb, bias_rows + (2 * jp) * 16, nbt * 64, boff,
                         c, ldc * 4, off);
            else
              kernel_2x2(a0, a0 + nkb * TILE, b0, b0 + nkb * TILE, nkb, nullptr, 0, off, c, ldc * 4, off);
          } else {  // edge block: through scratch, clipped
            const int64_t off[4] = {0, 256, 512, 768};
            kernel_2x2(a0, a0 + nkb * TILE, b0, b0 + nkb * TILE, nkb, nullptr, 0, off, acc, 64, off);
            write_tile(C, ldc, acc, i0, j0, M, N, accumulate, bias);
            write_tile(C, ldc, acc + 256, i0, j0 + 16, M, N, accumulate, bias);
            write_tile(C, ldc, acc + 512, i0 + 16, j0, M, N, accumulate, bias);
            write_tile(C, ldc, acc + 768, i0 + 16, j0 + 16, M, N, accumulate, bias);
          }
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
#pragma omp parallel num_threads(pt::num_threads()) reduction(+ : flops)
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

}  // namespace amx
}  // namespace pt
