// The CUDA execution model on the CPU, so that the kernels in cpp/cuda/*.cu can be compiled by a C++ compiler
// and checked against the NumPy reference on a machine without a GPU (PYTRANSFORMER_CUDA=EMULATE).
//
// A launch runs its blocks one after another on the calling thread; a block's CUDA threads are fibers (ucontext)
// run round-robin, each until it waits: __syncthreads() is a barrier over the block's fibers, and a warp shuffle
// is an exchange through the warp's slot array between two barriers over its 32 lanes (all lanes take part, as
// with a full mask on a GPU). Every thread of a block sees the same shared memory. Device memory is host memory.
// What it checks is the kernels' indexing, masking, reductions and synchronisation, not timing or the GPU memory
// model (a fiber runs until it waits, so races that a GPU could expose are not all found).
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <tuple>
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

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  dim3 idx;
  int linear = 0;
  size_t statics_seen = 0;
  bool done = false;
};

class Barrier {
 public:
  explicit Barrier(int count = 0) : count_(count) {}
  void wait();  // below: yields until every member has arrived

 private:
  int count_, arrived_ = 0;
  uint64_t gen_ = 0;
};

struct Block {
  Block(int threads, size_t dynamic_bytes) : barrier(threads), dynamic(dynamic_bytes + 16) {
    const int warps = (threads + 31) / 32;
    for (int w = 0; w < warps; w++) warp_barriers.emplace_back(w == warps - 1 ? threads - 32 * w : 32);
    exchange.assign((size_t)warps * 32, 0);
  }
  Barrier barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint64_t> exchange;  // 32 slots per warp for shuffles
  std::vector<char> dynamic;       // extern __shared__
  std::vector<std::unique_ptr<std::vector<char>>> statics;  // __shared__ arrays, in the order they are declared
};

struct Scheduler {
  Block* block = nullptr;
  Fiber* current = nullptr;
  ucontext_t main;
  std::vector<Fiber> fibers;  // reused between launches (stacks stay allocated)
};
inline thread_local Scheduler sched;

inline void yield() { swapcontext(&sched.current->ctx, &sched.main); }

inline void Barrier::wait() {
  const uint64_t gen = gen_;
  if (++arrived_ == count_) {
    arrived_ = 0;
    gen_++;
    return;
  }
  while (gen_ == gen) yield();
}

// The k-th __shared__ declaration a thread passes is the block's k-th array (every thread declares the same ones).
template <class T>
T* shared_array(size_t n) {
  Block* b = sched.block;
  const size_t k = sched.current->statics_seen++;
  while (b->statics.size() <= k) b->statics.emplace_back(new std::vector<char>());
  auto& buf = *b->statics[k];
  if (buf.size() < n * sizeof(T) + 16) buf.assign(n * sizeof(T) + 16, 0);
  return reinterpret_cast<T*>(buf.data());
}
template <class T>
T* dynamic_shared() { return reinterpret_cast<T*>(sched.block->dynamic.data()); }

template <class T>
T shuffle(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  Block* b = sched.block;
  const int warp = sched.current->linear / 32, lane = sched.current->linear % 32;
  uint64_t* slots = b->exchange.data() + (size_t)warp * 32;
  std::memcpy(&slots[lane], &v, sizeof(T));
  b->warp_barriers[warp].wait();
  T r;
  std::memcpy(&r, &slots[src_lane & 31], sizeof(T));
  b->warp_barriers[warp].wait();
  return r;
}

}  // namespace pt_emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { pt_emu::sched.block->barrier.wait(); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) { return pt_emu::shuffle(v, (pt_emu::sched.current->linear % 32) ^ mask); }
template <class T>
T __shfl_sync(unsigned, T v, int src_lane) { return pt_emu::shuffle(v, src_lane); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

#define PT_SHARED(type, name, count) type* name = pt_emu::shared_array<type>(count)
#define PT_DYNAMIC_SHARED(type, name) type* name = pt_emu::dynamic_shared<type>()

namespace pt_emu {
constexpr size_t kStackBytes = 256 * 1024;

// kernel<<<grid, block, smem>>>(args...): the blocks in order; a block's threads as fibers, round-robin.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  const int threads = (int)(block.x * block.y * block.z);
  if ((int)sched.fibers.size() < threads) sched.fibers.resize(threads);
  for (int t = 0; t < threads; t++)
    if (!sched.fibers[t].stack) sched.fibers[t].stack.reset(new char[kStackBytes]);
  thread_local void (*thunk_kernel)(P...) = nullptr;
  thread_local std::tuple<A...>* thunk_args = nullptr;
  std::tuple<A...> packed(args...);
  thunk_kernel = kernel;
  thunk_args = &packed;
  struct Run {
    static void entry() {
      std::apply(thunk_kernel, *thunk_args);
      sched.current->done = true;
    }
  };
  blockDim = block;
  gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        Block blk(threads, smem);
        sched.block = &blk;
        blockIdx = dim3(bx, by, bz);
        for (int t = 0; t < threads; t++) {
          Fiber& f = sched.fibers[t];
          f.idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          f.linear = t;
          f.statics_seen = 0;
          f.done = false;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = &sched.main;
          makecontext(&f.ctx, &Run::entry, 0);
        }
        for (int live = threads; live > 0;) {
          live = 0;
          for (int t = 0; t < threads; t++) {
            Fiber& f = sched.fibers[t];
            if (f.done) continue;
            sched.current = &f;
            threadIdx = f.idx;
            swapcontext(&sched.main, &f.ctx);
            live += !f.done;
          }
        }
        sched.block = nullptr;
      }
}
}  // namespace pt_emu
