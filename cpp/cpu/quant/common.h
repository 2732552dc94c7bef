// What every GGUF (ggml) block family reads with: fp16 scales widened exactly, nibbles unpacked W at a time, a
// block struct copied out of a row's bytes. Per ISA variant, like every kernel source.
#pragma once
#include <cstddef>
#include <cstdint>

#include "pytransformer/kernels.h"
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

// Few rows (decoding) stream the weight rows from memory once: each thread reads its share of rows in order and
// asks for the bytes kStreamAhead on as it goes. (The hardware prefetcher, left alone, followed four rows read side
// by side block by block at half the read bandwidth: Gemma 3's 262,144-row head 2x slower.)
constexpr int64_t kStreamAhead = 4096;

inline uint16_t read16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// IEEE half -> float, exact (F16C where the variant has it)
inline float half_to_float(uint16_t h) {
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (e == 0) {  // zero or subnormal: mant * 2^-24
    const float f = (float)mant * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  const uint32_t bits = sign | (e == 31 ? 0x7F800000u | (mant << 13) : ((e + 112) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}
inline float half_at(const uint8_t* p) { return half_to_float(read16(p)); }

// a block struct read from a row's bytes (rows are not aligned to their blocks' members)
template <class B>
inline B block_at(const uint8_t* p) {
  B b;
  std::memcpy(&b, p, sizeof b);
  return b;
}

// A block struct B (ggml type id B::kType, B::kValues values) has the size kernels.h's table gives its type
template <class B>
constexpr bool in_table() {
  int64_t values = 0, bytes = 0;
  return quant_block(B::kType, &values, &bytes) && values == B::kValues && bytes == (int64_t)sizeof(B);
}

// A list of block structs, and f(B{}) for the one whose type id is qtype (false when none is).
template <class... B>
struct BlockList {};
template <class F, class... B>
inline bool with_block(BlockList<B...>, int qtype, F&& f) {
  return ((qtype == B::kType && (f(B{}), true)) || ...);
}

// put(i, v) for each W values v (i .. i + W) of a block y as a sink: stored to y
inline auto stores(float* y) {
  return [y](int64_t i, V v) { store(y + i, v); };
}

// Visit<B>::run(p, put): put(i, v) for each W values (i .. i + W, in order) of the block of type B at p, decoded in
// registers -- the one decode of the 256-value types, read by their rows (decode) and by the few-row products
// (matmul.cpp), which multiply each v as it comes instead of storing it
template <class B>
struct Visit;

// y (B::kValues floats) = the values of the block of type B at p (the 32-value types specialise it; the others
// store what Visit puts)
template <class B>
inline void decode(float* y, const uint8_t* p) {
  Visit<B>::run(p, stores(y));
}

// the low nibbles (lo) and high nibbles (hi) of W bytes, as floats, from one load
inline void nibble_pair(const uint8_t* p, V& lo, V& hi) {
#if defined(PT_ISA_AVX512)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  lo.v = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  hi.v = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
#elif defined(PT_ISA_AVX2)
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
  lo.v = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
  hi.v = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
#elif defined(__SSE2__)
  int32_t four;
  std::memcpy(&four, p, 4);
  const __m128i z = _mm_setzero_si128();
  const __m128i b = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), z), z);
  lo.v = _mm_cvtepi32_ps(_mm_and_si128(b, _mm_set1_epi32(15)));
  hi.v = _mm_cvtepi32_ps(_mm_srli_epi32(b, 4));
#else
  lo = {(float)(p[0] & 15)};
  hi = {(float)(p[0] >> 4)};
#endif
}

// W bytes widened to int32 lanes, and the few integer operations the k-quant decodes need on them
#if defined(PT_ISA_AVX512)
struct VI { __m512i v; };
inline VI widen_bytes(const uint8_t* p) { return {_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p))}; }
inline VI shr(VI a, int s) { return {_mm512_srl_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI shl(VI a, int s) { return {_mm512_sll_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI mask(VI a, int m) { return {_mm512_and_si512(a.v, _mm512_set1_epi32(m))}; }
inline VI bor(VI a, VI b) { return {_mm512_or_si512(a.v, b.v)}; }
inline VI plus(VI a, int c) { return {_mm512_add_epi32(a.v, _mm512_set1_epi32(c))}; }
inline V to_float(VI a) { return {_mm512_cvtepi32_ps(a.v)}; }
#elif defined(PT_ISA_AVX2)
struct VI { __m256i v; };
inline VI widen_bytes(const uint8_t* p) { return {_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p))}; }
inline VI shr(VI a, int s) { return {_mm256_srl_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI shl(VI a, int s) { return {_mm256_sll_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI mask(VI a, int m) { return {_mm256_and_si256(a.v, _mm256_set1_epi32(m))}; }
inline VI bor(VI a, VI b) { return {_mm256_or_si256(a.v, b.v)}; }
inline VI plus(VI a, int c) { return {_mm256_add_epi32(a.v, _mm256_set1_epi32(c))}; }
inline V to_float(VI a) { return {_mm256_cvtepi32_ps(a.v)}; }
#elif defined(__SSE2__)
struct VI { __m128i v; };
inline VI widen_bytes(const uint8_t* p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  const __m128i z = _mm_setzero_si128();
  return {_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), z), z)};
}
inline VI shr(VI a, int s) { return {_mm_srl_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI shl(VI a, int s) { return {_mm_sll_epi32(a.v, _mm_cvtsi32_si128(s))}; }
inline VI mask(VI a, int m) { return {_mm_and_si128(a.v, _mm_set1_epi32(m))}; }
inline VI bor(VI a, VI b) { return {_mm_or_si128(a.v, b.v)}; }
inline VI plus(VI a, int c) { return {_mm_add_epi32(a.v, _mm_set1_epi32(c))}; }
inline V to_float(VI a) { return {_mm_cvtepi32_ps(a.v)}; }
#else
struct VI { int32_t v; };
inline VI widen_bytes(const uint8_t* p) { return {p[0]}; }
inline VI shr(VI a, int s) { return {a.v >> s}; }
inline VI shl(VI a, int s) { return {a.v << s}; }
inline VI mask(VI a, int m) { return {a.v & m}; }
inline VI bor(VI a, VI b) { return {a.v | b.v}; }
inline VI plus(VI a, int c) { return {a.v + c}; }
inline V to_float(VI a) { return {(float)a.v}; }
#endif

// put [0..n) = lo(q) d + m, [n..2n) = hi(q) d2 + m2 over n bytes q (n a multiple of W), at offset at: Q4_0 and
// Q4_1's blocks (n = 16), Q4_K's pairs of sub-blocks (n = 32)
template <int64_t n, class Put>
inline void nibble_pairs(Put&& put, int64_t at, const uint8_t* q, float d, float m, float d2, float m2) {
  const V vd = set1(d), vm = set1(m), vd2 = set1(d2), vm2 = set1(m2);
  for (int64_t j = 0; j < n; j += W) {
    V lo, hi;
    nibble_pair(q + j, lo, hi);
    put(at + j, fma(lo, vd, vm));
    put(at + n + j, fma(hi, vd2, vm2));
  }
}

}  // namespace PT_NS
}  // namespace pt
