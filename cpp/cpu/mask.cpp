// A grammar's mask on logits (constrained decoding): llguidance's bitmask -- one bit a token, 32 tokens a word,
// the lowest bit first -- applied to rows of logits in one pass, -inf where a token is refused. Only the refused
// entries are written (masked stores), and nothing is read but the words: the row's allowed logits stay as they are.
#include <algorithm>
#include <limits>

#include "simd.h"

namespace pt {
namespace PT_NS {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// x[0, 32): -inf where bit j of `bits` is 0
inline void mask_word(float* x, uint32_t bits) {
#if defined(PT_ISA_AVX512)
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  _mm512_mask_storeu_ps(x, static_cast<__mmask16>(~bits), ninf);
  _mm512_mask_storeu_ps(x + 16, static_cast<__mmask16>(~bits >> 16), ninf);
#elif defined(PT_ISA_AVX2)
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  for (int k = 0; k < 32; k += 8) {  // 8 bits a time: lane j refused where (bits >> k) & (1 << j) is 0
    const __m256i lanes = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits >> k)), lane_bit);
    _mm256_maskstore_ps(x + k, _mm256_cmpeq_epi32(lanes, _mm256_setzero_si256()), ninf);
  }
#else
  if (bits == 0) {
    std::fill(x, x + 32, kNegInf);
    return;
  }
  for (uint32_t refused = ~bits; refused; refused &= refused - 1) x[__builtin_ctz(refused)] = kNegInf;
#endif
}
}  // namespace

// logits (N, V) in place; words (N, ceil(vocab / 32)); vocab <= V
void mask_logits(float* logits, const uint32_t* words, int64_t N, int64_t V, int64_t vocab) {
  if (N == 0 || V == 0) return;  // nothing to write: never loop over empty rows
  const int64_t full = vocab / 32, NW = full + (vocab % 32 != 0);  // (words; those whose 32 tokens are < vocab)
  parallel_for(N, N * V >= kParallelElements ? threads() : 1, [&](int64_t n) {
    float* x = logits + n * V;
    const uint32_t* w = words + n * NW;
    for (int64_t i = 0; i < full; i++) mask_word(x + 32 * i, w[i]);
    for (int64_t i = 32 * full; i < vocab; i++)  // the last word's tokens below vocab (its other bits: none)
      if (!((w[full] >> (i - 32 * full)) & 1u)) x[i] = kNegInf;
    std::fill(x + vocab, x + V, kNegInf);  // a padded head's ids past the tokenizer's
  });
}

}  // namespace PT_NS
}  // namespace pt
