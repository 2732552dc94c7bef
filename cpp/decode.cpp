// The decoding step of a decoder described as data (decode.h): the same kernels, in the same order, as the Python
// layers' cached path (nn/attention.py _forward_cached, nn/blocks.py, Residual), so the same numbers.
#include "pytransformer/decode.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "pytransformer/dispatch.h"
#include "pytransformer/runtime.h"

namespace pt {

void WeightRef::product(float* out, const float* inp, int64_t N) const {
  const Kernels& K = active();
  switch (kind) {
    case kFloat32: K.matmul_forward(out, inp, (const float*)data, bias, N, IC, OC); break;
    case kBFloat16: K.matmul_w16_forward(out, inp, (const uint16_t*)data, bias, N, IC, OC); break;
    case kInt8: K.matmul_w8_forward(out, inp, (const int8_t*)data, scale, bias, N, IC, OC); break;
    default:
      (kind >= kInt8Activations ? K.matmul_q8_forward : K.matmul_q_forward)(out, inp, (const uint8_t*)data, qtype(),
                                                                             bias, N, IC, OC);
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

void DecodePlan::validate(int64_t B, const int64_t* slots, const int64_t* pos, int64_t S, int64_t capacity,
                          int64_t P, const int64_t* logit_rows, int64_t R) const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  for (int64_t r = 0; logit_rows && r < R; r++)
    if (logit_rows[r] < 0 || logit_rows[r] >= B)
      fail("logit row " + std::to_string(logit_rows[r]) + " outside the batch of " + std::to_string(B));
  for (int64_t b = 0; b < B; b++) {
    if (slots[b] < 0 || slots[b] >= S)
      fail("slot " + std::to_string(slots[b]) + " outside the caches' " + std::to_string(S));
    if (pos[b] < 0 || pos[b] >= capacity)
      fail("position " + std::to_string(pos[b]) + " outside the cache of " + std::to_string(capacity));
    if (rotary && pos[b] >= P)
      fail("position " + std::to_string(pos[b]) + " outside the rotary tables of " + std::to_string(P));
    for (int64_t c = 0; c < b; c++)  // (rows of one slot: in increasing positions, each attending the last)
      if (slots[c] == slots[b] && pos[c] >= pos[b]) fail("rows of one slot must come in increasing positions");
  }
}

namespace {
void norm(const DecodePlan& d, const NormRef& n, float* out, float* mean, float* rstd, const float* x, int64_t N) {
  if (d.layernorm) active().layernorm_forward(out, mean, rstd, x, n.weight, n.bias, N, d.C, d.eps);
  else active().rmsnorm_forward(out, rstd, x, n.weight, N, d.C, d.eps);
}
}  // namespace

void DecodePlan::step(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos, float* const* k,
                      float* const* v, int64_t S, int64_t capacity, const float* cos, const float* sin, int64_t P,
                      const int64_t* logit_rows, int64_t R) const {
  (void)S;
  const Kernels& K = active();
  const int64_t QD = NH * HS, KD = NKV * HS, QKV = QD + 2 * KD, U = gated ? 2 * F : F;
  static thread_local std::vector<float> buf;
  buf.resize((size_t)(B * (C + QKV + QD + C + U + F + 2 + NH)));
  float* h = buf.data();
  float* qkv = h + B * C;
  float* att = qkv + B * QKV;
  float* tmp = att + B * QD;
  float* up = tmp + B * C;
  float* act = up + B * U;
  float* mean = act + B * F;
  float* rstd = mean + B;
  float* lse = rstd + B;
  const int nt = kernel_threads();
  for (size_t l = 0; l < layers.size(); l++) {
    const DecodeLayer& L = layers[l];
    norm(*this, L.attn_norm, h, mean, rstd, x, B);
    products(L.qkv, qkv, h, B);
    // each row over its own cache, the rows split across the threads: first every row's rotary positions and
    // cache writes, then every row's attention (a prompt's rows in one slot see all of their earlier rows)
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && B > 1)
    for (int64_t b = 0; b < B; b++) {
      float* q = qkv + b * QKV;
      const float* kn = q + QD;
      const float* vn = kn + KD;
      float* krow = k[l] + (slots[b] * capacity + pos[b]) * KD;
      if (rotary) {
        K.rope_forward(q, q, cos, sin, &pos[b], 1, NH, HS, P, interleaved);
        K.rope_forward(krow, kn, cos, sin, &pos[b], 1, NKV, HS, P, interleaved);  // straight into the cache
      } else {
        std::memcpy(krow, kn, sizeof(float) * KD);
      }
      std::memcpy(v[l] + (slots[b] * capacity + pos[b]) * KD, vn, sizeof(float) * KD);
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && B > 1)
    for (int64_t b = 0; b < B; b++)
      K.attention_forward(att + b * QD, lse + b * NH, qkv + b * QKV, k[l] + slots[b] * capacity * KD,
                          v[l] + slots[b] * capacity * KD, nullptr, 1, NH, NKV, 1, pos[b] + 1, capacity, HS, true,
                          attn_scale, true);
    L.o.product(tmp, att, B);
    K.residual_forward(x, x, tmp, B * C);
    norm(*this, L.ffn_norm, h, mean, rstd, x, B);
    products(L.up, up, h, B);
    if (gated) {
      for (int64_t b = 0; b < B; b++) K.swiglu_forward(act + b * F, up + b * U, up + b * U + F, F);  // gate | up
    } else if (activation == kReLU) {
      K.relu_forward(act, up, B * F);
    } else {
      K.gelu_forward(act, up, B * F, activation == kGeluTanh);
    }
    L.down.product(tmp, act, B);
    K.residual_forward(x, x, tmp, B * C);
  }
  const float* last = x;
  if (logit_rows) {  // only the rows whose next token is wanted (a prompt's last): the head is the largest product
    for (int64_t r = 0; r < R; r++) std::memcpy(tmp + r * C, x + logit_rows[r] * C, sizeof(float) * C);
    last = tmp;
  } else {
    R = B;
  }
  norm(*this, final_norm, h, mean, rstd, last, R);
  head.product(logits, h, R);
}

}  // namespace pt
