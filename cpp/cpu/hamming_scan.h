// The vector loop of hamming.cpp's scan, included once per popcount (PT_HAMMING_NS names the copy): rows [lo, hi)
// of signs (W, N) against one query's words q (W), every row whose distance may be within the nearest's limit
// handed to near.take(row, distance). AVX-512: 8 rows per vector, vpopcntq where PT_HAMMING_VPOPCNT (the copy
// dispatch.cpp swaps in where the CPU has VPOPCNTDQ), else vpshufb nibble counts; AVX2: 4 rows, vpshufb; baseline:
// one row at a time. Byte counts (at most 8 per word) add up over at most 31 words before vpsadbw widens them.
namespace pt {
namespace PT_NS {
namespace PT_HAMMING_NS {

#if defined(PT_ISA_AVX512)
constexpr int64_t kLanes = 8;
using Words = __m512i;
inline Words load_words(const uint64_t* p) { return _mm512_loadu_si512(p); }
inline Words add64(Words a, Words b) { return _mm512_add_epi64(a, b); }
inline Words zero_words() { return _mm512_setzero_si512(); }
inline Words xor_with(Words a, uint64_t w) { return _mm512_xor_si512(a, _mm512_set1_epi64((long long)w)); }
#ifdef PT_HAMMING_VPOPCNT
constexpr int64_t kWordsPerWiden = 0;  // (counts are 64-bit lanes already)
inline Words count(Words x) { return _mm512_popcnt_epi64(x); }
#else
constexpr int64_t kWordsPerWiden = 31;
inline Words count(Words x) {  // bytes of x -> their bit counts (vpshufb on each nibble)
  const Words table = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const Words low = _mm512_set1_epi8(0x0f);
  return _mm512_add_epi8(_mm512_shuffle_epi8(table, _mm512_and_si512(x, low)),
                         _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi64(x, 4), low)));
}
#endif
inline Words add8(Words a, Words b) { return _mm512_add_epi8(a, b); }
inline Words widen(Words bytes) { return _mm512_sad_epu8(bytes, _mm512_setzero_si512()); }
inline unsigned within(Words d, int64_t limit) { return _mm512_cmple_epu64_mask(d, _mm512_set1_epi64(limit)); }
inline void lanes(Words d, int64_t* out) { _mm512_storeu_si512(out, d); }
#elif defined(PT_ISA_AVX2)
constexpr int64_t kLanes = 4;
constexpr int64_t kWordsPerWiden = 31;
using Words = __m256i;
inline Words load_words(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline Words add64(Words a, Words b) { return _mm256_add_epi64(a, b); }
inline Words zero_words() { return _mm256_setzero_si256(); }
inline Words xor_with(Words a, uint64_t w) { return _mm256_xor_si256(a, _mm256_set1_epi64x((long long)w)); }
inline Words count(Words x) {
  const Words table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const Words low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(x, low)),
                         _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi64(x, 4), low)));
}
inline Words add8(Words a, Words b) { return _mm256_add_epi8(a, b); }
inline Words widen(Words bytes) { return _mm256_sad_epu8(bytes, _mm256_setzero_si256()); }
inline unsigned within(Words d, int64_t limit) {  // (distances and limits are small: a signed compare is exact)
  const Words above = _mm256_cmpgt_epi64(d, _mm256_set1_epi64x(limit));
  return ~(unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(above)) & 0xfu;
}
inline void lanes(Words d, int64_t* out) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), d); }
#endif

inline int64_t distance(const uint64_t* signs, int64_t N, int64_t W, const uint64_t* q, int64_t row) {
  int64_t d = 0;
  for (int64_t w = 0; w < W; w++) d += __builtin_popcountll(signs[w * N + row] ^ q[w]);
  return d;
}

inline void scan(const uint64_t* signs, int64_t N, int64_t W, const uint64_t* q, int64_t lo, int64_t hi,
                 Nearest& near) {
  int64_t row = lo;
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
  alignas(64) int64_t d[kLanes];
  for (; row + kLanes <= hi; row += kLanes) {
    Words acc = zero_words();
    if constexpr (kWordsPerWiden == 0) {
      for (int64_t w = 0; w < W; w++) acc = add64(acc, count(xor_with(load_words(signs + w * N + row), q[w])));
    } else {
      for (int64_t w0 = 0; w0 < W; w0 += kWordsPerWiden) {
        Words bytes = zero_words();
        const int64_t w1 = w0 + kWordsPerWiden < W ? w0 + kWordsPerWiden : W;
        for (int64_t w = w0; w < w1; w++) bytes = add8(bytes, count(xor_with(load_words(signs + w * N + row), q[w])));
        acc = add64(acc, widen(bytes));
      }
    }
    unsigned mask = within(acc, near.limit);
    if (mask) {
      lanes(acc, d);
      for (; mask; mask &= mask - 1) {
        const int lane = __builtin_ctz(mask);
        near.take(row + lane, d[lane]);
      }
    }
  }
#endif
  for (; row < hi; row++) near.take(row, distance(signs, N, W, q, row));
}

}  // namespace PT_HAMMING_NS
}  // namespace PT_NS
}  // namespace pt
