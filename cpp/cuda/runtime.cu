// Device memory, copies and device facts for the Python side (pytransformer/cuda.py), every call checked.
// The emulated build (PYTRANSFORMER_CUDA=EMULATE) keeps "device" memory on the host.
#include <cstdlib>
#include <mutex>

#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

#ifdef PT_CUDA_EMULATE
bool emulated() { return true; }
int device_count() { return 1; }
std::string device_name(int) { return "CUDA emulator (CPU fibers, pytransformer tests)"; }
void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p) throw OutOfMemory("cudaMalloc failed: out of memory (" + std::to_string(bytes) + " bytes)");
  return p;
}
void device_free(void* ptr) { std::free(ptr); }
void copy_to_device(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
void copy_to_host(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
void copy_on_device(void* dst, const void* src, size_t bytes) { if (bytes) std::memmove(dst, src, bytes); }
void fill_zero(void* dst, size_t bytes) { if (bytes) std::memset(dst, 0, bytes); }
void synchronize() {}
#else
bool emulated() { return false; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the error, report none
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw OutOfMemory("cudaMalloc failed: out of device memory (" + std::to_string(bytes) + " bytes asked)");
  }
  check(err, "cudaMalloc");
  return p;
}

void device_free(void* ptr) {
  if (ptr) cudaFree(ptr);  // (a failure here is a lost context, reported by the next call that checks)
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
}
void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0), "cudaMemcpy (device to device)");
}
void fill_zero(void* dst, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(dst, 0, bytes, 0), "cudaMemset");
}
void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
#endif

namespace {
std::mutex scratch_mutex;
void* scratch_buffer = nullptr;
size_t scratch_size = 0;
}  // namespace

Scratch::Scratch(size_t bytes) : lock_(scratch_mutex) {
  void*& buf = scratch_buffer;
  size_t& size = scratch_size;
  if (bytes > size) {
    if (buf) {
      synchronize();  // earlier kernels may still read the old buffer
      device_free(buf);
      buf = nullptr;
      size = 0;
    }
    const size_t grown = bytes < 4096 ? 4096 : bytes * 2;
    buf = device_alloc(grown);
    size = grown;
  }
  ptr_ = buf;
}

}  // namespace cuda
}  // namespace pt
