// The threading both first passes of a search share (hamming.cpp, int8_candidates.cpp): the rows in chunks taken
// as threads come free (on a shared machine a thread whose core is busy takes fewer), each thread keeping its own
// state per query, merged by the caller after.
#pragma once
#include <algorithm>

#include "simd.h"

namespace pt {
namespace PT_NS {

// The team for a scan of N rows in chunks of `chunk` that does `work` steps in all.
inline int scan_team(int64_t N, int64_t chunk, int64_t work) {
  return N > chunk && work >= kParallelElements ? threads() : 1;
}

// scan(mine, lo, hi) over rows [0, N) in chunks on nt threads; mine: the running thread's Q states, states + its
// number * Q.
template <class State, class F>
void scan_chunks(State* states, int64_t Q, int nt, int64_t N, int64_t chunk, F scan) {
  const int64_t nchunks = (N + chunk - 1) / chunk;
  parallel_for<true>(nchunks, nt, [&](int64_t c) {
#ifdef _OPENMP
    State* mine = states + (int64_t)omp_get_thread_num() * Q;
#else
    State* mine = states;
#endif
    scan(mine, c * chunk, std::min(N, (c + 1) * chunk));
  });
}

}  // namespace PT_NS
}  // namespace pt
