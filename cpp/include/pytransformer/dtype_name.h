// The names error messages give array element types (NumPy's), for both extension modules' checks.
#pragma once
#include <cstdint>

namespace pt {

template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<float>() { return "float32"; }
template <>
inline const char* dtype_name<int64_t>() { return "int64"; }
template <>
inline const char* dtype_name<uint8_t>() { return "uint8"; }
template <>
inline const char* dtype_name<uint16_t>() { return "uint16 (bfloat16 bits)"; }
template <>
inline const char* dtype_name<int8_t>() { return "int8"; }
template <>
inline const char* dtype_name<uint64_t>() { return "uint64"; }
template <>
inline const char* dtype_name<int32_t>() { return "int32"; }

}  // namespace pt
