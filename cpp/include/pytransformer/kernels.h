// pytransformer kernels: every op's forward and backward, float32, C-contiguous buffers.
//
// Letters: B batch, T sequence, C channels, NH heads, HS head size (C = NH * HS), V vocabulary,
// N rows (B * T, or any product of leading dimensions), IC / OC input / output channels.
// Argument order: outputs, saved-for-backward, inputs, parameters, sizes, options.
// Gradient convention (every op): input gradients (dinp, dq, ...) are OVERWRITTEN; parameter gradients
// (dweight, dbias, dtable) are ACCUMULATED (+=), so a model zeroes its flat gradient buffer once per step and
// tied or reused parameters add up. A null gradient pointer means "not wanted".
//
// The same declarations live in one namespace per ISA variant (pt::baseline, pt::avx2, pt::avx512); each
// variant is the same source compiled with its own flags. dispatch.h picks one at run time.
#pragma once
#include <cstdint>

// q (B, NH, Tq, HS), k, v (B, NKV, Tk, HS) (NKV divides NH: query head h reads key/value head h / (NH / NKV)),
// key_mask (B, Tk) 1 = attend (may be null); out (B, NH, Tq, HS), lse (B, NH, Tq) saved. causal: key j is visible
// to query i when j <= i + (Tk - Tq) (bottom-right aligned, the KV-cache convention); window > 0 (causal only) also
// hides keys j <= i + (Tk - Tq) - window (a sliding window; 0 = none). Fully masked rows give 0.
// bthd: q, k, v, out (and dq, dk, dv, dout) are (B, T, NH, HS) instead -- (B, T, C) read per head.
// forward: k, v hold Tkv >= Tk rows per sequence (a KV cache's capacity), of which the first Tk are used.
// (Declared once here for every ISA variant, the AMX build of attention.cpp and the CUDA kernels.)
#define PT_DECLARE_ATTENTION                                                                                 \
  void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,             \
                         const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,            \
                         int64_t Tk, int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale,       \
                         bool bthd);                                                                         \
  /* the same over a cache of halves (float16 bits): k, v widened exactly as they are read */                  \
  void attention_forward_f16(float* out, float* lse, const float* q, const uint16_t* k, const uint16_t* v,   \
                             const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,        \
                             int64_t Tk, int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale,   \
                             bool bthd);                                                                     \
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,              \
                          const float* lse, const float* q, const float* k, const float* v,                  \
                          const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,           \
                          int64_t Tk, int64_t HS, bool causal, int64_t window, float scale, bool bthd);

#define PT_DECLARE_KERNELS                                                                                   \
  /* out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias (OC) [bias may be null] */                         \
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,       \
                      int64_t IC, int64_t OC);                                                               \
  /* the same with weight (OC, IC) stored as bfloat16 bits (inference): widened exactly, float32 sums */       \
  void matmul_w16_forward(float* out, const float* inp, const uint16_t* weight, const float* bias, int64_t N, \
                          int64_t IC, int64_t OC);                                                           \
  /* ... and with int8 weight (OC, IC) and a scale (OC) per output row: out = (inp @ weight^T) * scale + bias */ \
  void matmul_w8_forward(float* out, const float* inp, const int8_t* weight, const float* scale,              \
                         const float* bias, int64_t N, int64_t IC, int64_t OC);                              \
  /* dinp (N, IC) = dout @ weight; dweight (OC, IC) += dout^T @ inp; dbias (OC) += sum_n dout */              \
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,       \
                       const float* weight, int64_t N, int64_t IC, int64_t OC);                              \
  /* dinp (N, IC) = dout (N, OC) @ W, overwritten: the gradient through a frozen narrow weight W (OC, IC) kept   \
     as stored (quant/dinp.cpp), widened a row segment at a time into L1, float32 sums. _q: OC rows of          \
     quant_row_bytes(qtype, IC) bytes of any GGUF type (bfloat16 bits are BF16 rows); _w8: int8 (OC, IC) with   \
     a scale (OC) per row, W = weight * scale[:, None] */                                                      \
  void matmul_q_dinp(float* dinp, const float* dout, const uint8_t* weight, int qtype, int64_t N, int64_t IC,  \
                     int64_t OC);                                                                            \
  void matmul_w8_dinp(float* dinp, const float* dout, const int8_t* weight, const float* scale, int64_t N,    \
                      int64_t IC, int64_t OC);                                                               \
  /* out (N, C); mean, rstd (N) saved for backward */                                                         \
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,        \
                         const float* bias, int64_t N, int64_t C, float eps);                                \
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,    \
                          const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C);  \
  /* RMSNorm (Llama): out (N, C) = inp * rstd * weight, rstd (N) = 1 / sqrt(mean(inp^2) + eps) saved */      \
  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,  \
                       float eps);                                                                           \
  void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight, \
                        const float* rstd, int64_t N, int64_t C);                                            \
  /* rotary positions: inp, out (N, NH, HS) (out may be inp), row n at position positions[n] < P; cos, sin    \
     (P, HS / 2) tables; pairs (i, i + HS / 2) rotated by the angle (the Hugging Face "rotate_half" form), or  \
     pairs (2i, 2i + 1) when interleaved (llama.cpp's). backward rotates dout by minus the angle. */          \
  void rope_forward(float* out, const float* inp, const float* cos, const float* sin, const int64_t* positions, \
                    int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved);                         \
  void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin,                     \
                     const int64_t* positions, int64_t N, int64_t NH, int64_t HS, int64_t P, bool interleaved); \
  /* SwiGLU (Llama's gated feed-forward): out = silu(gate) * up, n elements; backward -> dgate, dup */        \
  void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);                            \
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,       \
                       int64_t n);                                                                           \
  /* GeGLU (Gemma's gated feed-forward): out = gelu_tanh(gate) * up, n elements; backward -> dgate, dup */   \
  void geglu_forward(float* out, const float* gate, const float* up, int64_t n);                             \
  void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,        \
                      int64_t n);                                                                            \
  /* GGUF block-quantised weights (inference): weight (OC rows of quant_row_bytes(qtype, IC) bytes),          \
     out (N, OC) = inp (N, IC) @ dequant(weight)^T + bias, dequantised in registers / L1, float32 sums */     \
  void matmul_q_forward(float* out, const float* inp, const uint8_t* weight, int qtype, const float* bias,    \
                        int64_t N, int64_t IC, int64_t OC);                                                  \
  /* the same with inp quantised to int8 per block (Q8_0 per 32, Q8_K per 256, llama.cpp's rounding) and       \
     integer dot products (quant/int8.cpp), for n weights of one input at once (q|k|v, gate|up: QProduct): the   \
     rows quantised once per block size and, for 1-3 rows, one pass of the threads over every weight; the _vnni  \
     entry is vpdpbusd's copy, which dispatch.cpp swaps in */                                                  \
  void matmul_q8_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC);             \
  void matmul_q8_vnni_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC);        \
  /* out (N, C) = dequant(src rows ids[n]) (ids null: rows 0 .. N-1); src rows of quant_row_bytes(qtype, C) */ \
  void dequantize_rows(float* out, const uint8_t* src, int qtype, const int64_t* ids, int64_t N, int64_t C);  \
  /* approximate: 1 = tanh approximation (GPT-2), 0 = exact erf (BERT) */                                     \
  void gelu_forward(float* out, const float* inp, int64_t n, int approximate);                               \
  void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, int approximate);          \
  void relu_forward(float* out, const float* inp, int64_t n);                                                \
  void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n);                           \
  /* softmax over the last axis of (N, C) */                                                                  \
  void softmax_forward(float* out, const float* inp, int64_t N, int64_t C);                                  \
  void softmax_backward(float* dinp, const float* out, const float* dout, int64_t N, int64_t C);             \
  /* a grammar's mask (constrained decoding, cpu/mask.cpp): logits (N, V) in place, -inf at token i where bit    \
     i % 32 of words (N, ceil(vocab / 32)) [n, i / 32] is 0 (llguidance's bitmask) and at every i >= vocab <= V */ \
  void mask_logits(float* logits, const uint32_t* words, int64_t N, int64_t V, int64_t vocab);               \
  /* losses (N) per row (0 where ignored), lse (N) log-sum-exp saved; returns the mean over counted rows;     \
     smoothing eps: targets (1 - eps) onehot + eps / V (label smoothing, 0: none) */                         \
  double crossentropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets,        \
                              int64_t N, int64_t V, int64_t ignore_index, float smoothing);                  \
  /* dlogits (N, V) = d(mean loss)/dlogits * dloss; dlogits may be the logits buffer itself */                \
  void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int64_t* targets,  \
                             float dloss, int64_t N, int64_t V, int64_t ignore_index, float smoothing);      \
  /* out (N, C) = table (V, C)[ids (N)]; dtable += scatter of dout (N, C), repeated ids accumulate */         \
  void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V,           \
                         int64_t C);                                                                         \
  void embedding_backward(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V,        \
                          int64_t C);                                                                        \
  void residual_forward(float* out, const float* a, const float* b, int64_t n);                              \
  void residual_backward(float* da, float* db, const float* dout, int64_t n);                                \
  /* out (n) = inp (n) as IEEE halves (float16 bits: a KV cache's rows): to nearest even, saturated at +-65504 */ \
  void float16_from_float(uint16_t* out, const float* inp, int64_t n);                                        \
  /* keep element i when uniform(seed, i) >= p, scaled by 1 / (1 - p); the mask is recomputed in backward */ \
  void dropout_forward(float* out, const float* inp, int64_t n, float p, uint64_t seed);                     \
  void dropout_backward(float* dinp, const float* dout, int64_t n, float p, uint64_t seed);                  \
  PT_DECLARE_ATTENTION                                                                                       \
  /* one AdamW step (torch.optim.AdamW semantics) over flat buffers of n floats; step counts from 1 */        \
  void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n, float lr, float beta1,    \
                  float beta2, float eps, float weight_decay, int64_t step);                                 \
  /* sum of squares in double, for the global gradient norm */                                                \
  double sum_squares(const float* x, int64_t n);                                                             \
  /* benchmark probe: iters rounds of 16 independent FMA chains per thread; returns the flops done */          \
  double fma_probe(float* sink, int64_t iters);                                                               \
  /* benchmark probe: iters rounds of 12 independent integer dot-product chains per thread with the instruction  \
     the int8 products use (the _vnni entry: vpdpbusd, swapped in with matmul_q8's); returns the multiply-adds */ \
  double int8_dot_probe(int32_t* sink, int64_t iters);                                                        \
  double int8_dot_vnni_probe(int32_t* sink, int64_t iters);                                                   \
  /* Hamming candidates (search.py's first pass over sign bits, hamming.cpp): signs (W, N) uint64, word w of    \
     row r at signs[w * N + r]; queries (Q, W). For each query, every row within the distance of its n-th       \
     nearest row (ties at that distance included; n clamped to N), ascending: ids (Q, capacity) gets the first  \
     min(count, capacity), counts (Q) how many there are (more than capacity: call again with room for them).   \
     The _vpopcnt entry is VPOPCNTDQ's copy, which dispatch.cpp swaps in */                                    \
  void hamming_candidates_forward(int64_t* ids, int64_t* counts, const uint64_t* signs, const uint64_t* queries, \
                                  int64_t N, int64_t W, int64_t Q, int64_t n, int64_t capacity);             \
  void hamming_candidates_vpopcnt_forward(int64_t* ids, int64_t* counts, const uint64_t* signs,               \
                                          const uint64_t* queries, int64_t N, int64_t W, int64_t Q, int64_t n, \
                                          int64_t capacity);                                                 \
  /* int8 candidates (search.py's first pass over int8 rows, int8_candidates.cpp): codes (N, D) int8 with a      \
     scale (N) per row, queries (Q, D) int8 -> ids (Q, n), n <= N: for each query the n rows of highest           \
     float32(integer codes[r] . query) * scale[r] (a NaN score ranks as -inf; equal scores: the lower row first),  \
     ascending */                                                                                             \
  void int8_candidates_forward(int64_t* ids, const int8_t* codes, const float* scale, const int8_t* queries,    \
                               int64_t N, int64_t D, int64_t Q, int64_t n);

#define PT_KERNEL_LIST(X)                                                                                    \
  X(matmul_forward) X(matmul_w16_forward) X(matmul_w8_forward) X(matmul_backward) X(layernorm_forward) X(layernorm_backward) X(gelu_forward)            \
  X(gelu_backward) X(relu_forward) X(relu_backward) X(softmax_forward) X(softmax_backward)                   \
  X(mask_logits)                                                                                            \
  X(crossentropy_forward) X(crossentropy_backward) X(embedding_forward) X(embedding_backward)                \
  X(residual_forward) X(residual_backward) X(float16_from_float) X(dropout_forward) X(dropout_backward) X(attention_forward)       \
  X(attention_forward_f16)                                                                                  \
  X(attention_backward) X(adamw_step) X(sum_squares) X(fma_probe) X(int8_dot_probe) X(int8_dot_vnni_probe) X(rmsnorm_forward) X(rmsnorm_backward)      \
  X(rope_forward) X(rope_backward) X(swiglu_forward) X(swiglu_backward) X(matmul_q_forward) X(matmul_q8_forward)        \
  X(matmul_q_dinp) X(matmul_w8_dinp)                                                                        \
  X(dequantize_rows) X(geglu_forward) X(geglu_backward)                                                      \
  X(hamming_candidates_forward) X(int8_candidates_forward)

namespace pt {
// GGUF (ggml) tensor types the quantised kernels read, by their ggml type ids, and their blocks (values, bytes);
// the layouts are written out in cpp/cpu/quant.h. Floats: F32 (1, 4), F16 (1, 2), BF16 (1, 2). 32-value blocks:
// Q4_0 (18), Q4_1 (20), Q5_0 (22), Q5_1 (24), Q8_0 (34), IQ4_NL (18). 256-value super-blocks: Q2_K (84),
// Q3_K (110), Q4_K (144), Q5_K (176), Q6_K (210), IQ4_XS (136).
enum QType : int {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ2_K = 10, kQ3_K = 11, kQ4_K = 12,
  kQ5_K = 13, kQ6_K = 14, kIQ4_NL = 20, kIQ4_XS = 23, kBF16 = 30
};
constexpr bool quant_block(int qtype, int64_t* values, int64_t* bytes) {
  switch (qtype) {
    case kF32: *values = 1; *bytes = 4; return true;
    case kF16: case kBF16: *values = 1; *bytes = 2; return true;
    case kQ4_0: case kIQ4_NL: *values = 32; *bytes = 18; return true;
    case kQ4_1: *values = 32; *bytes = 20; return true;
    case kQ5_0: *values = 32; *bytes = 22; return true;
    case kQ5_1: *values = 32; *bytes = 24; return true;
    case kQ8_0: *values = 32; *bytes = 34; return true;
    case kQ2_K: *values = 256; *bytes = 84; return true;
    case kQ3_K: *values = 256; *bytes = 110; return true;
    case kQ4_K: *values = 256; *bytes = 144; return true;
    case kQ5_K: *values = 256; *bytes = 176; return true;
    case kQ6_K: *values = 256; *bytes = 210; return true;
    case kIQ4_XS: *values = 256; *bytes = 136; return true;
    default: return false;
  }
}
// Quantised products of at most this many rows (a continuous-batching decode step) run the batch kernel, whose
// cost per step barely grows up to it; more rows widen the weights for the GEMM.
constexpr int64_t kSmallBatchRows = 16;

// Bytes of one row of C values, or -1 for an unknown type or C not a whole number of blocks.
inline int64_t quant_row_bytes(int qtype, int64_t C) {
  int64_t values, bytes;
  if (!quant_block(qtype, &values, &bytes) || C < 0 || C % values) return -1;
  return C / values * bytes;
}

// One product of the int8-activation kernels' groups: out (N, ldo), columns 0 .. OC = inp (N, IC) @ dequant(weight)^T
// + bias, weight OC rows of quant_row_bytes(qtype, IC) bytes (an integer type), bias (OC) or null; packed: the same
// rows packed (packed.h; can_pack(qtype, OC)) or null -- the kernels that read that layout read it, the others weight.
struct QProduct {
  float* out;
  int64_t ldo;
  const uint8_t* weight;
  int qtype;
  const float* bias;
  int64_t OC;
  const uint8_t* packed = nullptr;
};

namespace baseline { PT_DECLARE_KERNELS }
namespace avx2 { PT_DECLARE_KERNELS }
namespace avx512 { PT_DECLARE_KERNELS }

// One ISA variant's kernels, as function pointers.
struct Kernels {
  const char* isa;
#define PT_KERNEL_FIELD(name) decltype(&baseline::name) name;
  PT_KERNEL_LIST(PT_KERNEL_FIELD)
#undef PT_KERNEL_FIELD
};

namespace baseline { const Kernels* kernels(); }
namespace avx2 { const Kernels* kernels(); }
namespace avx512 { const Kernels* kernels(); }

// bfloat16 products on Intel AMX tiles (cpp/cpu/matmul_amx.cpp, built only when the compiler knows AMX):
// inputs rounded to bf16, float32 sums. Same shapes and gradient conventions as the float32 kernels; dbias is
// not computed here (a float32 column sum either way: dispatch.cpp adds it from the float32 table).
namespace amx {
bool supported();  // CPU has AMX-BF16 + AVX512-BF16, the OS saves tile state and granted it to this process
double probe(int64_t iters);  // benchmark probe: iters rounds of 4 independent tile products per thread -> flops
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int64_t IC,
                    int64_t OC);
void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                     int64_t N, int64_t IC, int64_t OC);
// bfloat16 weights (the inputs rounded to bf16 as above) from 16 rows; fewer rows and other GGUF types: AVX-512's
void matmul_w16_forward(float* out, const float* inp, const uint16_t* weight, const float* bias, int64_t N, int64_t IC,
                        int64_t OC);
void matmul_q_dinp(float* dinp, const float* dout, const uint8_t* weight, int qtype, int64_t N, int64_t IC,
                   int64_t OC);
}  // namespace amx

// The int8-activation products of 8-13 and more rows (by type) on AMX-INT8 tiles (quant/int8_amx.cpp; fewer rows:
// AVX-512's vpdpbusd copy). Same arguments as matmul_q8_forward; opt-in where dispatch.cpp finds AMX-INT8.
namespace amx_int8 {
void matmul_q8_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC);
}  // namespace amx_int8

// attention.cpp built once more with its products on AMX tiles (bf16 operands, float32 softmax and sums).
namespace amx_attention {
PT_DECLARE_ATTENTION
}  // namespace amx_attention
}  // namespace pt
