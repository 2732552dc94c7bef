// The int8-activation products of int8.cpp, included there twice: in namespace PT_Q8_NS = plain (vpmaddubsw +
// vpmaddwd on AVX2 / AVX-512, scalar on baseline) and, under a VNNI target, vnni (vpdpbusd; PT_Q8_VNNI).
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
#include "int8_panel.h"  // (4 and more rows: VNNI panels)
#endif
namespace pt {
namespace PT_NS {
namespace PT_Q8_NS {
namespace {

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
constexpr int kRowsM = 4;  // input rows per tile: two pairs, each pair's sums with kRowsR weight rows in 8 lanes
constexpr int kRowsR = 4;  // weight rows per tile: one activation load feeds four dot products

// acc + the exact integer dot product of vector i of w with 32 activations a, in 8 int32 lanes (scaled by the
// sub-block scales where T has them). |a| <= 127 and u <= 63 (or |v| <= 128), so vpmaddubsw never saturates.
template <class T>
inline __m256i add_dot(__m256i acc, const WBlock<T>& w, int i, __m256i a) {
  if (T::kSigned) a = _mm256_sign_epi8(a, w.sign[i]);
  if (T::kScales) return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w.v[i], a), w.sc[i]));
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
  return _mm256_dpbusd_epi32(acc, w.v[i], a);
#elif defined(PT_Q8_VNNI)
  return _mm256_dpbusd_avx_epi32(acc, w.v[i], a);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w.v[i], a), _mm256_set1_epi16(1)));
#endif
}

// The integer part of one weight block w times one quantised row's block (a: its 32 T::kN values, s: their sums
// per 16), in 8 int32 lanes whose sum is exact: the dot products (scaled by the sub-block scales where T has them)
// less kOff times the activations' sums; C: the K types' sum_g c[g] (sum of a over g), where T has a min.
template <class T>
inline __m256i block_ints(const WBlock<T>& w, const int8_t* a, const int16_t* s, __m256i& C) {
  __m256i I = _mm256_setzero_si256();
  if (!T::kScales && T::kOff) I = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-T::kOff * (s[0] + s[1])));
#pragma GCC unroll 8
  for (int i = 0; i < T::kN; i++) I = add_dot(I, w, i, _mm256_loadu_si256((const __m256i*)(a + 32 * i)));
  if (T::kScales && (T::kOff || T::kMin)) C = _mm256_madd_epi16(w.coef, _mm256_loadu_si256((const __m256i*)s));
  return T::kScales && T::kOff ? _mm256_sub_epi32(I, C) : I;
}

// 8 vectors of int32 lanes -> lane r = the sum of v[r]'s lanes (integers: exact, whatever the order)
inline __m256i sum_lanes8(const __m256i v[8]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// acc + one block's products for 8 (weight row, input row) pairs, lane by lane, from their exact integer sums (I;
// C: the K types' min sums; block_ints reduced by sum_lanes8): I times d da, then the min's term -- the float
// operations of int8_panel.h's add_block in its order, so every int8 product gives a row the same bits in any batch
// (dw, mw: the weight rows' d and m; dam: the input rows' da; das: their da (sum a), Q8Rows::ds)
template <class T>
inline __m256 add_sums(__m256 acc, __m256i I, const __m256i C[8], __m256 dw, __m256 mw, __m256 dam, __m256 das) {
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(dw, dam), acc);
  if (T::kMin && T::kScales) return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(sum_lanes8(C)), _mm256_mul_ps(mw, dam), acc);
  if (T::kMin) return _mm256_fmadd_ps(mw, das, acc);
  return acc;
}

// out (rows ldo floats apart) rows n0 .. n0 + M, columns o0 .. o0 + nr (nr <= kRowsR) = their kRowsR unpacked
// weight rows w (block b of row r at w[b kRowsR + r]) times the quantised rows (q, da, sums, das: Q8Rows') +
// bias, input rows in pairs: lane r + 4 i of a pair's accumulator is weight row r times input row 2 p + i (an odd
// M's last pair takes its row twice and stores it once).
template <class T, int M>
void tile(float* out, int64_t ldo, const WBlock<T>* w, const int8_t* q, const float* da, const int16_t* sums,
          const float* das, const float* bias, int64_t nb, int64_t IC, int64_t n0, int64_t o0, int64_t nr) {
  constexpr int R = kRowsR, P = (M + 1) / 2, kV = 32 * T::kN;
  static_assert(R == 4, "a pair of input rows fills the 8 lanes");
  __m256 acc[P] = {};  // (zeros)
  for (int64_t b = 0; b < nb; b++) {
    alignas(32) float d[8], mw[8];
    for (int r = 0; r < R; r++) d[r] = d[R + r] = w[b * R + r].d, mw[r] = mw[R + r] = w[b * R + r].m;
    const __m256 dw = _mm256_load_ps(d), mv = _mm256_load_ps(mw);
#pragma GCC unroll 2
    for (int p = 0; p < P; p++) {
      const int64_t n[2] = {n0 + 2 * p, n0 + std::min(2 * p + 1, M - 1)};
      __m256i I[8], C[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++) {
        const int64_t at = n[i / R] * IC + b * kV;
        I[i] = block_ints(w[b * R + i % R], q + at, sums + at / 16, C[i]);
      }
      const __m256 dam = _mm256_set_m128(_mm_set1_ps(da[n[1] * nb + b]), _mm_set1_ps(da[n[0] * nb + b]));
      const __m256 ds = T::kMin && !T::kScales
                            ? _mm256_set_m128(_mm_set1_ps(das[n[1] * nb + b]), _mm_set1_ps(das[n[0] * nb + b]))
                            : dam;
      acc[p] = add_sums<T>(acc[p], sum_lanes8(I), C, dw, mv, dam, ds);
    }
  }
  for (int p = 0; p < P; p++) {
    alignas(32) float v[8];
    _mm256_store_ps(v, acc[p]);
    for (int i = 0; i < 2 && 2 * p + i < M; i++)
      for (int r = 0; r < nr; r++)
        out[(n0 + 2 * p + i) * ldo + o0 + r] = bias ? v[R * i + r] + bias[o0 + r] : v[R * i + r];
  }
}

template <class T, int M = kRowsM>
void tiles(float* out, int64_t ldo, const WBlock<T>* w, const int8_t* q, const float* da, const int16_t* sums,
           const float* das, const float* bias, int64_t N, int64_t nb, int64_t IC, int64_t o0, int64_t nr) {
  int64_t n0 = 0;
  for (; n0 + M <= N; n0 += M) tile<T, M>(out, ldo, w, q, da, sums, das, bias, nb, IC, n0, o0, nr);
  if constexpr (M > 1)
    if (n0 < N)
      tiles<T, M - 1>(out + n0 * ldo, ldo, w, q + n0 * IC, da + n0 * nb, sums + n0 * IC / 16,
                      das ? das + n0 * nb : nullptr, bias, N - n0, nb, IC, o0, nr);  // (the rows left: fewer than M)
}

// out (N, OC; rows ldo floats apart) = the quantised rows times weight (OC rows of B) + bias (rows past
// stream_products' and, with VNNI on AVX-512, short of the panels'): the threads split the weight rows in groups of
// kRowsR, each group unpacked once (scratch, L1) and read by every tile of kRowsM input rows.
template <class B>
void product_of(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums, const float* das,
                const uint8_t* weight, const float* bias, int64_t N, int64_t IC, int64_t OC) {
  using T = Vec<B>;
  const int64_t nb = IC / B::kValues, rb = nb * (int64_t)sizeof(B), groups = (OC + kRowsR - 1) / kRowsR;
  parallel_for(groups, N * IC * OC >= kParallelGemvMacs ? threads() : 1, [&](int64_t g) {
    static thread_local ScratchBuffer buf;
    WBlock<T>* w = reinterpret_cast<WBlock<T>*>(buf.floats((size_t)(nb * kRowsR) * sizeof(WBlock<T>) / 4));
    const int64_t o0 = g * kRowsR, nr = std::min<int64_t>(kRowsR, OC - o0);
    for (int64_t b = 0; b < nb; b++)
      for (int r = 0; r < kRowsR; r++) {
        const uint8_t* block = weight + (o0 + r) * rb + b * (int64_t)sizeof(B);
        __builtin_prefetch(block + kStreamAhead, 0, 3);  // (the four rows side by side: each asks for its own)
        if (r < nr) T::unpack(w[b * kRowsR + r], block);
        else std::memset((void*)&w[b * kRowsR + r], 0, sizeof(WBlock<T>));  // (rows past OC: zeros, not written)
      }
    tiles<T>(out, ldo, w, q, da, sums, das, bias, N, nb, IC, o0, nr);
  });
}

// out (M rows ldo floats apart) columns o0 .. o1 = M (1-3) quantised rows times weight + bias, eight weight rows at
// a time streamed from their bytes: block by block unpacked in registers and dotted with every input row (their d
// and m gathered for the eight at once: scales8), the eight rows' integer sums reduced exactly into one vector
// (lane r: weight row r), then per block in order one FMA of those sums times d da and one of the min's term: the
// order of the VNNI panels and AMX tiles (int8_panel.h add_block), so that a row's outputs are the same bits
// whatever the rows beside it (a request alone or in a serving batch).
template <class B, int M>
void stream_rows(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums, const float* das,
                 const uint8_t* weight, const float* bias, int64_t IC, int64_t o0, int64_t o1) {
  using T = Vec<B>;
  constexpr int64_t kB = sizeof(B), kV = B::kValues;
  constexpr bool kMins = T::kMin && !T::kScales, kC = T::kMin && T::kScales;  // (Q4_1, Q5_1 / the K types' mins)
  const int64_t nb = IC / kV;
  for (int64_t o = o0; o < o1; o += 8) {
    const uint8_t* w[8];  // (rows past o1: the last one again, its lanes never stored)
    for (int r = 0; r < 8; r++) w[r] = weight + std::min(o + r, o1 - 1) * nb * kB;
    const __m256i at = _mm256_mullo_epi32(_mm256_min_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                           _mm256_set1_epi32((int)(o1 - 1 - o))),
                                          _mm256_set1_epi32((int)(nb * kB)));  // (w[r] - w[0])
    const uint8_t* next = weight + (o + 8) * nb * kB;  // (the next group's rows: one run of bytes, asked for in
    const int64_t next_bytes = std::max<int64_t>(0, std::min<int64_t>(8, o1 - o - 8)) * nb * kB;  // order, a share
    __m256 acc[M] = {};  // (zeros)                                                         // per block step)
    for (int64_t b = 0; b < nb; b++) {
      __m256i I[M][8], C[kC ? M : 1][8];
      for (int64_t i = b * 8 * kB; i < std::min((b + 1) * 8 * kB, next_bytes); i += 64) __builtin_prefetch(next + i, 0, 3);
      for (int r = 0; r < 8; r++) {
        WBlock<T> blk;
        T::unpack(blk, w[r] + b * kB);  // (its d and m: scales8 below, for the eight rows at once)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++)
          I[m][r] = block_ints(blk, q + m * IC + b * kV, sums + (m * IC + b * kV) / 16, C[kC ? m : 0][r]);
      }
      __m256 dw, mv = _mm256_setzero_ps();
      scales8<B>(dw, mv, w[0] + b * kB, at);
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        const __m256 dam = _mm256_set1_ps(da[m * nb + b]);
        acc[m] = add_sums<T>(acc[m], sum_lanes8(I[m]), C[kC ? m : 0], dw, mv, dam,
                             kMins ? _mm256_set1_ps(das[m * nb + b]) : dam);
      }
    }
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)std::min<int64_t>(8, o1 - o)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 4
    for (int m = 0; m < M; m++)
      _mm256_maskstore_ps(out + m * ldo + o, keep,
                          bias ? _mm256_add_ps(acc[m], _mm256_maskload_ps(bias + o, keep)) : acc[m]);
  }
}

#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
// n activation sums a (|a| < 2^12) as signed bytes a = 128 h + l (l in 0..127), four to a dword, in every lane:
// lh[0 .. n / 4) the l's, lh[n / 4 .. n / 2) the h's (vpdpbusd's second operand: the K types' min and offset sums)
template <int n>
inline void split_sums(__m512i* lh, const int32_t* a) {
  uint8_t bytes[2 * n];
  for (int s = 0; s < n; s++) bytes[s] = (uint8_t)(a[s] & 127), bytes[n + s] = (uint8_t)(int8_t)(a[s] >> 7);
  int32_t w[n / 2];
  std::memcpy(w, bytes, sizeof(w));
  for (int k = 0; k < n / 2; k++) lh[k] = _mm512_set1_epi32(w[k]);
}

// out (M rows ldo floats apart), columns o .. o + 16 = a packed run's 16 sums acc[m] (a row's in each lane) + bias
template <int M>
inline void store_run(float* out, int64_t ldo, const __m512 acc[M], const float* bias, int64_t o) {
#pragma GCC unroll 4
  for (int m = 0; m < M; m++)
    _mm512_storeu_ps(out + m * ldo + o, bias ? _mm512_add_ps(acc[m], _mm512_loadu_ps(bias + o)) : acc[m]);
}

// stream_rows for rows packed (packed.h; o0, o1 whole runs of 16 rows), the 16 rows in the lanes of 512-bit
// vectors: per block a dword of the 16 rows' values is one load, each row's in its own lane (its own output), so no
// gather of scales and no lane sums; values as unsigned bytes u = v + kPackOff (Q4_0's and Q5_0's as stored, Q8_0's
// and IQ4_NL's levels + 128), the offset taken off with the activations' sums. The integer sums are stream_rows'
// exactly and the float epilogue is add_sums' operations in its order: the same bits. (In two 256-bit halves of 8
// rows, as before session 24, a block took twice the instructions: on an AMD Zen 5, whose 512-bit datapath does two
// vpdpbusd a cycle, one row's product from L3 1.0-1.3x as fast in 512-bit vectors, two or three rows' 1.2-1.5x.)
template <class B>
constexpr int kPackOff =
    B::kType == kQ4_0 ? 8 : B::kType == kQ5_0 ? 16 : B::kType == kQ8_0 || B::kType == kIQ4_NL ? 128 : 0;
template <class B, int M>
void stream_packed(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums, const float* das,
                   const uint8_t* packed, const float* bias, int64_t IC, int64_t o0, int64_t o1) {
  constexpr int64_t kRun = kPackRows * (int64_t)sizeof(B);  // (a block of 16 rows)
  constexpr int64_t kQs = kPackRows * offsetof(B, qs), kQh = kPackRows * packed_header(B::kType);
  constexpr int kQuads = B::kType == kQ8_0 ? 8 : 4;
  constexpr bool kNibbles = B::kType != kQ8_0, kMin = Vec<B>::kMin;
  const int64_t nb = IC / 32;
  const __m512i low = _mm512_set1_epi8(15), flip = _mm512_set1_epi8((char)0x80);
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)kIQ4Values));
  for (int64_t o = o0; o < o1; o += kPackRows) {
    const uint8_t* run = packed + o * nb * (int64_t)sizeof(B);
    const uint8_t* next = run + nb * kRun;  // (the next 16 rows' bytes, a share asked for per block step)
    const int64_t next_bytes = o + kPackRows < o1 ? nb * kRun : 0;
    __m512 acc[M] = {};  // (zeros; lane r: row o + r)
    for (int64_t b = 0; b < nb; b++) {
      for (int64_t i = b * kRun; i < std::min((b + 1) * kRun, next_bytes); i += 64) __builtin_prefetch(next + i, 0, 3);
      const uint8_t* at = run + b * kRun;
      __m512i I[M];
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        const int16_t* s = sums + (m * IC + b * 32) / 16;
        I[m] = _mm512_set1_epi32(-kPackOff<B> * (s[0] + s[1]));
      }
#pragma GCC unroll 8
      for (int t = 0; t < kQuads; t++) {
        const __m512i w = _mm512_loadu_si512(at + kQs + 64 * t);
        if constexpr (kNibbles) {
          __m512i u0 = _mm512_and_si512(w, low), u1 = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
          if constexpr (fifth_bits(B::kType)) {  // (16 where the fifth bit is set: packed.h's words t, 4 + t)
            uint64_t b0, b1;
            std::memcpy(&b0, at + kQh + 8 * t, 8);
            std::memcpy(&b1, at + kQh + 8 * (4 + t), 8);
            u0 = _mm512_mask_add_epi8(u0, (__mmask64)b0, u0, _mm512_set1_epi8(16));
            u1 = _mm512_mask_add_epi8(u1, (__mmask64)b1, u1, _mm512_set1_epi8(16));
          }
          if constexpr (B::kType == kIQ4_NL) {
            u0 = _mm512_xor_si512(_mm512_shuffle_epi8(table, u0), flip);
            u1 = _mm512_xor_si512(_mm512_shuffle_epi8(table, u1), flip);
          }
#pragma GCC unroll 4
          for (int m = 0; m < M; m++) {  // (the activations' quad t, and 4 + t for the high nibbles, in every lane)
            int32_t x0, x1;
            std::memcpy(&x0, q + m * IC + b * 32 + 4 * t, 4);
            std::memcpy(&x1, q + m * IC + b * 32 + 16 + 4 * t, 4);
            I[m] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(I[m], u0, _mm512_set1_epi32(x0)), u1, _mm512_set1_epi32(x1));
          }
        } else {
          const __m512i u = _mm512_xor_si512(w, flip);
#pragma GCC unroll 4
          for (int m = 0; m < M; m++) {
            int32_t x;
            std::memcpy(&x, q + m * IC + b * 32 + 4 * t, 4);
            I[m] = _mm512_dpbusd_epi32(I[m], u, _mm512_set1_epi32(x));
          }
        }
      }
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)at));
      const __m512 mw = kMin ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + 32))) : _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {  // (add_sums' operations in its order)
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[m]), _mm512_mul_ps(dw, _mm512_set1_ps(da[m * nb + b])), acc[m]);
        if constexpr (kMin) acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(das[m * nb + b]), acc[m]);
      }
    }
    store_run<M>(out, ldo, acc, bias, o);
  }
}

// The K types' streamed runs ask for the block kRunsAhead on as they go, a share of its n lines per step of the
// values' loop (ask_share: step i of `steps` asks for lines i n / steps .. (i + 1) n / steps). Left to the
// hardware's prefetcher, one thread of an AMD Zen 5 streamed Q4_K / Q6_K from DRAM 0.73x / 0.52x as fast; asked for
// in one burst of 36-53 lines per block step, the lines held the fill buffers the loads wait on (an Intel Xeon:
// 0.77x / 0.64x; bench/NOTES.md sessions 20 and 24).
constexpr int64_t kRunsAhead = 4;
template <int64_t kBytes, int steps>
inline void ask_share(const uint8_t* p, int i) {
  constexpr int64_t lines = (kBytes + 63) / 64;
  for (int64_t l = i * lines / steps; l < (i + 1) * lines / steps; l++) __builtin_prefetch(p + 64 * l, 0, 3);
}

// stream_packed for Q4_K and Q5_K (B; packed.h: d[16], dmin[16], the scales' 3 dwords, Q5_K's fifth bits' 8 and
// the nibbles' 32 dwords of 16 rows), the 16 rows in the lanes of 512-bit vectors (the rows' dwords are 64 bytes,
// one load): per block each sub-block s's sums D_s by vpdpbusd (Q5_K: the nibbles with 16 where the fifth bit is
// set, bit 2 g / 2 g + 1 of the byte of qh beside them), I = sum_s sc[s] D_s, and the min's C = sum_s mn[s] (the
// activations' sum over s) by vpdpbusd too, each sum split as 128 h + l (l in 0..127, h in -32..31: bytes): exact,
// as stream_rows' -- then add_sums' two float operations in its order, the same bits. (In 256-bit halves of 8 rows,
// as before session 24, the streamed rows ran out of instructions at ~17 GB/s a thread on an AMD Zen 5: 1.5-2.2x
// slower from L3.)
template <class B, int M>
void stream_packed_k45(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums,
                       const uint8_t* packed, const float* bias, int64_t IC, int64_t o0, int64_t o1) {
  constexpr bool kQh = B::kType == kQ5_K;
  constexpr int64_t kRun = kPackRows * (int64_t)sizeof(B), kQs = kPackRows * offsetof(B, qs);
  const int64_t nb = IC / 256;
  const __m512i low = _mm512_set1_epi8(15), byte = _mm512_set1_epi32(0xFF);
  for (int64_t o = o0; o < o1; o += kPackRows) {
    const uint8_t* run = packed + o * nb * (int64_t)sizeof(B);
    __m512 acc[M] = {};  // (zeros; lane r: row o + r)
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t* at = run + b * kRun;
      __m512i lh[M][4];  // (each input row's sub-block sums as bytes l, h: sub-blocks 0-3 and 4-7)
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        const int16_t* s16 = sums + (m * IC + b * 256) / 16;
        int32_t A[8];
        for (int s = 0; s < 8; s++) A[s] = s16[2 * s] + s16[2 * s + 1];
        split_sums<8>(lh[m], A);
      }
      const __m512i u[3] = {_mm512_loadu_si512(at + 64), _mm512_loadu_si512(at + 128), _mm512_loadu_si512(at + 192)};
      __m512i x[4];  // (sc 0-3, sc 4-7, mn 0-3, mn 4-7: bytes of each row's lane)
      k4_scales(u, x);
      __m512i I[M] = {};
#pragma GCC unroll 4
      for (int g = 0; g < 4; g++) {
        __m512i D0[M] = {}, D1[M] = {};  // (sub-blocks 2 g, 2 g + 1)
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) {
          ask_share<kRun, 32>(at + kRunsAhead * kRun, 8 * g + t);
          const __m512i w = _mm512_loadu_si512(at + kQs + 64 * (8 * g + t));
          __m512i u0 = _mm512_and_si512(w, low), u1 = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
          if constexpr (kQh) {  // (qh's dword t: bit 2 g of each byte the fifth bit of u0's, 2 g + 1 of u1's)
            const __m512i h = _mm512_loadu_si512(at + kPackRows * offsetof(B, qh) + 64 * t);
            u0 = with_fifth_bit(u0, h, 2 * g), u1 = with_fifth_bit(u1, h, 2 * g + 1);
          }
#pragma GCC unroll 4
          for (int m = 0; m < M; m++) {
            int32_t a0, a1;
            std::memcpy(&a0, q + m * IC + b * 256 + 64 * g + 4 * t, 4);
            std::memcpy(&a1, q + m * IC + b * 256 + 64 * g + 32 + 4 * t, 4);
            D0[m] = _mm512_dpbusd_epi32(D0[m], u0, _mm512_set1_epi32(a0));
            D1[m] = _mm512_dpbusd_epi32(D1[m], u1, _mm512_set1_epi32(a1));
          }
        }
        const __m512i s0 = _mm512_and_si512(_mm512_srli_epi32(x[g / 2], 16 * (g % 2)), byte);
        const __m512i s1 = _mm512_and_si512(_mm512_srli_epi32(x[g / 2], 16 * (g % 2) + 8), byte);
#pragma GCC unroll 4
        for (int m = 0; m < M; m++)
          I[m] = _mm512_add_epi32(I[m], _mm512_add_epi32(_mm512_mullo_epi32(D0[m], s0), _mm512_mullo_epi32(D1[m], s1)));
      }
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)at));
      const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + 32)));
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        const __m512i zero = _mm512_setzero_si512();
        const __m512i Cl = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, x[2], lh[m][0]), x[3], lh[m][1]);
        const __m512i Ch = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, x[2], lh[m][2]), x[3], lh[m][3]);
        const __m512i C = _mm512_add_epi32(Cl, _mm512_slli_epi32(Ch, 7));
        const __m512 dam = _mm512_set1_ps(da[m * nb + b]);  // (add_sums: the K types' two operations)
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[m]), _mm512_mul_ps(dw, dam), acc[m]);
        acc[m] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(C), _mm512_mul_ps(mw, dam), acc[m]);
      }
    }
    store_run<M>(out, ldo, acc, bias, o);
  }
}

// stream_packed for Q6_K (packed.h: ql as 32 dwords, qh as 16, the int8 scales as 4, then d[16] of 16 rows), the
// 16 rows in the lanes of 512-bit vectors as stream_packed_k45: per block each 16 values' sums D_s by vpdpbusd on
// u = v + 32, I = sum_s sc[s] D_s less 32 sum_s sc[s] (the activations' sum over s) -- the offset's sum by vpdpbusd
// on sc + 128 (unsigned bytes) and the activation sums split as 128 h + l, less 128 times their total -- exact, as
// stream_rows'; then add_sums' float operation: the same bits.
template <int M>
void stream_packed_q6_k(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums,
                        const uint8_t* packed, const float* bias, int64_t IC, int64_t o0, int64_t o1) {
  constexpr int64_t kRun = kPackRows * (int64_t)sizeof(BlockQ6_K);
  constexpr int64_t kQh = kPackRows * 128, kSc = kPackRows * 192, kD = kPackRows * 208;
  const int64_t nb = IC / 256;
  const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3), flip = _mm512_set1_epi8((char)0x80);
  for (int64_t o = o0; o < o1; o += kPackRows) {
    const uint8_t* run = packed + o * nb * (int64_t)sizeof(BlockQ6_K);
    __m512 acc[M] = {};  // (zeros; lane r: row o + r)
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t* at = run + b * kRun;
      __m512i lh[M][8];  // (each input row's 16 sums as bytes l (4 dwords), then h (4 dwords))
      int32_t total[M];  // (... and their total)
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        const int16_t* s16 = sums + (m * IC + b * 256) / 16;
        int32_t A[16];
        total[m] = 0;
        for (int s = 0; s < 16; s++) A[s] = s16[s], total[m] += s16[s];
        split_sums<16>(lh[m], A);
      }
      __m512i sc[4];  // (row r's scales 4 j .. 4 j + 3 in lane r of sc[j])
      for (int j = 0; j < 4; j++) sc[j] = _mm512_loadu_si512(at + kSc + 64 * j);
      __m512i I[M] = {};
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
          __m512i D[2][M] = {};  // (sub-blocks 2 v, 2 v + 1 of vector v = 4 h + k: quads 0-3, 4-7)
#pragma GCC unroll 8
          for (int t = 0; t < 8; t++) {
            ask_share<kRun, 64>(at + kRunsAhead * kRun, 32 * h + 8 * k + t);
            const __m512i ql = _mm512_loadu_si512(at + 64 * (16 * h + 8 * (k & 1) + t));
            const __m512i qh = _mm512_loadu_si512(at + kQh + 64 * (8 * h + t));
            const __m512i u = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4 * (k / 2)), m4),
                                              _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * k), m2), 4));
#pragma GCC unroll 4
            for (int m = 0; m < M; m++) {
              int32_t a;
              std::memcpy(&a, q + m * IC + b * 256 + 128 * h + 32 * k + 4 * t, 4);
              D[t / 4][m] = _mm512_dpbusd_epi32(D[t / 4][m], u, _mm512_set1_epi32(a));
            }
          }
          const int s = 2 * (4 * h + k);  // (its scales: bytes s % 4 and s % 4 + 1 of sc[s / 4], sign-extended)
          const __m512i s0 = _mm512_srai_epi32(_mm512_slli_epi32(sc[s / 4], 24 - 8 * (s % 4)), 24);
          const __m512i s1 = _mm512_srai_epi32(_mm512_slli_epi32(sc[s / 4], 16 - 8 * (s % 4)), 24);
#pragma GCC unroll 4
          for (int m = 0; m < M; m++)
            I[m] = _mm512_add_epi32(I[m], _mm512_add_epi32(_mm512_mullo_epi32(D[0][m], s0),
                                                           _mm512_mullo_epi32(D[1][m], s1)));
        }
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + kD)));
#pragma GCC unroll 4
      for (int m = 0; m < M; m++) {
        __m512i L = _mm512_setzero_si512(), H = _mm512_setzero_si512();  // (sum_s (sc[s] + 128) l_s, ... h_s)
        for (int j = 0; j < 4; j++) {
          const __m512i u = _mm512_xor_si512(sc[j], flip);
          L = _mm512_dpbusd_epi32(L, u, lh[m][j]);
          H = _mm512_dpbusd_epi32(H, u, lh[m][4 + j]);
        }
        const __m512i offset = _mm512_sub_epi32(_mm512_add_epi32(L, _mm512_slli_epi32(H, 7)),
                                                _mm512_set1_epi32(128 * total[m]));  // (sum_s sc[s] A_s)
        const __m512i Im = _mm512_sub_epi32(I[m], _mm512_slli_epi32(offset, 5));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(Im), _mm512_mul_ps(dw, _mm512_set1_ps(da[m * nb + b])),
                                 acc[m]);  // (add_sums: one operation without a min)
      }
    }
    store_run<M>(out, ldo, acc, bias, o);
  }
}
#endif

// The products p[0 .. n) of N < kStreamRows quantised rows (q8: their blocks of 32 and of 256), in one pass of
// the threads: each weight's rows cut in chunks of contiguous rows (256 KiB, or a thread's share of a smaller
// matrix, in whole groups of eight), which the threads take as they come free, each streamed once by stream_rows.
constexpr int kStreamRows = 4;
struct Chunk {
  int64_t product, o0, o1;
};
template <class B>
void stream_chunk(const QProduct& p, const Q8Rows& a, int64_t N, int64_t IC, int64_t o0, int64_t o1) {
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
  if constexpr (B::kType == kQ6_K) {
    if (const uint8_t* packed = packed_rows(p)) {
      if (N == 1) return stream_packed_q6_k<1>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
      if (N == 2) return stream_packed_q6_k<2>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
      return stream_packed_q6_k<3>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
    }
  } else if constexpr (B::kType == kQ4_K || B::kType == kQ5_K) {
    if (const uint8_t* packed = packed_rows(p)) {
      if (N == 1) return stream_packed_k45<B, 1>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
      if (N == 2) return stream_packed_k45<B, 2>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
      return stream_packed_k45<B, 3>(p.out, p.ldo, a.q, a.d, a.sums, packed, p.bias, IC, o0, o1);
    }
  } else if constexpr (packable(B::kType)) {
    if (const uint8_t* packed = packed_rows(p)) {
      if (N == 1) return stream_packed<B, 1>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, packed, p.bias, IC, o0, o1);
      if (N == 2) return stream_packed<B, 2>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, packed, p.bias, IC, o0, o1);
      return stream_packed<B, 3>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, packed, p.bias, IC, o0, o1);
    }
  }
#endif
  if (N == 1) stream_rows<B, 1>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, p.weight, p.bias, IC, o0, o1);
  else if (N == 2) stream_rows<B, 2>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, p.weight, p.bias, IC, o0, o1);
  else stream_rows<B, 3>(p.out, p.ldo, a.q, a.d, a.sums, a.ds, p.weight, p.bias, IC, o0, o1);
}
void stream_products(const QProduct* p, int64_t n, const Q8Rows q8[2], int64_t N, int64_t IC) {
  int64_t macs = 0;
  for (int64_t i = 0; i < n; i++) macs += N * IC * p[i].OC;
  const bool parallel = macs >= kParallelGemvMacs;
  const int64_t nt = parallel ? threads() : 1;
  static thread_local std::vector<Chunk> chunks;  // (grown once)
  chunks.clear();
  for (int64_t i = 0; i < n; i++) {
    const int64_t OC = p[i].OC, rb = quant_row_bytes(p[i].qtype, IC);
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
    const int64_t unit = packed_rows(p[i]) ? kPackRows : 8;  // (rows a chunk is whole of: packed runs, or groups)
#else
    const int64_t unit = 8;
#endif
    const int64_t rows = std::min((OC + nt - 1) / nt, std::max<int64_t>(8, (256 << 10) / rb));
    const int64_t chunk = (rows + unit - 1) / unit * unit;
    for (int64_t o0 = 0; o0 < OC; o0 += chunk) chunks.push_back({i, o0, std::min(OC, o0 + chunk)});
  }
  const Chunk* c = chunks.data();  // (the calling thread's list: inside the region a thread_local is each thread's)
  const int64_t count = (int64_t)chunks.size();
  parallel_for<true>(count, (int)nt, [&](int64_t k) {
    const QProduct& pk = p[c[k].product];
    auto run = [&](auto blk) {
      stream_chunk<decltype(blk)>(pk, q8[q8_block(pk.qtype) == 256], N, IC, c[k].o0, c[k].o1);
    };
    if (!with_block(RegisterBlocks{}, pk.qtype, run)) with_block(RowBlocks{}, pk.qtype, run);
  });
}
#else
// The baseline: each weight row unpacked once into integers (Int<B>) and read by every input row, scalar sums.
template <class B>
void product_of(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums, const float* /*das*/,
                const uint8_t* weight, const float* bias, int64_t N, int64_t IC, int64_t OC) {
  using I = Int<B>;
  const int64_t nb = IC / B::kValues, rb = nb * (int64_t)sizeof(B);
  parallel_for(OC, N * IC * OC >= kParallelElements ? threads() : 1, [&](int64_t o) {
    static thread_local ScratchBuffer buf;
    IntBlock* row = reinterpret_cast<IntBlock*>(buf.floats((size_t)nb * sizeof(IntBlock) / sizeof(float)));
    for (int64_t b = 0; b < nb; b++) I::unpack(row[b], weight + o * rb + b * (int64_t)sizeof(B));
    for (int64_t n = 0; n < N; n++) {
      const int8_t* a = q + n * IC;
      const float* dn = da + n * nb;
      float total = 0.f, mins = 0.f;  // mins: sum over blocks of da dmin sum_s mn[s] (sum of a over s)
      for (int64_t b = 0; b < nb; b++) {
        const int16_t* g = sums + (n * IC + b * B::kValues) / 16;
        int32_t sum = 0, m = 0;
        for (int s = 0; s < I::kSub; s++) {
          int32_t dot = 0;
          for (int j = 0; j < I::kS; j++) dot += (int32_t)row[b].v[I::kS * s + j] * a[b * B::kValues + I::kS * s + j];
          sum += row[b].sc[s] * dot;
          if (I::kMin) m += row[b].mn[s] * (I::kS == 32 ? g[2 * s] + g[2 * s + 1] : g[s]);
        }
        total += row[b].d * dn[b] * (float)sum;
        if (I::kMin) mins += dn[b] * row[b].dmin * (float)m;  // (types without a min never set dmin)
      }
      out[n * ldo + o] = total - mins + (bias ? bias[o] : 0.f);
    }
  });
}
#endif

}  // namespace

// The products p[0 .. n) of N quantised rows (q8: their blocks of 32 and of 256, quantize_rows)
void products(const QProduct* p, int64_t n, const Q8Rows q8[2], int64_t N, int64_t IC) {
  if (N == 0) return;
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
  if (N < kStreamRows) return stream_products(p, n, q8, N, IC);
#endif
  for (int64_t i = 0; i < n; i++) {
    const QProduct& pi = p[i];
    const Q8Rows& a = q8[q8_block(pi.qtype) == 256];
    auto run = [&](auto blk) {
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
      if (N >= kPanelM)
        return panel_product<decltype(blk)>(pi.out, pi.ldo, a.q, a.d, a.sums, a.ds, pi.weight, packed_rows(pi),
                                            pi.bias, N, IC, pi.OC);
#endif
      product_of<decltype(blk)>(pi.out, pi.ldo, a.q, a.d, a.sums, a.ds, pi.weight, pi.bias, N, IC, pi.OC);
    };
    if (pi.OC > 0 && !with_block(RegisterBlocks{}, pi.qtype, run)) with_block(RowBlocks{}, pi.qtype, run);
  }
}

// The benchmark probe (bench/limits.py's int8 peak): iters rounds of 12 independent integer dot-product chains on
// every thread, with this copy's instruction on the widest vectors its products take (vpdpbusd: zmm where the VNNI
// panels run, ymm for AVX-VNNI; vpmaddubsw + vpmaddwd + vpaddd on ymm without VNNI; scalar multiply-adds on the
// baseline) -> the multiply-adds done; the sums go to sink (so that nothing is optimised away)
double dot_probe(int32_t* sink, int64_t iters) {
  constexpr int kChains = 12;
  double macs = 0.0;
#pragma omp parallel num_threads(threads()) reduction(+ : macs)
  {
#if defined(PT_Q8_VNNI) && defined(PT_ISA_AVX512)
    using P = __m512i;
    auto set = [](int x) { return _mm512_set1_epi8((char)x); };
    auto step = [](P acc, P a, P b) { return _mm512_dpbusd_epi32(acc, a, b); };
#elif defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
    using P = __m256i;
    auto set = [](int x) { return _mm256_set1_epi8((char)x); };
#if defined(PT_Q8_VNNI)
    auto step = [](P acc, P a, P b) { return _mm256_dpbusd_avx_epi32(acc, a, b); };
#else
    auto step = [](P acc, P a, P b) {
      return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
    };
#endif
#else
    using P = uint32_t;  // (wraps, as the vector lanes do)
    auto set = [](int x) { return (P)x; };
    auto step = [](P acc, P a, P b) { return acc + a * b; };
#endif
    constexpr int kLanes = sizeof(P) / 4, kPerLane = sizeof(P) > 4 ? 4 : 1;  // (4 multiply-adds per int32 lane)
    P acc[kChains], a = set(1);
    const P b = set(2);
    for (int u = 0; u < kChains; u++) acc[u] = set(u);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
      for (int u = 0; u < kChains; u++) acc[u] = step(acc[u], a, b);
#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
      __asm__ volatile("" : "+v"(a));  // (a unknown to the compiler: no chain folded into one multiply)
#else
      __asm__ volatile("" : "+r"(a));
#endif
    }
    int32_t total = 0;
    for (int u = 0; u < kChains; u++) {
      int32_t lanes[kLanes];
      std::memcpy(lanes, &acc[u], sizeof(P));
      for (int l = 0; l < kLanes; l++) total += lanes[l];
    }
#pragma omp critical
    sink[0] += total;
    macs += (double)kLanes * kPerLane * kChains * (double)iters;
  }
  return macs;
}

}  // namespace PT_Q8_NS
}  // namespace PT_NS
}  // namespace pt
