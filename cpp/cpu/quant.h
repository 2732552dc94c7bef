// Dequantising one row of a GGUF (ggml) tensor into float32: shared by quant.cpp (dequantize_rows) and the
// quantised products in matmul.cpp. Per ISA variant, like every kernel source.
#pragma once
#include <cstdint>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

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

// the low (HIGH = false: b & 15) or high (b >> 4) nibbles of W bytes, as floats
template <bool HIGH>
inline V nibbles(const uint8_t* p) {  // (one load each; nibble_pair gets both halves from one)
#if defined(PT_ISA_AVX512)
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  b = HIGH ? _mm512_srli_epi32(b, 4) : _mm512_and_si512(b, _mm512_set1_epi32(15));
  return {_mm512_cvtepi32_ps(b)};
#elif defined(PT_ISA_AVX2)
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
  b = HIGH ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(15));
  return {_mm256_cvtepi32_ps(b)};
#elif defined(__SSE2__)
  int32_t four;
  std::memcpy(&four, p, 4);
  const __m128i z = _mm_setzero_si128();
  __m128i b = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), z), z);
  b = HIGH ? _mm_srli_epi32(b, 4) : _mm_and_si128(b, _mm_set1_epi32(15));
  return {_mm_cvtepi32_ps(b)};
#else
  return {(float)(HIGH ? p[0] >> 4 : p[0] & 15)};
#endif
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
#else
  lo = nibbles<false>(p);
  hi = nibbles<true>(p);
#endif
}


// y (C floats) = the C values of one row x of type qtype (C a whole number of the type's blocks).
void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C);
}  // namespace PT_NS
}  // namespace pt
