// The int8 products of 4 and more rows on AVX512-VNNI (included by int8_product.h in its vnni copy): weights in
// panels of 16 output rows, each 32-value vector of a block as 8 zmm whose lane o holds row o's 4 bytes of a quad
// of values (the layout of an AMX B tile), so one vpdpbusd of a broadcast activation quad makes 4 steps of 16
// outputs' sums; 4 input rows x 2 panels in registers. No horizontal sums: lane o is output o.
// Signed blocks (Q8_0, IQ4) go in as v + 128 (u8), their offset 128 taken off with the activations' sums (the AMX
// tiles take the 32-value types' bytes back signed: int8_amx.cpp's kSignedTile).
#include "pytransformer/packed.h"

namespace pt {
namespace PT_NS {
namespace PT_Q8_NS {
namespace {

constexpr int kPanelM = 4, kPanelP = 2;  // input rows x panels of 16 outputs per register tile

// p's packed rows where it has them and they can be read (else null: its weight as the file lays it out)
inline const uint8_t* packed_rows(const QProduct& p) {
  return p.packed && can_pack(p.qtype, p.OC) ? p.packed : nullptr;
}

inline __m512i broadcast4(const void* p) {  // 4 bytes at p in every dword
  int32_t x;
  std::memcpy(&x, p, 4);
  return _mm512_set1_epi32(x);
}

template <class T>
struct alignas(64) Panel {
  static constexpr int kSubs = T::kScales ? 32 * T::kN / T::kS : 1, kOff = T::kSigned ? 128 : T::kOff;
  __m512i q[T::kN][8];  // quad t of vector i: lane o = row o's u[32 i + 4 t .. + 4)
  __m512i sc[kSubs];    // int32 lanes: each row's sub-block scales (K types)
  __m512i coef[8];      // int16 pairs: each row's c[2 p], c[2 p + 1] (kOff sc or mn per 16 values; K types)
  __m512 d, m;
};

// out[t] lane o = dword t of the 32 bytes at rows[o] (16 rows, any alignment): rows o and o + 8 in one register,
// an 8 x 8 transpose of dwords in each half (unpacks), then each output's four 128-bit lanes picked from two registers
inline void transpose_quads(__m512i out[8], const __m256i* const rows[16]) {
  __m512i z[8], t[8], u[8];
  for (int r = 0; r < 8; r++)
    z[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(rows[r])), _mm256_loadu_si256(rows[r + 8]), 1);
  for (int h = 0; h < 2; h++) {  // (rows 4 h .. 4 h + 3 and their + 8)
    const __m512i* a = z + 4 * h;
    t[4 * h] = _mm512_unpacklo_epi32(a[0], a[1]), t[4 * h + 1] = _mm512_unpackhi_epi32(a[0], a[1]);
    t[4 * h + 2] = _mm512_unpacklo_epi32(a[2], a[3]), t[4 * h + 3] = _mm512_unpackhi_epi32(a[2], a[3]);
    u[4 * h] = _mm512_unpacklo_epi64(t[4 * h], t[4 * h + 2]);      // lane L: dword 0 (L even) or 4 of 4 rows
    u[4 * h + 1] = _mm512_unpackhi_epi64(t[4 * h], t[4 * h + 2]);  // dword 1 or 5
    u[4 * h + 2] = _mm512_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm512_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
  const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(4));
  for (int k = 0; k < 4; k++) {
    out[k] = _mm512_permutex2var_epi32(u[k], lo, u[4 + k]);
    out[4 + k] = _mm512_permutex2var_epi32(u[k], hi, u[4 + k]);
  }
}

// the panel of 16 unpacked rows w[0 .. 16) (one block each): the values by transposes, the rest by gathers
template <class T>
void to_panel(Panel<T>& P, const WBlock<T>* w) {
  constexpr int kStride = (int)(sizeof(WBlock<T>) / 4);
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(kStride));
  auto gather = [&](const void* at) { return _mm512_i32gather_epi32(rows, at, 4); };
  for (int i = 0; i < T::kN; i++) {
    const __m256i* at[16];
    for (int r = 0; r < 16; r++) at[r] = T::kSigned ? &w[r].sign[i] : &w[r].v[i];
    transpose_quads(P.q[i], at);
    if (T::kSigned)
      for (int t = 0; t < 8; t++) P.q[i][t] = _mm512_xor_si512(P.q[i][t], _mm512_set1_epi8((char)0x80));
  }
  if (T::kScales) {
    for (int s = 0; s < Panel<T>::kSubs; s++) {  // (lane 0 of sc[s] for kS = 32, lanes 0 / 8 of sc[s / 2] for 16)
      const int32_t* at = T::kS == 32 ? (const int32_t*)&w->sc[s] : (const int32_t*)&w->sc[s / 2] + 4 * (s % 2);
      P.sc[s] = _mm512_srai_epi32(_mm512_slli_epi32(gather(at), 16), 16);
    }
    for (int p = 0; p < 8; p++) P.coef[p] = gather((const int32_t*)&w->coef + p);
  }
  P.d = _mm512_castsi512_ps(gather(&w->d));
  P.m = _mm512_castsi512_ps(gather(&w->m));
}


// Whether a type's panel is made straight from its blocks' bytes (16 rows' dwords transposed into the quads, no
// unpack to WBlock and back): Q8_0 (q8_0_panel) and the 4-bit types (nibble_panel; Q4_1 at 4 / 16 rows 73 / 137 us
// against 100 / 148, bench/NOTES.md session 14). Q5's fifth bits added that way were no faster (85 / 155 us against
// 80 / 145): they unpack to WBlock, where AVX-512 adds them with one masked add per row.
template <class B>
constexpr bool kDirectPanel = B::kType == kQ8_0 || B::kType == kQ4_0 || B::kType == kQ4_1 || B::kType == kIQ4_NL;

// the 32 bits at offset `at` of each of 16 blocks (rows[o]: lane o)
inline __m512i dwords16(const uint8_t* const rows[16], int at) {
  const __m512i lo = _mm512_add_epi64(_mm512_loadu_si512(rows), _mm512_set1_epi64(at));
  const __m512i hi = _mm512_add_epi64(_mm512_loadu_si512(rows + 8), _mm512_set1_epi64(at));
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_i64gather_epi32(lo, nullptr, 1)),
                            _mm512_i64gather_epi32(hi, nullptr, 1), 1);
}

// the panel of 16 Q8_0 blocks at rows[0 .. 16) read in place: their bytes are the values (no unpack to WBlock); d
// gathered (16 half stores read back as one vector stalled on store forwarding)
inline void q8_0_panel(Panel<Vec<BlockQ8_0>>& P, const uint8_t* const rows[16]) {
  const __m256i* at[16];
  for (int r = 0; r < 16; r++) at[r] = (const __m256i*)(rows[r] + 2);
  transpose_quads(P.q[0], at);
  for (int t = 0; t < 8; t++) P.q[0][t] = _mm512_xor_si512(P.q[0][t], _mm512_set1_epi8((char)0x80));
  P.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dwords16(rows, 0)));
  P.m = _mm512_setzero_ps();
}

// The panel of 16 blocks of a 4-bit type (Q4_0, Q4_1, IQ4_NL) at rows[0 .. 16), from their bytes: value j < 16 is
// the low nibble of qs[j], 16 + j its high nibble (IQ4_NL: the nibble's level, + 128), so quad t < 4 of the panel is
// dword t of each row's qs masked and quad 4 + t the same shifted by 4: the 16 rows' qs (16 bytes each) transposed
// as a 16 x 4 matrix of dwords. The values, d and m are those of to_panel(Vec<B>::unpack) bit for bit.
template <class B>
inline void nibble_panel(Panel<Vec<B>>& P, const uint8_t* const rows[16]) {
  constexpr int kQs = (int)offsetof(B, qs);
  constexpr bool kMin = B::kType == kQ4_1;
  auto qs = [&](int r) { return _mm_loadu_si128((const __m128i*)(rows[r] + kQs)); };
  __m512i z[4];  // z[k]: rows 4 k .. 4 k + 3, one per 128-bit lane (the lane an immediate: written out)
  for (int k = 0; k < 4; k++)
    z[k] = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(qs(4 * k)), qs(4 * k + 1),
                                                                    1), qs(4 * k + 2), 2), qs(4 * k + 3), 3);
  const __m512i a0 = _mm512_unpacklo_epi32(z[0], z[1]), a1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i b0 = _mm512_unpacklo_epi32(z[2], z[3]), b1 = _mm512_unpackhi_epi32(z[2], z[3]);
  // c[t] dword 4 j + k = row 4 k + j's dword t: permuted so that lane o is row o's
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i c[4] = {_mm512_unpacklo_epi64(a0, b0), _mm512_unpackhi_epi64(a0, b0), _mm512_unpacklo_epi64(a1, b1),
                        _mm512_unpackhi_epi64(a1, b1)};
  const __m512i low = _mm512_set1_epi8(15);
  for (int t = 0; t < 4; t++) {
    const __m512i y = _mm512_permutexvar_epi32(order, c[t]);
    P.q[0][t] = _mm512_and_si512(y, low);
    P.q[0][4 + t] = _mm512_and_si512(_mm512_srli_epi16(y, 4), low);
  }
  if constexpr (B::kType == kIQ4_NL) {  // (signed levels, as to_panel takes them: + 128)
    const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)kIQ4Values));
    for (int t = 0; t < 8; t++)
      P.q[0][t] = _mm512_xor_si512(_mm512_shuffle_epi8(table, P.q[0][t]), _mm512_set1_epi8((char)0x80));
  }
  const __m512i dm = dwords16(rows, 0);  // (d, and m where the type has it: two halves)
  P.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
  P.m = kMin ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))) : _mm512_setzero_ps();
}

// The panel of the 16 blocks at rows[0 .. 16) as the file lays them out (rows past a weight's last: a zero block, its
// outputs never written): from their bytes where the type allows (kDirectPanel), else unpacked to WBlock first
template <class B>
inline void file_panel(Panel<Vec<B>>& P, const uint8_t* const rows[16]) {
  if constexpr (std::is_same_v<B, BlockQ8_0>) q8_0_panel(P, rows);
  else if constexpr (kDirectPanel<B>) nibble_panel<B>(P, rows);
  else {
    alignas(64) WBlock<Vec<B>> w[16];
    for (int r = 0; r < 16; r++) Vec<B>::unpack(w[r], rows[r]);
    to_panel(P, w);
  }
}

// Q4_K's six-bit scales and mins of 8 or 16 rows (u[k]: dword k of each row's 12 bytes) -> bytes sc[0..3], sc[4..7],
// mn[0..3], mn[4..7] of each row in its lane: VecK45::unpack's scale_min_k4, lane by lane. V is __m256i or __m512i,
// through the compiler's vector operators (64-bit lanes: each shift is under 8 and every mask keeps bits a byte's
// own bits land on, so the lanes' width does not matter).
template <class V>
inline void k4_scales(const V u[3], V x[4]) {
  const V m6 = V{} + 0x3f3f3f3f3f3f3f3fLL, m4 = V{} + 0x0f0f0f0f0f0f0f0fLL, m2 = V{} + 0x0303030303030303LL;
  x[0] = u[0] & m6;
  x[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
  x[2] = u[1] & m6;
  x[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
}

// Q5_K's values u (nibbles, bytes) with 16 added where bit `bit` of the same byte of h (qh's dword beside them) is
// set; V __m256i or __m512i through the compiler's vector operators (as k4_scales: bit < 8 keeps each byte's bits)
template <class V>
inline V with_fifth_bit(V u, V h, int bit) {
  return u | (((h >> bit) & (V{} + 0x0101010101010101LL)) << 4);
}

// where a packed run's values start (Q6_K: its ql, first)
template <class B>
constexpr int64_t packed_values() {
  if constexpr (B::kType == kQ6_K) return 0;
  else return kPackRows * (int64_t)offsetof(B, qs);
}

// The panel of a packed type's block for 16 rows (packed.h; at: that block's run): quad t of the values is the run's
// dword t of every row, loaded as it lies (the 4- and 5-bit types: masked, and shifted by 4 for quad 4 + t; Q5's
// fifth bits one masked add; the K types' from their nibbles and bit pairs), d and m one conversion each. The panel
// nibble_panel / q8_0_panel / to_panel make from the file's bytes, bit for bit.
template <class B>
inline void packed_panel(Panel<Vec<B>>& P, const uint8_t* at) {
  constexpr int64_t kQs = packed_values<B>();
  if constexpr (B::kType == kQ4_K || B::kType == kQ5_K) {  // (vector 2 g / 2 g + 1: the low / high nibbles of
    const __m512i low = _mm512_set1_epi8(15);  // dwords 8 g .. 8 g + 7; Q5_K: + 16 where
    for (int g = 0; g < 4; g++)                                         // bit 2 g / 2 g + 1 of qh's dword t is set)
      for (int t = 0; t < 8; t++) {
        const __m512i y = _mm512_loadu_si512(at + kQs + 64 * (8 * g + t));
        P.q[2 * g][t] = _mm512_and_si512(y, low);
        P.q[2 * g + 1][t] = _mm512_and_si512(_mm512_srli_epi16(y, 4), low);
        if constexpr (B::kType == kQ5_K) {
          const __m512i h = _mm512_loadu_si512(at + kPackRows * offsetof(B, qh) + 64 * t);
          P.q[2 * g][t] = with_fifth_bit(P.q[2 * g][t], h, 2 * g);
          P.q[2 * g + 1][t] = with_fifth_bit(P.q[2 * g + 1][t], h, 2 * g + 1);
        }
      }
    const __m512i u[3] = {_mm512_loadu_si512(at + 64), _mm512_loadu_si512(at + 128), _mm512_loadu_si512(at + 192)};
    __m512i x[4];  // (sc 0-3, sc 4-7, mn 0-3, mn 4-7: bytes of each row's lane)
    k4_scales(u, x);
    const __m512i byte = _mm512_set1_epi32(0xFF);
    for (int s = 0; s < 8; s++) {
      P.sc[s] = _mm512_and_si512(_mm512_srli_epi32(x[s / 4], 8 * (s % 4)), byte);
      const __m512i mn = _mm512_and_si512(_mm512_srli_epi32(x[2 + s / 4], 8 * (s % 4)), byte);
      P.coef[s] = _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16));  // (mn[s] for both 16-value halves)
    }
    P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)at));
    P.m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + 32)));
    return;
  }
  if constexpr (B::kType == kQ6_K) {  // (vector 4 h + k, quad t: nibble k / 2 of ql dword 16 h + 8 (k & 1) + t,
    constexpr int64_t kQh = kPackRows * 128, kSc = kPackRows * 192, kD = kPackRows * 208;  // bit pair k of qh's 8 h + t)
    for (int h = 0; h < 2; h++)
      for (int k = 0; k < 4; k++)
        for (int t = 0; t < 8; t++) {
          const __m512i ql = _mm512_loadu_si512(at + 64 * (16 * h + 8 * (k & 1) + t));
          const __m512i qh = _mm512_loadu_si512(at + kQh + 64 * (8 * h + t));
          P.q[4 * h + k][t] =
              _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4 * (k / 2)), _mm512_set1_epi8(15)),
                              _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * k), _mm512_set1_epi8(3)), 4));
        }
    for (int s = 0; s < 16; s++)  // (each row's int8 scales, sign-extended)
      P.sc[s] = _mm512_srai_epi32(_mm512_slli_epi32(_mm512_loadu_si512(at + kSc + 64 * (s / 4)), 24 - 8 * (s % 4)), 24);
    for (int p = 0; p < 8; p++)  // (kOff sc per 16 values as int16 pairs: 32 sc[2 p], 32 sc[2 p + 1])
      P.coef[p] = _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi32(P.sc[2 * p], 5), _mm512_set1_epi32(0xFFFF)),
                                  _mm512_slli_epi32(P.sc[2 * p + 1], 21));
    P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + kD)));
    P.m = _mm512_setzero_ps();
    return;
  }
  if constexpr (B::kType == kQ8_0) {
    for (int t = 0; t < 8; t++)
      P.q[0][t] = _mm512_xor_si512(_mm512_loadu_si512(at + kQs + 64 * t), _mm512_set1_epi8((char)0x80));
  } else {
    const __m512i low = _mm512_set1_epi8(15);
    for (int t = 0; t < 4; t++) {
      const __m512i y = _mm512_loadu_si512(at + kQs + 64 * t);
      P.q[0][t] = _mm512_and_si512(y, low);
      P.q[0][4 + t] = _mm512_and_si512(_mm512_srli_epi16(y, 4), low);
    }
    if constexpr (fifth_bits(B::kType)) {  // (16 added where the fifth bit is set: word t's bits are quad t's bytes')
      const uint8_t* qh = at + kPackRows * packed_header(B::kType);
      for (int t = 0; t < 8; t++) {
        uint64_t bits;
        std::memcpy(&bits, qh + 8 * t, 8);
        P.q[0][t] = _mm512_mask_add_epi8(P.q[0][t], (__mmask64)bits, P.q[0][t], _mm512_set1_epi8(16));
      }
    }
    if constexpr (B::kType == kIQ4_NL) {  // (signed levels, as to_panel takes them: + 128)
      const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)kIQ4Values));
      for (int t = 0; t < 8; t++)
        P.q[0][t] = _mm512_xor_si512(_mm512_shuffle_epi8(table, P.q[0][t]), _mm512_set1_epi8((char)0x80));
    }
  }
  P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)at));
  P.m = Vec<B>::kMin ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(at + 32))) : _mm512_setzero_ps();
}

// dst[0 .. left) = v + bias[o .. o + left) (bias may be null), left <= 16 (none where left <= 0)
inline void store16(float* dst, __m512 v, const float* bias, int64_t o, int64_t left) {
  if (left <= 0) return;
  const __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
  _mm512_mask_storeu_ps(dst, k, bias ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + o)) : v);
}

// acc + one block's product of an input row with a panel's 16 outputs, from its integer sums I (sum_s sc[s] (u . a)_s
// for the K types): the offset kOff and the min taken off with the row's sums of 16 (s16: the block's), times d da
// (dd: da in every lane; ds: da (sum a), the 32-value types' min term). The one order of float operations of every
// int8 product of AVX512-VNNI (the rows streamed in int8_product.h, the AMX tiles): a row's bits in any batch.
// kOff 0: sums of the values themselves (the AMX tiles' signed panels), the same integers.
template <class T, int kOff = Panel<T>::kOff>
inline __m512 add_block(__m512 acc, __m512i I, const Panel<T>& p, __m512 dd, __m512 ds, const int16_t* s16) {
  __m512i C = _mm512_setzero_si512();  // K types: sum_g c[g] (sum of a over g)
  if (T::kScales && (kOff || T::kMin))
    for (int g = 0; g < 8; g++) C = _mm512_add_epi32(C, _mm512_madd_epi16(p.coef[g], broadcast4(s16 + 2 * g)));
  if (T::kScales && kOff) I = _mm512_sub_epi32(I, C);
  else if (kOff) I = _mm512_sub_epi32(I, _mm512_set1_epi32(kOff * (s16[0] + s16[1])));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(p.d, dd), acc);
  if (T::kMin && T::kScales) return _mm512_fnmadd_ps(_mm512_cvtepi32_ps(C), _mm512_mul_ps(p.m, dd), acc);
  if (T::kMin) return _mm512_fmadd_ps(p.m, ds, acc);
  return acc;
}

// out (rows ldo floats apart) rows n0 .. n0 + M, columns o0 .. o0 + nc (nc <= 16 kPanelP) = panels p (block b's at
// p[b kPanelP + j]) times the quantised rows (q, da, sums, das: Q8Rows') + bias
template <class T, int M>
void panel_tile(float* out, int64_t ldo, const Panel<T>* p, const int8_t* q, const float* da, const int16_t* sums,
                const float* das, const float* bias, int64_t nb, int64_t IC, int64_t n0, int64_t o0, int64_t nc) {
  constexpr int PP = kPanelP, kV = 32 * T::kN, kQuads = T::kScales ? T::kS / 4 : 8;
  __m512 acc[PP][M] = {};  // (zeros)
  for (int64_t b = 0; b < nb; b++) {
    const Panel<T>* pb = p + b * PP;
    const int8_t* a[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; m++) a[m] = q + (n0 + m) * IC + b * kV;
    __m512i I[PP][M] = {};
    for (int s = 0; s < 8 * T::kN / kQuads; s++) {  // sub-blocks (one for the 32-value types)
      __m512i D[PP][M] = {};
#pragma GCC unroll 8
      for (int u = 0; u < kQuads; u++) {
        const int t = s * kQuads + u;
        __m512i x[M];
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) x[m] = broadcast4(a[m] + 4 * t);
#pragma GCC unroll 8
        for (int j = 0; j < PP; j++) {
          const __m512i wq = _mm512_load_si512(&pb[j].q[t / 8][t % 8]);
#pragma GCC unroll 8
          for (int m = 0; m < M; m++) D[j][m] = _mm512_dpbusd_epi32(D[j][m], wq, x[m]);
        }
      }
#pragma GCC unroll 8
      for (int j = 0; j < PP; j++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++)
          I[j][m] = T::kScales ? _mm512_add_epi32(I[j][m], _mm512_mullo_epi32(D[j][m], pb[j].sc[s])) : D[j][m];
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; m++) {
      const int16_t* s16 = sums + ((n0 + m) * IC + b * kV) / 16;
      const __m512 dd = _mm512_set1_ps(da[(n0 + m) * nb + b]);
      const __m512 ds = T::kScales ? dd : _mm512_set1_ps(das[(n0 + m) * nb + b]);
#pragma GCC unroll 8
      for (int j = 0; j < PP; j++) acc[j][m] = add_block(acc[j][m], I[j][m], pb[j], dd, ds, s16);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < PP; j++)
#pragma GCC unroll 8
    for (int m = 0; m < M; m++) store16(out + (n0 + m) * ldo + o0 + 16 * j, acc[j][m], bias, o0 + 16 * j, nc - 16 * j);
}

template <class T, int M = kPanelM>
void panel_tiles(float* out, int64_t ldo, const Panel<T>* p, const int8_t* q, const float* da, const int16_t* sums,
                 const float* das, const float* bias, int64_t N, int64_t nb, int64_t IC, int64_t o0, int64_t nc) {
  int64_t n0 = 0;
  for (; n0 + M <= N; n0 += M) panel_tile<T, M>(out, ldo, p, q, da, sums, das, bias, nb, IC, n0, o0, nc);
  if constexpr (M > 1)
    if (n0 < N)
      panel_tiles<T, M - 1>(out + n0 * ldo, ldo, p, q + n0 * IC, da + n0 * nb, sums + n0 * IC / 16,
                            das ? das + n0 * nb : nullptr, bias, N - n0, nb, IC, o0, nc);  // (the rows left: < M)
}

// body(panels, o0, nc) for each group of weight rows o0 .. o0 + nc (nc <= 16 kPanelP), split among the threads,
// each group unpacked into panels once (scratch; block b's at panels[b kPanelP ..]) for the body to read. A group
// is read block by block across its 32 rows side by side, which the hardware prefetcher does not follow (half the
// panels' time went to waiting on the weights: bench/NOTES.md, session 12); the group's rows are one run of bytes,
// so each block step asks for its share of the next group's, in order, and the next group finds them in cache.
// packed: the same rows packed (packed.h) or null; a group's panels are then loads from its two runs of 16 rows,
// whose next group is the same run of bytes at the same offset, asked for the same way (on an AMD Zen 5 a 16-row
// Q4_1 product from L3 or memory 1.16-1.39x, Q8_0 1.33x, the SmolLM2 16-row step 1.15x; on an AMX Xeon, whose tiles
// take most 16-row products, these panels were 2-3% slower asked: bench/NOTES.md, sessions 20 and 23).
template <class B, class F>
void for_panel_groups(const uint8_t* weight, const uint8_t* packed, int64_t N, int64_t IC, int64_t OC, F&& body) {
  using T = Vec<B>;
  constexpr int kRows = 16 * kPanelP;
  constexpr int64_t kStep = kRows * (int64_t)sizeof(B);  // (bytes of the next group asked for per block step)
  const int64_t nb = IC / B::kValues, rb = nb * (int64_t)sizeof(B), groups = (OC + kRows - 1) / kRows;
  parallel_for(groups, N * IC * OC >= kParallelGemvMacs ? threads() : 1, [&](int64_t g) {
    static thread_local ScratchBuffer buf;
    Panel<T>* panels = reinterpret_cast<Panel<T>*>(buf.floats((size_t)(nb * kPanelP) * sizeof(Panel<T>) / 4));
    const int64_t o0 = g * kRows, nc = std::min<int64_t>(kRows, OC - o0);
    const uint8_t* next = (packed ? packed : weight) + (o0 + nc) * rb;
    const int64_t next_bytes = std::min<int64_t>(kRows, OC - o0 - nc) * rb;
    // the group's rows' blocks at[j][r] (rows past OC: a zero block, not written), advanced a block at a time by
    // vector adds (made per block and row, with a compare each, they were ~18% of Q4_1's 16-row product in perf)
    static const uint8_t zero[sizeof(B)] = {};
    alignas(64) const uint8_t* at[kPanelP][16];
    __m512i ptr[kPanelP][2], step[kPanelP][2];
    for (int j = 0; j < kPanelP; j++)
      for (int h = 0; h < 2; h++) {
        alignas(64) int64_t p8[8], s8[8];
        for (int r = 0; r < 8; r++) {
          const int64_t row = 16 * j + 8 * h + r;
          p8[r] = row < nc ? (int64_t)(weight + (o0 + row) * rb) : (int64_t)zero;
          s8[r] = row < nc ? (int64_t)sizeof(B) : 0;
        }
        ptr[j][h] = _mm512_load_si512(p8), step[j][h] = _mm512_load_si512(s8);
      }
    for (int64_t b = 0; b < nb; b++) {
      for (int64_t i = b * kStep; i < std::min((b + 1) * kStep, next_bytes); i += 64)
        __builtin_prefetch(next + i, 0, 3);
      for (int j = 0; j < kPanelP && packed; j++) {
        if constexpr (packable(B::kType)) {
          Panel<T>& P = panels[b * kPanelP + j];
          if (16 * j < nc) packed_panel<B>(P, packed + (o0 + 16 * j) * rb + b * kPackRows * (int64_t)sizeof(B));
          else std::memset((void*)&P, 0, sizeof(Panel<T>));  // (rows past OC: zeros, not written)
        }
      }
      for (int j = 0; j < kPanelP && !packed; j++) {
        for (int h = 0; h < 2; h++) {
          _mm512_store_si512(at[j] + 8 * h, ptr[j][h]);
          ptr[j][h] = _mm512_add_epi64(ptr[j][h], step[j][h]);
        }
        file_panel<B>(panels[b * kPanelP + j], at[j]);
      }
    }
    body(static_cast<const Panel<T>*>(panels), o0, nc);
  });
}

// out (N, OC; rows ldo floats apart) = the quantised rows times weight + bias: every tile of kPanelM input rows
// reads each group's panels
template <class B>
void panel_product(float* out, int64_t ldo, const int8_t* q, const float* da, const int16_t* sums, const float* das,
                   const uint8_t* weight, const uint8_t* packed, const float* bias, int64_t N, int64_t IC, int64_t OC) {
  for_panel_groups<B>(weight, packed, N, IC, OC, [&](const Panel<Vec<B>>* panels, int64_t o0, int64_t nc) {
    panel_tiles<Vec<B>>(out, ldo, panels, q, da, sums, das, bias, N, IC / B::kValues, IC, o0, nc);
  });
}

}  // namespace
}  // namespace PT_Q8_NS
}  // namespace PT_NS
}  // namespace pt
