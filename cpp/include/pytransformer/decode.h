// One decoding step of any pre-norm decoder-only transformer described as data (models/decoder.py's
// DecoderConfig): B rows, each a new token of a sequence held in a slot of shared per-layer KV caches, through every
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
  const float* bias = nullptr;
  int64_t OC = 0, IC = 0;
  void product(float* out, const float* inp, int64_t N) const;  // out (N, OC) = inp (N, IC) @ W^T + bias
  void product(float* out, int64_t ldo, const float* inp, int64_t N) const;  // out rows ldo floats apart
};

// A norm over C channels: LayerNorm (weight and bias) or RMSNorm (weight), as the plan's `layernorm` says.
struct NormRef {
  const float* weight = nullptr;
  const float* bias = nullptr;
};

struct DecodeLayer {
  NormRef attn_norm;
  std::vector<WeightRef> qkv;  // one fused q|k|v product, or three
  WeightRef o;
  NormRef ffn_norm;
  std::vector<WeightRef> up;   // gated: one fused gate|up product or two; plain: the one up projection
  WeightRef down;
};

struct DecodePlan {
  enum Activation { kSiLU = 0, kGeluTanh = 1, kGeluErf = 2, kReLU = 3 };
  int64_t C, NH, NKV, HS, F, V;
  float eps;
  float attn_scale;          // softmax(q k^T * attn_scale)
  bool layernorm = false;    // LayerNorm (GPT-2) or RMSNorm (Llama)
  bool rotary = true;        // rotary positions on q and k (else the positions were added to the embeddings)
  bool interleaved = false;  // rotary pairs (2i, 2i + 1): q and k rows in llama.cpp's order (GGUF files)
  bool gated = true;         // down(act(gate) * up) (SwiGLU) or down(act(up))
  int activation = kSiLU;
  std::vector<DecodeLayer> layers;
  NormRef final_norm;
  WeightRef head;

  // x (B, C): the rows' embeddings (overwritten); row b is the token at position pos[b] of slot slots[b] of the
  // layer caches k[l], v[l] (S slots of capacity rows of NKV * HS), and attends to that slot's rows 0 .. pos[b].
  // Rows may share a slot in increasing positions (a prompt prefilled within a decode step): each row's key and
  // value are written before the next row of its slot attends. The products read each weight once for all rows.
  // cos, sin (P, HS / 2) when rotary. logits (R, V): the rows logit_rows[0 .. R) (all B rows when null, R = B).
  void step(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos, float* const* k,
            float* const* v, int64_t S, int64_t capacity, const float* cos, const float* sin, int64_t P,
            const int64_t* logit_rows = nullptr, int64_t R = -1) const;
  // throws std::invalid_argument (a Python ValueError) naming what a step's arguments get wrong
  void validate(int64_t B, const int64_t* slots, const int64_t* pos, int64_t S, int64_t capacity, int64_t P,
                const int64_t* logit_rows, int64_t R) const;
};
}  // namespace pt
