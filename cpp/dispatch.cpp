// Picks the kernel variant once: the best ISA that this build compiled, the CPU has and the OS saves
// registers for (cpuid + xgetbv). PYTRANSFORMER_ISA=baseline|avx2|avx512 forces one.
#include "pytransformer/dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PT_X86 1
#endif
#ifdef PT_HAVE_OPENMP
#include <omp.h>
#endif

namespace pt {
namespace {

#ifdef PT_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

struct CpuFeatures {
  bool avx2 = false, avx512 = false;
};

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return f;
  uint64_t xcr0 = read_xcr0();
  bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE and AVX state
  bool os_zmm = (xcr0 & 0xe6) == 0xe6;          // plus opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  bool avx2 = b & (1u << 5);
  bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
       avx512vl = b & (1u << 31);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}
#endif

struct Variant {
  const char* name;
  const Kernels* (*get)();
  bool supported;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
#ifdef PT_X86
  CpuFeatures f = detect();
#endif
#ifdef PT_HAVE_BASELINE
  v.push_back({"baseline", &baseline::kernels, true});
#endif
#ifdef PT_HAVE_AVX2
  v.push_back({"avx2", &avx2::kernels, f.avx2});
#endif
#ifdef PT_HAVE_AVX512
  v.push_back({"avx512", &avx512::kernels, f.avx512});
#endif
  return v;
}

const Kernels* choose_default() {
  const char* forced = std::getenv("PYTRANSFORMER_ISA");
  auto all = variants();
  if (forced && *forced) {
    for (auto& v : all)
      if (v.name == std::string(forced)) {
        if (!v.supported)
          throw std::runtime_error(std::string("PYTRANSFORMER_ISA=") + forced + " is not supported by this CPU/OS");
        return v.get();
      }
    throw std::runtime_error(std::string("PYTRANSFORMER_ISA=") + forced +
                             " is unknown; expected one of baseline, avx2, avx512 (as built here)");
  }
  const Kernels* best = nullptr;
  for (auto& v : all)
    if (v.supported) best = v.get();
  return best;
}

std::atomic<const Kernels*> g_active{nullptr};
std::atomic<int> g_threads{0};
std::atomic<bool> g_bf16{false};

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (auto& v : variants())
    if (v.supported) out.push_back(v.name);
  return out;
}

const Kernels& active() {
  const Kernels* k = g_active.load(std::memory_order_acquire);
  if (!k) {
    k = choose_default();
    g_active.store(k, std::memory_order_release);
  }
  return *k;
}

void set_isa(const std::string& name) {
  for (auto& v : variants())
    if (v.name == name) {
      if (!v.supported) throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU/OS");
      g_active.store(v.get(), std::memory_order_release);
      return;
    }
  std::string known;
  for (auto& v : variants()) known += std::string(known.empty() ? "" : ", ") + v.name;
  throw std::invalid_argument("unknown ISA '" + name + "'; this build has: " + known);
}

bool have_openmp() {
#ifdef PT_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

// The user's set_num_threads() caps every thread's team; threadpoolctl (omp_set_num_threads on the
// calling thread) and OMP_NUM_THREADS are honoured through omp_get_max_threads().
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

std::string matmul_precision() { return g_bf16.load(std::memory_order_relaxed) ? "bfloat16" : "float32"; }

void set_matmul_precision(const std::string& name) {
  if (name == "float32") {
    g_bf16.store(false, std::memory_order_relaxed);
  } else if (name == "bfloat16") {
    if (!amx::supported())
      throw std::runtime_error(
          "matmul precision 'bfloat16' needs Intel AMX-BF16 (Sapphire Rapids or newer) with OS support for tile "
          "state, and a build that compiled it; not available here");
    g_bf16.store(true, std::memory_order_relaxed);
  } else {
    throw std::invalid_argument("matmul precision must be 'float32' or 'bfloat16', got '" + name + "'");
  }
}

#ifndef PT_HAVE_AMX
namespace amx {  // this build has no AMX kernels: precision stays float32
bool supported() { return false; }
double probe(int64_t) { throw std::logic_error("AMX kernels are not built"); }
void matmul_forward(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t) {
  throw std::logic_error("AMX kernels are not built");
}
void matmul_backward(float*, float*, const float*, const float*, const float*, int64_t, int64_t, int64_t) {
  throw std::logic_error("AMX kernels are not built");
}
}  // namespace amx
namespace amx_attention {
void attention_forward(float*, float*, const float*, const float*, const float*, const uint8_t*, int64_t, int64_t,
                       int64_t, int64_t, int64_t, bool, float, bool) {
  throw std::logic_error("AMX kernels are not built");
}
void attention_backward(float*, float*, float*, const float*, const float*, const float*, const float*,
                        const float*, const float*, const uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        bool, float, bool) {
  throw std::logic_error("AMX kernels are not built");
}
}  // namespace amx_attention
#endif

}  // namespace pt
