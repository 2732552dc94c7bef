// GELU (tanh approximation and exact erf), ReLU and the gated products SwiGLU and GeGLU, forward and backward. Arrays are flat, n elements.
#include <algorithm>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// tanh form: 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3); no cancellation near 0
inline V gelu_tanh(V x) {
  V u = mul(set1(kSqrt2OverPi), fma(mul(set1(kGeluCubic), x), mul(x, x), x));
  return mul(x, sigmoid(add(u, u)));
}
// value and d/dx: s + 2 x s (1 - s) u',  s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
inline void gelu_tanh_and_grad(V x, V* f, V* df) {
  V x2 = mul(x, x);
  V u = mul(set1(kSqrt2OverPi), fma(mul(set1(kGeluCubic), x), x2, x));
  V du = mul(set1(kSqrt2OverPi), fma(set1(3.f * kGeluCubic), x2, set1(1.f)));
  V s = sigmoid(add(u, u));
  V two_x_s1ms = mul(add(x, x), mul(s, sub(set1(1.f), s)));
  *f = mul(x, s);
  *df = fma(two_x_s1ms, du, s);
}
inline V gelu_tanh_grad(V x) {
  V f, df;
  gelu_tanh_and_grad(x, &f, &df);
  return df;
}
// silu(g) = g s and silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
inline void silu_and_grad(V g, V* f, V* df) {
  const V s = sigmoid(g);
  *f = mul(g, s);
  *df = mul(s, fma(g, sub(set1(1.f), s), set1(1.f)));
}

// A gated feed-forward's product: out = act(gate) * up.
template <class Act>
void gated_forward(float* out, const float* gate, const float* up, int64_t n, Act act) {
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i += W) {
      const int64_t r = std::min<int64_t>(W, e - i);
      storen(out + i, mul(act(loadn(gate + i, r)), loadn(up + i, r)), r);
    }
  });
}

// dgate = dout * up * act'(gate), dup = dout * act(gate); act_and_grad(g, &act, &act').
// dgate or dup may be dout itself (each element is read before it is written).
template <class ActAndGrad>
void gated_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n,
                    ActAndGrad act_and_grad) {
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i += W) {
      const int64_t r = std::min<int64_t>(W, e - i);
      const V g = loadn(gate + i, r), u = loadn(up + i, r), d = loadn(dout + i, r);
      V f, df;
      act_and_grad(g, &f, &df);
      storen(dgate + i, mul(mul(d, u), df), r);
      storen(dup + i, mul(d, f), r);
    }
  });
}
// exact: 0.5 x (1 + erf(x / sqrt 2)); d/dx = Phi(x) + x phi(x)
inline V gelu_erf(V x) { return mul(mul(set1(0.5f), x), add(set1(1.f), erf(mul(x, set1(kInvSqrt2))))); }
inline V gelu_erf_grad(V x) {
  V cdf = mul(set1(0.5f), add(set1(1.f), erf(mul(x, set1(kInvSqrt2)))));
  V pdf = mul(set1(kInvSqrt2Pi), exp(mul(set1(-0.5f), mul(x, x))));
  return fma(x, pdf, cdf);
}
}  // namespace

void gelu_forward(float* out, const float* inp, int64_t n, int approximate) {
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    if (approximate)
      map_vec(out, inp, b, e, gelu_tanh);
    else
      map_vec(out, inp, b, e, gelu_erf);
  });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, int approximate) {
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    if (approximate)
      map_vec2(dinp, inp, dout, b, e, [](V x, V g) { return mul(gelu_tanh_grad(x), g); });
    else
      map_vec2(dinp, inp, dout, b, e, [](V x, V g) { return mul(gelu_erf_grad(x), g); });
  });
}

void relu_forward(float* out, const float* inp, int64_t n) {
  // max(x, 0) with x second so that NaN stays NaN
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    map_vec(out, inp, b, e, [](V x) { return max(zero(), x); });
  });
}

void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  parallel_chunks(n, kElementChunk, [&](int64_t b, int64_t e) {
    map_vec2(dinp, inp, dout, b, e, [](V x, V g) { return select_gt(x, zero(), g, zero()); });
  });
}

// SwiGLU (Llama): out = silu(gate) * up, silu(g) = g * sigmoid(g).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  gated_forward(out, gate, up, n, [](V g) { return mul(g, sigmoid(g)); });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  gated_backward(dgate, dup, dout, gate, up, n, [](V g, V* f, V* df) { silu_and_grad(g, f, df); });
}

// GeGLU (Gemma): out = gelu_tanh(gate) * up.
void geglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  gated_forward(out, gate, up, n, [](V g) { return gelu_tanh(g); });
}

void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  gated_backward(dgate, dup, dout, gate, up, n, [](V g, V* f, V* df) { gelu_tanh_and_grad(g, f, df); });
}

}  // namespace PT_NS
}  // namespace pt
