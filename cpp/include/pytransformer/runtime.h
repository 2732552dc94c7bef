// Threads: OpenMP when built with it, else one. Kernels size their teams with num_threads().
#pragma once

#include <vector>

namespace pt {
bool have_openmp();
// The user's set_num_threads() caps every thread's team; threadpoolctl (omp_set_num_threads on the calling
// thread) and OMP_NUM_THREADS are honoured through omp_get_max_threads().
int num_threads();
void set_num_threads(int n);  // throws std::invalid_argument for n < 1
// The team a kernel starts: num_threads(), or 1 in a fork() child or while other processes keep the machine too
// busy for a team, or the cores left while this process's own other threads keep some busy (runtime.cpp).
int kernel_threads();
// True in a child process made by fork() after this module loaded: kernels then run on one thread.
bool in_forked_child();
// True while the last load probe found the machine too busy for a team: kernels then run on one thread
// (runtime.cpp explains; PYTRANSFORMER_ADAPTIVE_THREADS=0 turns the probe off).
bool threads_capped_by_load();
// Running (or runnable) threads now: this process's, other than the caller and `team` (thread ids), and other
// processes', from /proc (Linux); both -1 where it cannot be read. What tells another library's pool spinning in
// this process from another process holding the cores (runtime.cpp).
struct BusyThreads {
  long own_other = 0;
  long foreign = 0;
};
BusyThreads busy_threads(const std::vector<long>& team);
// glibc's malloc: blocks up to 32 MiB kept in the heap when freed instead of handed back to the OS (runtime.cpp);
// true where it took (glibc, PYTRANSFORMER_MALLOC_TUNING not 0). Called once, at import.
bool tune_malloc();
}  // namespace pt
