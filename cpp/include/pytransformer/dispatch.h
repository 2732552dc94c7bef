// Run-time choice of the kernel variant (cpuid + OS support), overridable with PYTRANSFORMER_ISA.
#pragma once
#include <string>
#include <vector>

#include "pytransformer/kernels.h"

namespace pt {
// ISAs compiled into this build and supported by this CPU and OS, best last.
std::vector<std::string> available_isas();
// The active variant; chosen on first use (PYTRANSFORMER_ISA, else the best available).
const Kernels& active();
// Switch variant; throws std::invalid_argument when it is unknown or unsupported here.
void set_isa(const std::string& name);
// Threads: OpenMP when built with it, else 1.
bool have_openmp();
int num_threads();
void set_num_threads(int n);
}  // namespace pt
