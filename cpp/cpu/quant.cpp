// GGUF (ggml) rows dequantised to float32 (inference weights): the block layouts are quant.h's structs. Q4_0,
// Q4_1, Q8_0 and Q4_K unpack W values at a time in vector registers (nibble_pairs); the other types are decoded
// by plain loops over their block struct, as ggml-quants.c's reference dequantize_row_* (the compiler widens
// them per variant). The products read the 32-value types through Block32 (quant.h) instead.
#include "quant.h"

#include <algorithm>

#include "pytransformer/kernels.h"
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
// y[0..32) = lo(q) * d + m, y[32..64) = hi(q) * d2 + m2 over 32 bytes q (Q4_K's pair of sub-blocks); also Q4_0 and
// Q4_1's 16 bytes with n = 16
template <int64_t n>
inline void nibble_pairs(float* y, const uint8_t* q, float d, float m, float d2, float m2) {
  const V vd = set1(d), vm = set1(m), vd2 = set1(d2), vm2 = set1(m2);
  for (int64_t j = 0; j < n; j += W) {
    store(y + j, fma(nibbles<false>(q + j), vd, vm));
    store(y + n + j, fma(nibbles<true>(q + j), vd2, vm2));
  }
}

inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// the block structs read from a row's bytes (no alignment assumed)
template <class B>
inline B block_at(const uint8_t* p) {
  B b;
  std::memcpy(&b, p, sizeof b);
  return b;
}

// 32-value blocks: value j and j + 16 from byte j of qs
void decode(float* y, const BlockQ5_0& b) {
  const float d = half_to_float(b.d);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; j++) {
    y[j] = (float)((int)((b.qs[j] & 15) | (((qh >> j) & 1) << 4)) - 16) * d;
    y[j + 16] = (float)((int)((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * d;
  }
}
void decode(float* y, const BlockQ5_1& b) {
  const float d = half_to_float(b.d), m = half_to_float(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; j++) {
    y[j] = std::fma((float)((b.qs[j] & 15) | (((qh >> j) & 1) << 4)), d, m);
    y[j + 16] = std::fma((float)((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)), d, m);
  }
}
void decode(float* y, const BlockIQ4_NL& b) {
  const float d = half_to_float(b.d);
  for (int j = 0; j < 16; j++) {
    y[j] = d * (float)kIQ4Values[b.qs[j] & 15];
    y[j + 16] = d * (float)kIQ4Values[b.qs[j] >> 4];
  }
}

// 256-value super-blocks
void decode(float* y, const BlockQ2_K& b) {  // 16 sub-blocks of 16: 2-bit q from bit pair 2k of 32 bytes
  const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
  for (int s = 0; s < 16; s++) {
    const uint8_t* q = b.qs + 32 * (s / 8) + 16 * (s % 2);
    const int shift = 2 * ((s % 8) / 2);
    const float dl = d * (float)(b.scales[s] & 15), ml = dmin * (float)(b.scales[s] >> 4);
    for (int l = 0; l < 16; l++) y[16 * s + l] = dl * (float)((q[l] >> shift) & 3) - ml;
  }
}
void decode(float* y, const BlockQ3_K& b) {  // 16 sub-blocks of 16: q from bit pair 2k of qs and bit k of hmask
  const float d = half_to_float(b.d);
  for (int s = 0; s < 16; s++) {
    const int low = s < 8 ? b.scales[s] & 15 : b.scales[s - 8] >> 4;
    const int high = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * (float)((low | (high << 4)) - 32);
    const int half = s / 8, k = (s % 8) / 2, off = 16 * (s % 2);  // (k: the bit pair of qs, bit 4 half + k)
    const uint8_t* q = b.qs + 32 * half + off;
    const uint8_t* hm = b.hmask + off;
    const int bit = 4 * half + k;
    for (int l = 0; l < 16; l++)
      y[16 * s + l] = dl * (float)((int)((q[l] >> (2 * k)) & 3) - ((hm[l] >> bit) & 1 ? 0 : 4));
  }
}
void decode(float* y, const BlockQ5_K& b) {  // Q4_K's layout, bit 2 p (2 p + 1) of qh the fifth bit of pair p
  const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
  for (int p = 0; p < 4; p++) {
    uint8_t s1, m1, s2, m2;
    scale_min_k4(2 * p, b.scales, &s1, &m1);
    scale_min_k4(2 * p + 1, b.scales, &s2, &m2);
    const float d1 = d * s1, n1 = dmin * m1, d2 = d * s2, n2 = dmin * m2;
    const uint8_t* q = b.qs + 32 * p;
    for (int l = 0; l < 32; l++) {
      y[64 * p + l] = d1 * (float)((q[l] & 15) | (((b.qh[l] >> (2 * p)) & 1) << 4)) - n1;
      y[64 * p + 32 + l] = d2 * (float)((q[l] >> 4) | (((b.qh[l] >> (2 * p + 1)) & 1) << 4)) - n2;
    }
  }
}
void decode(float* y, const BlockQ6_K& b) {
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  const float d = half_to_float(b.d);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; l++) {
      const int is = l / 16;
      const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * (float)sc[is] * (float)q1;
      y[l + 32] = d * (float)sc[is + 2] * (float)q2;
      y[l + 64] = d * (float)sc[is + 4] * (float)q3;
      y[l + 96] = d * (float)sc[is + 6] * (float)q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}
void decode(float* y, const BlockIQ4_XS& b) {  // 8 sub-blocks of 32, each as an IQ4_NL block with a 6-bit scale
  const float d = half_to_float(b.d);
  for (int s = 0; s < 8; s++) {
    const int ls = ((b.scales_l[s / 2] >> (4 * (s % 2))) & 15) | (((b.scales_h >> (2 * s)) & 3) << 4);
    const float dl = d * (float)(ls - 32);
    const uint8_t* q = b.qs + 16 * s;
    for (int j = 0; j < 16; j++) {
      y[32 * s + j] = dl * (float)kIQ4Values[q[j] & 15];
      y[32 * s + j + 16] = dl * (float)kIQ4Values[q[j] >> 4];
    }
  }
}

// y (C floats) = the blocks of type B in x, one decode each
template <class B>
void decode_row(float* y, const uint8_t* x, int64_t C) {
  for (int64_t i = 0; i < C / B::kValues; i++) decode(y + i * B::kValues, block_at<B>(x + i * sizeof(B)));
}
}  // namespace

void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C) {
  switch (qtype) {
    case kF32:
      std::memcpy(y, x, (size_t)C * sizeof(float));
      return;
    case kF16:
      for (int64_t i = 0; i < C; i++) y[i] = half_at(x + 2 * i);
      return;
    case kBF16:
      for (int64_t i = 0; i < C; i += W) {
        uint16_t tmp[W];
        const int64_t r = std::min<int64_t>(W, C - i);
        std::memcpy(tmp, x + 2 * i, (size_t)r * 2);
        storen(y + i, loadn_bf16(tmp, r), r);
      }
      return;
    case kQ4_0:
      for (int64_t b = 0; b < C / 32; b++, x += sizeof(BlockQ4_0), y += 32) {
        const float d = half_at(x);
        nibble_pairs<16>(y, x + offsetof(BlockQ4_0, qs), d, -8.f * d, d, -8.f * d);  // (q - 8) d, the one rounding of fma
      }
      return;
    case kQ4_1:
      for (int64_t b = 0; b < C / 32; b++, x += sizeof(BlockQ4_1), y += 32) {
        const float d = half_at(x), m = half_at(x + offsetof(BlockQ4_1, m));
        nibble_pairs<16>(y, x + offsetof(BlockQ4_1, qs), d, m, d, m);
      }
      return;
    case kQ8_0:
      for (int64_t b = 0; b < C / 32; b++, x += sizeof(BlockQ8_0), y += 32) {
        const V d = set1(half_at(x));
        const int8_t* q = (const int8_t*)(x + offsetof(BlockQ8_0, qs));
        for (int64_t j = 0; j < 32; j += W) store(y + j, mul(load_i8(q + j), d));
      }
      return;
    case kQ4_K:
      for (int64_t b = 0; b < C / 256; b++, x += sizeof(BlockQ4_K), y += 256) {
        const float d = half_at(x), dmin = half_at(x + offsetof(BlockQ4_K, dmin));
        const uint8_t* scales = x + offsetof(BlockQ4_K, scales);
        const uint8_t* q = x + offsetof(BlockQ4_K, qs);
        for (int j = 0; j < 4; j++) {
          uint8_t s1, m1, s2, m2;
          scale_min_k4(2 * j, scales, &s1, &m1);
          scale_min_k4(2 * j + 1, scales, &s2, &m2);
          nibble_pairs<32>(y + 64 * j, q + 32 * j, d * s1, -(dmin * m1), d * s2, -(dmin * m2));
        }
      }
      return;
    case kQ5_0: return decode_row<BlockQ5_0>(y, x, C);
    case kQ5_1: return decode_row<BlockQ5_1>(y, x, C);
    case kIQ4_NL: return decode_row<BlockIQ4_NL>(y, x, C);
    case kQ2_K: return decode_row<BlockQ2_K>(y, x, C);
    case kQ3_K: return decode_row<BlockQ3_K>(y, x, C);
    case kQ5_K: return decode_row<BlockQ5_K>(y, x, C);
    case kQ6_K: return decode_row<BlockQ6_K>(y, x, C);
    case kIQ4_XS: return decode_row<BlockIQ4_XS>(y, x, C);
    default:
      return;  // unknown types are refused by the bindings
  }
}

// out (N, C) = the rows ids[n] (or n) of src dequantised: an embedding lookup in a quantised table.
void dequantize_rows(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N, int64_t C) {
  const int64_t rb = quant_row_bytes(qtype, C);
  if (rb < 0) return;
#pragma omp parallel for num_threads(threads()) schedule(static) if (N * C >= kParallelElements)
  for (int64_t n = 0; n < N; n++) dequantize_row(out + n * C, src + (ids ? ids[n] : n) * rb, qtype, C);
}

}  // namespace PT_NS
}  // namespace pt
