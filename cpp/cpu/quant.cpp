// GGUF (ggml) block formats, dequantised to float32 (inference weights). One block per struct comment below,
// as ggml-quants.c lays them out (little-endian, packed); fp16 scales widened exactly.
//
//   Q4_0 (32 values, 18 bytes): fp16 d, uint8 qs[16]        x[j] = (lo(qs[j]) - 8) d, x[j + 16] = (hi(qs[j]) - 8) d
//   Q4_1 (32 values, 20 bytes): fp16 d, fp16 m, uint8 qs[16] x[j] = lo(qs[j]) d + m,  x[j + 16] = hi(qs[j]) d + m
//   Q8_0 (32 values, 34 bytes): fp16 d, int8 qs[32]          x[j] = qs[j] d
//   Q4_K (256 values, 144 bytes): fp16 d, fp16 dmin, uint8 scales[12] (8 six-bit scales and mins), uint8 qs[128];
//        sub-block s of 32: x = d sc[s] q - dmin m[s], q the low nibbles of 32 bytes, then their high nibbles
//   Q6_K (256 values, 210 bytes): uint8 ql[128] (low 4 bits), uint8 qh[64] (high 2 bits), int8 scales[16], fp16 d;
//        x = d scales[j / 16] (q - 32)
// The nibble and int8 unpacking runs W values at a time in vector registers; Q6_K's bit gathering is scalar.
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

void dequant_q6_k(float* y, const uint8_t* b) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = (const int8_t*)(b + 192);
  const float d = half_at(b + 208);
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
      for (int64_t b = 0; b < C / 32; b++, x += 18, y += 32) {
        const float d = half_at(x);
        nibble_pairs<16>(y, x + 2, d, -8.f * d, d, -8.f * d);  // (q - 8) d, the one rounding of fma
      }
      return;
    case kQ4_1:
      for (int64_t b = 0; b < C / 32; b++, x += 20, y += 32) {
        const float d = half_at(x), m = half_at(x + 2);
        nibble_pairs<16>(y, x + 4, d, m, d, m);
      }
      return;
    case kQ8_0:
      for (int64_t b = 0; b < C / 32; b++, x += 34, y += 32) {
        const V d = set1(half_at(x));
        for (int64_t j = 0; j < 32; j += W) store(y + j, mul(load_i8((const int8_t*)(x + 2 + j)), d));
      }
      return;
    case kQ4_K:
      for (int64_t b = 0; b < C / 256; b++, x += 144, y += 256) {
        const float d = half_at(x), dmin = half_at(x + 2);
        const uint8_t* scales = x + 4;
        const uint8_t* q = x + 16;
        for (int j = 0; j < 4; j++) {
          uint8_t s1, m1, s2, m2;
          scale_min_k4(2 * j, scales, &s1, &m1);
          scale_min_k4(2 * j + 1, scales, &s2, &m2);
          nibble_pairs<32>(y + 64 * j, q + 32 * j, d * s1, -(dmin * m1), d * s2, -(dmin * m2));
        }
      }
      return;
    case kQ6_K:
      for (int64_t b = 0; b < C / 256; b++, x += 210, y += 256) dequant_q6_k(y, x);
      return;
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
