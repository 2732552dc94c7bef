// The kernel tables and the choice among them. The variant: the best ISA that this build compiled, the CPU has
// and the OS saves registers for (cpuid + xgetbv); PYTRANSFORMER_ISA=baseline|avx2|avx512 forces one. Its
// int8-activation product: vpdpbusd where the CPU has AVX512-VNNI (AVX-512 variant) or AVX-VNNI (AVX2 variant), and
// from 16 rows AMX-INT8 tiles where the CPU has them too (AVX-512 variant). The precision: "bfloat16" swaps the
// variant's table for its copy with the products on AMX tiles. Its Hamming candidates: vpopcntq where the CPU has
// AVX512-VPOPCNTDQ (AVX-512 variant).
#include "pytransformer/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PT_X86 1
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
  bool avx512_vnni = false, avx_vnni = false;  // vpdpbusd on zmm/ymm/xmm (AVX-512), on ymm/xmm (VEX)
  bool avx512_vpopcntdq = false;               // vpopcntq on zmm
  bool amx_int8 = false;                        // tdpbsud (the OS permission: have_amx())
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
  f.avx512_vnni = f.avx512 && (c & (1u << 11));
  f.avx512_vpopcntdq = f.avx512 && (c & (1u << 14));
  f.amx_int8 = f.avx512_vnni && (d & (1u << 25)) && (d & (1u << 24));  // AMX-INT8, AMX-TILE
  __cpuid_count(7, 1, a, b, c, d);
  f.avx_vnni = f.avx2 && (a & (1u << 4));
  return f;
}
#endif

// A kernel choice a test forces through the environment variable var: its value if one of names, "" where unset or
// empty; any other value is an error at import (as a bad PYTRANSFORMER_ISA), never ignored
std::string forced_choice(const char* var, std::initializer_list<const char*> names) {
  const char* value = std::getenv(var);
  if (!value || !*value) return "";
  std::string expected;
  for (const char* name : names) {
    if (std::string(value) == name) return value;
    expected += (expected.empty() ? "" : ", ") + std::string(name);
  }
  throw std::runtime_error(std::string(var) + "=" + value + " is unknown; expected one of " + expected);
}

// PYTRANSFORMER_INT8_DOT=vpmaddubsw keeps the AVX2 form of the int8 dot product on a CPU with vpdpbusd (to test it);
// =vpdpbusd keeps the products of 8-13+ rows on the VNNI panels on a CPU with AMX-INT8, whose default is its tiles:
// session 21's pipeline runs the products of 16-64 rows 1.06-1.26x faster than the panels (a model's 16-row step
// 1.04-1.12x, prefill 0.97-1.06x: bench/NOTES.md); session 14's tiles had lost to them.
// (=tiles names that default.)
bool int8_dot_forced(const char* name) {
  return forced_choice("PYTRANSFORMER_INT8_DOT", {"vpmaddubsw", "vpdpbusd", "tiles"}) == name;
}

// PYTRANSFORMER_POPCOUNT=vpshufb keeps the nibble-table popcount on a CPU with vpopcntq (to test it)
bool no_vpopcnt() { return forced_choice("PYTRANSFORMER_POPCOUNT", {"vpshufb"}) == "vpshufb"; }

struct Variant {
  const char* name;
  Kernels f32;         // the variant's own table (its int8 product on vpdpbusd where the CPU has it)
  Kernels bf16;        // the same with the products on AMX tiles (equal to f32 where AMX is not built)
  bool supported;
  const char* int8_dot;  // the integer dot product its int8-activation products use
  const char* popcount;  // the bit count its Hamming candidates use
  bool amx_int8;         // ... and from 16 rows AMX-INT8 tiles
};

#ifdef PT_HAVE_AMX
// The bf16 products leave dbias to the float32 kernels (a column sum either way). AMX implies AVX-512, so the
// AVX-512 table's dbias is always usable where this runs.
void amx_matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                         const float* weight, int64_t N, int64_t IC, int64_t OC) {
  amx::matmul_backward(dinp, dweight, dout, inp, weight, N, IC, OC);
  if (dbias) avx512::kernels()->matmul_backward(nullptr, nullptr, dbias, dout, inp, weight, N, IC, OC);
}
#endif

Kernels on_tiles(const Kernels& base) {
  Kernels k = base;
#ifdef PT_HAVE_AMX
  k.matmul_forward = &amx::matmul_forward;
  k.matmul_backward = &amx_matmul_backward;
  k.matmul_w16_forward = &amx::matmul_w16_forward;
  k.matmul_q_dinp = &amx::matmul_q_dinp;
  k.attention_forward = &amx_attention::attention_forward;
  k.attention_forward_f16 = &amx_attention::attention_forward_f16;
  k.attention_backward = &amx_attention::attention_backward;
#endif
  return k;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> all = [] {
    std::vector<Variant> v;
#ifdef PT_X86
    [[maybe_unused]] CpuFeatures f = detect();
#endif
    auto add = [&v](const char* name, const Kernels* table, bool supported, bool vnni, decltype(
                        table->matmul_q8_forward) q8_vnni, bool tiles = false, bool vpopcnt = false,
                    decltype(table->hamming_candidates_forward) hamming_vpopcnt = nullptr) {
      Kernels own = *table;
      vnni = vnni && !int8_dot_forced("vpmaddubsw");
      tiles = tiles && vnni && !int8_dot_forced("vpdpbusd");
      if (vnni) own.matmul_q8_forward = q8_vnni, own.int8_dot_probe = own.int8_dot_vnni_probe;
      vpopcnt = vpopcnt && !no_vpopcnt();
      if (vpopcnt) own.hamming_candidates_forward = hamming_vpopcnt;
#ifdef PT_HAVE_AMX
      if (tiles) own.matmul_q8_forward = &amx_int8::matmul_q8_forward;  // (fewer rows: q8_vnni)
#endif
      // (AVX-512's vpdpbusd runs the 16-output panels of 4+ rows, int8_panel.h; AVX-VNNI's only the row products)
      const bool zmm = name == std::string("avx512");
      v.push_back({name, own, on_tiles(own), supported,
                   vnni ? (zmm ? "vpdpbusd" : "vpdpbusd-ymm") : name == std::string("baseline") ? "scalar" : "vpmaddubsw",
                   vpopcnt ? "vpopcntq" : name == std::string("baseline") ? "scalar" : "vpshufb", tiles});
    };
#ifdef PT_HAVE_BASELINE
    add("baseline", baseline::kernels(), true, false, nullptr);
#endif
#ifdef PT_HAVE_AVX2
    add("avx2", avx2::kernels(), f.avx2, f.avx_vnni, &avx2::matmul_q8_vnni_forward);
#endif
#ifdef PT_HAVE_AVX512
    add("avx512", avx512::kernels(), f.avx512, f.avx512_vnni, &avx512::matmul_q8_vnni_forward,
        f.amx_int8 && have_amx(), f.avx512_vpopcntdq, &avx512::hamming_candidates_vpopcnt_forward);
#endif
    return v;
  }();
  return all;
}

const Variant* choose_default() {
  const char* forced = std::getenv("PYTRANSFORMER_ISA");
  const auto& all = variants();
  if (forced && *forced) {
    for (auto& v : all)
      if (v.name == std::string(forced)) {
        if (!v.supported)
          throw std::runtime_error(std::string("PYTRANSFORMER_ISA=") + forced + " is not supported by this CPU/OS");
        return &v;
      }
    throw std::runtime_error(std::string("PYTRANSFORMER_ISA=") + forced +
                             " is unknown; expected one of baseline, avx2, avx512 (as built here)");
  }
  const Variant* best = nullptr;
  for (auto& v : all)
    if (v.supported) best = &v;
  return best;
}

// The choice (variant, precision) and the table it gives, which is what every op call reads.
std::mutex g_choice_mutex;
const Variant* g_variant = nullptr;
bool g_bf16 = false;
std::atomic<const Kernels*> g_active{nullptr};

void choose(const Variant* variant, bool bf16) {  // with g_choice_mutex held
  g_variant = variant;
  g_bf16 = bf16;
  g_active.store(bf16 ? &variant->bf16 : &variant->f32, std::memory_order_release);
}

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
    std::lock_guard<std::mutex> lock(g_choice_mutex);
    if (!g_variant) choose(choose_default(), false);
    k = g_active.load(std::memory_order_acquire);
  }
  return *k;
}

std::string active_isa() {
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  return g_variant->name;
}

void set_isa(const std::string& name) {
  for (auto& v : variants())
    if (v.name == name) {
      if (!v.supported) throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU/OS");
      std::lock_guard<std::mutex> lock(g_choice_mutex);
      choose(&v, g_bf16);
      return;
    }
  std::string known;
  for (auto& v : variants()) known += std::string(known.empty() ? "" : ", ") + v.name;
  throw std::invalid_argument("unknown ISA '" + name + "'; this build has: " + known);
}

std::string int8_dot() {
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  return g_variant->int8_dot;
}

std::string popcount() {
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  return g_variant->popcount;
}

bool int8_tiles() {
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  return g_variant->amx_int8;
}

std::string matmul_precision() {
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  return g_bf16 ? "bfloat16" : "float32";
}

void set_matmul_precision(const std::string& name) {
  if (name != "float32" && name != "bfloat16")
    throw std::invalid_argument("matmul precision must be 'float32' or 'bfloat16', got '" + name + "'");
  if (name == "bfloat16" && !have_amx())
    throw std::runtime_error(
        "matmul precision 'bfloat16' needs Intel AMX-BF16 (Sapphire Rapids or newer) with OS support for tile "
        "state, and a build that compiled it; not available here");
  active();
  std::lock_guard<std::mutex> lock(g_choice_mutex);
  choose(g_variant, name == "bfloat16");
}

bool have_amx() {
#ifdef PT_HAVE_AMX
  return amx::supported();
#else
  return false;
#endif
}

double amx_probe([[maybe_unused]] int64_t iters) {
  if (!have_amx()) throw std::runtime_error("amx_probe: no usable AMX-BF16 here");
#ifdef PT_HAVE_AMX
  return amx::probe(iters);
#else
  return 0.0;
#endif
}

}  // namespace pt
