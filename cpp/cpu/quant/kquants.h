// ggml's k-quants: 256-value super-blocks (QK_K) of 16 or 32-value sub-blocks, each sub-block with its own scale
// (and min) packed in a few bits, scaled again by the block's fp16 d (and dmin). Each type: its struct and its
// decode in registers (Visit: W values at a time; the scalar build one at a time, as ggml-quants.c's
// dequantize_row_*), which the rows store (quant/rows.cpp) and the few-row products multiply as it comes.
#pragma once
#include "common.h"

namespace pt {
namespace PT_NS {

// Q2_K: 16 sub-blocks of 16, scales[s] = 4-bit scale | 4-bit min << 4, x = d sc q - dmin m; the 2-bit q of
// sub-block s = 8 h + 2 k + i is bit pair k of qs[32 h + 16 i + l]
struct BlockQ2_K {
  static constexpr int kType = kQ2_K, kValues = 256;
  uint8_t scales[16], qs[64];
  uint16_t d, dmin;
};
// Q3_K: 16 sub-blocks of 16, six-bit scales (sc - 32) in 12 bytes: x = d sc q, q = Q2_K's 2 bits less 4 unless
// bit 4 h + k of hmask[16 i + l] is set
struct BlockQ3_K {
  static constexpr int kType = kQ3_K, kValues = 256;
  uint8_t hmask[32], qs[64], scales[12];
  uint16_t d;
};
// Q4_K: 8 sub-blocks of 32, six-bit (scale, min) pairs in 12 bytes: x = d sc q - dmin m; pair p of sub-blocks
// from qs[32 p ..]: the low nibbles, then the high nibbles
struct BlockQ4_K {
  static constexpr int kType = kQ4_K, kValues = 256;
  uint16_t d, dmin;
  uint8_t scales[12], qs[128];
};
struct BlockQ5_K {  // Q4_K with a fifth bit: bit 2 p (low nibbles) and 2 p + 1 (high) of qh[l]
  static constexpr int kType = kQ5_K, kValues = 256;
  uint16_t d, dmin;
  uint8_t scales[12], qh[32], qs[128];
};
struct BlockQ6_K {  // 16 sub-blocks of 16, int8 scales: x = d sc (q - 32), q = 4 bits of ql | 2 bits of qh << 4
  static constexpr int kType = kQ6_K, kValues = 256;
  uint8_t ql[128], qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "ggml-common.h's block sizes");
static_assert(in_table<BlockQ2_K>() && in_table<BlockQ3_K>() && in_table<BlockQ4_K>() && in_table<BlockQ5_K>() &&
              in_table<BlockQ6_K>(), "kernels.h's quant_block");

// Q4_K and Q5_K's six-bit scale and min of sub-block j (0..7) from their 12 bytes
inline void scale_min_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Sub-blocks 2j and 2j + 1 (of 32 values each) of a Q4_K or Q5_K super-block: value = scale * q - min
struct SubBlockPair {
  float scale1, min1, scale2, min2;
};
inline SubBlockPair sub_block_pair(int j, const uint8_t* scales, float d, float dmin) {
  int s1, m1, s2, m2;
  scale_min_k4(2 * j, scales, &s1, &m1);
  scale_min_k4(2 * j + 1, scales, &s2, &m2);
  return {d * (float)s1, dmin * (float)m1, d * (float)s2, dmin * (float)m2};
}

// The decodes below read the block in place and unpack W values at a time as int32 lanes (widen_bytes): the
// bit fields of each sub-block of 16 (or 32) values, one scale per inner loop.
template <>
struct Visit<BlockQ2_K> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {
    const float d = half_at(p + offsetof(BlockQ2_K, d)), dmin = half_at(p + offsetof(BlockQ2_K, dmin));
    const uint8_t* scales = p + offsetof(BlockQ2_K, scales);
    for (int s = 0; s < 16; s++) {
      const uint8_t* q = p + offsetof(BlockQ2_K, qs) + 32 * (s / 8) + 16 * (s % 2);
      const int shift = 2 * ((s % 8) / 2);
      const V dl = set1(d * (float)(scales[s] & 15)), ml = set1(dmin * (float)(scales[s] >> 4));
      for (int l = 0; l < 16; l += W)
        put(16 * s + l, sub(mul(dl, to_float(mask(shr(widen_bytes(q + l), shift), 3))), ml));
    }
  }
};
template <>
struct Visit<BlockQ3_K> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {
    const float d = half_at(p + offsetof(BlockQ3_K, d));
    const uint8_t* sc = p + offsetof(BlockQ3_K, scales);
    for (int s = 0; s < 16; s++) {
      const int low = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4, high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      const V dl = set1(d * (float)((low | (high << 4)) - 32));
      const int h = s / 8, k = (s % 8) / 2, at = 16 * (s % 2);
      const uint8_t* q = p + offsetof(BlockQ3_K, qs) + 32 * h + at;
      const uint8_t* hm = p + offsetof(BlockQ3_K, hmask) + at;
      for (int l = 0; l < 16; l += W) {  // q = 2 bits | hmask bit << 2, less 4
        const VI q2 = mask(shr(widen_bytes(q + l), 2 * k), 3), bit = mask(shr(widen_bytes(hm + l), 4 * h + k), 1);
        put(16 * s + l, mul(dl, to_float(plus(bor(q2, shl(bit, 2)), -4))));
      }
    }
  }
};
template <>
struct Visit<BlockQ4_K> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {  // (the nibbles read from the row in place)
    const float d = half_at(p + offsetof(BlockQ4_K, d)), dmin = half_at(p + offsetof(BlockQ4_K, dmin));
    const uint8_t* scales = p + offsetof(BlockQ4_K, scales);
    const uint8_t* qs = p + offsetof(BlockQ4_K, qs);
    for (int j = 0; j < 4; j++) {
      const SubBlockPair s = sub_block_pair(j, scales, d, dmin);
      nibble_pairs<32>(put, 64 * j, qs + 32 * j, s.scale1, -s.min1, s.scale2, -s.min2);
    }
  }
};
template <>
struct Visit<BlockQ5_K> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {
    const float d = half_at(p + offsetof(BlockQ5_K, d)), dmin = half_at(p + offsetof(BlockQ5_K, dmin));
    const uint8_t* scales = p + offsetof(BlockQ5_K, scales);
    const uint8_t* qh = p + offsetof(BlockQ5_K, qh);
    for (int j = 0; j < 4; j++) {
      const SubBlockPair s = sub_block_pair(j, scales, d, dmin);
      const V d1 = set1(s.scale1), n1 = set1(s.min1), d2 = set1(s.scale2), n2 = set1(s.min2);
      const uint8_t* q = p + offsetof(BlockQ5_K, qs) + 32 * j;
      for (int l = 0; l < 32; l += W) {
        const VI b = widen_bytes(q + l), h = widen_bytes(qh + l);
        const VI lo = bor(mask(b, 15), shl(mask(shr(h, 2 * j), 1), 4));
        const VI hi = bor(shr(b, 4), shl(mask(shr(h, 2 * j + 1), 1), 4));
        put(64 * j + l, sub(mul(d1, to_float(lo)), n1));
        put(64 * j + 32 + l, sub(mul(d2, to_float(hi)), n2));
      }
    }
  }
};
// Q6_K: half h, quarter k, sub-block i of 16 has scale 8 h + 2 k + i; its low 4 bits from
// ql[64 h + 32 (k & 1) + 16 i + l] (the low nibble for k < 2, the high for k >= 2), its high 2 from bit pair k of
// qh[32 h + 16 i + l]
template <>
struct Visit<BlockQ6_K> {
  template <class Put>
  static void run(const uint8_t* p, Put&& put) {
    const float d = half_at(p + offsetof(BlockQ6_K, d));
    const int8_t* scales = (const int8_t*)(p + offsetof(BlockQ6_K, scales));
    for (int h = 0; h < 2; h++) {
      for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 2; i++) {
          const V ds = set1(d * (float)scales[8 * h + 2 * k + i]);
          const uint8_t* ql = p + offsetof(BlockQ6_K, ql) + 64 * h + 32 * (k & 1) + 16 * i;
          const uint8_t* qh = p + offsetof(BlockQ6_K, qh) + 32 * h + 16 * i;
          for (int l = 0; l < 16; l += W) {
            const VI low = mask(shr(widen_bytes(ql + l), k < 2 ? 0 : 4), 15);
            const VI q = bor(low, shl(mask(shr(widen_bytes(qh + l), 2 * k), 3), 4));
            put(128 * h + 32 * k + 16 * i + l, mul(ds, to_float(plus(q, -32))));
          }
        }
      }
    }
  }
};

}  // namespace PT_NS
}  // namespace pt
