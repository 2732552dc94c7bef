// One decoding step of any decoder-only transformer described as data (models/decoder.py's DecoderConfig: norms
// before, or before and after, each sub-layer): B rows, each a new token of a sequence held in a slot of shared per-layer KV caches, through every
// layer in one C++ call (the per-token path then makes one call from Python instead of ~400). A single sequence is
// one row in one slot: there is one step.
//
// The plan only points: the weights, norms, biases, rotary tables and the KV caches are arrays owned by the Python
// model, which the binding keeps alive; `validate` checks a step's indices against the plan before it runs.
#pragma once
#include <cstdint>
#include <vector>

namespace pt {
// A weight of any kind the products take: float32, bfloat16 bits, int8 with a scale per row, or a GGUF block type
// (kind = its ggml type id, with `data` its OC rows of blocks); the bias (OC) is optional.
struct WeightRef {
  static constexpr int kFloat32 = -1, kBFloat16 = -2, kInt8 = -3;
  static constexpr int kInt8Activations = 1000;  // + a GGUF type id: its blocks with int8 activations
  int qtype() const { return kind >= kInt8Activations ? kind - kInt8Activations : kind; }
  int kind = kFloat32;
  const void* data = nullptr;
  const float* scale = nullptr;  // int8 only
  const uint8_t* packed = nullptr;  // int8 activations: the blocks packed (QProduct::packed) or null
  const float* bias = nullptr;
  int64_t OC = 0, IC = 0;
  void product(float* out, const float* inp, int64_t N) const;  // out (N, OC) = inp (N, IC) @ W^T + bias
  void product(float* out, int64_t ldo, const float* inp, int64_t N) const;  // out rows ldo floats apart
};

// A norm over C channels: LayerNorm (weight and bias) or RMSNorm (weight), as the plan's `layernorm` says; an
// RMSNorm scales by (norm_offset + weight) (Gemma's 1 + w).
struct NormRef {
  const float* weight = nullptr;
  const float* bias = nullptr;
};

struct DecodeLayer {
  NormRef attn_norm;
  std::vector<WeightRef> qkv;  // one fused q|k|v product, or three
  NormRef q_norm, k_norm;      // qk_norm: RMSNorm of each query and key head (HS), before the rotation
  WeightRef o;
  NormRef post_attn_norm;      // sandwich: the norm of the attention's output, before the residual
  NormRef ffn_norm;
  std::vector<WeightRef> up;   // gated: one fused gate|up product or two; plain: the one up projection
  WeightRef down;
  NormRef post_ffn_norm;       // sandwich: the norm of the feed-forward's output, before the residual
  int64_t window = 0;          // > 0: the query at i sees keys i - window < j <= i (sliding-window attention)
  int rotary_table = 0;        // which pair of rotary tables rotates this layer (1: the sliding layers' base)
};

// The rotary tables of a step: cos[t], sin[t] (P, HS / 2) for each table t a layer may name.
struct RotaryTables {
  const float* cos[2] = {nullptr, nullptr};
  const float* sin[2] = {nullptr, nullptr};
  int64_t P = 0;
};

// A step's KV caches: k[l], v[l] per layer, each S slots of capacity rows of NKV * HS values, float32 or (half)
// IEEE halves (float16 bits: written rounded to nearest, saturated at +-65504; read widened exactly).
struct CacheRefs {
  void* const* k;
  void* const* v;
  int64_t S, capacity;
  bool half;
};

struct DecodePlan {
  enum Activation { kSiLU = 0, kGeluTanh = 1, kGeluErf = 2, kReLU = 3 };
  int64_t C, NH, NKV, HS, F, V;
  float eps;
  float attn_scale;          // softmax(q k^T * attn_scale)
  bool layernorm = false;    // LayerNorm (GPT-2) or RMSNorm (Llama)
  float norm_offset = 0.f;   // RMSNorms scale by (norm_offset + weight): 1 in Gemma
  bool sandwich = false;     // norms after each sub-layer too (Gemma 3): post_attn_norm, post_ffn_norm
  bool qk_norm = false;      // RMSNorm of each query and key head (Qwen3, Gemma 3): q_norm, k_norm
  bool rotary = true;        // rotary positions on q and k (else the positions were added to the embeddings)
  int rotary_tables = 1;     // 2: the sliding layers rotate by a base of their own (Gemma 3)
  bool interleaved = false;  // rotary pairs (2i, 2i + 1): q and k rows in llama.cpp's order (GGUF files)
  bool gated = true;         // down(act(gate) * up) (SwiGLU, GeGLU) or down(act(up))
  int activation = kSiLU;    // gated: SiLU (SwiGLU) or tanh GELU (GeGLU)
  std::vector<DecodeLayer> layers;
  NormRef final_norm;
  WeightRef head;

  // x (B, C): the rows' embeddings (overwritten); row b is the token at position pos[b] of slot slots[b] of the
  // layer caches (CacheRefs), and attends to that slot's rows 0 .. pos[b].
  // Rows may share a slot in increasing positions (a prompt prefilled within a decode step): each row's key and
  // value are written before the next row of its slot attends. The products read each weight once for all rows.
  // rope: rotary_tables pairs of (P, HS / 2) tables when rotary. logits (R, V): the rows logit_rows[0 .. R) (all B
  // rows when null, R = B).
  void step(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos, const CacheRefs& cache,
            const RotaryTables& rope, const int64_t* logit_rows = nullptr, int64_t R = -1) const;
  // throws std::invalid_argument (a Python ValueError) naming what a step's arguments get wrong
  void validate(int64_t B, const int64_t* slots, const int64_t* pos, int64_t S, int64_t capacity, int64_t P,
                const int64_t* logit_rows, int64_t R) const;
};
}  // namespace pt
