// GGUF (ggml) rows dequantised to float32: each block type by its family's decode (legacy.h, kquants.h, iq4.h),
// the float types widened here. An embedding lookup in a quantised table is dequantize_rows; the products with
// many rows widen weight rows with dequantize_row (matmul.cpp).
#include <algorithm>

#include "quant.h"

namespace pt {
namespace PT_NS {

namespace {
// y (C floats) = the blocks of type B in x, one decode each
template <class B>
void decode_row(float* y, const uint8_t* x, int64_t C) {
  for (int64_t i = 0; i < C / B::kValues; i++) decode<B>(y + i * B::kValues, x + i * sizeof(B));
}

void f16_row(float* y, const uint8_t* x, int64_t C) {
  int64_t i = 0;
#if defined(PT_ISA_AVX512)
  for (; i + 16 <= C; i += 16)
    _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(x + 2 * i))));
#elif defined(PT_ISA_AVX2)
  for (; i + 8 <= C; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + 2 * i))));
#elif defined(__SSE2__)  // (no F16C: exponent and mantissa shifted into place and scaled by 2^112, which makes
                         // subnormal halves normal floats exactly; infinities and NaNs take the all-ones exponent)
  const __m128i magnitude = _mm_set1_epi32(0x7FFF), top = _mm_set1_epi32(0x7BFF), ones = _mm_set1_epi32(0x7F800000);
  const __m128 scale = _mm_castsi128_ps(_mm_set1_epi32(0x77800000));  // 2^112
  for (; i + 4 <= C; i += 4) {
    const __m128i h = _mm_unpacklo_epi16(_mm_loadl_epi64((const __m128i*)(x + 2 * i)), _mm_setzero_si128());
    const __m128i em = _mm_and_si128(h, magnitude), shifted = _mm_slli_epi32(em, 13);
    const __m128i special = _mm_cmpgt_epi32(em, top);
    const __m128i finite = _mm_castps_si128(_mm_mul_ps(_mm_castsi128_ps(shifted), scale));
    const __m128i bits = _mm_or_si128(_mm_andnot_si128(special, finite),
                                      _mm_and_si128(special, _mm_or_si128(shifted, ones)));
    const __m128i sign = _mm_slli_epi32(_mm_andnot_si128(magnitude, h), 16);
    _mm_storeu_ps(y + i, _mm_castsi128_ps(_mm_or_si128(bits, sign)));
  }
#endif
  for (; i < C; i++) y[i] = half_at(x + 2 * i);
}

void bf16_row(float* y, const uint8_t* x, int64_t C) {
  for (int64_t i = 0; i < C; i += W) {
    uint16_t tmp[W];
    const int64_t r = std::min<int64_t>(W, C - i);
    std::memcpy(tmp, x + 2 * i, (size_t)r * 2);
    storen(y + i, loadn_bf16(tmp, r), r);
  }
}
}  // namespace

void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C) {
  switch (qtype) {
    case kF32: std::memcpy(y, x, (size_t)C * sizeof(float)); return;
    case kF16: return f16_row(y, x, C);
    case kBF16: return bf16_row(y, x, C);
    default: {
      auto row = [&](auto block) { decode_row<decltype(block)>(y, x, C); };
      if (!with_block(RegisterBlocks{}, qtype, row)) with_block(RowBlocks{}, qtype, row);
      return;  // (unknown types are refused by the bindings)
    }
  }
}

// out (N, C) = the rows ids[n] (or n) of src dequantised: an embedding lookup in a quantised table.
void dequantize_rows(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N, int64_t C) {
  const int64_t rb = quant_row_bytes(qtype, C);
  if (rb < 0) return;
  parallel_for(N, N * C >= kParallelElements ? threads() : 1, [&](int64_t n) {
    dequantize_row(out + n * C, src + (ids ? ids[n] : n) * rb, qtype, C);
  });
}

}  // namespace PT_NS
}  // namespace pt
