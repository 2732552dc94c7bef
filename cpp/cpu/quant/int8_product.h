// The int8-activation products of int8.cpp, included there twice: in namespace PT_Q8_NS = plain (vpmaddubsw +
// vpmaddwd on AVX2 / AVX-512, scalar on baseline) and, under a VNNI target, vnni (vpdpbusd; PT_Q8_VNNI).
namespace pt {
namespace PT_NS {
namespace PT_Q8_NS {
namespace {

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
// |v| (u8) . a sign(v) (s8) in 8 int32 lanes, 32 values
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
#define PT_DPBUSD(w, z, u, s) w##dpbusd_epi32(z, u, s)
#elif defined(PT_Q8_VNNI)
#define PT_DPBUSD(w, z, u, s) w##dpbusd_avx_epi32(z, u, s)
#else
#define PT_DPBUSD(w, z, u, s) w##madd_epi16(w##maddubs_epi16(u, s), w##set1_epi16(1))  // (|a| <= 127: no saturation)
#endif
inline __m256i dot32(__m256i v, __m256i a) {
  return PT_DPBUSD(_mm256_, _mm256_setzero_si256(), _mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v));
}
#undef PT_DPBUSD
#endif

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
// sum_s sc[s] (v . a over sub-block s) of one block (kSub sub-blocks of kS values) as 8 int32 lanes, exact
template <int kSub, int kS>
inline __m256i block_lanes(const int8_t* v, const int8_t* a, const int32_t* sc) {
  __m256i acc = _mm256_setzero_si256();
  for (int i = 0; i < kSub * kS / 32; i++) {
    const __m256i p = dot32(_mm256_load_si256((const __m256i*)(v + 32 * i)),
                            _mm256_loadu_si256((const __m256i*)(a + 32 * i)));
    if (kSub == 1) return p;  // (the 32-value types: sc = 1)
    const __m256i scale = kS == 32 ? _mm256_set1_epi32(sc[i])  // (16-value sub-blocks: two per 32 bytes)
                                   : _mm256_setr_epi32(sc[2 * i], sc[2 * i], sc[2 * i], sc[2 * i], sc[2 * i + 1],
                                                       sc[2 * i + 1], sc[2 * i + 1], sc[2 * i + 1]);
    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(p, scale));
  }
  return acc;
}
#else
template <int kSub, int kS>
inline int32_t block_sum(const int8_t* v, const int8_t* a, const int32_t* sc) {
  int32_t sum = 0;
  for (int s = 0; s < kSub; s++) {
    int32_t d = 0;
    for (int j = 0; j < kS; j++) d += (int32_t)v[kS * s + j] * a[kS * s + j];
    sum += sc[s] * d;
  }
  return sum;
}
#endif

// out (N, OC) = the rows (q, da, sums: quantize_row_q8's, blocks of B::kValues) times weight (OC rows of B) + bias.
// Each weight row is unpacked once into integers and read by every input row; a row's block products add up in
// float lanes (d da times the block's integer lanes), summed across lanes once per output.
template <class B>
void product_of(float* out, const int8_t* q, const float* da, const int32_t* sums, const uint8_t* weight,
                const float* bias, int64_t N, int64_t IC, int64_t OC) {
  using I = Int<B>;
  const int64_t nb = IC / B::kValues, rb = nb * (int64_t)sizeof(B);
#pragma omp parallel for num_threads(threads()) schedule(static) if (N * IC * OC >= kParallelElements)
  for (int64_t o = 0; o < OC; o++) {
    static thread_local ScratchBuffer buf;
    IntBlock* row = reinterpret_cast<IntBlock*>(buf.floats((size_t)nb * sizeof(IntBlock) / sizeof(float)));
    for (int64_t b = 0; b < nb; b++) I::unpack(row[b], weight + o * rb + b * (int64_t)sizeof(B));
    for (int64_t n = 0; n < N; n++) {
      const int8_t* a = q + n * IC;
      const float* dn = da + n * nb;
      float mins = 0.f;  // sum over blocks of da dmin sum_s mn[s] (sum of a over s)
      if (I::kMin)
        for (int64_t b = 0; b < nb; b++) {
          const int32_t* g = sums + (n * IC + b * B::kValues) / 16;
          int32_t m = 0;
          for (int s = 0; s < I::kSub; s++) m += row[b].mn[s] * (I::kS == 32 ? g[2 * s] + g[2 * s + 1] : g[s]);
          mins += dn[b] * row[b].dmin * (float)m;
        }
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
      __m256 acc = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; b++)
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_lanes<I::kSub, I::kS>(row[b].v, a + b * B::kValues, row[b].sc)),
                              _mm256_set1_ps(row[b].d * dn[b]), acc);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      const float total = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#else
      float total = 0.f;
      for (int64_t b = 0; b < nb; b++)
        total += row[b].d * dn[b] * (float)block_sum<I::kSub, I::kS>(row[b].v, a + b * B::kValues, row[b].sc);
#endif
      out[n * OC + o] = total - mins + (bias ? bias[o] : 0.f);
    }
  }
}

}  // namespace

void product(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias, int64_t N,
             int64_t IC, int64_t OC) {
  if (N == 0 || OC == 0) return;  // (nothing to write: never a loop over the other, however large)
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
