// Dequantising one row of a GGUF (ggml) tensor into float32: shared by quant.cpp (dequantize_rows) and the
// quantised products in matmul.cpp. Per ISA variant, like every kernel source.
#pragma once
#include <cstdint>

namespace pt {
namespace PT_NS {
// y (C floats) = the C values of one row x of type qtype (C a whole number of the type's blocks).
void dequantize_row(float* y, const uint8_t* x, int qtype, int64_t C);
}  // namespace PT_NS
}  // namespace pt
