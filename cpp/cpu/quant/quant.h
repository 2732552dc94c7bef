// GGUF (ggml) block formats, dequantised to float32 (inference weights): one header per block family, each with
// its structs (as ggml-common.h lays them out: little-endian, packed; static_assert on the sizes) and their row
// decodes: legacy.h (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), kquants.h (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), iq4.h (IQ4_NL,
// IQ4_XS). Here: the products' decode of the 32-value types in registers (Block32, read by matmul.cpp's row paths)
// and dequantize_row (rows.cpp), which every other path reads. Per ISA variant, like every kernel source.
#pragma once
#include <type_traits>

#include "iq4.h"
#include "kquants.h"
#include "legacy.h"

namespace pt {
namespace PT_NS {

// The block types read here: the 32-value ones whose products dequantise in registers (Block32), and the
// 256-value ones (Visit: the few-row products decode them in registers, more rows dequantise rows into L1).
using RegisterBlocks = BlockList<BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockIQ4_NL>;
using RowBlocks = BlockList<BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockIQ4_XS>;

// the struct of type id QT in a list (void if none)
template <int QT, class List>
struct BlockOf {
  using type = void;
};
template <int QT, class B, class... Rest>
struct BlockOf<QT, BlockList<B, Rest...>> {
  using type = std::conditional_t<B::kType == QT, B, typename BlockOf<QT, BlockList<Rest...>>::type>;
};

// One 32-value block as two halves' weights (lo: values j .. j + W, hi: 16 + j .. 16 + j + W, j < 16),
// dequantised in registers: the products' decode of the RegisterBlocks (their rows' is the family's decode).
template <int QT>
struct Block32 {
  using Block = typename BlockOf<QT, RegisterBlocks>::type;
  static_assert(!std::is_void_v<Block>, "one of the RegisterBlocks");
  static constexpr int64_t kBytes = sizeof(Block), kQs = offsetof(Block, qs);
  static constexpr bool kMin = QT == kQ4_1 || QT == kQ5_1;  // (a stored min: x = q d + m)
  V d, m;
  float mf = 0.f;  // (kMin: m as a scalar)
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
      mf = _mm_cvtss_f32(_mm_movehdup_ps(f));
      return;
    }
#endif
    const float df = half_at(b);
    d = set1(df);
    if (kMin) mf = half_at(b + 2);
    m = set1(kMin ? mf : QT == kQ4_0 ? -8.f * df : QT == kQ5_0 ? -16.f * df : 0.f);
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
      if (QT == kQ5_0 || QT == kQ5_1) five_bit_pair(q + j, qh, j, lo, hi);
      else nibble_pair(q + j, lo, hi);
      lo = fma(lo, d, m);  // ((q - 8) d, (q - 16) d: q d and the offset exact, the one rounding of fma)
      hi = fma(hi, d, m);
    }
  }
  // The halves' quantised values v, exact as floats, with x = v d (+ mf where kMin): Q4_0's q - 8, Q5_0's q - 16,
  // IQ4_NL's table values, Q8_0's int8 (a product sums v x over the block before one multiply by d)
  void values(int64_t j, V& lo, V& hi) const {
    if (QT == kQ8_0) {
      lo = load_i8((const int8_t*)q + j);
      hi = load_i8((const int8_t*)q + 16 + j);
    } else if (QT == kIQ4_NL) {
      iq4_pair(q + j, lo, hi);
    } else if (QT == kQ5_0 || QT == kQ5_1) {
      five_bit_pair<QT == kQ5_0>(q + j, qh, j, lo, hi);
    } else {
      nibble_pair(q + j, lo, hi);
      if (QT == kQ4_0) {
        lo = sub(lo, set1(8.f));
        hi = sub(hi, set1(8.f));
      }
    }
  }
};

// y (C floats) = the C values of one row x of type qtype (C a whole number of the type's blocks).
void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C);

}  // namespace PT_NS
}  // namespace pt
