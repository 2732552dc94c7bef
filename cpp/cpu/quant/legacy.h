// ggml's first block family: 32 values per block, one fp16 scale d (and a min m), value j and j + 16 from byte j
// of qs (its low and high nibble; Q8_0: one int8 each), Q5's fifth bit j / j + 16 from the 32 bits of qh. Each
// type: its struct, the row decode (quant/rows.cpp); the products' decode in registers is Block32 (quant.h).
#pragma once
#include "common.h"

namespace pt {
namespace PT_NS {

struct BlockQ4_0 {  // x = (q - 8) d
  static constexpr int kType = kQ4_0, kValues = 32;
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ4_1 {  // x = q d + m
  static constexpr int kType = kQ4_1, kValues = 32;
  uint16_t d, m;
  uint8_t qs[16];
};
struct BlockQ5_0 {  // x = (q - 16) d, q = nibble | qh bit << 4
  static constexpr int kType = kQ5_0, kValues = 32;
  uint16_t d;
  uint8_t qh[4], qs[16];
};
struct BlockQ5_1 {  // x = q d + m, q as Q5_0's
  static constexpr int kType = kQ5_1, kValues = 32;
  uint16_t d, m;
  uint8_t qh[4], qs[16];
};
struct BlockQ8_0 {  // x = q d
  static constexpr int kType = kQ8_0, kValues = 32;
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34, "ggml-common.h's block sizes");
static_assert(in_table<BlockQ4_0>() && in_table<BlockQ4_1>() && in_table<BlockQ5_0>() && in_table<BlockQ5_1>() &&
              in_table<BlockQ8_0>(), "kernels.h's quant_block");

// Row decodes (y: the block's values from its bytes p). Q4_0, Q4_1, Q8_0: W values at a time in vector registers,
// read from the row in place (a copy of the block would stall each vector load on the copy's smaller stores).
// (q - 8) d: q d and 8 d are exact, so the one rounding of the fma is the rounding of the exact value.
template <>
inline void decode<BlockQ4_0>(float* y, const uint8_t* p) {
  const float d = half_at(p + offsetof(BlockQ4_0, d));
  nibble_pairs<16>(stores(y), 0, p + offsetof(BlockQ4_0, qs), d, -8.f * d, d, -8.f * d);
}
template <>
inline void decode<BlockQ4_1>(float* y, const uint8_t* p) {
  const float d = half_at(p + offsetof(BlockQ4_1, d)), m = half_at(p + offsetof(BlockQ4_1, m));
  nibble_pairs<16>(stores(y), 0, p + offsetof(BlockQ4_1, qs), d, m, d, m);
}
template <>
inline void decode<BlockQ8_0>(float* y, const uint8_t* p) {
  const V d = set1(half_at(p + offsetof(BlockQ8_0, d)));
  const int8_t* q = (const int8_t*)(p + offsetof(BlockQ8_0, qs));
  for (int64_t j = 0; j < 32; j += W) store(y + j, mul(load_i8(q + j), d));
}
// Q5_0, Q5_1: the scalar decodes, as ggml-quants.c's dequantize_row_q5_0 / _q5_1 (the compiler widens the loops)
template <>
inline void decode<BlockQ5_0>(float* y, const uint8_t* p) {
  const BlockQ5_0 b = block_at<BlockQ5_0>(p);
  const float d = half_to_float(b.d);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; j++) {
    y[j] = (float)((int)((b.qs[j] & 15) | (((qh >> j) & 1) << 4)) - 16) * d;
    y[j + 16] = (float)((int)((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * d;
  }
}
template <>
inline void decode<BlockQ5_1>(float* y, const uint8_t* p) {
  const BlockQ5_1 b = block_at<BlockQ5_1>(p);
  const float d = half_to_float(b.d), m = half_to_float(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; j++) {
    y[j] = (float)((b.qs[j] & 15) | (((qh >> j) & 1) << 4)) * d + m;
    y[j + 16] = (float)((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * d + m;
  }
}

// Q5's values j .. j + W (lo) and 16 + j .. 16 + j + W (hi) of a block as floats: the nibbles of the W bytes at q
// with bit j + lane (lo) and 16 + j + lane (hi) of qh as their fifth bit, joined as integers before the one
// conversion (the fifth bit added as a float cost two more vector operations per half); kCentred: less 16
// (Q5_0's q - 16, exact; on AVX-512 16 taken where the bit is clear instead of added where it is set: no extra
// operation)
template <bool kCentred = false>
inline void five_bit_pair(const uint8_t* q, uint32_t qh, int64_t j, V& lo, V& hi) {
#if defined(PT_ISA_AVX512)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)q)), sixteen = _mm512_set1_epi32(16);
  const __m512i l = _mm512_and_si512(b, _mm512_set1_epi32(15)), h = _mm512_srli_epi32(b, 4);
  if (kCentred) {
    lo.v = _mm512_cvtepi32_ps(_mm512_mask_sub_epi32(l, (__mmask16)~(qh >> j), l, sixteen));
    hi.v = _mm512_cvtepi32_ps(_mm512_mask_sub_epi32(h, (__mmask16)~(qh >> (16 + j)), h, sixteen));
  } else {
    lo.v = _mm512_cvtepi32_ps(_mm512_mask_or_epi32(l, (__mmask16)(qh >> j), l, sixteen));
    hi.v = _mm512_cvtepi32_ps(_mm512_mask_or_epi32(h, (__mmask16)(qh >> (16 + j)), h, sixteen));
  }
#elif defined(PT_ISA_AVX2)
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)q)), one = _mm256_set1_epi32(1);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  auto bits = [&](uint32_t from) {  // (bit from + lane of qh) << 4
    return _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> from)), lanes), one), 4);
  };
  const __m256i offset = _mm256_set1_epi32(kCentred ? 16 : 0);
  lo.v = _mm256_cvtepi32_ps(
      _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(15)), bits((uint32_t)j)), offset));
  hi.v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(b, 4), bits((uint32_t)(16 + j))), offset));
#elif defined(__SSE2__)
  nibble_pair(q, lo, hi);
  const __m128i bit = _mm_setr_epi32(1, 2, 4, 8), sixteen = _mm_set1_epi32(16);
  auto bits = [&](uint32_t from) {  // 16.0 in the lanes whose bit from + lane of qh is set
    const __m128i set = _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32((int)(qh >> from)), bit), bit);
    return V{_mm_cvtepi32_ps(_mm_and_si128(set, sixteen))};
  };
  lo = add(lo, bits((uint32_t)j));
  hi = add(hi, bits((uint32_t)(16 + j)));
#else
  nibble_pair(q, lo, hi);
  lo = add(lo, V{(float)(((qh >> j) & 1) << 4)});
  hi = add(hi, V{(float)(((qh >> (16 + j)) & 1) << 4)});
#endif
#if !defined(PT_ISA_AVX512) && !defined(PT_ISA_AVX2)
  if (kCentred) {
    lo = sub(lo, set1(16.f));
    hi = sub(hi, set1(16.f));
  }
#endif
}

}  // namespace PT_NS
}  // namespace pt
