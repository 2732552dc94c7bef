// Attention on the GPU, forward and backward, the semantics of cpp/cpu/attention.cpp:
//   q (B, NH, Tq, HS), k, v (B, NKV, Tkv, HS) (query head h reads key/value head h / (NH / NKV)), or all of them
//   (B, T, heads, HS) when bthd; key_mask (B, Tk) 1 = attend (may be null); out like q, lse (B, NH, Tq) saved.
//   causal: key j is visible to query i when j <= i + (Tk - Tq) (bottom-right aligned: the KV-cache convention);
//   window > 0 also hides keys j <= i + (Tk - Tq) - window (a sliding window).
//   A row that sees no key gets out = 0 and lse = -inf (and zero gradients); NaN or +inf among a row's visible
//   scores, or all of them -inf, make its out and lse NaN (reference.attention's rule: NaN in, NaN out).
// Tiled with an online softmax: a block is 8 warps, one query row each, of the same (sequence, head); the block
// stages tiles of keys and values in shared memory and each warp folds them into its running max, sum and output
// (lanes own head dimensions lane, lane + 32, ...). Memory grows with T, never T^2.
// Backward recomputes the probabilities from lse and is deterministic (no atomics): one kernel per query row for
// dq (it also saves D_i = dout_i . out_i), one per key row for dk and dv (looping over the queries that see it).
#include "device.h"
#include "kernels.h"

namespace pt {
namespace cuda {

namespace {
constexpr int kRows = 8;      // warps (rows) per block
constexpr int kMaxSlots = 8;  // head dimensions per lane: HS <= 256

struct Layout {
  int64_t NH, NKV, Tq, Tkv, HS;
  bool bthd;
  __device__ __forceinline__ int64_t q_row(int64_t b, int64_t h, int64_t i) const {
    return (bthd ? (b * Tq + i) * NH + h : (b * NH + h) * Tq + i) * HS;
  }
  __device__ __forceinline__ int64_t k_row(int64_t b, int64_t g, int64_t j) const {
    return (bthd ? (b * Tkv + j) * NKV + g : (b * NKV + g) * Tkv + j) * HS;
  }
};

int64_t tile_rows(int64_t HS) { return HS <= 128 ? 32 : 16; }  // two tiles of HS floats: <= 32 KiB

// lane's share of a row: x[lane + 32 s] for s < kMaxSlots (0 past HS)
__device__ __forceinline__ void load_slots(float* dst, const float* row, int64_t HS, int lane, float scale) {
#pragma unroll
  for (int s = 0; s < kMaxSlots; s++) {
    const int64_t d = lane + kWarp * s;
    dst[s] = d < HS ? row[d] * scale : 0.f;
  }
}
__device__ __forceinline__ float dot_slots(const float* mine, const float* row, int64_t HS, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int s = 0; s < kMaxSlots; s++) {
    const int64_t d = lane + kWarp * s;
    if (d < HS) acc += mine[s] * row[d];
  }
  return warp_sum(acc);
}
// stage rows [j0, j0 + n) of two (b, head) row sets into shared memory, [n][HS] each
__device__ __forceinline__ void stage(float* a_tile, float* b_tile, const float* a, const float* b,
                                      const Layout& L, bool keys, int64_t batch, int64_t head, int64_t j0,
                                      int64_t n) {
  for (int64_t idx = threadIdx.x; idx < n * L.HS; idx += blockDim.x) {
    const int64_t jj = idx / L.HS, d = idx % L.HS;
    const int64_t row = keys ? L.k_row(batch, head, j0 + jj) : L.q_row(batch, head, j0 + jj);
    a_tile[idx] = a[row + d];
    b_tile[idx] = b[row + d];
  }
}

// A query-row block's place: 8 consecutive queries i of one (sequence b, head h) reading key/value head g, this
// warp's row i (active when i < Tq), and the keys the block needs: [kbegin, kend) (causal: query i sees
// j <= i + shift; a window: only j > i + shift - window).
struct QueryRows {
  int64_t bh, b, h, g, i, shift, kbegin, kend, window;
  int lane;
  bool active;
  __device__ __forceinline__ bool hidden(int64_t j) const { return window > 0 && j <= i + shift - window; }
};
__device__ __forceinline__ QueryRows query_rows(const Layout& L, int64_t Tk, bool causal, int64_t window) {
  QueryRows r;
  const int64_t blocks_per_head = cdiv(L.Tq, kRows);
  r.bh = blockIdx.x / blocks_per_head;
  const int64_t i0 = (blockIdx.x % blocks_per_head) * kRows;
  r.b = r.bh / L.NH;
  r.h = r.bh % L.NH;
  r.g = r.h / (L.NH / L.NKV);
  r.lane = threadIdx.x % kWarp;
  r.i = i0 + threadIdx.x / kWarp;
  r.active = r.i < L.Tq;
  r.shift = Tk - L.Tq;
  const int64_t last_row = (i0 + kRows < L.Tq ? i0 + kRows : L.Tq) - 1, needed = last_row + r.shift + 1;
  r.kend = !causal ? Tk : needed < 0 ? 0 : needed < Tk ? needed : Tk;
  r.window = causal ? window : 0;
  const int64_t first = i0 + r.shift - r.window + 1;  // the block's first row's first visible key
  r.kbegin = r.window > 0 && first > 0 ? first : 0;
  return r;
}
// Keys [j0, j0 + n) of the block's key/value head into k_tile and v_tile ([n][HS] each, n = min(tile, kend - j0)),
// the whole block synchronised before (every warp is done with the previous tile) and after -> n
__device__ __forceinline__ int64_t stage_keys(float* k_tile, float* v_tile, const float* k, const float* v,
                                              const Layout& L, const QueryRows& r, int64_t j0, int64_t tile) {
  const int64_t n = r.kend - j0 < tile ? r.kend - j0 : tile;
  __syncthreads();
  stage(k_tile, v_tile, k, v, L, true, r.b, r.g, j0, n);
  __syncthreads();
  return n;
}

__global__ void attention_forward_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                                         const uint8_t* key_mask, Layout L, int64_t Tk, bool causal,
                                         int64_t window, float scale, int64_t tile) {
  PT_DYNAMIC_SHARED(float, smem);
  float* k_tile = smem;
  float* v_tile = smem + tile * L.HS;
  const QueryRows r = query_rows(L, Tk, causal, window);

  float qs[kMaxSlots], acc[kMaxSlots];
  load_slots(qs, q + L.q_row(r.b, r.h, r.active ? r.i : 0), L.HS, r.lane, scale);
#pragma unroll
  for (int s = 0; s < kMaxSlots; s++) acc[s] = 0.f;
  float m = -INFINITY, l = 0.f;
  bool seen = false;  // (a row that sees no key: zeros and lse -inf)
  for (int64_t j0 = r.kbegin; j0 < r.kend; j0 += tile) {
    const int64_t n = stage_keys(k_tile, v_tile, k, v, L, r, j0, tile);
    if (!r.active) continue;
    for (int64_t jj = 0; jj < n; jj++) {
      const int64_t j = j0 + jj;
      if (causal && j > r.i + r.shift) break;
      if (r.hidden(j) || (key_mask && !key_mask[r.b * Tk + j])) continue;
      const float s = dot_slots(qs, k_tile + jj * L.HS, L.HS, r.lane);
      const float m_new = s != s || m != m ? NAN : fmaxf(m, s);  // (fmaxf alone would drop a NaN score)
      seen = true;
      const float alpha = expf(m - m_new), p = expf(s - m_new);
      l = l * alpha + p;
#pragma unroll
      for (int t = 0; t < kMaxSlots; t++) {
        const int64_t d = r.lane + kWarp * t;
        if (d < L.HS) acc[t] = acc[t] * alpha + p * v_tile[jj * L.HS + d];
      }
      m = m_new;
    }
  }
  if (!r.active) return;
  float* o = out + L.q_row(r.b, r.h, r.i);
  const float inv = seen ? 1.f / l : 0.f;
#pragma unroll
  for (int t = 0; t < kMaxSlots; t++) {
    const int64_t d = r.lane + kWarp * t;
    if (d < L.HS) o[d] = acc[t] * inv;
  }
  if (r.lane == 0) lse[r.bh * L.Tq + r.i] = seen ? m + logf(l) : -INFINITY;
}

// dq_i = scale sum_j p_ij (dout_i . v_j - D_i) k_j with p_ij = exp(scale q_i . k_j - lse_i); saves D_i
__global__ void attention_dq_kernel(float* dq, float* D, const float* dout, const float* out, const float* lse,
                                    const float* q, const float* k, const float* v, const uint8_t* key_mask,
                                    Layout L, int64_t Tk, bool causal, int64_t window, float scale,
                                    int64_t tile) {
  PT_DYNAMIC_SHARED(float, smem);
  float* k_tile = smem;
  float* v_tile = smem + tile * L.HS;
  const QueryRows r = query_rows(L, Tk, causal, window);

  const int64_t row = L.q_row(r.b, r.h, r.active ? r.i : 0);
  float qs[kMaxSlots], gs[kMaxSlots], os[kMaxSlots], acc[kMaxSlots];
  load_slots(qs, q + row, L.HS, r.lane, scale);
  load_slots(gs, dout + row, L.HS, r.lane, 1.f);
  load_slots(os, out + row, L.HS, r.lane, 1.f);
  float Di = 0.f;
#pragma unroll
  for (int t = 0; t < kMaxSlots; t++) {
    Di += gs[t] * os[t];
    acc[t] = 0.f;
  }
  Di = warp_sum(Di);
  const float li = r.active ? lse[r.bh * L.Tq + r.i] : -INFINITY;
  if (r.active && r.lane == 0) D[r.bh * L.Tq + r.i] = Di;
  for (int64_t j0 = r.kbegin; j0 < r.kend; j0 += tile) {
    const int64_t n = stage_keys(k_tile, v_tile, k, v, L, r, j0, tile);
    if (!r.active || li == -INFINITY) continue;
    for (int64_t jj = 0; jj < n; jj++) {
      const int64_t j = j0 + jj;
      if (causal && j > r.i + r.shift) break;
      if (r.hidden(j) || (key_mask && !key_mask[r.b * Tk + j])) continue;
      const float p = expf(dot_slots(qs, k_tile + jj * L.HS, L.HS, r.lane) - li);
      const float ds = p * (dot_slots(gs, v_tile + jj * L.HS, L.HS, r.lane) - Di);
#pragma unroll
      for (int t = 0; t < kMaxSlots; t++) {
        const int64_t d = r.lane + kWarp * t;
        if (d < L.HS) acc[t] += ds * k_tile[jj * L.HS + d];
      }
    }
  }
  if (!r.active) return;
  float* o = dq + row;
#pragma unroll
  for (int t = 0; t < kMaxSlots; t++) {
    const int64_t d = r.lane + kWarp * t;
    if (d < L.HS) o[d] = acc[t] * scale;
  }
}

// dv_j = sum_i p_ij dout_i, dk_j = scale sum_i p_ij (dout_i . v_j - D_i) q_i over the query heads of key head g
__global__ void attention_dkv_kernel(float* dk, float* dv, const float* D, const float* dout, const float* lse,
                                     const float* q, const float* k, const float* v, const uint8_t* key_mask,
                                     Layout L, int64_t Tk, bool causal, int64_t window, float scale,
                                     int64_t tile) {
  PT_DYNAMIC_SHARED(float, smem);
  float* q_tile = smem;
  float* g_tile = smem + tile * L.HS;
  float* lse_tile = smem + 2 * tile * L.HS;
  float* D_tile = lse_tile + tile;
  const int64_t blocks_per_head = cdiv(Tk, kRows);
  const int64_t bg = blockIdx.x / blocks_per_head, j0 = (blockIdx.x % blocks_per_head) * kRows;
  const int64_t b = bg / L.NKV, g = bg % L.NKV, group = L.NH / L.NKV;
  const int lane = threadIdx.x % kWarp;
  const int64_t j = j0 + threadIdx.x / kWarp;
  const bool active = j < Tk && (!key_mask || key_mask[b * Tk + (j < Tk ? j : 0)]);
  const int64_t shift = Tk - L.Tq;
  // causal: query i sees key j when i >= j - shift; the block's first key bounds where its queries start
  int64_t ibegin = causal ? j0 - shift : 0;
  if (ibegin < 0) ibegin = 0;
  // a window: query i sees key j only while i < j - shift + window; the block's last key bounds where they end
  if (!causal) window = 0;
  int64_t iend = window > 0 ? j0 + kRows - 1 - shift + window : L.Tq;
  if (iend > L.Tq) iend = L.Tq;

  const int64_t row = L.k_row(b, g, j < Tk ? j : 0);
  float ks[kMaxSlots], vs[kMaxSlots], dks[kMaxSlots], dvs[kMaxSlots];
  load_slots(ks, k + row, L.HS, lane, scale);
  load_slots(vs, v + row, L.HS, lane, 1.f);
#pragma unroll
  for (int t = 0; t < kMaxSlots; t++) dks[t] = dvs[t] = 0.f;
  for (int64_t h = g * group; h < (g + 1) * group; h++) {
    const int64_t bh = b * L.NH + h;
    for (int64_t i0 = ibegin; i0 < iend; i0 += tile) {
      const int64_t n = iend - i0 < tile ? iend - i0 : tile;
      __syncthreads();
      stage(q_tile, g_tile, q, dout, L, false, b, h, i0, n);
      for (int64_t ii = threadIdx.x; ii < n; ii += blockDim.x) {
        lse_tile[ii] = lse[bh * L.Tq + i0 + ii];
        D_tile[ii] = D[bh * L.Tq + i0 + ii];
      }
      __syncthreads();
      if (!active) continue;
      for (int64_t ii = 0; ii < n; ii++) {
        const int64_t i = i0 + ii;
        if ((causal && j > i + shift) || (window > 0 && j <= i + shift - window)) continue;
        const float li = lse_tile[ii];
        if (li == -INFINITY) continue;
        const float* qi = q_tile + ii * L.HS;
        const float* gi = g_tile + ii * L.HS;
        const float p = expf(dot_slots(ks, qi, L.HS, lane) - li);
        const float ds = p * (dot_slots(vs, gi, L.HS, lane) - D_tile[ii]);
#pragma unroll
        for (int t = 0; t < kMaxSlots; t++) {
          const int64_t d = lane + kWarp * t;
          if (d < L.HS) {
            dvs[t] += p * gi[d];
            dks[t] += ds * qi[d];
          }
        }
      }
    }
  }
  if (j >= Tk) return;
#pragma unroll
  for (int t = 0; t < kMaxSlots; t++) {
    const int64_t d = lane + kWarp * t;
    if (d < L.HS) {
      dk[row + d] = dks[t] * scale;
      dv[row + d] = dvs[t];
    }
  }
}

void check_head_size(const char* op, int64_t HS) {
  if (HS > kWarp * kMaxSlots)
    throw Error(std::string(op) + ": head size " + std::to_string(HS) + " is larger than the CUDA kernels' " +
                std::to_string(kWarp * kMaxSlots));
}
}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                       int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale, bool bthd) {
  check_head_size("attention_forward", HS);
  const int64_t tile = tile_rows(HS);
  const Layout L{NH, NKV, Tq, Tkv, HS, bthd};
  launch("attention_forward", attention_forward_kernel, dim3((unsigned)(B * NH * cdiv(Tq, kRows))),
         dim3(kRows * kWarp), 2 * tile * HS * sizeof(float), out, lse, q, k, v, key_mask, L, Tk, causal, window,
         scale, tile);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, bool causal, int64_t window,
                        float scale, bool bthd) {
  check_head_size("attention_backward", HS);
  if (B == 0 || NH == 0) return;
  const int64_t tile = tile_rows(HS);
  const Layout L{NH, NKV, Tq, Tk, HS, bthd};
  Scratch scratch((size_t)(B * NH * Tq + 1) * sizeof(float));
  float* D = scratch.as<float>();
  launch("attention_backward", attention_dq_kernel, dim3((unsigned)(B * NH * cdiv(Tq, kRows))),
         dim3(kRows * kWarp), 2 * tile * HS * sizeof(float), dq, D, dout, out, lse, q, k, v, key_mask, L, Tk,
         causal, window, scale, tile);
  launch("attention_backward", attention_dkv_kernel, dim3((unsigned)(B * NKV * cdiv(Tk, kRows))),
         dim3(kRows * kWarp), (2 * tile * HS + 2 * tile) * sizeof(float), dk, dv, D, dout, lse, q, k, v, key_mask,
         L, Tk, causal, window, scale, tile);
}

}  // namespace cuda
}  // namespace pt
