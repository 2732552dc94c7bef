// The thread count every kernel sizes its OpenMP team with.
#include "pytransformer/runtime.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#ifdef PT_HAVE_OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace pt {
namespace {
std::atomic<int> g_threads{0};  // 0: no cap from set_num_threads

// A child made by fork() inherits the OpenMP pool's bookkeeping but not its threads: a parallel region with more
// than one thread would wait for them forever (libgomp). So a forked child runs every kernel on one thread, as
// torch does; the parent is untouched. (multiprocessing's "spawn" or "forkserver" children start fresh.)
std::atomic<bool> g_forked{false};
#if defined(__unix__) || defined(__APPLE__)
void on_fork_child() { g_forked.store(true, std::memory_order_relaxed); }
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &on_fork_child);
#endif
}  // namespace

bool in_forked_child() { return g_forked.load(std::memory_order_relaxed); }

bool have_openmp() {
#ifdef PT_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

int num_threads() {
#ifdef PT_HAVE_OPENMP
  if (in_forked_child()) return 1;
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
  if (!in_forked_child()) omp_set_num_threads(n);
#endif
}
}  // namespace pt
