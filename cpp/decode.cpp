// The Llama-family decoding step (decode.h): the same kernels, in the same order, as the Python layers' cached
// path (nn/attention.py _forward_cached, nn/blocks.py GatedFeedForward, Residual), for one sequence.
#include "pytransformer/decode.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "pytransformer/dispatch.h"
#include "pytransformer/runtime.h"

namespace pt {

void WeightRef::product(float* out, const float* inp, int64_t N) const {
  const Kernels& K = active();
  switch (kind) {
    case kFloat32: K.matmul_forward(out, inp, (const float*)data, nullptr, N, IC, OC); break;
    case kBFloat16: K.matmul_w16_forward(out, inp, (const uint16_t*)data, nullptr, N, IC, OC); break;
    case kInt8: K.matmul_w8_forward(out, inp, (const int8_t*)data, scale, nullptr, N, IC, OC); break;
    default: K.matmul_q_forward(out, inp, (const uint8_t*)data, kind, nullptr, N, IC, OC);
  }
}

void WeightRef::product(float* out, int64_t ldo, const float* inp, int64_t N) const {
  if (ldo == OC || N == 1) return product(out, inp, N);
  static thread_local std::vector<float> tmp;  // (an unfused group's product into its columns of a wider row)
  tmp.resize((size_t)(N * OC));
  product(tmp.data(), inp, N);
  for (int64_t n = 0; n < N; n++) std::memcpy(out + n * ldo, tmp.data() + n * OC, sizeof(float) * OC);
}

namespace {
// products of N input rows into consecutive column slices of out (N, sum of OC) (a fused weight is one product)
void products(const std::vector<WeightRef>& ws, float* out, const float* inp, int64_t N = 1) {
  int64_t total = 0;
  for (const WeightRef& w : ws) total += w.OC;
  for (const WeightRef& w : ws) {
    w.product(out, total, inp, N);
    out += w.OC;
  }
}
}  // namespace

void DecodePlan::step(float* x, float* logits, int64_t pos, float* const* k, float* const* v, int64_t capacity,
                      const float* cos, const float* sin, int64_t P) const {
  const Kernels& K = active();
  const int64_t QD = NH * HS, KD = NKV * HS;
  static thread_local std::vector<float> buf;
  buf.resize((size_t)(C + QD + 2 * KD + QD + C + 2 * F + F + 1 + NH));
  float* h = buf.data();
  float* qkv = h + C;
  float* att = qkv + QD + 2 * KD;
  float* tmp = att + QD;
  float* gu = tmp + C;
  float* act = gu + 2 * F;
  float* rstd = act + F;
  float* lse = rstd + 1;
  const float scale = 1.f / std::sqrt((float)HS);
  for (size_t l = 0; l < layers.size(); l++) {
    const DecodeLayer& L = layers[l];
    K.rmsnorm_forward(h, rstd, x, L.attn_norm, 1, C, eps);
    products(L.qkv, qkv, h);
    float* q = qkv;
    const float* kn = qkv + QD;
    const float* vn = kn + KD;
    K.rope_forward(q, q, cos, sin, &pos, 1, NH, HS, P, interleaved);
    K.rope_forward(k[l] + pos * KD, kn, cos, sin, &pos, 1, NKV, HS, P, interleaved);  // straight into the cache
    std::memcpy(v[l] + pos * KD, vn, sizeof(float) * KD);
    K.attention_forward(att, lse, q, k[l], v[l], nullptr, 1, NH, NKV, 1, pos + 1, capacity, HS, true, scale, true);
    L.o.product(tmp, att, 1);
    K.residual_forward(x, x, tmp, C);
    K.rmsnorm_forward(h, rstd, x, L.ffn_norm, 1, C, eps);
    products(L.gate_up, gu, h);
    K.swiglu_forward(act, gu, gu + F, F);
    L.down.product(tmp, act, 1);
    K.residual_forward(x, x, tmp, C);
  }
  K.rmsnorm_forward(h, rstd, x, final_norm, 1, C, eps);
  head.product(logits, h, 1);
}

void DecodePlan::step_batch(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos,
                            float* const* k, float* const* v, int64_t S, int64_t capacity, const float* cos,
                            const float* sin, int64_t P, const int64_t* logit_rows, int64_t R) const {
  (void)S;
  const Kernels& K = active();
  const int64_t QD = NH * HS, KD = NKV * HS, QKV = QD + 2 * KD;
  static thread_local std::vector<float> buf;
  buf.resize((size_t)(B * (C + QKV + QD + C + 2 * F + F + 1 + NH)));
  float* h = buf.data();
  float* qkv = h + B * C;
  float* att = qkv + B * QKV;
  float* tmp = att + B * QD;
  float* gu = tmp + B * C;
  float* act = gu + B * 2 * F;
  float* rstd = act + B * F;
  float* lse = rstd + B;
  const float scale = 1.f / std::sqrt((float)HS);
  const int nt = kernel_threads();
  for (size_t l = 0; l < layers.size(); l++) {
    const DecodeLayer& L = layers[l];
    K.rmsnorm_forward(h, rstd, x, L.attn_norm, B, C, eps);
    products(L.qkv, qkv, h, B);
    // each row over its own cache, the rows split across the threads: first every row's rotary positions and
    // cache writes, then every row's attention (a prompt's rows in one slot see all of their earlier rows)
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && B > 1)
    for (int64_t b = 0; b < B; b++) {
      float* q = qkv + b * QKV;
      const float* kn = q + QD;
      const float* vn = kn + KD;
      K.rope_forward(q, q, cos, sin, &pos[b], 1, NH, HS, P, interleaved);
      K.rope_forward(k[l] + (slots[b] * capacity + pos[b]) * KD, kn, cos, sin, &pos[b], 1, NKV, HS, P, interleaved);
      std::memcpy(v[l] + (slots[b] * capacity + pos[b]) * KD, vn, sizeof(float) * KD);
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && B > 1)
    for (int64_t b = 0; b < B; b++)
      K.attention_forward(att + b * QD, lse + b * NH, qkv + b * QKV, k[l] + slots[b] * capacity * KD,
                          v[l] + slots[b] * capacity * KD, nullptr, 1, NH, NKV, 1, pos[b] + 1, capacity, HS, true,
                          scale, true);
    L.o.product(tmp, att, B);
    K.residual_forward(x, x, tmp, B * C);
    K.rmsnorm_forward(h, rstd, x, L.ffn_norm, B, C, eps);
    products(L.gate_up, gu, h, B);
    for (int64_t b = 0; b < B; b++) K.swiglu_forward(act + b * F, gu + b * 2 * F, gu + b * 2 * F + F, F);  // gate | up
    L.down.product(tmp, act, B);
    K.residual_forward(x, x, tmp, B * C);
  }
  if (logit_rows) {  // only the rows whose next token is wanted (a prompt's last): the head is the largest product
    for (int64_t r = 0; r < R; r++) std::memcpy(tmp + r * C, x + logit_rows[r] * C, sizeof(float) * C);
    K.rmsnorm_forward(h, rstd, tmp, final_norm, R, C, eps);
    head.product(logits, h, R);
    return;
  }
  K.rmsnorm_forward(h, rstd, x, final_norm, B, C, eps);
  head.product(logits, h, B);
}

}  // namespace pt
