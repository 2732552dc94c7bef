// The int8 products' weight blocks in vector registers (AVX2 / AVX-512 variants; the baseline's scalar unpack is
// int8.cpp's Int<B>): each block type's 32 values per ymm as unsigned bytes (u, 0..63, value = u - kOff: two
// instructions per 16 bytes of nibbles) or as signed bytes with their magnitudes (Q8_0, the IQ4 levels by a byte
// shuffle), and the K types' sub-block scales unpacked once per super-block into int16 lanes for vpmaddwd.
// Value j of a block: d sc[s] (u_j - kOff) + m (32-value types; m = 0 without a min) or d sc[s] (u_j - kOff) - m mn[s]
// (K types, m = dmin), s the sub-block of j.
#pragma once
#include "quant.h"

namespace pt {
namespace PT_NS {
namespace {

// One unpacked weight block of type T (T::kN vectors of 32 values).
template <class T>
struct alignas(32) WBlock {
  __m256i v[T::kN];                       // u (unsigned types) or |v| (signed)
  __m256i sign[T::kSigned ? T::kN : 1];   // v itself (signed types): the activations take its sign
  __m256i sc[T::kScales ? T::kN : 1];     // int16 lanes: the scale of each pair of values (vpmaddwd)
  __m256i coef;                           // K types: per 16 values, mn[s] (with a min) or kOff sc[s] (with an offset)
  float d, m;
};

// bytes q[0..16) -> values 0..15 (low nibbles), 16..31 (high nibbles): the 16 bytes in both halves, the upper
// shifted by 4
inline __m256i nibbles32(const uint8_t* q) {
  const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)q));
  return _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(15));
}
// 32 bits at p -> byte j = 16 where bit j is set, else 0 (Q5's fifth bits)
inline __m256i fifth_bits32(const uint8_t* p) {
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const __m256i pick = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
  const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201);
  const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit), _mm256_set1_epi8(16));
}
// nibbles32(q) with Q5's fifth bits (16 where bit j of qh is set; AVX-512: one masked byte add)
inline __m256i nibbles32_fifth(const uint8_t* q, const uint8_t* qh) {
#if defined(PT_ISA_AVX512)
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const __m256i n = nibbles32(q);
  return _mm256_mask_add_epi8(n, (__mmask32)bits, n, _mm256_set1_epi8(16));
#else
  return _mm256_or_si256(nibbles32(q), fifth_bits32(qh));
#endif
}
// bits k.. of each byte of x, masked (shifts within 16-bit lanes: the neighbour's bits are masked off)
inline __m256i field(__m256i x, int k, int mask) {
  return _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(k)), _mm256_set1_epi8((char)mask));
}
inline __m256i iq4_levels(__m256i nibbles) {
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)kIQ4Values));
  return _mm256_shuffle_epi8(table, nibbles);
}
template <class T>
inline void set_signed(WBlock<T>& w, int i, __m256i v) {
  w.sign[i] = v;
  w.v[i] = _mm256_sign_epi8(v, v);
}
// sub-block scales sc (int16 lanes, one per sub-block in order) as the int16 lanes of vector i: kS = 32 one scale,
// kS = 16 two (values 16 i .. and 16 i + 16 ..), each broadcast from its dword (no round trip through memory)
template <class T>
inline void set_scales(WBlock<T>& w, __m256i sc) {
  for (int i = 0; i < T::kN; i++) {
    const __m256i pair = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(T::kS == 32 ? i / 2 : i));
    const __m256i pick = T::kS == 32 ? _mm256_set1_epi16(i % 2 ? 0x0302 : 0x0100)
                                     : _mm256_set_m128i(_mm_set1_epi16(0x0302), _mm_set1_epi16(0x0100));
    w.sc[i] = _mm256_shuffle_epi8(pair, pick);
  }
}
// the same from scales a scalar loop wrote (Q3_K, IQ4_XS): each broadcast from memory (a vector load of what was
// just stored one by one would wait for the stores)
template <class T>
inline void set_scales(WBlock<T>& w, const int16_t* sc) {
  for (int i = 0; i < T::kN; i++)
    w.sc[i] = T::kS == 32 ? _mm256_set1_epi16(sc[i])
                          : _mm256_set_m128i(_mm_set1_epi16(sc[2 * i + 1]), _mm_set1_epi16(sc[2 * i]));
}
// 8 int16 values, one per 32 values -> 16 lanes, one per 16 (the coef of the kS = 32 types)
inline __m256i per16(__m128i c) { return _mm256_set_m128i(_mm_unpackhi_epi16(c, c), _mm_unpacklo_epi16(c, c)); }

struct Legacy {  // the 32-value types
  static constexpr int kN = 1, kS = 32, kOff = 0, kD = 0;  // kD: d's byte in the block (a min's m at kD + 2)
  static constexpr bool kSigned = false, kScales = false, kMin = false;
};
template <class B> struct Vec;
template <> struct Vec<BlockQ4_0> : Legacy {
  static constexpr int kOff = 8;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) { w.d = half_at(p), w.m = 0.f, w.v[0] = nibbles32(p + 2); }
};
template <> struct Vec<BlockQ4_1> : Legacy {
  static constexpr bool kMin = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = half_at(p + 2), w.v[0] = nibbles32(p + 4);
  }
};
template <> struct Vec<BlockQ5_0> : Legacy {
  static constexpr int kOff = 16;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = 0.f, w.v[0] = nibbles32_fifth(p + 6, p + 2);
  }
};
template <> struct Vec<BlockQ5_1> : Legacy {
  static constexpr bool kMin = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = half_at(p + 2), w.v[0] = nibbles32_fifth(p + 8, p + 4);
  }
};
template <> struct Vec<BlockQ8_0> : Legacy {
  static constexpr bool kSigned = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = 0.f;
    set_signed(w, 0, _mm256_loadu_si256((const __m256i*)(p + 2)));
  }
};
template <> struct Vec<BlockIQ4_NL> : Legacy {
  static constexpr bool kSigned = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = 0.f;
    set_signed(w, 0, iq4_levels(nibbles32(p + 2)));
  }
};

struct KType {  // 256 values in eight vectors, sub-block scales
  static constexpr int kN = 8, kOff = 0, kD = 0;
  static constexpr bool kSigned = false, kScales = true, kMin = false;
};
template <class B> struct VecK45 : KType {  // Q4_K, Q5_K: vector 2g / 2g + 1: the low / high nibbles of qs[32 g ..]
  static constexpr int kS = 32;
  static constexpr bool kMin = true;
  template <class W>  // (WBlock<Vec<B>>)
  static void unpack(W& w, const uint8_t* p) {
    w.d = half_at(p), w.m = half_at(p + 2);
    uint32_t u[4];  // scale_min_k4 of the eight sub-blocks at once: bytes sc[0 .. 8), mn[0 .. 8) (as llama.cpp)
    std::memcpy(u, p + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    const uint32_t mins = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = mins;
    u[0] &= 0x3f3f3f3f;
    const __m128i x = _mm_loadu_si128((const __m128i*)u);
    set_scales(w, _mm256_cvtepu8_epi16(x));
    w.coef = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x, x));  // (mn[g / 2] in lane g)
    const bool five = B::kType == kQ5_K;
    const __m256i h = five ? _mm256_loadu_si256((const __m256i*)(p + 16)) : _mm256_setzero_si256();
    for (int g = 0; g < 4; g++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(p + (five ? 48 : 16) + 32 * g));
      w.v[2 * g] = _mm256_and_si256(x, _mm256_set1_epi8(15));
      w.v[2 * g + 1] = field(x, 4, 15);
      if (five) {
        w.v[2 * g] = _mm256_or_si256(w.v[2 * g], _mm256_slli_epi16(field(h, 2 * g, 1), 4));
        w.v[2 * g + 1] = _mm256_or_si256(w.v[2 * g + 1], _mm256_slli_epi16(field(h, 2 * g + 1, 1), 4));
      }
    }
  }
};
template <> struct Vec<BlockQ4_K> : VecK45<BlockQ4_K> {};
template <> struct Vec<BlockQ5_K> : VecK45<BlockQ5_K> {};
// Q2_K, Q3_K: vector j (sub-blocks 2 j, 2 j + 1) = bit pair k = j % 4 of the 32 bytes qs[32 (j / 4) ..]
template <> struct Vec<BlockQ2_K> : KType {
  static constexpr int kS = 16, kD = 80;
  static constexpr bool kMin = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p + kD), w.m = half_at(p + kD + 2);
    const __m128i x = _mm_loadu_si128((const __m128i*)p);  // (scale | min << 4 of each sub-block)
    set_scales(w, _mm256_cvtepu8_epi16(_mm_and_si128(x, _mm_set1_epi8(15))));
    w.coef = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(x, 4), _mm_set1_epi8(15)));
    for (int j = 0; j < 8; j++) w.v[j] = field(_mm256_loadu_si256((const __m256i*)(p + 16 + 32 * (j / 4))), 2 * (j % 4), 3);
  }
};
template <> struct Vec<BlockQ3_K> : KType {  // u = 2 bits | hmask bit 4 h + k << 2, value u - 4
  static constexpr int kS = 16, kOff = 4, kD = 108;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p + kD), w.m = 0.f;
    const uint8_t* s8 = p + 96;
    alignas(32) int16_t sc[16];
    for (int s = 0; s < 16; s++)
      sc[s] = (int16_t)((((s < 8 ? s8[s] : s8[s - 8] >> 4) & 15) | (((s8[8 + s % 4] >> (2 * (s / 4))) & 3) << 4)) - 32);
    set_scales(w, sc);
    w.coef = _mm256_slli_epi16(_mm256_load_si256((const __m256i*)sc), 2);  // (kOff sc)
    const __m256i hm = _mm256_loadu_si256((const __m256i*)p);
    for (int j = 0; j < 8; j++)
      w.v[j] = _mm256_or_si256(field(_mm256_loadu_si256((const __m256i*)(p + 32 + 32 * (j / 4))), 2 * (j % 4), 3),
                               _mm256_slli_epi16(field(hm, j, 1), 2));
  }
};
template <> struct Vec<BlockQ6_K> : KType {  // u = 4 bits of ql | 2 bits of qh << 4, value u - 32
  static constexpr int kS = 16, kOff = 32, kD = 208;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p + kD), w.m = 0.f;
    const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 192)));
    set_scales(w, s16);
    w.coef = _mm256_slli_epi16(s16, 5);  // (kOff sc)
    for (int h = 0; h < 2; h++) {  // vector 4 h + k: low 4 bits from ql[64 h + 32 (k & 1)] (nibble k / 2), high
      const __m256i qh = _mm256_loadu_si256((const __m256i*)(p + 128 + 32 * h));  // 2 from bit pair k of qh[32 h]
      for (int k = 0; k < 4; k++) {
        const __m256i ql = _mm256_loadu_si256((const __m256i*)(p + 64 * h + 32 * (k & 1)));
        w.v[4 * h + k] = _mm256_or_si256(field(ql, 4 * (k / 2), 15), _mm256_slli_epi16(field(qh, 2 * k, 3), 4));
      }
    }
  }
};
template <> struct Vec<BlockIQ4_XS> : KType {
  static constexpr int kS = 32;
  static constexpr bool kSigned = true;
  static void unpack(WBlock<Vec>& w, const uint8_t* p) {
    w.d = half_at(p), w.m = 0.f;
    const int sh = read16(p + 2);
    alignas(16) int16_t sc[8];
    for (int s = 0; s < 8; s++)
      sc[s] = (int16_t)((((p[4 + s / 2] >> (4 * (s % 2))) & 15) | (((sh >> (2 * s)) & 3) << 4)) - 32);
    set_scales(w, sc);
    // (128 sc: the VNNI panels take the levels as v + 128, int8_panel.h)
    w.coef = _mm256_slli_epi16(per16(_mm_load_si128((const __m128i*)sc)), 7);
    for (int s = 0; s < 8; s++) set_signed(w, s, iq4_levels(nibbles32(p + 8 + 16 * s)));
  }
};

// d and m (the min's scale; unset without one) of eight blocks of type B, row r's at base + at[r]: the 32 bits
// holding them in one gather (never past a block's end), the floats unpack makes
template <class B>
inline void scales8(__m256& d, __m256& m, const uint8_t* base, __m256i at) {
  using T = Vec<B>;
  constexpr int kAt = T::kD + 4 <= (int)sizeof(B) ? T::kD : T::kD - 2;  // (d in the low or the high half)
  const __m256i x = _mm256_i32gather_epi32((const int*)(base + kAt), at, 1);
  auto halves = [](__m256i v) {  // the low halves of 8 lanes -> 8 floats
#if defined(PT_ISA_AVX512)
    return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(v));
#else
    const __m256i p = _mm256_packus_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)), v);
    return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08)));
#endif
  };
  d = halves(kAt == T::kD ? x : _mm256_srli_epi32(x, 16));
  if (T::kMin) m = halves(_mm256_srli_epi32(x, 16));
}

}  // namespace
}  // namespace PT_NS
}  // namespace pt
