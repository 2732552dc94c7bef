// Small per-ISA vector helpers. Each kernel source is compiled once per variant; PT_ISA_* says which.
//   AVX512: 16 floats (zmm), AVX2: 8 (ymm, FMA), BASELINE: 4 (SSE2) on x86-64, 1 (scalar) elsewhere.
// Every helper has the same name and meaning in each variant, so kernels are written once.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2) || (defined(PT_ISA_BASELINE) && defined(__SSE2__))
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pytransformer/runtime.h"

namespace pt {
namespace PT_NS {
namespace simd {

// A running max of scores that turns NaN at the first NaN it meets and stays NaN (std::max(m, NaN) would keep m,
// and a row of NaN scores would look like a row that sees no key); below, the same lane by lane (max_keep_nan(V, V))
inline float max_keep_nan(float m, float s) { return (s > m || s != s) ? s : m; }

#if defined(PT_ISA_AVX512)
constexpr int W = 16;
struct V { __m512 v; };
inline V zero() { return {_mm512_setzero_ps()}; }
inline V set1(float x) { return {_mm512_set1_ps(x)}; }
inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }
inline V load_partial(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(tail_mask(n), p)}; }
inline void store_partial(float* p, V a, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask(n), a.v); }
inline V add(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V sub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V div(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }    // a * b + c
inline V fnma(V a, V b, V c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a * b
inline V max(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V sqrt_v(V a) { return {_mm512_sqrt_ps(a.v)}; }
inline V min(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
// halves folded with shuffles (gcc 12's _mm512_reduce_* trip -Wuninitialized inside its own headers)
inline __m256 fold512(__m512 a, __m512 (*op)(__m512, __m512)) {
  return _mm512_castps512_ps256(op(a, _mm512_shuffle_f32x4(a, a, 0xEE)));
}
inline float reduce_add(V a) {
  __m256 x = fold512(a.v, [](__m512 p, __m512 q) { return _mm512_add_ps(p, q); });
  __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  y = _mm_add_ps(y, _mm_movehl_ps(y, y));
  return _mm_cvtss_f32(_mm_add_ss(y, _mm_shuffle_ps(y, y, 1)));
}
inline float reduce_max(V a) {
  __m256 x = fold512(a.v, [](__m512 p, __m512 q) { return _mm512_max_ps(p, q); });
  __m128 y = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  y = _mm_max_ps(y, _mm_movehl_ps(y, y));
  return _mm_cvtss_f32(_mm_max_ss(y, _mm_shuffle_ps(y, y, 1)));
}
inline V round_nearest(V a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
// 2^n for integral-valued n in [-126, 127]
inline V pow2i(V n) {
  __m512i i = _mm512_cvtps_epi32(n.v);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(i, _mm512_set1_epi32(127)), 23))};
}
inline V select_lt(V a, V b, V x, V y) { return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)}; }  // a < b ? x : y
inline V select_gt(V a, V b, V x, V y) { return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ), y.v, x.v)}; }
inline V max_keep_nan(V m, V s) {  // (s where s > m or s is NaN, else m)
  const __mmask16 k = _mm512_cmp_ps_mask(s.v, m.v, _CMP_GT_OQ) | _mm512_cmp_ps_mask(s.v, s.v, _CMP_UNORD_Q);
  return {_mm512_mask_blend_ps(k, m.v, s.v)};
}
// lane k = reduce_add(x[k]), bit for bit: the same pairs (i, i + 8), (i, i + 4), (i, i + 2), (i, i + 1) added for
// all W vectors at once, ~3 operations a vector instead of 9
inline V reduce_adds(const V x[W]) {
  __m512 y[8], z[4], w[2];
  for (int p = 0; p < 8; p++)  // 256-bit halves: lanes 0-7 vector 2p's, 8-15 vector 2p + 1's
    y[p] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * p].v, x[2 * p + 1].v, 0x44),
                         _mm512_shuffle_f32x4(x[2 * p].v, x[2 * p + 1].v, 0xEE));
  for (int q = 0; q < 4; q++)  // 128-bit lane r: vector 4q + r's
    z[q] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], 0xDD));
  for (int h = 0; h < 2; h++) {  // lane r: two of vector 8h + r's, two of 8h + 4 + r's
    const __m512d a = _mm512_castps_pd(z[2 * h]), b = _mm512_castps_pd(z[2 * h + 1]);
    w[h] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
  // (lane 4 r + e holds vector r + 4 e's sum)
  return {_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r)};
}

#elif defined(PT_ISA_AVX2)
constexpr int W = 8;
struct V { __m256 v; };
inline V zero() { return {_mm256_setzero_ps()}; }
inline V set1(float x) { return {_mm256_set1_ps(x)}; }
inline V load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V load_partial(const float* p, int64_t n) { return {_mm256_maskload_ps(p, tail_mask(n))}; }
inline void store_partial(float* p, V a, int64_t n) { _mm256_maskstore_ps(p, tail_mask(n), a.v); }
inline V add(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V sub(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V div(V a, V b) { return {_mm256_div_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V fnma(V a, V b, V c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline V max(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
inline V sqrt_v(V a) { return {_mm256_sqrt_ps(a.v)}; }
inline V min(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }
inline float hsum128(__m128 x) {
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
inline float hmax128(__m128 x) {
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
inline float reduce_add(V a) { return hsum128(_mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1))); }
inline float reduce_max(V a) { return hmax128(_mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1))); }
inline V round_nearest(V a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V pow2i(V n) {
  __m256i i = _mm256_cvtps_epi32(n.v);
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i, _mm256_set1_epi32(127)), 23))};
}
inline V select_lt(V a, V b, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))}; }
inline V select_gt(V a, V b, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ))}; }
inline V max_keep_nan(V m, V s) {
  const __m256 take = _mm256_or_ps(_mm256_cmp_ps(s.v, m.v, _CMP_GT_OQ), _mm256_cmp_ps(s.v, s.v, _CMP_UNORD_Q));
  return {_mm256_blendv_ps(m.v, s.v, take)};
}
inline V reduce_adds(const V x[W]) {  // (pairs (i, i + 4), (i, i + 2), (i, i + 1))
  __m256 y[4], z[2];
  for (int p = 0; p < 4; p++)  // lanes 0-3 vector 2p's, 4-7 vector 2p + 1's
    y[p] = _mm256_add_ps(_mm256_permute2f128_ps(x[2 * p].v, x[2 * p + 1].v, 0x20),
                         _mm256_permute2f128_ps(x[2 * p].v, x[2 * p + 1].v, 0x31));
  for (int h = 0; h < 2; h++) {  // 128-bit lane r: two of vector 4h + r's, two of 4h + 2 + r's
    const __m256d a = _mm256_castps_pd(y[2 * h]), b = _mm256_castps_pd(y[2 * h + 1]);
    z[h] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  }
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(z[0], z[1], 0x88), _mm256_shuffle_ps(z[0], z[1], 0xDD));
  return {_mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))};  // (lane 4 r + e: 2 e + r's)
}

#elif defined(__SSE2__)
constexpr int W = 4;
struct V { __m128 v; };
inline V zero() { return {_mm_setzero_ps()}; }
inline V set1(float x) { return {_mm_set1_ps(x)}; }
inline V load(const float* p) { return {_mm_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm_storeu_ps(p, a.v); }
inline V load_partial(const float* p, int64_t n) {
  alignas(16) float t[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t i = 0; i < n; i++) t[i] = p[i];
  return {_mm_load_ps(t)};
}
inline void store_partial(float* p, V a, int64_t n) {
  alignas(16) float t[4];
  _mm_store_ps(t, a.v);
  for (int64_t i = 0; i < n; i++) p[i] = t[i];
}
inline V add(V a, V b) { return {_mm_add_ps(a.v, b.v)}; }
inline V sub(V a, V b) { return {_mm_sub_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm_mul_ps(a.v, b.v)}; }
inline V div(V a, V b) { return {_mm_div_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm_add_ps(_mm_mul_ps(a.v, b.v), c.v)}; }
inline V fnma(V a, V b, V c) { return {_mm_sub_ps(c.v, _mm_mul_ps(a.v, b.v))}; }
inline V max(V a, V b) { return {_mm_max_ps(a.v, b.v)}; }
inline V sqrt_v(V a) { return {_mm_sqrt_ps(a.v)}; }
inline V min(V a, V b) { return {_mm_min_ps(a.v, b.v)}; }
inline float reduce_add(V a) {
  __m128 x = _mm_add_ps(a.v, _mm_movehl_ps(a.v, a.v));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
inline float reduce_max(V a) {
  __m128 x = _mm_max_ps(a.v, _mm_movehl_ps(a.v, a.v));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
inline V round_nearest(V a) { return {_mm_cvtepi32_ps(_mm_cvtps_epi32(a.v))}; }  // |a| < 2^31 here
inline V pow2i(V n) {
  __m128i i = _mm_cvtps_epi32(n.v);
  return {_mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(i, _mm_set1_epi32(127)), 23))};
}
inline V select_mask(__m128 m, V x, V y) { return {_mm_or_ps(_mm_and_ps(m, x.v), _mm_andnot_ps(m, y.v))}; }
inline V select_lt(V a, V b, V x, V y) { return select_mask(_mm_cmplt_ps(a.v, b.v), x, y); }
inline V select_gt(V a, V b, V x, V y) { return select_mask(_mm_cmpgt_ps(a.v, b.v), x, y); }
inline V max_keep_nan(V m, V s) {
  return select_mask(_mm_or_ps(_mm_cmpgt_ps(s.v, m.v), _mm_cmpunord_ps(s.v, s.v)), s, m);
}
inline V reduce_adds(const V x[W]) {  // (pairs (i, i + 2), (i, i + 1))
  __m128 y[2];
  for (int p = 0; p < 2; p++) {
    const __m128d a = _mm_castps_pd(x[2 * p].v), b = _mm_castps_pd(x[2 * p + 1].v);
    y[p] = _mm_add_ps(_mm_castpd_ps(_mm_unpacklo_pd(a, b)), _mm_castpd_ps(_mm_unpackhi_pd(a, b)));
  }
  return {_mm_add_ps(_mm_shuffle_ps(y[0], y[1], 0x88), _mm_shuffle_ps(y[0], y[1], 0xDD))};
}

#else  // portable scalar fallback (aarch64 and others build this as their baseline)
constexpr int W = 1;
struct V { float v; };
inline V zero() { return {0.f}; }
inline V set1(float x) { return {x}; }
inline V load(const float* p) { return {*p}; }
inline void store(float* p, V a) { *p = a.v; }
inline V load_partial(const float* p, int64_t n) { return {n > 0 ? *p : 0.f}; }
inline void store_partial(float* p, V a, int64_t n) { if (n > 0) *p = a.v; }
inline V add(V a, V b) { return {a.v + b.v}; }
inline V sub(V a, V b) { return {a.v - b.v}; }
inline V mul(V a, V b) { return {a.v * b.v}; }
inline V div(V a, V b) { return {a.v / b.v}; }
inline V fma(V a, V b, V c) { return {a.v * b.v + c.v}; }
inline V fnma(V a, V b, V c) { return {c.v - a.v * b.v}; }
inline V max(V a, V b) { return {a.v > b.v ? a.v : b.v}; }
inline V sqrt_v(V a) { return {std::sqrt(a.v)}; }
inline V min(V a, V b) { return {a.v < b.v ? a.v : b.v}; }
inline float reduce_add(V a) { return a.v; }
inline float reduce_max(V a) { return a.v; }
inline V round_nearest(V a) { return {std::nearbyint(a.v)}; }
inline V pow2i(V n) {
  int32_t bits = ((int32_t)n.v + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return {f};
}
inline V select_lt(V a, V b, V x, V y) { return a.v < b.v ? x : y; }
inline V select_gt(V a, V b, V x, V y) { return a.v > b.v ? x : y; }
inline V max_keep_nan(V m, V s) { return {max_keep_nan(m.v, s.v)}; }
inline V reduce_adds(const V x[W]) { return x[0]; }
#endif

// r[i][j] <- r[j][i]: a W x W block of floats, one row per vector
inline void transpose(V r[W]) {
#if defined(PT_ISA_AVX512)
  __m512 t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  auto lo64 = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  auto hi64 = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  for (int i = 0; i < 4; i++) {  // u[4i + c], 128-bit lane L = column 4L + c of rows 4i .. 4i + 3
    u[4 * i + 0] = lo64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 1] = hi64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 2] = lo64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = hi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; c++) {  // 4 x 4 transpose of 128-bit lanes
    __m512 p0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), p1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    __m512 p2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), p3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c].v = _mm512_shuffle_f32x4(p0, p2, 0x88);
    r[4 + c].v = _mm512_shuffle_f32x4(p0, p2, 0xDD);
    r[8 + c].v = _mm512_shuffle_f32x4(p1, p3, 0x88);
    r[12 + c].v = _mm512_shuffle_f32x4(p1, p3, 0xDD);
  }
#elif defined(PT_ISA_AVX2)
  __m256 t[8], s[8];
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int h = 0; h < 2; h++) {
    s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int c = 0; c < 4; c++) {
    r[c].v = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[4 + c].v = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
#elif defined(__SSE2__)
  _MM_TRANSPOSE4_PS(r[0].v, r[1].v, r[2].v, r[3].v);
#else
  (void)r;  // 1 x 1
#endif
}

// r = min(W, remaining) lanes: a full vector or a masked tail
inline V loadn(const float* p, int64_t r) { return r >= W ? load(p) : load_partial(p, r); }

// bfloat16 (the top 16 bits of a float32, stored as uint16) widened to float32 in registers: exact.
inline float bf16_to_float(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline V load_bf16(const uint16_t* p) {
#if defined(PT_ISA_AVX512)
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16))};
#elif defined(PT_ISA_AVX2)
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16))};
#elif defined(__SSE2__)
  return {_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i*)p)))};
#else
  return {bf16_to_float(p[0])};
#endif
}
// int8 widened to float32 in registers (int8 weights; their per-row scale is applied to the sums).
inline V load_i8(const int8_t* p) {
#if defined(PT_ISA_AVX512)
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)))};
#elif defined(PT_ISA_AVX2)
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)))};
#elif defined(__SSE2__)
  int32_t four;
  std::memcpy(&four, p, 4);
  __m128i x = _mm_cvtsi32_si128(four);
  x = _mm_unpacklo_epi8(x, x);                                   // each byte twice
  return {_mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(x, x), 24))};  // sign-extended to 32 bits
#else
  return {(float)p[0]};
#endif
}
// r = min(W, remaining) narrow values widened: a full vector (load(p)), or a tail one value at a time (widen)
template <class T, class Load, class Widen>
inline V loadn_widened(const T* p, int64_t r, Load load_full, Widen widen) {
  if (r >= W) return load_full(p);
  alignas(64) float tmp[W] = {};
  for (int64_t i = 0; i < r; i++) tmp[i] = widen(p[i]);
  return load(tmp);
}
inline V loadn_i8(const int8_t* p, int64_t r) {
  return loadn_widened(p, r, load_i8, [](int8_t x) { return (float)x; });
}
inline V loadn_bf16(const uint16_t* p, int64_t r) { return loadn_widened(p, r, load_bf16, bf16_to_float); }
inline void storen(float* p, V a, int64_t r) {
  if (r >= W)
    store(p, a);
  else
    store_partial(p, a, r);
}

// IEEE half (float16: a KV cache's storage) and float32: widened exactly; narrowed to the nearest half (ties to
// even) after saturating at +-65504, the largest finite half, so that a finite float stays finite (inf and NaN stay
// what they are). NumPy's float16 cast of a value so saturated gives the same bits.
inline float f16_to_float(uint16_t h) {
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return (float)x;
}
inline uint16_t float_to_f16(float f) {
  const bool finite = std::fabs(f) <= 3.4028234663852886e38f;  // (NaN: false)
  const _Float16 x = (_Float16)(!finite ? f : f > 65504.f ? 65504.f : f < -65504.f ? -65504.f : f);
  uint16_t h;
  std::memcpy(&h, &x, 2);
  return h;
}
// Whether halves widen in registers (F16C); the baseline converts one value at a time (a libgcc call on x86-64)
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
constexpr bool kF16InRegisters = true;
#else
constexpr bool kF16InRegisters = false;
#endif
inline V loadn_f16(const uint16_t* p, int64_t r) {
#if defined(PT_ISA_AVX512)
  const auto full = [](const uint16_t* q) { return V{_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)q))}; };
#elif defined(PT_ISA_AVX2)
  const auto full = [](const uint16_t* q) { return V{_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)q))}; };
#else
  const auto full = [](const uint16_t* q) {
    alignas(64) float t[W];
    for (int i = 0; i < W; i++) t[i] = f16_to_float(q[i]);
    return load(t);
  };
#endif
  return loadn_widened(p, r, full, f16_to_float);
}
// p[0 .. min(r, W)) = a narrowed to halves
inline void storen_f16(uint16_t* p, V a, int64_t r) {
#if defined(PT_ISA_AVX512)
  const __m512 c = _mm512_min_ps(_mm512_set1_ps(65504.f), _mm512_max_ps(_mm512_set1_ps(-65504.f), a.v));  // (NaN: a)
  const __m512 s = _mm512_mask_blend_ps(_mm512_fpclass_ps_mask(a.v, 0x18), c, a.v);  // (+-inf: a)
  const __m256i h = _mm512_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (r >= W)
    _mm256_storeu_si256((__m256i*)p, h);
  else
    _mm256_mask_storeu_epi16(p, (__mmask16)tail_mask(r), h);
#elif defined(PT_ISA_AVX2)
  const __m256 c = _mm256_min_ps(_mm256_set1_ps(65504.f), _mm256_max_ps(_mm256_set1_ps(-65504.f), a.v));  // (NaN: a)
  const __m256 inf = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v), _mm256_set1_ps(INFINITY), _CMP_EQ_OQ);
  const __m256 s = _mm256_blendv_ps(c, a.v, inf);  // (+-inf: a)
  const __m128i h = _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (r >= W) {
    _mm_storeu_si128((__m128i*)p, h);
  } else {
    alignas(16) uint16_t t[8];
    _mm_store_si128((__m128i*)t, h);
    std::memcpy(p, t, 2 * r);
  }
#else
  alignas(64) float t[W];
  store(t, a);
  for (int64_t i = 0; i < r && i < W; i++) p[i] = float_to_f16(t[i]);
#endif
}
// y[0 .. n) = x[0 .. n) as halves, and back
inline void floats_to_f16(uint16_t* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += W) storen_f16(y + i, loadn(x + i, n - i), n - i);
}
inline void f16_to_floats(float* y, const uint16_t* x, int64_t n) {
  for (int64_t i = 0; i < n; i += W) storen(y + i, loadn_f16(x + i, n - i), n - i);
}

// dst[d * ldd + j] = X[j * rs + d] for the n rows j of X (len floats each, rs apart), d < len; columns
// n .. width of dst zeroed (width a multiple of W). W x W blocks transposed in registers: the GEMM's weight
// panels and attention's key / query tiles.
inline void transpose_rows(float* dst, int64_t ldd, const float* X, int64_t rs, int64_t n, int64_t len,
                           int64_t width) {
  for (int64_t j0 = 0; j0 < width; j0 += W) {
    for (int64_t d0 = 0; d0 < len; d0 += W) {
      const int64_t nd = len - d0 < W ? len - d0 : W;
      V r[W];
      for (int64_t jj = 0; jj < W; jj++) r[jj] = j0 + jj < n ? loadn(X + (j0 + jj) * rs + d0, nd) : zero();
      transpose(r);
      for (int64_t dd = 0; dd < nd; dd++) store(dst + (d0 + dd) * ldd + j0, r[dd]);
    }
  }
}

// a with the lanes from r on set to 0
inline V keep_first(V a, int64_t r) {
  if (r >= W) return a;
#if defined(PT_ISA_AVX512)
  return {_mm512_maskz_mov_ps(tail_mask(r), a.v)};
#elif defined(PT_ISA_AVX2)
  return {_mm256_and_ps(a.v, _mm256_castsi256_ps(tail_mask(r)))};
#else
  alignas(64) float t[W];
  store(t, a);
  for (int64_t j = r; j < W; j++) t[j] = 0.f;
  return load(t);
#endif
}

// exp(x), relative error ~2 ulp over the float range; exp(x) = 0 for x < -86 (including -inf).
// exp(-86) = 4.5e-38 is still a normal float, and keeping every intermediate normal
// matters -- an instruction that produces a denormal takes a microcode assist (measured 245 instead of 11
// cycles per vector when masked -inf lanes underflowed in vscalefps).
inline V exp(V x) {
  const V lo = set1(-86.f), hi = set1(88.72283f);
  V xc = min(hi, max(lo, x));  // operand order keeps NaN (the second operand wins)
  V n = round_nearest(mul(xc, set1(1.44269504088896341f)));
  V r = fnma(n, set1(0.693359375f), xc);  // Cody-Waite: ln2 split in a high and a low part
  r = fnma(n, set1(-2.12194440e-4f), r);
  V p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  p = fma(p, mul(r, r), add(r, set1(1.f)));
#if defined(PT_ISA_AVX512)
  V y = {_mm512_scalef_ps(p.v, n.v)};  // p * 2^n in one instruction
#else
  // split 2^n in two factors so that n = 128 (x near the top of the range) does not overflow the exponent
  V n1 = round_nearest(mul(n, set1(0.5f)));
  V y = mul(mul(p, pow2i(n1)), pow2i(sub(n, n1)));
#endif
  return select_lt(x, lo, zero(), y);
}

// erf(x): rational approximation (as in Eigen), |error| < 2e-7 absolute, inputs clamped to [-4, 4].
inline V erf(V a) {
  V x = min(set1(4.f), max(set1(-4.f), a));  // NaN propagates
  V x2 = mul(x, x);
  V p = set1(-2.72614225801306e-10f);
  p = fma(x2, p, set1(2.77068142495902e-08f));
  p = fma(x2, p, set1(-2.10102402082508e-06f));
  p = fma(x2, p, set1(-5.69250639462346e-05f));
  p = fma(x2, p, set1(-7.34990630326855e-04f));
  p = fma(x2, p, set1(-2.95459980854025e-03f));
  p = fma(x2, p, set1(-1.60960333262415e-02f));
  p = mul(x, p);
  V q = set1(-1.45660718464996e-05f);
  q = fma(x2, q, set1(-2.13374055278905e-04f));
  q = fma(x2, q, set1(-1.68282697438203e-03f));
  q = fma(x2, q, set1(-7.37332916720468e-03f));
  q = fma(x2, q, set1(-1.42647390514189e-02f));
  return div(p, q);
}

// 1 / (1 + exp(-x)), safe for any x
inline V sigmoid(V x) { return div(set1(1.f), add(set1(1.f), exp(sub(zero(), x)))); }

}  // namespace simd

// Threads for the next parallel region (1 without OpenMP).
inline int threads() { return pt::kernel_threads(); }

}  // namespace PT_NS
}  // namespace pt

namespace pt {
namespace PT_NS {
// Below these sizes a kernel runs on the calling thread alone: the work (about 20-60 us on one core) is too
// small to pay for waking a team, and on a busy machine a team member that the OS has descheduled would hold
// every small op for a whole time slice (bench/contention.py measures it). Elements for streaming kernels,
// multiply-adds for products.
constexpr int64_t kParallelElements = 1 << 16;
constexpr int64_t kParallelMacs = 1 << 20;
constexpr int64_t kParallelGemvMacs = 1 << 18;  // a product with 1-3 rows streams its weights from memory

// body(i) for i in [0, n), split over nt threads (kDynamic: in chunks of one as the threads come free, else a fixed
// share each), or with nt 1 (a kernel's work below its threshold) or n under 2 on the calling thread, outside any
// OpenMP region: libgomp ends every region, a team of one too, in a barrier whose last thread wakes its futex with
// a system call -- ~500 of them a decoded SmolLM2 token at one thread (bench/NOTES.md, session 24).
template <bool kDynamic = false, class F>
inline void parallel_for(int64_t n, int nt, F&& body) {
  if (nt <= 1 || n < 2) {
    for (int64_t i = 0; i < n; i++) body(i);
  } else if constexpr (kDynamic) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; i++) body(i);
  } else {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) body(i);
  }
}

// Runs f(begin, end) over [0, n) in chunks spread over the threads; serial when n is small. The threads take
// chunks as they come free (dynamic), not a fixed share each: when one shares its core with another thread
// (NumPy's OpenBLAS pool spins about 0.1 s after each call), the other takes over more of the work instead of
// waiting for it at the end (bench/contention.py --cases after). Each element is computed alone, so the result
// does not depend on which thread computes it.
template <class F>
inline void parallel_chunks(int64_t n, int64_t chunk, F f) {
  const int64_t nchunks = (n + chunk - 1) / chunk;
  parallel_for<true>(nchunks, n >= kParallelElements ? threads() : 1, [&](int64_t c) {
    const int64_t b = c * chunk, e = b + chunk < n ? b + chunk : n;
    f(b, e);
  });
}

// Applies a vector function elementwise over [b, e) with a masked tail: g(simd::V) -> simd::V.
// Four vectors per step, all loads before any store: independent chains for the out-of-order core, and no
// load waits behind a store to the same address bits. One vector at a time ran 3.5x slower when out sat
// 16-48 bytes past inp modulo 4 KB (each load was held behind the previous result's store: 4K aliasing;
// NOTES.md), an offset NumPy's allocator hands out by chance.
template <class G>
inline void map_vec(float* out, const float* in, int64_t b, int64_t e, G g) {
  using namespace simd;
  int64_t i = b;
  for (; i + 4 * W <= e; i += 4 * W) {
    V x0 = load(in + i), x1 = load(in + i + W), x2 = load(in + i + 2 * W), x3 = load(in + i + 3 * W);
    x0 = g(x0), x1 = g(x1), x2 = g(x2), x3 = g(x3);
    store(out + i, x0), store(out + i + W, x1), store(out + i + 2 * W, x2), store(out + i + 3 * W, x3);
  }
  for (; i + W <= e; i += W) store(out + i, g(load(in + i)));
  if (i < e) store_partial(out + i, g(load_partial(in + i, e - i)), e - i);
}

// Same for two inputs: g(V x, V y) -> V.
template <class G>
inline void map_vec2(float* out, const float* in0, const float* in1, int64_t b, int64_t e, G g) {
  using namespace simd;
  int64_t i = b;
  for (; i + 4 * W <= e; i += 4 * W) {
    V x0 = load(in0 + i), x1 = load(in0 + i + W), x2 = load(in0 + i + 2 * W), x3 = load(in0 + i + 3 * W);
    V y0 = load(in1 + i), y1 = load(in1 + i + W), y2 = load(in1 + i + 2 * W), y3 = load(in1 + i + 3 * W);
    x0 = g(x0, y0), x1 = g(x1, y1), x2 = g(x2, y2), x3 = g(x3, y3);
    store(out + i, x0), store(out + i + W, x1), store(out + i + 2 * W, x2), store(out + i + 3 * W, x3);
  }
  for (; i + W <= e; i += W) store(out + i, g(load(in0 + i), load(in1 + i)));
  if (i < e) store_partial(out + i, g(load_partial(in0 + i, e - i), load_partial(in1 + i, e - i)), e - i);
}

// Row kernels (layernorm, softmax) ask for the next row while they work on this one: at each row start
// the hardware prefetcher has not caught up and the loads stall (bench/NOTES.md). Rows longer than
// kPrefetchRowMax are left to the hardware prefetcher. Prefetches never fault, but callers stay in bounds.
constexpr int64_t kPrefetchRowMax = 16384;  // bytes
inline void prefetch_row(const float* p, int64_t n) {
  if (n * 4 > kPrefetchRowMax) return;
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < n * 4; i += 64) __builtin_prefetch(c + i, 0, 3);
}
inline void prefetch_row_for_write(float* p, int64_t n) {
  if (n * 4 > kPrefetchRowMax) return;
  char* c = reinterpret_cast<char*>(p);
  for (int64_t i = 0; i < n * 4; i += 64) __builtin_prefetch(c + i, 1, 3);
}

// A row-wise map from in (N, C) to out (N, C): row(n, x, y) for each row n (x = its input, y = its output), in
// parallel when N * C is worth a team; while row n is computed, row n + 1 of in is fetched and of out owned for
// writing.
template <class Row>
inline void map_rows(float* out, const float* in, int64_t N, int64_t C, Row row) {
  parallel_for(N, N * C >= kParallelElements ? threads() : 1, [&](int64_t n) {
    const float* x = in + n * C;
    float* y = out + n * C;
    if (n + 1 < N) {
      prefetch_row(x + C, C);
      prefetch_row_for_write(y + C, C);
    }
    row(n, x, y);
  });
}

constexpr int64_t kElementChunk = 1 << 15;

// A per-thread scratch area, 64-byte aligned (a full-vector load never splits a cache line), grown on
// demand and kept for the thread's lifetime: declare it `static thread_local`.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }
  float* floats(size_t n) {
    if (n > size_) {
      std::free(data_);
      size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      size_t align = 64;
#if defined(__linux__)
      // large buffers on 2 MB pages when the kernel allows it (THP "madvise"): GEMM panels are streamed
      // from L2 and a 4 KB page per 64 panel rows costs TLB misses (nested page walks in a VM)
      constexpr size_t kHuge = size_t(2) << 20;
      if (bytes >= kHuge / 4) {
        bytes = (bytes + kHuge - 1) / kHuge * kHuge;
        align = kHuge;
      }
#endif
      data_ = static_cast<float*>(std::aligned_alloc(align, bytes));
#if defined(__linux__)
      if (data_ && align > 64) madvise(data_, bytes, MADV_HUGEPAGE);
#endif
      if (!data_) std::abort();  // a few MB per thread; nothing sensible is left to do without them
      size_ = bytes / sizeof(float);
    }
    return data_;
  }
  double* doubles(size_t n) { return reinterpret_cast<double*>(floats(2 * n)); }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};  // elements per task in elementwise kernels (128 KiB)
}  // namespace PT_NS
}  // namespace pt
