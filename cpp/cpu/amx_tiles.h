// Intel AMX-BF16 building blocks shared by the bf16 matmul (matmul_amx.cpp) and the bf16 attention build of
// attention.cpp: tile configuration, packing float32 operands into bf16 tiles, the 2 x 2 tile kernel, and a
// small serial tile product. Compiled only into objects built with the AMX flags.
//
// AMX has eight tile registers of 16 rows x 64 bytes. One TDPBF16PS multiplies an A tile (16 rows x 32 bf16
// along k) by a B tile in "VNNI" order (16 rows of k-pairs x 16 columns, each dword = (B[2r][n], B[2r+1][n]))
// into a 16 x 16 float32 C tile. Packing converts two float32 vectors to one bf16 vector (VCVTNE2PS2BF16,
// round to nearest even); the layouts that run against memory order go through a 16 x 16 dword transpose.
// Every thread must configure_tiles() before its first tile instruction and _tile_release() after its last.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace pt {
namespace amx {

constexpr int64_t TILE = 512;                 // bf16 elements in one 16 x 32 tile (1 KB)

template <class T>
struct ViewOf {  // element (i, j) at p[i * rs + j * cs]
  const T* p;
  int64_t rs, cs;
  const T* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};
using View = ViewOf<float>;
using Bf16View = ViewOf<uint16_t>;  // bfloat16 bits (a bf16 weight: B's tiles take them as they are)

struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}

inline __mmask16 mask16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u); }

// 16 floats at p (the first n of them; the rest read as 0)
inline __m512 load16(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask16(n), p); }
// 16 bfloat16 at p (the first n of them; the rest read as 0), widened exactly to float32
inline __m512 load16(const uint16_t* p, int64_t n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask16(n), p)), 16));
}
inline float to_float(float x) { return x; }
inline float to_float(uint16_t bits) { return _mm512_cvtss_f32(load16(&bits, 1)); }

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
inline void pack_A_tile(uint16_t* dst, View A, int64_t i0, int64_t k0, int64_t M, int64_t K) {
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
// B float32 or bfloat16 bits (widened and rounded back: exact).
template <class T>
inline void pack_B_tile(uint16_t* dst, ViewOf<T> B, int64_t k0, int64_t j0, int64_t K, int64_t N) {
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
        const T* s = B.at(k0, j0 + n);
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
        lo[n] = (2 * r < kr && n < nr) ? to_float(*B.at(k0 + 2 * r, j0 + n)) : 0.f;
        hi[n] = (2 * r + 1 < kr && n < nr) ? to_float(*B.at(k0 + 2 * r + 1, j0 + n)) : 0.f;
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

// The 32 x 32 block of C at (i0, j0), clipped to M x N: C = A . B (+ bias), or C += A . B when accumulate.
// a0 / b0: the first of two packed row / column tiles (nkb k-tiles each, the second follows). A whole block
// starts its tiles from C (accumulate) or from bias_rows (16 equal rows of these 32 bias values, bias_stride
// bytes apart) and stores straight into C; an edge block goes through scratch and is clipped.
inline void block_2x2(const uint16_t* a0, const uint16_t* b0, int64_t nkb, float* C, int64_t ldc, int64_t i0,
                      int64_t j0, int64_t M, int64_t N, bool accumulate, const float* bias, const float* bias_rows,
                      int64_t bias_stride) {
  const uint16_t *a1 = a0 + nkb * TILE, *b1 = b0 + nkb * TILE;
  if (i0 + 32 <= M && j0 + 32 <= N) {
    float* c = C + i0 * ldc + j0;
    const int64_t off[4] = {0, 16, 16 * ldc, 16 * ldc + 16}, boff[4] = {0, 16, 0, 16};
    if (accumulate)
      kernel_2x2(a0, a1, b0, b1, nkb, c, ldc * 4, off, c, ldc * 4, off);
    else if (bias_rows)
      kernel_2x2(a0, a1, b0, b1, nkb, bias_rows, bias_stride, boff, c, ldc * 4, off);
    else
      kernel_2x2(a0, a1, b0, b1, nkb, nullptr, 0, off, c, ldc * 4, off);
    return;
  }
  alignas(64) float acc[4 * 256];
  const int64_t off[4] = {0, 256, 512, 768};
  kernel_2x2(a0, a1, b0, b1, nkb, nullptr, 0, off, acc, 64, off);
  write_tile(C, ldc, acc, i0, j0, M, N, accumulate, bias);
  write_tile(C, ldc, acc + 256, i0, j0 + 16, M, N, accumulate, bias);
  write_tile(C, ldc, acc + 512, i0 + 16, j0, M, N, accumulate, bias);
  write_tile(C, ldc, acc + 768, i0 + 16, j0 + 16, M, N, accumulate, bias);
}

// C (m x n, ldc) [+]= A (m x k) . B (k x n), serially on this thread's (configured) tiles; any sizes. For the
// small products inside attention: both operands are packed here, so transposed views cost no extra pass.
inline void tile_product(float* C, int64_t ldc, View A, View B, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const int64_t nkb = std::max<int64_t>(1, (k + 31) / 32);
  const int64_t mt = (m + 31) / 32 * 2, nt = (n + 31) / 32 * 2;
  static thread_local Scratch buf;
  uint16_t* Ap = buf.get((size_t)((mt + nt) * nkb * TILE));
  uint16_t* Bp = Ap + mt * nkb * TILE;
  for (int64_t it = 0; it < mt; it++)
    for (int64_t kb = 0; kb < nkb; kb++) pack_A_tile(Ap + (it * nkb + kb) * TILE, A, it * 16, kb * 32, m, k);
  for (int64_t jt = 0; jt < nt; jt++)
    for (int64_t kb = 0; kb < nkb; kb++) pack_B_tile(Bp + (jt * nkb + kb) * TILE, B, kb * 32, jt * 16, k, n);
  for (int64_t ip = 0; ip < mt / 2; ip++)
    for (int64_t jp = 0; jp < nt / 2; jp++)
      block_2x2(Ap + 2 * ip * nkb * TILE, Bp + 2 * jp * nkb * TILE, nkb, C, ldc, ip * 32, jp * 32, m, n, accumulate,
                nullptr, nullptr, 0);
}

// Configures this thread's tiles for its lifetime in a scope and releases them at its end.
struct TileScope {
  TileScope() { configure_tiles(); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace amx
}  // namespace pt
