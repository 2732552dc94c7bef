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

void WeightRef::product(float* out, const float* inp, int64_t N) const { product(out, OC, inp, N); }

void WeightRef::product(float* out, int64_t ldo, const float* inp, int64_t N) const {
  const Kernels& K = active();
  if (kind >= kInt8Activations) {
    const QProduct p{out, ldo, (const uint8_t*)data, qtype(), bias, OC, packed};
    return K.matmul_q8_forward(&p, 1, inp, N, IC);
  }
  if (ldo == OC || N == 1) {
    switch (kind) {
      case kFloat32: return K.matmul_forward(out, inp, (const float*)data, bias, N, IC, OC);
      case kBFloat16: return K.matmul_w16_forward(out, inp, (const uint16_t*)data, bias, N, IC, OC);
      case kInt8: return K.matmul_w8_forward(out, inp, (const int8_t*)data, scale, bias, N, IC, OC);
      default: return K.matmul_q_forward(out, inp, (const uint8_t*)data, qtype(), bias, N, IC, OC);
    }
  }
  static thread_local std::vector<float> tmp;  // (an unfused group's product into its columns of a wider row)
  tmp.resize((size_t)(N * OC));
  product(tmp.data(), inp, N);
  for (int64_t n = 0; n < N; n++) std::memcpy(out + n * ldo, tmp.data() + n * OC, sizeof(float) * OC);
}

namespace {
// products of N input rows into consecutive column slices of out (N, sum of OC) (a fused weight is one product;
// GGUF blocks with int8 activations one group: the rows quantised once, one pass of the threads)
void products(const std::vector<WeightRef>& ws, float* out, const float* inp, int64_t N = 1) {
  int64_t total = 0;
  bool int8 = true;
  for (const WeightRef& w : ws) total += w.OC, int8 = int8 && w.kind >= WeightRef::kInt8Activations;
  if (int8 && ws.size() > 1) {
    static thread_local std::vector<QProduct> group;  // (grown once)
    group.clear();
    int64_t at = 0;
    for (const WeightRef& w : ws) {
      group.push_back({out + at, total, (const uint8_t*)w.data, w.qtype(), w.bias, w.OC, w.packed});
      at += w.OC;
    }
    return active().matmul_q8_forward(group.data(), (int64_t)group.size(), inp, N, ws[0].IC);
  }
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
// The weights an RMSNorm scales by: weight itself, or (norm_offset + weight) written into scaled (n floats)
const float* scaled_weight(const DecodePlan& d, const float* weight, float* scaled, int64_t n) {
  if (d.norm_offset == 0.f) return weight;
  for (int64_t i = 0; i < n; i++) scaled[i] = d.norm_offset + weight[i];
  return scaled;
}

// out (N, C) = the norm of x (N, C); scaled (C) scratch
void norm(const DecodePlan& d, const NormRef& n, float* out, float* mean, float* rstd, const float* x, int64_t N,
          float* scaled) {
  if (d.layernorm) active().layernorm_forward(out, mean, rstd, x, n.weight, n.bias, N, d.C, d.eps);
  else active().rmsnorm_forward(out, rstd, x, scaled_weight(d, n.weight, scaled, d.C), N, d.C, d.eps);
}

// x (N, C) += the sub-layer's output y (N, C), normed first when the plan is a sandwich (h (N, C) scratch)
void add_output(const DecodePlan& d, const NormRef& post, float* x, float* y, float* h, float* mean, float* rstd,
                int64_t N, float* scaled) {
  if (d.sandwich) {
    norm(d, post, h, mean, rstd, y, N, scaled);
    y = h;
  }
  active().residual_forward(x, x, y, N * d.C);
}
}  // namespace

void DecodePlan::step(float* x, float* logits, int64_t B, const int64_t* slots, const int64_t* pos,
                      const CacheRefs& cache, const RotaryTables& rope, const int64_t* logit_rows, int64_t R) const {
  const Kernels& K = active();
  const int64_t capacity = cache.capacity;
  const int64_t QD = NH * HS, KD = NKV * HS, QKV = QD + 2 * KD, U = gated ? 2 * F : F;
  static thread_local std::vector<float> buf;
  buf.resize((size_t)(B * (C + QKV + QD + C + U + F + 2 + 2 * NH + KD) + C + 2 * HS));
  float* h = buf.data();
  float* qkv = h + B * C;
  float* att = qkv + B * QKV;
  float* tmp = att + B * QD;
  float* up = tmp + B * C;
  float* act = up + B * U;
  float* mean = act + B * F;
  float* rstd = mean + B;
  float* lse = rstd + B;
  float* head_rstd = lse + B * NH;  // (B, NH): the q/k norms' rstd
  float* scaled = head_rstd + B * NH;  // (C): a norm's (norm_offset + weight)
  float* q_scaled = scaled + C;        // (HS), (HS): the q and k norms'
  float* k_scaled = q_scaled + HS;
  float* rotated = k_scaled + HS;  // (B, KD): the rows' rotated keys, before a cache of halves takes them
  const int nt = kernel_threads();
  for (size_t l = 0; l < layers.size(); l++) {
    const DecodeLayer& L = layers[l];
    const float* cos = rope.cos[L.rotary_table];
    const float* sin = rope.sin[L.rotary_table];
    const float* qw = qk_norm ? scaled_weight(*this, L.q_norm.weight, q_scaled, HS) : nullptr;
    const float* kw = qk_norm ? scaled_weight(*this, L.k_norm.weight, k_scaled, HS) : nullptr;
    norm(*this, L.attn_norm, h, mean, rstd, x, B, scaled);
    products(L.qkv, qkv, h, B);
    // each row over its own cache, the rows split across the threads: first every row's rotary positions and
    // cache writes, then every row's attention (a prompt's rows in one slot see all of their earlier rows). One row
    // runs outside any parallel region, so that the kernels it calls take the threads themselves: inside a region
    // that `if` had left to one thread, a kernel's own region is nested, and libgomp starts new threads for a
    // nested team on every call (decoding one sequence at 2 threads was 3x slower from the ~455th position on, where
    // attention goes parallel).
    const bool split = nt > 1 && B > 1;
    auto rotate_and_cache = [&](int64_t b) {
      float* q = qkv + b * QKV;
      float* kn = q + QD;
      const float* vn = kn + KD;
      const int64_t at = (slots[b] * capacity + pos[b]) * KD;  // (where the row's key and value go)
      float* krow = cache.half ? rotated + b * KD : static_cast<float*>(cache.k[l]) + at;
      if (qk_norm) {  // (in place: each head's rows are read whole before they are written)
        K.rmsnorm_forward(q, head_rstd + b * NH, q, qw, NH, HS, eps);
        K.rmsnorm_forward(kn, head_rstd + b * NH, kn, kw, NKV, HS, eps);
      }
      if (rotary) {
        K.rope_forward(q, q, cos, sin, &pos[b], 1, NH, HS, rope.P, interleaved);
        K.rope_forward(krow, kn, cos, sin, &pos[b], 1, NKV, HS, rope.P, interleaved);  // straight into the cache
      } else {
        std::memcpy(krow, kn, sizeof(float) * KD);
      }
      if (cache.half) {
        K.float16_from_float(static_cast<uint16_t*>(cache.k[l]) + at, krow, KD);
        K.float16_from_float(static_cast<uint16_t*>(cache.v[l]) + at, vn, KD);
      } else {
        std::memcpy(static_cast<float*>(cache.v[l]) + at, vn, sizeof(float) * KD);
      }
    };
    auto attend = [&](int64_t b) {  // (a sliding window: the keys from the window's first on, a shorter cache)
      const int64_t first = L.window > 0 && pos[b] >= L.window ? pos[b] - L.window + 1 : 0;
      const int64_t row = (slots[b] * capacity + first) * KD;
      if (cache.half)
        K.attention_forward_f16(att + b * QD, lse + b * NH, qkv + b * QKV, static_cast<const uint16_t*>(cache.k[l]) + row,
                                static_cast<const uint16_t*>(cache.v[l]) + row, nullptr, 1, NH, NKV, 1,
                                pos[b] + 1 - first, capacity, HS, true, 0, attn_scale, true);
      else
        K.attention_forward(att + b * QD, lse + b * NH, qkv + b * QKV, static_cast<const float*>(cache.k[l]) + row,
                            static_cast<const float*>(cache.v[l]) + row, nullptr, 1, NH, NKV, 1, pos[b] + 1 - first,
                            capacity, HS, true, 0, attn_scale, true);
    };
    if (split) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t b = 0; b < B; b++) rotate_and_cache(b);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t b = 0; b < B; b++) attend(b);
    } else {
      for (int64_t b = 0; b < B; b++) rotate_and_cache(b);
      for (int64_t b = 0; b < B; b++) attend(b);
    }
    L.o.product(tmp, att, B);
    add_output(*this, L.post_attn_norm, x, tmp, h, mean, rstd, B, scaled);
    norm(*this, L.ffn_norm, h, mean, rstd, x, B, scaled);
    products(L.up, up, h, B);
    if (gated) {  // gate | up (each row alone far below a kernel's threshold for threads: the rows split instead)
      auto activate = [&](int64_t b) {
        if (activation == kSiLU) K.swiglu_forward(act + b * F, up + b * U, up + b * U + F, F);
        else K.geglu_forward(act + b * F, up + b * U, up + b * U + F, F);
      };
      if (split) {  // (else no OpenMP region at all: a region of one thread still costs a system call)
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t b = 0; b < B; b++) activate(b);
      } else {
        for (int64_t b = 0; b < B; b++) activate(b);
      }
    } else if (activation == kReLU) {
      K.relu_forward(act, up, B * F);
    } else {
      K.gelu_forward(act, up, B * F, activation == kGeluTanh);
    }
    L.down.product(tmp, act, B);
    add_output(*this, L.post_ffn_norm, x, tmp, h, mean, rstd, B, scaled);
  }
  const float* last = x;
  if (logit_rows) {  // only the rows whose next token is wanted (a prompt's last): the head is the largest product
    for (int64_t r = 0; r < R; r++) std::memcpy(tmp + r * C, x + logit_rows[r] * C, sizeof(float) * C);
    last = tmp;
  } else {
    R = B;
  }
  norm(*this, final_norm, h, mean, rstd, last, R, scaled);
  head.product(logits, h, R);
}

}  // namespace pt
