// GGUF (ggml) block-quantised weights on the GPU: rows dequantised (an embedding lookup in a quantised table) and
// the products with them, the formats of cpp/cpu/quant/ (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) with the same roundings. Each value is decoded on its own from its block
// (quant_value), so every layout is one function; a few rows (decoding) are a warp per output channel reading the
// blocks in place, more rows widen the matrix once into scratch for cuBLAS.
#include "device.h"
#include "kernels.h"
#include "pytransformer/kernels.h"  // (the GGUF type ids and row sizes: pt::QType, pt::quant_row_bytes)

namespace pt {
namespace cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kGemvRows = 8;  // at most this many input rows take the in-place product

__device__ __forceinline__ uint16_t read16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

// IEEE half -> float, exact (bits, no intrinsic: the same on the emulator)
__device__ __forceinline__ float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (e == 0) {
    const float f = (float)mant * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  const uint32_t bits = sign | (e == 31 ? 0x7F800000u | (mant << 13) : ((e + 112) << 23) | (mant << 13));
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
__device__ __forceinline__ float half_at(const uint8_t* p) { return half_to_float(read16(p)); }

__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

__device__ __forceinline__ uint32_t read32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// IQ4_NL and IQ4_XS's sixteen non-linear levels
__device__ __forceinline__ float iq4_value(int nibble) {
  constexpr int8_t kValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return (float)kValues[nibble];
}

// value i of a row of `qtype`
__device__ __forceinline__ float quant_value(const uint8_t* row, int qtype, int64_t i) {
  switch (qtype) {
    case kF32: {
      float f;
      memcpy(&f, row + 4 * i, 4);
      return f;
    }
    case kF16: return half_at(row + 2 * i);
    case kBF16: {
      const uint32_t bits = (uint32_t)read16(row + 2 * i) << 16;
      float f;
      memcpy(&f, &bits, 4);
      return f;
    }
    case kQ4_0: case kQ4_1: {
      const int64_t nb = qtype == kQ4_0 ? 18 : 20, off = qtype == kQ4_0 ? 2 : 4;
      const uint8_t* b = row + (i / 32) * nb;
      const int j = (int)(i % 32);
      const float d = half_at(b);
      const float q = (float)(j < 16 ? b[off + j] & 15 : b[off + j - 16] >> 4);
      return fmaf(q, d, qtype == kQ4_0 ? -8.f * d : half_at(b + 2));  // (the CPU's one rounding)
    }
    case kQ5_0: case kQ5_1: {  // (d [m] qh[4] qs[16]: the nibble of Q4's with bit j of qh as its fifth bit)
      const int64_t nb = qtype == kQ5_0 ? 22 : 24, off = qtype == kQ5_0 ? 2 : 4;
      const uint8_t* b = row + (i / 32) * nb;
      const int j = (int)(i % 32);
      const float d = half_at(b);
      const int low = j < 16 ? b[off + 4 + j] & 15 : b[off + 4 + j - 16] >> 4;
      const float q = (float)(low | (((read32(b + off) >> j) & 1) << 4));
      return fmaf(q, d, qtype == kQ5_0 ? -16.f * d : half_at(b + 2));
    }
    case kIQ4_NL: {
      const uint8_t* b = row + (i / 32) * 18;
      const int j = (int)(i % 32);
      return half_at(b) * iq4_value(j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4);
    }
    case kQ8_0: {
      const uint8_t* b = row + (i / 32) * 34;
      return (float)(int8_t)b[2 + i % 32] * half_at(b);
    }
    case kQ4_K: {
      const uint8_t* b = row + (i / 256) * 144;
      const int w = (int)(i % 256), pair = w / 64, within = w % 64, sub = 2 * pair + (within >= 32);
      int s, m;
      scale_min_k4(sub, b + 4, &s, &m);
      const uint8_t* q = b + 16 + 32 * pair;
      const float v = (float)(within < 32 ? q[within] & 15 : q[within - 32] >> 4);
      return fmaf(v, half_at(b) * (float)s, -(half_at(b + 2) * (float)m));
    }
    case kQ2_K: {  // scales[16] qs[64] d dmin: sub-block s = 8 h + 2 k + i of 16 is bit pair k of qs[32 h + 16 i + l]
      const uint8_t* b = row + (i / 256) * 84;
      const int w = (int)(i % 256), s = w / 16, l = w % 16, h = s / 8, k = (s % 8) / 2;
      const int q = (b[16 + 32 * h + 16 * (s % 2) + l] >> (2 * k)) & 3;
      const float dl = half_at(b + 80) * (float)(b[s] & 15), ml = half_at(b + 82) * (float)(b[s] >> 4);
      return dl * (float)q - ml;
    }
    case kQ3_K: {  // hmask[32] qs[64] scales[12] d: Q2_K's bits, minus 4 unless bit 4 h + k of hmask; 6-bit scales
      const uint8_t* b = row + (i / 256) * 110;
      const int w = (int)(i % 256), s = w / 16, l = w % 16, h = s / 8, k = (s % 8) / 2, at = 16 * (s % 2) + l;
      const int q = ((b[32 + 32 * h + at] >> (2 * k)) & 3) - ((b[at] >> (4 * h + k)) & 1 ? 0 : 4);
      const uint8_t* sc = b + 96;
      const int low = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4, high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      return half_at(b + 108) * (float)((low | (high << 4)) - 32) * (float)q;
    }
    case kQ5_K: {  // Q4_K's layout with qh[32] before qs: bit sub-block of qh[within % 32] is the fifth bit
      const uint8_t* b = row + (i / 256) * 176;
      const int w = (int)(i % 256), pair = w / 64, within = w % 64, sub = 2 * pair + (within >= 32);
      int s, m;
      scale_min_k4(sub, b + 4, &s, &m);
      const uint8_t* q = b + 48 + 32 * pair;
      const int l = within % 32;
      const int low = within < 32 ? q[l] & 15 : q[l] >> 4;
      const float v = (float)(low | (((b[16 + l] >> sub) & 1) << 4));
      return half_at(b) * (float)s * v - half_at(b + 2) * (float)m;
    }
    case kIQ4_XS: {  // d scales_h scales_l[4] qs[128]: 8 sub-blocks of 32 as IQ4_NL's, 6-bit scales (s - 32)
      const uint8_t* b = row + (i / 256) * 136;
      const int w = (int)(i % 256), s = w / 32, j = w % 32;
      const int ls = ((b[4 + s / 2] >> (4 * (s % 2))) & 15) | (((read16(b + 2) >> (2 * s)) & 3) << 4);
      const uint8_t* q = b + 8 + 16 * s;
      return half_at(b) * (float)(ls - 32) * iq4_value(j < 16 ? q[j] & 15 : q[j - 16] >> 4);
    }
    case kQ6_K: {
      const uint8_t* b = row + (i / 256) * 210;
      const int w = (int)(i % 256), n = w / 128, r = w % 128, quarter = r / 32, l = r % 32, is = l / 16;
      const uint8_t* ql = b + 64 * n;
      const uint8_t* qh = b + 128 + 32 * n;
      const int8_t* sc = (const int8_t*)(b + 192) + 8 * n;
      const int low = quarter & 1 ? ql[l + 32] : ql[l];
      const int q = ((quarter < 2 ? low & 0xF : low >> 4) | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
      return half_at(b + 208) * (float)sc[is + 2 * quarter] * (float)q;
    }
    default: return 0.f;  // (types are checked by the bindings)
  }
}

// out (N, C) = rows ids[n] (or n) of src, each of rb bytes
__global__ void dequantize_rows_kernel(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N,
                                       int64_t C, int64_t rb) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= N * C) return;
  const int64_t n = idx / C, i = idx % C;
  out[idx] = quant_value(src + (ids ? ids[n] : n) * rb, qtype, i);
}

// out (N, OC) = inp (N, IC) @ dequant(weight)^T + bias for N <= kGemvRows: a warp per output channel, its lanes
// striding over the row's values (each decoded once for every input row), sums over the warp in a fixed order
__global__ void q_gemv_kernel(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias,
                              int64_t N, int64_t IC, int64_t OC, int64_t rb) {
  const int64_t o = (int64_t)blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (o >= OC) return;
  const uint8_t* row = weight + o * rb;
  float acc[kGemvRows];
  for (int m = 0; m < kGemvRows; m++) acc[m] = 0.f;
  for (int64_t i = lane; i < IC; i += kWarp) {
    const float w = quant_value(row, qtype, i);
    for (int m = 0; m < kGemvRows; m++)
      if (m < N) acc[m] += w * inp[m * IC + i];
  }
  for (int m = 0; m < kGemvRows; m++) {
    const float s = warp_sum(acc[m]);
    if (m < N && lane == 0) out[m * OC + o] = s + (bias ? bias[o] : 0.f);
  }
}

int64_t row_bytes(int qtype, int64_t C) {
  const int64_t rb = quant_row_bytes(qtype, C);
  if (rb < 0) throw Error("unsupported quantised type " + std::to_string(qtype));
  return rb;
}
}  // namespace

void dequantize_rows(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N, int64_t C) {
  launch("dequantize_rows", dequantize_rows_kernel, dim3((unsigned)cdiv(N * C, kThreads)), dim3(kThreads), 0, out,
         src, qtype, ids, N, C, row_bytes(qtype, C));
}

void matmul_q_forward(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias, int64_t N,
                      int64_t IC, int64_t OC) {
  if (N == 0 || OC == 0) return;
  const int64_t rb = row_bytes(qtype, IC);
  if (N <= kGemvRows) {
    constexpr int warps = 8;
    launch("matmul_q_forward", q_gemv_kernel, dim3((unsigned)cdiv(OC, warps)), dim3(warps * kWarp), 0, out, inp,
           weight, qtype, bias, N, IC, OC, rb);
    return;
  }
  Scratch scratch((size_t)(OC * IC) * sizeof(float));  // the matrix widened once, then one cuBLAS product
  float* wide = scratch.as<float>();
  dequantize_rows(wide, weight, qtype, nullptr, OC, IC);
  matmul_forward(out, inp, wide, bias, N, IC, OC);
}

}  // namespace cuda
}  // namespace pt
