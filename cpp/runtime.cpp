// The thread count every kernel sizes its OpenMP team with.
#include "pytransformer/runtime.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#ifdef PT_HAVE_OPENMP
#include <omp.h>
#endif

namespace pt {
namespace {
std::atomic<int> g_threads{0};  // 0: no cap from set_num_threads
}

bool have_openmp() {
#ifdef PT_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

int num_threads() {
#ifdef PT_HAVE_OPENMP
  int n = omp_get_max_threads();
  int cap = g_threads.load(std::memory_order_relaxed);
  return cap > 0 ? std::min(n, cap) : n;
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
#ifdef PT_HAVE_OPENMP
  g_threads.store(n, std::memory_order_relaxed);
  omp_set_num_threads(n);
#endif
}
}  // namespace pt
