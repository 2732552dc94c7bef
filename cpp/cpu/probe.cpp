// Machine-limit probe for the benchmarks: the FMA throughput of this ISA variant on every thread.
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

// Runs `iters` rounds of independent FMA chains on each thread; returns the float operations done
// (2 per lane per FMA). The result vector is stored to `sink` so that nothing is optimised away.
// 16 chains need 16 accumulators plus two operands: that fits AVX-512's 32 registers, while with 16 ymm/xmm
// registers it spilled and under-reported the AVX2 peak (51 GFLOP/s, below OpenBLAS's measured 52), so the
// 16-register ISAs run 12 chains (more than the 2 ports x 4 cycles of latency that saturate the FMA units).
namespace {
#if defined(PT_ISA_AVX512)
constexpr int kChains = 16;
#else
constexpr int kChains = 12;
#endif
}  // namespace
double fma_probe(float* sink, int64_t iters) {
  double flops = 0.0;
#pragma omp parallel num_threads(threads()) reduction(+ : flops)
  {
    V acc[kChains];
    for (int u = 0; u < kChains; u++) acc[u] = set1(0.001f * (float)u);
    const V a = set1(0.999999f), b = set1(1e-7f);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 16
      for (int u = 0; u < kChains; u++) acc[u] = fma(acc[u], a, b);
    }
    V s = zero();
    for (int u = 0; u < kChains; u++) s = add(s, acc[u]);
#pragma omp critical
    sink[0] += reduce_add(s);
    flops += 2.0 * W * kChains * (double)iters;
  }
  return flops;
}

}  // namespace PT_NS
}  // namespace pt
