// Rotary position embedding (RoPE, Llama), forward and backward.
//
// inp, out (N, NH, HS): N rows (B * T positions) of NH heads; row n sits at position positions[n], an index
// into the cos / sin tables (P, HS / 2) that the caller builds once (angle p * base^(-2i / HS)). Each head's
// pairs (i, i + HS / 2) are rotated by the angle of frequency i, the Hugging Face "rotate_half" layout:
//   out[i] = x[i] cos - x[i + h] sin,   out[i + h] = x[i + h] cos + x[i] sin   (h = HS / 2)
// interleaved: the pairs are (2i, 2i + 1) instead (llama.cpp's layout, in which GGUF files store llama's q and k
// projections: the same attention scores, since q and k are permuted alike).
// A rotation's adjoint is the rotation by minus the angle, so backward is the same loop with sin negated.
#include <algorithm>

#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
void rotate(float* out, const float* inp, const float* cos, const float* sin, const int64_t* positions, int64_t N,
            int64_t NH, int64_t HS, float sign, bool interleaved) {
  const int64_t half = HS / 2;
  if (interleaved) {  // (a few hundred values per token: plain loops)
    parallel_for(N, N * NH * HS >= kParallelElements ? threads() : 1, [&](int64_t n) {
      const float* c = cos + positions[n] * half;
      const float* s = sin + positions[n] * half;
      for (int64_t h = 0; h < NH; h++) {
        const float* x = inp + (n * NH + h) * HS;
        float* y = out + (n * NH + h) * HS;
        for (int64_t i = 0; i < half; i++) {
          const float x1 = x[2 * i], x2 = x[2 * i + 1], si = sign * s[i];
          y[2 * i] = x1 * c[i] - x2 * si;
          y[2 * i + 1] = x2 * c[i] + x1 * si;
        }
      }
    });
    return;
  }
  parallel_for(N, N * NH * HS >= kParallelElements ? threads() : 1, [&](int64_t n) {
    const float* c = cos + positions[n] * half;
    const float* s = sin + positions[n] * half;
    for (int64_t h = 0; h < NH; h++) {
      const float* x = inp + (n * NH + h) * HS;
      float* y = out + (n * NH + h) * HS;
      for (int64_t i = 0; i < half; i += W) {
        const int64_t r = std::min<int64_t>(W, half - i);
        const V x1 = loadn(x + i, r), x2 = loadn(x + half + i, r);
        const V cv = loadn(c + i, r), sv = mul(loadn(s + i, r), set1(sign));
        storen(y + i, fnma(x2, sv, mul(x1, cv)), r);
        storen(y + half + i, fma(x1, sv, mul(x2, cv)), r);
      }
    }
  });
}
}  // namespace

void rope_forward(float* out, const float* inp, const float* cos, const float* sin, const int64_t* positions,
                  int64_t N, int64_t NH, int64_t HS, int64_t, bool interleaved) {
  rotate(out, inp, cos, sin, positions, N, NH, HS, 1.f, interleaved);
}

void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, const int64_t* positions,
                   int64_t N, int64_t NH, int64_t HS, int64_t, bool interleaved) {
  rotate(dinp, dout, cos, sin, positions, N, NH, HS, -1.f, interleaved);
}

}  // namespace PT_NS
}  // namespace pt
