// What every CUDA source shares: the runtime (or its CPU emulation), launches with their errors checked, and
// deterministic warp and block reductions (a fixed order, so a result never changes between runs).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels.h"

#ifdef PT_CUDA_EMULATE
#include "emulate.h"
#else
#include <cuda_runtime.h>
#define PT_SHARED(type, name, count) __shared__ type name[count]
#define PT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) unsigned char pt_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(pt_dynamic_smem_)
#endif

namespace pt {
namespace cuda {

#ifndef PT_CUDA_EMULATE
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::string msg = std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
  throw Error(msg);
}
#endif

constexpr int kWarp = 32;
__host__ __device__ inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// kernel<<<grid, block, smem>>>(args...), nothing for an empty grid, the launch error raised with the op's name.
template <class... P, class... A>
void launch(const char* op, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (grid.y > 65535 || grid.z > 65535) throw Error(std::string(op) + ": grid too large");
#ifdef PT_CUDA_EMULATE
  pt_emu::launch(kernel, grid, block, smem, args...);
#else
  kernel<<<grid, block, smem>>>(args...);
  check(cudaGetLastError(), op);
#endif
}

// a * b rounded on its own: never contracted into a neighbouring add (the CPU kernels' rounding where they do not fuse)
__device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef PT_CUDA_EMULATE
  volatile float r = a * b;
  return r;
#else
  return __fmul_rn(a, b);
#endif
}

// Sums and maxima over a warp's 32 lanes, every lane gets the result (a butterfly: the same order each run).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// scratch: 32 values of shared memory, free again when this returns.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < warps ? scratch[lane] : T(0);
  total = warp_sum(total);
  __syncthreads();
  return total;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = lane < warps ? scratch[lane] : -INFINITY;
  m = warp_max(m);
  __syncthreads();
  return m;
}

// A grow-only device buffer for an op's temporaries (attention's row dots, a loss's partial sums), one op at a
// time: the lock is held while the op enqueues its kernels and reads back its result; the (one, default) stream
// orders the kernels of successive users.
class Scratch {
 public:
  explicit Scratch(size_t bytes);
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  std::unique_lock<std::mutex> lock_;
  void* ptr_;
};

}  // namespace cuda
}  // namespace pt
