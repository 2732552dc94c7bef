// The non-linear 4-bit family: each nibble indexes sixteen fixed levels (ggml's kvalues_iq4nl) scaled by the
// block's fp16 d. IQ4_NL: 32-value blocks laid out as Q4_0's; IQ4_XS: 256 values, 8 sub-blocks of 32 with six-bit
// scales. Each type: its struct, the row decode (quant/rows.cpp); the products decode in registers (IQ4_NL:
// Block32, IQ4_XS: its Visit).
#pragma once
#include "common.h"

namespace pt {
namespace PT_NS {

struct BlockIQ4_NL {  // x = kIQ4Values[nibble] d
  static constexpr int kType = kIQ4_NL, kValues = 32;
  uint16_t d;
  uint8_t qs[16];
};
struct BlockIQ4_XS {  // sub-block s: x = d (ls - 32) kIQ4Values[nibble], ls = 4 bits of scales_l | 2 of scales_h << 4
  static constexpr int kType = kIQ4_XS, kValues = 256;
  uint16_t d, scales_h;
  uint8_t scales_l[4], qs[128];
};
static_assert(sizeof(BlockIQ4_NL) == 18 && sizeof(BlockIQ4_XS) == 136, "ggml-common.h's block sizes");
static_assert(in_table<BlockIQ4_NL>() && in_table<BlockIQ4_XS>(), "kernels.h's quant_block");

alignas(16) constexpr int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};

// kIQ4Values at the low (lo) and high (hi) nibbles of W bytes, as floats
inline void iq4_pair(const uint8_t* p, V& lo, V& hi) {
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)  // (the table in one register, read by a byte shuffle)
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
#else  // (SSE2 has no byte shuffle: W table reads)
  alignas(16) float l[W], h[W];
  for (int i = 0; i < W; i++) {
    l[i] = kIQ4Values[p[i] & 15];
    h[i] = kIQ4Values[p[i] >> 4];
  }
  lo = load(l);
  hi = load(h);
#endif
}

// IQ4_NL: the scalar decode, as ggml-quants.c's dequantize_row_iq4_nl
template <>
inline void decode<BlockIQ4_NL>(float* y, const uint8_t* p) {
  const BlockIQ4_NL b = block_at<BlockIQ4_NL>(p);
  const float d = half_to_float(b.d);
  for (int j = 0; j < 16; j++) {
    y[j] = d * (float)kIQ4Values[b.qs[j] & 15];
    y[j + 16] = d * (float)kIQ4Values[b.qs[j] >> 4];
  }
}
// IQ4_XS: each sub-block as an IQ4_NL block, W values at a time
template <>
struct Visit<BlockIQ4_XS> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {  // (the nibbles read from the row in place)
    const float d = half_at(p + offsetof(BlockIQ4_XS, d));
    const uint16_t scales_h = read16(p + offsetof(BlockIQ4_XS, scales_h));
    const uint8_t* scales_l = p + offsetof(BlockIQ4_XS, scales_l);
    const uint8_t* qs = p + offsetof(BlockIQ4_XS, qs);
    for (int s = 0; s < 8; s++) {
      const int ls = ((scales_l[s / 2] >> (4 * (s % 2))) & 15) | (((scales_h >> (2 * s)) & 3) << 4);
      const V dl = set1(d * (float)(ls - 32));
      for (int j = 0; j < 16; j += W) {
        V lo, hi;
        iq4_pair(qs + 16 * s + j, lo, hi);
        put(32 * s + j, mul(lo, dl));
        put(32 * s + 16 + j, mul(hi, dl));
      }
    }
  }
};

}  // namespace PT_NS
}  // namespace pt
