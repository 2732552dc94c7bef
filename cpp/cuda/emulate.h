// The CUDA execution model on CPU threads, so that the kernels in cpp/cuda/*.cu can be compiled by a C++
// compiler and checked against the NumPy reference on a machine without a GPU (PYTRANSFORMER_CUDA=EMULATE).
//
// A launch runs its blocks one after another; each block runs blockDim threads as std::threads, so
// __syncthreads() is a real barrier and every thread of a block sees the same shared memory. Warp shuffles are
// an exchange through a per-warp slot array between two warp barriers (all lanes must take part, as with a full
// mask on a GPU). Device memory is host memory. It is slow (a thread per CUDA thread) and meant for tests with
// small shapes; what it checks is the kernels' indexing, masking, reductions and synchronisation, not timing or
// the GPU memory model.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

namespace pt_emu {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      gen_++;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_, waiting_ = 0;
  uint64_t gen_ = 0;
};

struct Block {
  Block(int threads, size_t dynamic_bytes) : barrier(threads), dynamic(dynamic_bytes + 16) {
    const int warps = (threads + 31) / 32;
    for (int w = 0; w < warps; w++) {
      const int lanes = w == warps - 1 ? threads - 32 * w : 32;
      warp_barriers.emplace_back(new Barrier(lanes));
    }
    exchange.assign((size_t)warps * 32, 0);
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Barrier>> warp_barriers;
  std::vector<uint64_t> exchange;  // 32 slots per warp for shuffles
  std::vector<char> dynamic;       // extern __shared__
  std::vector<std::unique_ptr<std::vector<char>>> statics;  // __shared__ arrays, in the order they are declared
  std::mutex statics_mu;
};

struct ThreadState {
  Block* block = nullptr;
  int linear = 0;        // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  size_t statics_seen = 0;
};
inline thread_local ThreadState self;

// The k-th __shared__ declaration a thread passes is the block's k-th array (every thread declares the same ones).
template <class T>
T* shared_array(size_t n) {
  Block* b = self.block;
  const size_t k = self.statics_seen++;
  std::lock_guard<std::mutex> lock(b->statics_mu);
  while (b->statics.size() <= k) b->statics.emplace_back(new std::vector<char>());
  auto& buf = *b->statics[k];
  if (buf.size() < n * sizeof(T) + 16) buf.assign(n * sizeof(T) + 16, 0);
  return reinterpret_cast<T*>(buf.data());
}
template <class T>
T* dynamic_shared() { return reinterpret_cast<T*>(self.block->dynamic.data()); }

template <class T>
T shuffle(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  Block* b = self.block;
  const int warp = self.linear / 32, lane = self.linear % 32;
  uint64_t* slots = b->exchange.data() + (size_t)warp * 32;
  std::memcpy(&slots[lane], &v, sizeof(T));
  b->warp_barriers[warp]->wait();
  T r;
  std::memcpy(&r, &slots[src_lane & 31], sizeof(T));
  b->warp_barriers[warp]->wait();
  return r;
}

}  // namespace pt_emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { pt_emu::self.block->barrier.wait(); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) { return pt_emu::shuffle(v, (pt_emu::self.linear % 32) ^ mask); }
template <class T>
T __shfl_sync(unsigned, T v, int src_lane) { return pt_emu::shuffle(v, src_lane); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

#define PT_SHARED(type, name, count) type* name = pt_emu::shared_array<type>(count)
#define PT_DYNAMIC_SHARED(type, name) type* name = pt_emu::dynamic_shared<type>()

namespace pt_emu {
// kernel<<<grid, block, smem>>>(args...): the blocks in order, each block's threads at once.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  const int threads = (int)(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        Block blk(threads, smem);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; t++)
          pool.emplace_back([&, t] {
            self = ThreadState{&blk, t, 0};
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            blockIdx = dim3(bx, by, bz);
            blockDim = block;
            gridDim = grid;
            kernel(args...);
          });
        for (auto& th : pool) th.join();
      }
}
}  // namespace pt_emu
