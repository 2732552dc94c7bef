// This variant's table of kernels; compiled once per ISA like every other kernel source.
#include "pytransformer/kernels.h"

#define PT_STR2(x) #x
#define PT_STR(x) PT_STR2(x)

namespace pt {
namespace PT_NS {
const Kernels* kernels() {
#define PT_KERNEL_ENTRY(name) &name,
  static const Kernels table = {PT_STR(PT_NS), PT_KERNEL_LIST(PT_KERNEL_ENTRY)};
#undef PT_KERNEL_ENTRY
  return &table;
}
}  // namespace PT_NS
}  // namespace pt
