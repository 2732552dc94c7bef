// GGUF (ggml) blocks, dequantised to float32: one row at a time (quant.cpp: dequantize_row, the scalar decodes and
// the wider ones) and 32-value blocks in registers for the products (Block32, read by matmul.cpp's row paths).
// Per ISA variant, like every kernel source. The layouts (little-endian, packed, as ggml-common.h lays them out)
// are the structs below; fp16 scales are widened exactly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "pytransformer/kernels.h"
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

// --- the blocks -------------------------------------------------------------------------------------------------
// 32 values: x[j] and x[j + 16] from byte j of qs (its low and high nibble), and bits j and j + 16 of qh (Q5's
// fifth bit).
struct BlockQ4_0 {  // x = (q - 8) d
  static constexpr int kValues = 32;
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ4_1 {  // x = q d + m
  static constexpr int kValues = 32;
  uint16_t d, m;
  uint8_t qs[16];
};
struct BlockQ5_0 {  // x = (q - 16) d, q = nibble | qh bit << 4
  static constexpr int kValues = 32;
  uint16_t d;
  uint8_t qh[4], qs[16];
};
struct BlockQ5_1 {  // x = q d + m, q as Q5_0's
  static constexpr int kValues = 32;
  uint16_t d, m;
  uint8_t qh[4], qs[16];
};
struct BlockQ8_0 {  // x = q d
  static constexpr int kValues = 32;
  uint16_t d;
  int8_t qs[32];
};
struct BlockIQ4_NL {  // x = kIQ4Values[nibble] d
  static constexpr int kValues = 32;
  uint16_t d;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockIQ4_NL) == 18, "32-value blocks");

// 256 values (QK_K) in sub-blocks of 16 or 32, each with its own scale (and min) packed in a few bits.
struct BlockQ2_K {  // 16 sub-blocks of 16: scales[s] = 4-bit scale | 4-bit min << 4, x = d sc q - dmin m,
  static constexpr int kValues = 256;  // q 2 bits: bit pair k of qs[32 h + l], h the half, k the pair of sub-blocks
  uint8_t scales[16], qs[64];
  uint16_t d, dmin;
};
struct BlockQ3_K {  // 16 sub-blocks of 16: six-bit scales (s - 32) packed in 12 bytes, x = d s q,
  static constexpr int kValues = 256;  // q = Q2_K's 2 bits - (bit 4 h + k of hmask[l] set ? 0 : 4)
  uint8_t hmask[32], qs[64], scales[12];
  uint16_t d;
};
struct BlockQ4_K {  // 8 sub-blocks of 32, six-bit (scale, min) pairs in 12 bytes: x = d sc q - dmin m; pair p of
  static constexpr int kValues = 256;  // sub-blocks from qs[32 p ..]: low nibbles, then high nibbles
  uint16_t d, dmin;
  uint8_t scales[12], qs[128];
};
struct BlockQ5_K {  // Q4_K with a fifth bit: bit 2 p (low nibbles) and 2 p + 1 (high) of qh[l]
  static constexpr int kValues = 256;
  uint16_t d, dmin;
  uint8_t scales[12], qh[32], qs[128];
};
struct BlockQ6_K {  // 16 sub-blocks of 16, int8 scales: x = d sc (q - 32), q = 4 bits of ql | 2 bits of qh << 4
  static constexpr int kValues = 256;
  uint8_t ql[128], qh[64];
  int8_t scales[16];
  uint16_t d;
};
struct BlockIQ4_XS {  // 8 sub-blocks of 32 as IQ4_NL's, six-bit scales (s - 32): 4 bits in scales_l, 2 in scales_h
  static constexpr int kValues = 256;
  uint16_t d, scales_h;
  uint8_t scales_l[4], qs[128];
};
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockIQ4_XS) == 136, "super-blocks");

// IQ4_NL and IQ4_XS's sixteen non-linear levels (ggml's kvalues_iq4nl)
alignas(16) constexpr int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};

// 16.0 in the lanes whose bit of qh (bits j .. j + W) is set, else 0: Q5's fifth bit, as a float
inline V fifth_bits(uint32_t qh, int64_t j) {
  qh >>= j;
#if defined(PT_ISA_AVX512)
  return {_mm512_maskz_mov_ps((__mmask16)qh, _mm512_set1_ps(16.f))};
#elif defined(PT_ISA_AVX2)
  const __m256i b = _mm256_srlv_epi32(_mm256_set1_epi32((int)qh), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return {_mm256_cvtepi32_ps(_mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(1)), 4))};
#elif defined(__SSE2__)
  const __m128i bit = _mm_setr_epi32(1, 2, 4, 8);
  const __m128i set = _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32((int)qh), bit), bit);
  return {_mm_cvtepi32_ps(_mm_and_si128(set, _mm_set1_epi32(16)))};
#else
  return {(float)((qh & 1) << 4)};
#endif
}

// kIQ4Values at the low (lo) and high (hi) nibbles of W bytes, as floats
inline void iq4_pair(const uint8_t* p, V& lo, V& hi) {
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
  const __m128i table = _mm_load_si128((const __m128i*)kIQ4Values), low = _mm_set1_epi8(15);
#if defined(PT_ISA_AVX512)
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
#else
  const __m128i b = _mm_loadl_epi64((const __m128i*)p);
#endif
  const __m128i l = _mm_shuffle_epi8(table, _mm_and_si128(b, low));
  const __m128i h = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(b, 4), low));
#if defined(PT_ISA_AVX512)
  lo.v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(l));
  hi.v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(h));
#else
  lo.v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(l));
  hi.v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h));
#endif
#else  // (no byte shuffle in SSE2: W table reads)
  alignas(16) float l[W], h[W];
  for (int i = 0; i < W; i++) {
    l[i] = kIQ4Values[p[i] & 15];
    h[i] = kIQ4Values[p[i] >> 4];
  }
  lo = load(l);
  hi = load(h);
#endif
}

// The 32-value block types whose products dequantise in registers (Block32) rather than through rows in L1.
constexpr bool in_registers(int qtype) {
  return qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ5_0 || qtype == kQ5_1 || qtype == kQ8_0 ||
         qtype == kIQ4_NL;
}

// One 32-value block as two halves' weights (lo: values j .. j + W, hi: 16 + j .. 16 + j + W, j < 16),
// dequantised in registers: the products' decode of the types in_registers (the rows' is in quant.cpp).
template <int QT>
struct Block32 {
  static_assert(in_registers(QT), "a 32-value block type");
  static constexpr int64_t kBytes = QT == kQ4_0 ? sizeof(BlockQ4_0) : QT == kQ4_1 ? sizeof(BlockQ4_1)
                                  : QT == kQ5_0 ? sizeof(BlockQ5_0) : QT == kQ5_1 ? sizeof(BlockQ5_1)
                                  : QT == kQ8_0 ? sizeof(BlockQ8_0) : sizeof(BlockIQ4_NL);
  static constexpr int64_t kQs = QT == kQ4_1 ? offsetof(BlockQ4_1, qs) : QT == kQ5_0 ? offsetof(BlockQ5_0, qs)
                               : QT == kQ5_1 ? offsetof(BlockQ5_1, qs) : 2;  // (the others: right after d)
  V d, m;
  const uint8_t* q;
  uint32_t qh = 0;  // (Q5: the fifth bits)
  explicit Block32(const uint8_t* b) : q(b + kQs) {
    if (QT == kQ5_0 || QT == kQ5_1) std::memcpy(&qh, q - 4, 4);  // (qh[4] just before qs)
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
    if (QT == kQ4_1 || QT == kQ5_1) {  // d and m widened together from one 4-byte load (two scalar conversions
      int32_t dm;                      // cost 15%)
      std::memcpy(&dm, b, 4);
      const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
#if defined(PT_ISA_AVX512)
      d.v = _mm512_broadcastss_ps(f);
      m.v = _mm512_broadcastss_ps(_mm_movehdup_ps(f));
#else
      d.v = _mm256_broadcastss_ps(f);
      m.v = _mm256_broadcastss_ps(_mm_movehdup_ps(f));
#endif
      return;
    }
#endif
    const float df = half_at(b);
    d = set1(df);
    m = set1(QT == kQ4_1 || QT == kQ5_1 ? half_at(b + 2) : QT == kQ4_0 ? -8.f * df : QT == kQ5_0 ? -16.f * df : 0.f);
  }
  void halves(int64_t j, V& lo, V& hi) const {
    if (QT == kQ8_0) {
      lo = mul(load_i8((const int8_t*)q + j), d);
      hi = mul(load_i8((const int8_t*)q + 16 + j), d);
    } else if (QT == kIQ4_NL) {
      iq4_pair(q + j, lo, hi);
      lo = mul(lo, d);
      hi = mul(hi, d);
    } else {
      nibble_pair(q + j, lo, hi);
      if (QT == kQ5_0 || QT == kQ5_1) {
        lo = add(lo, fifth_bits(qh, j));
        hi = add(hi, fifth_bits(qh, 16 + j));
      }
      lo = fma(lo, d, m);  // ((q - 8) d, (q - 16) d: q d and the offset exact, the one rounding of fma)
      hi = fma(hi, d, m);
    }
  }
};

// f(std::integral_constant<int, QT>{}) for a type in_registers (returns true), else false.
template <class F>
inline bool with_block32(int qtype, F&& f) {
  switch (qtype) {
    case kQ4_0: f(std::integral_constant<int, kQ4_0>{}); return true;
    case kQ4_1: f(std::integral_constant<int, kQ4_1>{}); return true;
    case kQ5_0: f(std::integral_constant<int, kQ5_0>{}); return true;
    case kQ5_1: f(std::integral_constant<int, kQ5_1>{}); return true;
    case kQ8_0: f(std::integral_constant<int, kQ8_0>{}); return true;
    case kIQ4_NL: f(std::integral_constant<int, kIQ4_NL>{}); return true;
    default: return false;
  }
}

// y (C floats) = the C values of one row x of type qtype (C a whole number of the type's blocks).
void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C);
}  // namespace PT_NS
}  // namespace pt
