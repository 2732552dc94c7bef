// Machine-limit probe for the benchmarks: the FMA throughput of this ISA variant on every thread.
#include "simd.h"

namespace pt {
namespace PT_NS {
using namespace simd;

// Runs `iters` rounds of 16 independent FMA chains on each thread; returns the float operations done
// (2 per lane per FMA). The result vector is stored to `sink` so that nothing is optimised away.
double fma_probe(float* sink, int64_t iters) {
  double flops = 0.0;
#pragma omp parallel num_threads(threads()) reduction(+ : flops)
  {
    V acc[16];
    for (int u = 0; u < 16; u++) acc[u] = set1(0.001f * (float)u);
    const V a = set1(0.999999f), b = set1(1e-7f);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 16
      for (int u = 0; u < 16; u++) acc[u] = fma(acc[u], a, b);
    }
    V s = zero();
    for (int u = 0; u < 16; u++) s = add(s, acc[u]);
#pragma omp critical
    sink[0] += reduce_add(s);
    flops += 2.0 * W * 16.0 * (double)iters;
  }
  return flops;
}

}  // namespace PT_NS
}  // namespace pt
