// The gradient through a frozen narrow weight: dinp (N, IC) = dout (N, OC) @ W (OC, IC), W kept as it is stored
// (GGUF blocks of any type the products read, bfloat16 bits as GGUF BF16 rows, int8 with a scale per row). The
// float32 GEMM (gemm.h) with B = W read by rows: each task widens the row segments of its column block with the
// forward products' decodes (dequantize_row: one decoder per block type), one segment at a time into L1, straight
// into its packed panels; column blocks start on block boundaries, so no block is decoded twice by one task.
// LoRA fine-tuning on a quantised base backpropagates through every frozen product with it.
#include "gemm.h"
#include "quant.h"

namespace pt {
namespace PT_NS {

namespace {
struct BlockRows {  // OC rows of row_bytes, in blocks of `values` values and `bytes` bytes
  const uint8_t* weight;
  int64_t row_bytes, values, bytes;
  int qtype;
};
void fill_blocks(const void* source, int64_t k, int64_t j0, int64_t n, float* dst) {
  const BlockRows& w = *static_cast<const BlockRows*>(source);
  dequantize_row(dst, w.weight + k * w.row_bytes + j0 / w.values * w.bytes, w.qtype, n);
}

struct Int8Rows {  // (OC, IC) int8, a float32 scale per row
  const int8_t* weight;
  const float* scale;
  int64_t IC;
};
void fill_int8(const void* source, int64_t k, int64_t j0, int64_t n, float* dst) {
  const Int8Rows& w = *static_cast<const Int8Rows*>(source);
  const int8_t* row = w.weight + k * w.IC + j0;
  const V s = set1(w.scale[k]);
  for (int64_t i = 0; i < n; i += W) storen(dst + i, mul(loadn_i8(row + i, n - i), s), n - i);
}
}  // namespace

void matmul_q_dinp(float* dinp, const float* dout, const uint8_t* weight, int qtype, int64_t N, int64_t IC,
                   int64_t OC) {
  BlockRows w{weight, quant_row_bytes(qtype, IC), 0, 0, qtype};
  if (N == 0 || IC == 0 || w.row_bytes < 0 || !quant_block(qtype, &w.values, &w.bytes)) return;
  gemm_rows(N, IC, OC, dout, OC, RowSource{fill_blocks, &w, w.values}, dinp, IC);
}

void matmul_w8_dinp(float* dinp, const float* dout, const int8_t* weight, const float* scale, int64_t N,
                    int64_t IC, int64_t OC) {
  if (N == 0 || IC == 0) return;
  const Int8Rows w{weight, scale, IC};
  gemm_rows(N, IC, OC, dout, OC, RowSource{fill_int8, &w, 1}, dinp, IC);
}

}  // namespace PT_NS
}  // namespace pt
