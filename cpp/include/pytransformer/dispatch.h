// The kernel tables and the choice among them, made here and nowhere else: one table per ISA variant
// (cpuid + OS support, PYTRANSFORMER_ISA overrides) and, under the "bfloat16" matmul precision, a copy of the
// chosen table whose matmul and attention entries run on AMX tiles. Callers only ever call active().<op>.
#pragma once
#include <string>
#include <vector>

#include "pytransformer/kernels.h"
#include "pytransformer/runtime.h"

namespace pt {
// ISAs compiled into this build and supported by this CPU and OS, best last.
std::vector<std::string> available_isas();
// The table every op call goes through: the chosen ISA variant, with the precision's entries swapped in.
// Chosen on first use (PYTRANSFORMER_ISA, else the best available).
const Kernels& active();
// The chosen ISA variant's name (the same under either precision).
std::string active_isa();
// The integer dot product the chosen variant's int8-activation products run: vpdpbusd, vpmaddubsw or scalar.
std::string int8_dot();
bool int8_tiles();  // ... and whether its products of 8-13+ rows run on AMX-INT8 tiles
// The bit count the chosen variant's Hamming candidates run: vpopcntq, vpshufb or scalar.
std::string popcount();
// Switch variant; throws std::invalid_argument when it is unknown or unsupported here.
void set_isa(const std::string& name);

// Matmul precision: "float32" (default) or "bfloat16" (the Linear products and attention's products with inputs
// rounded to bf16 and float32 sums, on AMX). Setting "bfloat16" throws std::runtime_error where AMX-BF16 is not
// usable (CPU, OS or build).
std::string matmul_precision();
void set_matmul_precision(const std::string& name);
bool have_amx();               // AMX-BF16 usable here (CPU, OS permission, build)
double amx_probe(int64_t iters);  // tile-peak benchmark probe; throws std::runtime_error without AMX
}  // namespace pt
