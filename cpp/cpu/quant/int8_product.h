// The int8-activation products of int8.cpp, included there twice: in namespace PT_Q8_NS = plain (vpmaddubsw +
// vpmaddwd on AVX2 / AVX-512, scalar on baseline) and, under a VNNI target, vnni (vpdpbusd; PT_Q8_VNNI).
namespace pt {
namespace PT_NS {
namespace PT_Q8_NS {
namespace {

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
inline int32_t hsum(__m128i s) {
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}
// |v| (u8) . a sign(v) (s8) in int32 lanes: 16 values (xmm) or 32 (ymm)
inline __m128i dot16(__m128i v, __m128i a) {
  const __m128i uv = _mm_sign_epi8(v, v), sa = _mm_sign_epi8(a, v);
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
  return _mm_dpbusd_epi32(_mm_setzero_si128(), uv, sa);
#elif defined(PT_Q8_VNNI)
  return _mm_dpbusd_avx_epi32(_mm_setzero_si128(), uv, sa);
#else
  return _mm_madd_epi16(_mm_maddubs_epi16(uv, sa), _mm_set1_epi16(1));
#endif
}
inline __m256i dot32(__m256i v, __m256i a) {
  const __m256i uv = _mm256_sign_epi8(v, v), sa = _mm256_sign_epi8(a, v);
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), uv, sa);
#elif defined(PT_Q8_VNNI)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), uv, sa);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(uv, sa), _mm256_set1_epi16(1));
#endif
}
#endif

// sum_s sc[s] (v . a over sub-block s), kSub sub-blocks of kS values, exact in int32
template <int kSub, int kS>
inline int32_t scaled_dot(const int8_t* v, const int8_t* a, const int32_t* sc) {
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
  if constexpr (kS == 32) {
    __m256i acc = _mm256_setzero_si256();
    for (int s = 0; s < kSub; s++) {
      const __m256i p = dot32(_mm256_load_si256((const __m256i*)(v + 32 * s)),
                              _mm256_loadu_si256((const __m256i*)(a + 32 * s)));
      acc = kSub == 1 ? p : _mm256_add_epi32(acc, _mm256_mullo_epi32(p, _mm256_set1_epi32(sc[s])));
    }
    const int32_t sum = hsum(_mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1)));
    return kSub == 1 ? sum * sc[0] : sum;
  } else {
    __m128i acc = _mm_setzero_si128();
    for (int s = 0; s < kSub; s++) {
      const __m128i p = dot16(_mm_load_si128((const __m128i*)(v + 16 * s)), _mm_loadu_si128((const __m128i*)(a + 16 * s)));
      acc = _mm_add_epi32(acc, _mm_mullo_epi32(p, _mm_set1_epi32(sc[s])));
    }
    return hsum(acc);
  }
#else
  int32_t sum = 0;
  for (int s = 0; s < kSub; s++) {
    int32_t d = 0;
    for (int j = 0; j < kS; j++) d += (int32_t)v[kS * s + j] * a[kS * s + j];
    sum += sc[s] * d;
  }
  return sum;
#endif
}

// out (N, OC) = the rows (q, da, sums: quantize_row_q8's, blocks of B::kValues) times weight (OC rows of B) + bias
template <class B>
void product_of(float* out, const int8_t* q, const float* da, const int32_t* sums, const uint8_t* weight,
                const float* bias, int64_t N, int64_t IC, int64_t OC) {
  using I = Int<B>;
  const int64_t nb = IC / B::kValues, rb = nb * (int64_t)sizeof(B);
#pragma omp parallel for num_threads(threads()) schedule(static) if (N * IC * OC >= kParallelElements)
  for (int64_t o = 0; o < OC; o++) {
    IntBlock u;
    for (int64_t n = 0; n < N; n++) out[n * OC + o] = bias ? bias[o] : 0.f;
    for (int64_t b = 0; b < nb; b++) {
      I::unpack(u, weight + o * rb + b * (int64_t)sizeof(B));
      for (int64_t n = 0; n < N; n++) {
        const int64_t at = n * IC + b * B::kValues;
        float t = u.d * (float)scaled_dot<I::kSub, I::kS>(u.v, q + at, u.sc);
        if (I::kMin) {
          const int32_t* g = sums + at / 16;
          int32_t m = 0;
          for (int s = 0; s < I::kSub; s++) m += u.mn[s] * (I::kS == 32 ? g[2 * s] + g[2 * s + 1] : g[s]);
          t -= u.dmin * (float)m;
        }
        out[n * OC + o] += da[at / B::kValues] * t;
      }
    }
  }
}

}  // namespace

void product(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias, int64_t N,
             int64_t IC, int64_t OC) {
  const int64_t block = qtype == kQ2_K || qtype == kQ3_K || qtype == kQ4_K || qtype == kQ5_K || qtype == kQ6_K ||
                        qtype == kIQ4_XS ? 256 : 32;
  static thread_local ScratchBuffer buf;
  float* d = buf.floats((size_t)(N * IC / 16 * 2 + N * IC / 4 + 16));
  int32_t* sums = reinterpret_cast<int32_t*>(d + N * IC / 16);
  int8_t* q = reinterpret_cast<int8_t*>(sums + N * IC / 16);
#pragma omp parallel for num_threads(threads()) schedule(static) if (N * IC >= kParallelElements)
  for (int64_t n = 0; n < N; n++)
    quantize_row_q8(q + n * IC, d + n * IC / block, sums + n * IC / 16, inp + n * IC, IC, block);
  auto run = [&](auto blk) { product_of<decltype(blk)>(out, q, d, sums, weight, bias, N, IC, OC); };
  if (!with_block(RegisterBlocks{}, qtype, run)) with_block(RowBlocks{}, qtype, run);
}

}  // namespace PT_Q8_NS
}  // namespace PT_NS
}  // namespace pt
