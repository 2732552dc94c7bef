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
  nibble_pairs<16>(y, p + offsetof(BlockQ4_0, qs), d, -8.f * d, d, -8.f * d);
}
template <>
inline void decode<BlockQ4_1>(float* y, const uint8_t* p) {
  const float d = half_at(p + offsetof(BlockQ4_1, d)), m = half_at(p + offsetof(BlockQ4_1, m));
  nibble_pairs<16>(y, p + offsetof(BlockQ4_1, qs), d, m, d, m);
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

// 16.0 in the lanes whose bit of qh (bits j .. j + W) is set, else 0: Q5's fifth bit as a float, in registers
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

}  // namespace PT_NS
}  // namespace pt
