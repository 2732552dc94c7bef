// Threads: OpenMP when built with it, else one. Kernels size their teams with num_threads().
#pragma once

namespace pt {
bool have_openmp();
// The user's set_num_threads() caps every thread's team; threadpoolctl (omp_set_num_threads on the calling
// thread) and OMP_NUM_THREADS are honoured through omp_get_max_threads().
int num_threads();
void set_num_threads(int n);
// The team a kernel starts: num_threads(), or 1 in a fork() child or while the machine is too busy for a team.
int kernel_threads();  // throws std::invalid_argument for n < 1
// True in a child process made by fork() after this module loaded: kernels then run on one thread.
bool in_forked_child();
// True while the last load probe found the machine too busy for a team: kernels then run on one thread
// (runtime.cpp explains; PYTRANSFORMER_ADAPTIVE_THREADS=0 turns the probe off).
bool threads_capped_by_load();
}  // namespace pt
