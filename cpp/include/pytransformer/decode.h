// One decoding step of a pre-norm decoder with rotary positions, RMSNorm and a gated feed-forward (the Llama
// family) for one sequence, run entirely in C++ from a plan of pointers: the per-token path then makes one call from
// Python instead of ~400 (the work per token is ~3 ms of products; the Python around them was ~2 ms).
//
// The plan only points: the weights, norms, rotary tables and the KV cache are arrays owned by the Python model,
// which the binding keeps alive and checks (sizes, dtypes) when the plan is made and at every step.
#pragma once
#include <cstdint>
#include <vector>

namespace pt {
// A weight of any kind the products take: float32 (kind kF32W), bfloat16 bits, int8 with a scale per row, or a
// GGUF block type (kind = its ggml type id, with `data` its OC rows of blocks).
struct WeightRef {
  static constexpr int kFloat32 = -1, kBFloat16 = -2, kInt8 = -3;
  int kind = kFloat32;
  const void* data = nullptr;
  const float* scale = nullptr;  // int8 only
  int64_t OC = 0, IC = 0;
  void product(float* out, const float* inp, int64_t N) const;  // out (N, OC) = inp (N, IC) @ W^T
  void product(float* out, int64_t ldo, const float* inp, int64_t N) const;  // out rows ldo floats apart
};

struct DecodeLayer {
  const float* attn_norm;
  std::vector<WeightRef> qkv;  // one fused q|k|v product, or three
  WeightRef o;
  const float* ffn_norm;
  std::vector<WeightRef> gate_up;  // one fused gate|up product, or two
  WeightRef down;
};

struct DecodePlan {
  int64_t C, NH, NKV, HS, F, V;
  float eps;
  bool interleaved = false;  // rotary pairs (2i, 2i + 1): q and k rows in llama.cpp's order (GGUF files)
  std::vector<DecodeLayer> layers;
  const float* final_norm;
  WeightRef head;
  // one step: x (C) the new token's embedding (overwritten), logits (V) out; the layer l cache k[l], v[l] holds
  // capacity rows of NKV * HS, rows 0 .. pos - 1 filled; row pos is written. cos, sin (P, HS / 2), pos < P.
  void step(float* x, float* logits, int64_t pos, float* const* k, float* const* v, int64_t capacity,
            const float* cos, const float* sin, int64_t P) const;
  // B rows at once (continuous batching): x (B, C); row b is the token at position pos[b] of sequence slots[b] of
  // the layer caches k[l], v[l] (S slots of capacity rows), which attends to that slot's rows 0 .. pos[b]. Rows may
  // share a slot in increasing positions (a prompt's tokens prefilled within a decode step): each row's key and
  // value are written before the next row of its slot attends. The products read each weight once for all B rows.
  // logits (R, V): the rows logit_rows[0 .. R) (all B rows when logit_rows is null, R = B).
  void step_batch(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos, float* const* k,
                  float* const* v, int64_t S, int64_t capacity, const float* cos, const float* sin, int64_t P,
                  const int64_t* logit_rows = nullptr, int64_t R = -1) const;
};
}  // namespace pt
