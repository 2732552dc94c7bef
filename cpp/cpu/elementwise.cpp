// Residual add and dropout, forward and backward; float32 narrowed to halves. Arrays are flat, n elements.
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  parallel_chunks(n, kElementChunk, [&](int64_t lo, int64_t hi) { map_vec2(out, a, b, lo, hi, [](V x, V y) { return add(x, y); }); });
}

// (a KV cache's rows: a step's few, a prompt's few thousand: one thread)
void float16_from_float(uint16_t* out, const float* inp, int64_t n) { floats_to_f16(out, inp, n); }

// da = db = dout (input gradients are overwritten; either may be null)
void residual_backward(float* da, float* db, const float* dout, int64_t n) {
  parallel_chunks(n, kElementChunk, [&](int64_t lo, int64_t hi) {
    if (da && da != dout) std::memcpy(da + lo, dout + lo, (hi - lo) * sizeof(float));
    if (db && db != dout) std::memcpy(db + lo, dout + lo, (hi - lo) * sizeof(float));
  });
}

namespace {
// Counter-based: the keep decision of element i depends on (seed, i) only, so it is the same for any
// thread count and can be recomputed in backward. reference.dropout_mask() spells out the same hash.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline bool dropout_keep(uint64_t seed, int64_t i, uint32_t threshold) {
  uint32_t u24 = (uint32_t)(mix64(seed * 0xD1B54A32D192ED03ull + (uint64_t)i) >> 40);
  return u24 >= threshold;
}
// p in [0, 1): element kept when its 24-bit uniform >= p * 2^24
inline uint32_t dropout_threshold(float p) { return (uint32_t)((double)p * 16777216.0); }

void dropout_apply(float* out, const float* in, int64_t n, float p, uint64_t seed) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = 1.f / (1.f - p);
  parallel_chunks(n, kElementChunk, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) out[i] = dropout_keep(seed, i, threshold) ? in[i] * scale : 0.f;
  });
}
}  // namespace

void dropout_forward(float* out, const float* inp, int64_t n, float p, uint64_t seed) {
  dropout_apply(out, inp, n, p, seed);
}

void dropout_backward(float* dinp, const float* dout, int64_t n, float p, uint64_t seed) {
  dropout_apply(dinp, dout, n, p, seed);
}

}  // namespace PT_NS
}  // namespace pt
