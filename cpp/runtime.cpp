// The thread count every kernel sizes its OpenMP team with.
#include "pytransformer/runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // sysconf
#endif
#ifdef __linux__
#include <dirent.h>
#include <sys/syscall.h>
#endif
#ifdef __GLIBC__
#include <malloc.h>  // mallopt
#endif

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

namespace {
[[maybe_unused]] long this_thread_id() {
#ifdef __linux__
  return static_cast<long>(syscall(SYS_gettid));
#else
  return 0;
#endif
}
}  // namespace

#ifdef __linux__
namespace {
int read_state(const std::string& path) {  // the state letter of /proc/.../stat (after the command's ')'), or 0
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line)) return 0;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() ? line[close + 2] : 0;
}
}  // namespace

BusyThreads busy_threads(const std::vector<long>& team) {
  BusyThreads busy;
  int own = 0;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] == '.' || read_state(std::string("/proc/self/task/") + e->d_name + "/stat") != 'R') continue;
      own++;
      const long tid = std::atol(e->d_name);
      if (tid != this_thread_id() && std::find(team.begin(), team.end(), tid) == team.end()) busy.own_other++;
    }
    closedir(dir);
  }
  std::ifstream stat("/proc/stat");
  std::string key;
  long running = -1;
  while (stat >> key)
    if (key == "procs_running" && (stat >> running)) break;
  if (running < 0 || own == 0) return {-1, -1};  // (no /proc to read here)
  busy.foreign = std::max<long>(0, running - own);
  return busy;
}
#else
BusyThreads busy_threads(const std::vector<long>&) { return {-1, -1}; }
#endif

#ifdef PT_HAVE_OPENMP
namespace {
// Load-adaptive team size. On a machine where other processes keep cores busy, a team member that the OS has
// descheduled holds every parallel region at its barrier for a time slice: two threads then run slower than one
// (a GPT training step 1.5x, decoding 1.8x slower on 2 cores with one busy, bench/contention.py). So every
// kProbeEvery one caller times up to kProbes empty regions of the full team and counts those longer than kLate (a
// member was not running). A majority late (two, to keep a limit) is explained by /proc (busy_threads): when other
// processes' running threads leave fewer cores than the team, kernels are capped at one thread (rechecked every
// kRecheck); when they do not, the busy threads are this process's own -- another library's pool spinning after
// its work (OpenBLAS's spins about 0.1 s after each call, libgomp's milliseconds), or another Python thread's
// kernels -- and the team shrinks to the cores they leave, rechecked every kProbeEvery, so it grows back as soon
// as they rest instead of a second later. A limit lifts when at most one region of a probe is late. The vote and
// the gap between the two thresholds keep a VM's occasional stolen millisecond from capping a quiet machine, and a
// busy one from flapping. On a quiet machine a probe costs a few microseconds per kProbeEvery.
// PYTRANSFORMER_ADAPTIVE_THREADS=0 turns it off.
constexpr int64_t kProbeEvery = 50'000'000;   // ns
constexpr int64_t kRecheck = 1'000'000'000;   // ns
constexpr int64_t kLate = 200'000;            // ns: far above a quiet fork/join (1-50 us, futex wake included)
constexpr int kProbes = 5;

std::atomic<int64_t> g_next_probe{0};
std::atomic<bool> g_probing{false};
std::atomic<bool> g_capped{false};  // by other processes' load: one thread
std::atomic<int> g_team{0};         // 0: no limit; else the cores this process's own busy threads leave
const bool g_adaptive = [] {
  const char* v = std::getenv("PYTRANSFORMER_ADAPTIVE_THREADS");
  return !(v && std::string(v) == "0");
}();

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Whether at least `needed` of kProbes regions of the full team of n came late (stopping as soon as that is decided:
// on a busy machine each late region costs a time slice); the team's thread ids in `team`.
bool late_regions(int n, int needed, std::vector<long>& team) {
  team.assign(n, 0);
  int late = 0;
  for (int i = 0; i < kProbes && late < needed && i - late <= kProbes - needed; i++) {
    const int64_t t0 = now_ns();
#pragma omp parallel num_threads(n)
    team[omp_get_thread_num()] = this_thread_id();
    late += now_ns() - t0 > kLate;
  }
  return late >= needed;
}

int adapt(int n) {
  const int64_t now = now_ns();
  if (now >= g_next_probe.load(std::memory_order_relaxed) && !omp_in_parallel()) {
    bool idle = false;
    if (g_probing.compare_exchange_strong(idle, true)) {  // one caller probes; the others keep the last verdict
      std::vector<long> team;
      const bool limited = g_capped.load(std::memory_order_relaxed) || g_team.load(std::memory_order_relaxed);
      bool capped = false;
      int limit = 0;
      if (late_regions(n, limited ? 2 : kProbes / 2 + 1, team)) {
        const BusyThreads busy = busy_threads(team);
        const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
        capped = busy.foreign < 0 || busy.foreign + n > cores;
        if (!capped) limit = static_cast<int>(std::max(1L, cores - busy.foreign - busy.own_other));
      }
      g_capped.store(capped, std::memory_order_relaxed);
      g_team.store(limit < n ? limit : 0, std::memory_order_relaxed);
      g_next_probe.store(now_ns() + (capped ? kRecheck : kProbeEvery), std::memory_order_relaxed);
      g_probing.store(false);
    }
  }
  if (g_capped.load(std::memory_order_relaxed)) return 1;
  const int limit = g_team.load(std::memory_order_relaxed);
  return limit ? std::min(n, limit) : n;
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
// glibc's malloc serves a block over its mmap threshold (128 KiB, raised towards 32 MiB only as such blocks are
// freed) with a fresh mapping and unmaps it on free, and trims the heap's free top: every forward pass's new NumPy
// arrays (a 512-token prefill's activations, 1-6 MiB each) faulted their pages in again, zeroed by the kernel --
// 19% of a SmolLM2 prefill's CPU time in page faults at 2 threads (bench/NOTES.md, session 16). A fixed threshold of
// 32 MiB and a trim threshold of 64 MiB (where glibc's own adjustment ends once it has freed a 32 MiB block) keep
// such blocks in the heap for the next pass, as an inference engine's arena would: a free top of the heap over 64 MiB
// still goes back to the OS, blocks over 32 MiB are still mapped and unmapped. PYTRANSFORMER_MALLOC_TUNING=0 leaves
// malloc as it is (1 or unset: tuned; anything else is an error at import, not a setting silently ignored).
bool tune_malloc() {
  const char* v = std::getenv("PYTRANSFORMER_MALLOC_TUNING");
  if (v && std::string(v) != "0" && std::string(v) != "1")
    throw std::invalid_argument("PYTRANSFORMER_MALLOC_TUNING must be 0 or 1, got '" + std::string(v) + "'");
#ifdef __GLIBC__
  if (v && std::string(v) == "0") return false;
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1;
#else
  return false;
#endif
}

}  // namespace pt
