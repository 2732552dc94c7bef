// The int8 products' activations: input rows quantised per block (int8.cpp's quantize_row_q8: llama.cpp's rounding,
// quantize_row_q8_0 per 32 values and q8_K per 256), once for every product of a group that reads them (q|k|v,
// gate|up: kernels.h QProduct).
#pragma once
#include <cstdint>

#include "pytransformer/kernels.h"

namespace pt {
// Rows of IC values quantised for one block size: q (rows, IC), d (rows, IC / block: the scales), sums (rows, IC / 16:
// the sums of q per 16 values); blocks of 32 also ds (rows, IC / 32): d (sum of the block's q), the min's term of
// Q4_1 / Q5_1, made once here in this one float operation for every product that reads the rows
struct Q8Rows {
  int8_t* q = nullptr;
  float* d = nullptr;
  int16_t* sums = nullptr;
  float* ds = nullptr;
};

// The activations' block a type's products read: 256 values for the K types and IQ4_XS, else 32 (Q8Rows index 1, 0)
constexpr int64_t q8_block(int qtype) {
  return qtype == kQ2_K || qtype == kQ3_K || qtype == kQ4_K || qtype == kQ5_K || qtype == kQ6_K || qtype == kIQ4_XS
             ? 256
             : 32;
}

// Whether a group's products write nothing (no rows, or no outputs): then nothing is quantised either -- never a loop
// over rows, however many, that no output needs
inline bool writes_nothing(const QProduct* p, int64_t n, int64_t N) {
  int64_t outputs = 0;
  for (int64_t i = 0; i < n; i++) outputs += p[i].OC;
  return N == 0 || outputs == 0;
}

namespace PT_NS {
// q (C int8), d (C / block scales), sums (C / 16) of one row x (C floats), block 32 or 256
void quantize_row_q8(int8_t* q, float* d, int16_t* sums, const float* x, int64_t C, int64_t block);
// q8[k] = inp (N, IC) quantised for blocks of 32 (k = 0) and of 256 (k = 1), each only where one of p[0 .. n)
// reads it, rows N .. rows - 1 zeros (AMX's whole tiles); per-thread scratch, valid until this thread's next call
void quantize_rows(Q8Rows q8[2], const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC, int64_t rows);
// matmul_q8_vnni_forward on rows quantize_rows made (AMX-INT8's products of rows short of a tile, or of types it
// leaves to the VNNI panels)
void matmul_q8_vnni_rows(const QProduct* p, int64_t n, const Q8Rows q8[2], int64_t N, int64_t IC);
}  // namespace PT_NS
}  // namespace pt
