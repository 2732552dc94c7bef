// The thread count every kernel sizes its OpenMP team with.
#include "pytransformer/runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
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

#ifdef PT_HAVE_OPENMP
namespace {
// Load-adaptive team size. On a machine where other processes keep cores busy, a team member that the OS has
// descheduled holds every parallel region at its barrier for a time slice: two threads then run slower than one
// (a GPT training step 1.5x, decoding 1.8x slower on 2 cores with one busy, bench/contention.py). So every
// kProbeEvery one caller times kProbes empty regions of the full team and counts those longer than kLate (a
// member was not running). A majority late caps kernels at one thread (rechecked every kRecheck); the cap lifts
// when at most one region of a probe is late. The vote and the gap between the two thresholds keep a VM's
// occasional stolen millisecond from capping a quiet machine, and a busy one from flapping. On a quiet machine a
// probe costs a few microseconds per kProbeEvery. PYTRANSFORMER_ADAPTIVE_THREADS=0 turns it off.
constexpr int64_t kProbeEvery = 50'000'000;   // ns
constexpr int64_t kRecheck = 1'000'000'000;   // ns
constexpr int64_t kLate = 200'000;            // ns: far above a quiet fork/join (1-50 us, futex wake included)
constexpr int kProbes = 5;

std::atomic<int64_t> g_next_probe{0};
std::atomic<bool> g_probing{false};
std::atomic<bool> g_capped{false};
const bool g_adaptive = [] {
  const char* v = std::getenv("PYTRANSFORMER_ADAPTIVE_THREADS");
  return !(v && std::string(v) == "0");
}();

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int late_regions(int n) {
#pragma omp parallel num_threads(n)
  { __asm__ __volatile__("" ::: "memory"); }  // untimed: the first region of a team creates its threads
  int late = 0;
  for (int i = 0; i < kProbes; i++) {
    const int64_t t0 = now_ns();
#pragma omp parallel num_threads(n)
    { __asm__ __volatile__("" ::: "memory"); }
    late += now_ns() - t0 > kLate;
  }
  return late;
}

int adapt(int n) {
  const int64_t now = now_ns();
  if (now >= g_next_probe.load(std::memory_order_relaxed) && !omp_in_parallel()) {
    bool idle = false;
    if (g_probing.compare_exchange_strong(idle, true)) {  // one caller probes; the others keep the last verdict
      const int late = late_regions(n);
      const bool capped = g_capped.load(std::memory_order_relaxed) ? late > 1 : late * 2 > kProbes;
      g_capped.store(capped, std::memory_order_relaxed);
      g_next_probe.store(now_ns() + (capped ? kRecheck : kProbeEvery), std::memory_order_relaxed);
      g_probing.store(false);
    }
  }
  return g_capped.load(std::memory_order_relaxed) ? 1 : n;
}
}  // namespace
#endif

bool threads_capped_by_load() {
#ifdef PT_HAVE_OPENMP
  return g_capped.load(std::memory_order_relaxed);
#else
  return false;
#endif
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
  if (in_forked_child()) return 1;
  int n = omp_get_max_threads();
  int cap = g_threads.load(std::memory_order_relaxed);
  return cap > 0 ? std::min(n, cap) : n;
#else
  return 1;
#endif
}

int kernel_threads() {
#ifdef PT_HAVE_OPENMP
  const int n = num_threads();
  return n > 1 && g_adaptive ? adapt(n) : n;
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
