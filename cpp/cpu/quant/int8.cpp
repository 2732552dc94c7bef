// GGUF products with int8 activations (llama.cpp's way): each input row quantised once into int8 blocks (per 32
// values for the 32-value types, per 256 for the K types and IQ4_XS; the rounding of quantize_row_q8_0 / q8_K),
// each weight block unpacked once into integers, x = d sc[s] v - dmin mn[s] per sub-block s, and every row's
// product with that block is integer sums, exact, times one float scale per block pair:
//   out[n] += da[n] (d sum_s sc[s] (v . a[n])_s - dmin sum_s mn[s] (sum a[n])_s).
// The integer dot product: vpdpbusd (AVX512-VNNI, AVX-VNNI: the `vnni` copy below, chosen in dispatch.cpp),
// vpmaddubsw + vpmaddwd (AVX2), scalar (baseline). |a| <= 127, so |v| (u8) times a sign(v) (s8) never saturates.
// Per ISA variant, like every kernel source.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "int8_rows.h"
#include "quant.h"
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
#include "int8_blocks.h"  // (the vector unpack; the baseline's scalar one is Int<B> below)
#endif

namespace pt {
namespace PT_NS {

#if !defined(PT_ISA_AVX512) && !defined(PT_ISA_AVX2)
namespace {

// One weight block as integers: value j of sub-block s (S values each) is d sc[s] v[j] - dmin mn[s].
struct IntBlock {
  alignas(64) int8_t v[256];
  int32_t sc[16], mn[16];
  float d, dmin;
};

inline void nibbles16(int8_t* v, const uint8_t* q, int offset) {  // bytes q[0..16) -> low nibbles, high nibbles
  for (int j = 0; j < 16; j++) {
    v[j] = (int8_t)((q[j] & 15) - offset);
    v[16 + j] = (int8_t)((q[j] >> 4) - offset);
  }
}
inline void fifth_bit(int8_t* v, const uint8_t* qh4) {  // Q5's fifth bits, 16 added where set
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  for (int j = 0; j < 32; j++) v[j] = (int8_t)(v[j] + (((qh >> j) & 1) << 4));
}

// Each block type as (sub-blocks, their size, whether it has a min) and its unpack, as reference.py's dequantize
// lays the values out.
template <class B> struct Int;
template <> struct Int<BlockQ4_0> {
  static constexpr int kSub = 1, kS = 32, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.sc[0] = 1;
    nibbles16(u.v, p + 2, 8);
  }
};
template <> struct Int<BlockQ4_1> {
  static constexpr int kSub = 1, kS = 32, kMin = 1;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.dmin = -half_at(p + 2), u.sc[0] = u.mn[0] = 1;
    nibbles16(u.v, p + 4, 0);
  }
};
template <> struct Int<BlockQ5_0> {
  static constexpr int kSub = 1, kS = 32, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.sc[0] = 1;
    nibbles16(u.v, p + 6, 16);
    fifth_bit(u.v, p + 2);
  }
};
template <> struct Int<BlockQ5_1> {
  static constexpr int kSub = 1, kS = 32, kMin = 1;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.dmin = -half_at(p + 2), u.sc[0] = u.mn[0] = 1;
    nibbles16(u.v, p + 8, 0);
    fifth_bit(u.v, p + 4);
  }
};
template <> struct Int<BlockQ8_0> {
  static constexpr int kSub = 1, kS = 32, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.sc[0] = 1;
    std::memcpy(u.v, p + 2, 32);
  }
};
template <> struct Int<BlockIQ4_NL> {
  static constexpr int kSub = 1, kS = 32, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.sc[0] = 1;
    for (int j = 0; j < 16; j++) u.v[j] = kIQ4Values[p[2 + j] & 15], u.v[16 + j] = kIQ4Values[p[2 + j] >> 4];
  }
};
template <class B> struct IntK45 {  // Q4_K, Q5_K: d, dmin, 12 bytes of six-bit scales and mins, (qh[32]), qs[128]
  static constexpr int kSub = 8, kS = 32, kMin = 1;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p), u.dmin = half_at(p + 2);
    const uint8_t* sc = p + 4;
    for (int s = 0; s < 4; s++) {
      u.sc[s] = sc[s] & 63, u.mn[s] = sc[4 + s] & 63;
      u.sc[4 + s] = (sc[8 + s] & 15) | ((sc[s] >> 6) << 4), u.mn[4 + s] = (sc[8 + s] >> 4) | ((sc[4 + s] >> 6) << 4);
    }
    const bool five = B::kType == kQ5_K;
    const uint8_t* qs = p + (five ? 48 : 16);
    for (int g = 0; g < 4; g++)
      for (int l = 0; l < 32; l++) {
        int lo = qs[32 * g + l] & 15, hi = qs[32 * g + l] >> 4;
        if (five) lo |= ((p[16 + l] >> (2 * g)) & 1) << 4, hi |= ((p[16 + l] >> (2 * g + 1)) & 1) << 4;
        u.v[64 * g + l] = (int8_t)lo, u.v[64 * g + 32 + l] = (int8_t)hi;
      }
  }
};
template <> struct Int<BlockQ4_K> : IntK45<BlockQ4_K> {};
template <> struct Int<BlockQ5_K> : IntK45<BlockQ5_K> {};
// Q2_K, Q3_K: 2-bit q of sub-block s = 8 h + 2 k + i from bit pair k of qs[32 h + 16 i + l], l < 16
inline void pairs2(int8_t* v, const uint8_t* qs) {
  for (int h = 0; h < 2; h++)
    for (int k = 0; k < 4; k++)
      for (int i = 0; i < 2; i++)
        for (int l = 0; l < 16; l++) v[16 * (8 * h + 2 * k + i) + l] = (int8_t)((qs[32 * h + 16 * i + l] >> (2 * k)) & 3);
}
template <> struct Int<BlockQ2_K> {  // scales[16] (4-bit scale, 4-bit min), qs[64], d, dmin
  static constexpr int kSub = 16, kS = 16, kMin = 1;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p + 80), u.dmin = half_at(p + 82);
    for (int s = 0; s < 16; s++) u.sc[s] = p[s] & 15, u.mn[s] = p[s] >> 4;
    pairs2(u.v, p + 16);
  }
};
template <> struct Int<BlockQ3_K> {  // hmask[32], qs[64], scales[12] (six bits, - 32), d: q - 4 unless the hmask bit
  static constexpr int kSub = 16, kS = 16, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p + 108);
    const uint8_t* sc = p + 96;
    for (int s = 0; s < 16; s++)
      u.sc[s] = (((s < 8 ? sc[s] : sc[s - 8] >> 4) & 15) | (((sc[8 + s % 4] >> (2 * (s / 4))) & 3) << 4)) - 32;
    pairs2(u.v, p + 32);
    for (int h = 0; h < 2; h++)
      for (int k = 0; k < 4; k++)
        for (int i = 0; i < 2; i++)
          for (int l = 0; l < 16; l++)
            u.v[16 * (8 * h + 2 * k + i) + l] -= (int8_t)(4 * (1 - ((p[16 * i + l] >> (4 * h + k)) & 1)));
  }
};
template <> struct Int<BlockQ6_K> {  // ql[128], qh[64], scales[16] (int8), d: q - 32
  static constexpr int kSub = 16, kS = 16, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p + 208);
    for (int s = 0; s < 16; s++) u.sc[s] = (int8_t)p[192 + s];
    for (int h = 0; h < 2; h++) {
      const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
      int8_t* v = u.v + 128 * h;
      for (int l = 0; l < 32; l++) {
        v[l] = (int8_t)(((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32);
        v[32 + l] = (int8_t)(((ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
        v[64 + l] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        v[96 + l] = (int8_t)(((ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
  }
};
template <> struct Int<BlockIQ4_XS> {  // d, scales_h (2 bits each), scales_l[4] (nibbles), qs[128]: ls - 32
  static constexpr int kSub = 8, kS = 32, kMin = 0;
  static void unpack(IntBlock& u, const uint8_t* p) {
    u.d = half_at(p);
    const int sh = read16(p + 2);
    for (int s = 0; s < 8; s++) u.sc[s] = (((p[4 + s / 2] >> (4 * (s % 2))) & 15) | (((sh >> (2 * s)) & 3) << 4)) - 32;
    for (int s = 0; s < 8; s++)
      for (int j = 0; j < 16; j++) {
        const uint8_t q = p[8 + 16 * s + j];
        u.v[32 * s + j] = kIQ4Values[q & 15], u.v[32 * s + 16 + j] = kIQ4Values[q >> 4];
      }
  }
};

}  // namespace
#endif

void quantize_row_q8(int8_t* q, float* d, int16_t* sums, const float* x, int64_t C, int64_t block) {
  for (int64_t b = 0; b < C / block; b++) {
    const float* xb = x + b * block;
    float amax = 0.f, big = 0.f;
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
    __m256 m = _mm256_setzero_ps();
    for (int64_t j = 0; j < block; j += 8)
      m = _mm256_max_ps(m, _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_loadu_ps(xb + j)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    for (int64_t j = 0; block == 256 && amax > 0.f; j++)  // (the first value of that magnitude, as the scalar loop)
      if (std::fabs(xb[j]) == amax) {
        big = xb[j];
        break;
      }
#else
    for (int64_t j = 0; j < block; j++)
      if (std::fabs(xb[j]) > amax) amax = std::fabs(xb[j]), big = xb[j];
#endif
    float iscale = 0.f;
    if (block == 32) {
      iscale = amax > 0.f ? 127.f / amax : 0.f;
      d[b] = (float)(_Float16)(amax / 127.f);  // (stored as fp16, rounded to nearest even)
    } else {
      iscale = amax > 0.f ? -127.f / big : 0.f;
      d[b] = amax > 0.f ? 1.f / iscale : 0.f;
    }
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
    // x iscale rounded as nearbyint (the rounding mode's nearest even) and packed with saturation: the min(127)
    // of the scalar loop (|x iscale| <= 127 up to one rounding), in order after the packs' lane interleave
    const __m256 sv = _mm256_set1_ps(iscale);
    for (int64_t j = 0; j < block; j += 32) {
      __m256i i[4];
      for (int k = 0; k < 4; k++) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8 * k), sv));
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
      const __m256i v = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256((__m256i*)(q + b * block + j), v);
      // the sums of its two halves: the bytes + 128 (unsigned) summed per 8 by vpsadbw, less 16 x 128 per half
      const __m256i s8 = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
      const __m128i lo = _mm256_castsi256_si128(s8), hi = _mm256_extracti128_si256(s8, 1);
      const __m128i s16 = _mm_add_epi64(_mm_unpacklo_epi64(lo, hi), _mm_unpackhi_epi64(lo, hi));
      sums[(b * block + j) / 16] = (int16_t)(_mm_cvtsi128_si64(s16) - 16 * 128);
      sums[(b * block + j) / 16 + 1] = (int16_t)(_mm_extract_epi64(s16, 1) - 16 * 128);
    }
#else
    for (int64_t j = 0; j < block; j++) q[b * block + j] = (int8_t)std::min(127.f, std::nearbyint(xb[j] * iscale));
#endif
  }
#if !defined(PT_ISA_AVX512) && !defined(PT_ISA_AVX2)
  for (int64_t g = 0; g < C / 16; g++) {
    int s = 0;
    for (int j = 0; j < 16; j++) s += q[16 * g + j];
    sums[g] = (int16_t)s;
  }
#endif
}

void quantize_rows(Q8Rows q8[2], const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC, int64_t rows) {
  bool need[2] = {false, false};
  for (int64_t i = 0; i < n; i++) need[q8_block(p[i].qtype) == 256] = true;
  static thread_local ScratchBuffer buf[2];
  for (int k = 0; k < 2; k++) {
    q8[k] = Q8Rows{};
    if (!need[k]) continue;
    const int64_t block = k ? 256 : 32;
    const int64_t nds = k ? 0 : rows * IC / 32;  // (ds: blocks of 32 only)
    float* d = buf[k].floats((size_t)(rows * IC / block + nds + rows * IC / 32 + rows * IC / 4 + 16));
    q8[k].d = d;
    q8[k].ds = k ? nullptr : d + rows * IC / block;
    q8[k].sums = reinterpret_cast<int16_t*>(d + rows * IC / block + nds);
    q8[k].q = reinterpret_cast<int8_t*>(q8[k].sums + rows * IC / 16);
    std::memset(q8[k].q + N * IC, 0, (size_t)((rows - N) * IC));
    std::memset(q8[k].d + N * IC / block, 0, (size_t)((rows - N) * IC / block) * sizeof(float));
    std::memset(q8[k].sums + N * IC / 16, 0, (size_t)((rows - N) * IC / 16) * sizeof(int16_t));
    if (!k) std::memset(q8[k].ds + N * IC / 32, 0, (size_t)((rows - N) * IC / 32) * sizeof(float));
  }
  const Q8Rows* a = q8;  // (the caller's: shared by the threads; a 16-row step's rows split, ~6 us alone)
  parallel_for(N, N * IC >= kParallelElements / 8 ? threads() : 1, [&](int64_t r) {
    for (int k = 0; k < 2; k++)
      if (need[k]) {
        const int64_t block = k ? 256 : 32;
        quantize_row_q8(a[k].q + r * IC, a[k].d + r * IC / block, a[k].sums + r * IC / 16, inp + r * IC, IC, block);
        for (int64_t b = 0; !k && b < IC / 32; b++) {
          const int64_t at = r * IC / 32 + b;
          a[k].ds[at] = a[k].d[at] * (float)(a[k].sums[2 * at] + a[k].sums[2 * at + 1]);
        }
      }
  });
}

}  // namespace PT_NS
}  // namespace pt

// The products, once plain and (where the variant can have it) once more with vpdpbusd
#define PT_Q8_NS plain
#include "int8_product.h"
#undef PT_Q8_NS
#if (defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#if defined(PT_ISA_AVX512)
#pragma GCC target("avx512vnni")
#else
#pragma GCC target("avxvnni")
#endif
#define PT_Q8_NS vnni
#define PT_Q8_VNNI 1
#define PT_Q8_HAVE_VNNI 1
#include "int8_product.h"
#undef PT_Q8_VNNI
#undef PT_Q8_NS
#pragma GCC pop_options
#endif

namespace pt {
namespace PT_NS {
void matmul_q8_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC) {
  if (writes_nothing(p, n, N)) return;
  Q8Rows q8[2];
  quantize_rows(q8, p, n, inp, N, IC, N);
  plain::products(p, n, q8, N, IC);
}
void matmul_q8_vnni_rows(const QProduct* p, int64_t n, const Q8Rows q8[2], int64_t N, int64_t IC) {
#ifdef PT_Q8_HAVE_VNNI
  vnni::products(p, n, q8, N, IC);
#else
  plain::products(p, n, q8, N, IC);
#endif
}
double int8_dot_probe(int32_t* sink, int64_t iters) { return plain::dot_probe(sink, iters); }
double int8_dot_vnni_probe(int32_t* sink, int64_t iters) {
#ifdef PT_Q8_HAVE_VNNI
  return vnni::dot_probe(sink, iters);
#else
  return plain::dot_probe(sink, iters);
#endif
}
void matmul_q8_vnni_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC) {
  if (writes_nothing(p, n, N)) return;
  Q8Rows q8[2];
  quantize_rows(q8, p, n, inp, N, IC, N);
  matmul_q8_vnni_rows(p, n, q8, N, IC);
}
}  // namespace PT_NS
}  // namespace pt
