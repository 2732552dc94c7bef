// Multi-head scaled dot-product attention, fused and tiled with an online softmax (FlashAttention-style).
//
// q (B, NH, Tq, HS), k, v (B, NKV, Tk, HS), key_mask (B, Tk) with 1 = attend (or null), out (B, NH, Tq, HS),
// lse (B, NH, Tq) = log-sum-exp of each row's scaled scores, saved for backward (-inf for a fully masked row).
// Non-finite input, every path alike: a row that sees no key (padding, causal) is zeros with lse -inf whatever q, k
// and v hold; a row whose visible scores make softmax NaN (a NaN score, a +inf score, every visible score -inf) is
// NaN, lse too; a NaN in a visible value row makes out NaN (lse reads no value). What a row does not see never
// reaches it: its hidden keys' scores and value rows are not part of its sum, not even multiplied by zero.
// With bthd every (B, NH, T, HS) array (q, k, v, out and their gradients) is laid out (B, T, NH, HS) instead:
// the (B, T, C) output of a Linear read per head in place, rows of one head NH * HS floats apart.
// causal: key j is visible to query i when j <= i + (Tk - Tq), the bottom-right alignment used with a KV cache
// (identical to the usual lower triangle when Tq == Tk); window > 0 (sliding-window attention, causal only) also
// hides the keys j <= i + (Tk - Tq) - window: query i sees the window keys up to and including its own position
// (transformers' Gemma 3 / Mistral mask), so a row that sees its own key still does. Grouped-query attention: NKV
// key/value heads divide the NH query heads, and query head h reads key/value head h / (NH / NKV) in place (no
// repeated copies).
//
// Every product is a small register-blocked GEMM over tiles (tile_gemm). Forward works transposed, so that
// the online softmax runs across W queries per vector: S^T = K Q^T for a BK x BQ tile, O^T += V^T P^T (K and V
// read in place as the broadcast operand; the query block transposed once). Backward, per row: S = Q K^T,
// dP = dO V^T, dV += P^T dO, dK += dS^T Q, dQ += dS K. Memory: forward per thread Q^T and O^T (HS x BQ) and
// one score tile; backward also padded copies of one head's Q, dO and dQ and one tile of K and V (transposed
// and padded). Extra memory is O(T * HS) per thread, never O(Tq * Tk).
#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "simd.h"
#ifdef PT_ATTENTION_AMX
#include "amx_tiles.h"
#endif

namespace pt {
namespace PT_NS {
using namespace simd;

namespace {
constexpr int64_t BK = 64;  // keys per tile
constexpr int64_t BQ = 64;  // queries per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
#if defined(PT_ISA_AVX512)
constexpr int TM = 6, TV = 4;  // tile_gemm register block: 6 rows x 4 vectors (24 zmm accumulators)
#elif defined(PT_ISA_AVX2)
constexpr int TM = 6, TV = 2;  // 6 x 2 ymm
#else
constexpr int TM = 4, TV = 2;
#endif

static_assert(TM <= 6, "tile_rows handles at most TM - 1 = 5 remainder rows");
constexpr int64_t QV = BQ / W;  // query vectors per tile row in the forward's transposed scores

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Where head (b, h) of a (B, NH, T, HS) array starts, and how far apart its rows are, in either layout.
struct Heads {
  int64_t NH, HS;
  bool bthd;
  int64_t row_stride() const { return bthd ? NH * HS : HS; }
  int64_t offset(int64_t b, int64_t h, int64_t T) const { return bthd ? (b * T * NH + h) * HS : (b * NH + h) * T * HS; }
};

// C (R x NV*W) [+]= A (R x k) . B (k x NV*W). A element (r, p) at A[r * ars + p * acs]; B row-major (ldb).
template <int R, int NV>
inline void tile_block(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B,
                       int64_t ldb, int64_t k, bool accumulate) {
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = accumulate ? load(C + r * ldc + v * W) : zero();
  for (int64_t p = 0; p < k; p++) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = load(B + p * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const V a = set1(A[r * ars + p * acs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) store(C + r * ldc + v * W, acc[r][v]);
}

template <int NV>
void tile_rows(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t k, bool accumulate) {
  int64_t i = 0;
  for (; i + TM <= m; i += TM) tile_block<TM, NV>(C + i * ldc, ldc, A + i * ars, ars, acs, B, ldb, k, accumulate);
  // the last m % TM rows in one block (row by row, each would be one latency-bound FMA chain per vector)
  C += i * ldc;
  A += i * ars;
  switch (m - i) {
    case 1: return tile_block<1, NV>(C, ldc, A, ars, acs, B, ldb, k, accumulate);
    case 2: return tile_block<2, NV>(C, ldc, A, ars, acs, B, ldb, k, accumulate);
    case 3: return tile_block<3, NV>(C, ldc, A, ars, acs, B, ldb, k, accumulate);
    case 4: return tile_block<4, NV>(C, ldc, A, ars, acs, B, ldb, k, accumulate);
    case 5: return tile_block<5, NV>(C, ldc, A, ars, acs, B, ldb, k, accumulate);
    default: return;
  }
}

#ifdef PT_ATTENTION_AMX
// The bf16 build (matmul precision "bfloat16"): every product on AMX tiles, operands rounded to bf16, float32
// sums; the softmax and everything else stays float32.
void tile_gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  amx::tile_product(C, ldc, amx::View{A, ars, acs}, amx::View{B, ldb, 1}, m, n, k, accumulate);
}
struct TileUse : amx::TileScope {};
#else
struct TileUse {};  // the float32 builds hold no tile state

// C (m x n) [+]= A (m x k) . B (k x n), n a multiple of W (callers pad their tiles).
void tile_gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t j = 0; j < n; j += TV * W) {
    const int64_t nv = std::min<int64_t>(TV, (n - j) / W);
    if (nv == TV) {
      tile_rows<TV>(C + j, ldc, A, ars, acs, B + j, ldb, m, k, accumulate);
    } else {
      for (int64_t v = 0; v < nv; v++)
        tile_rows<1>(C + j + v * W, ldc, A, ars, acs, B + j + v * W, ldb, m, k, accumulate);
    }
  }
}
#endif

// dst (n x HSP) = X (n x HS, rows rs apart) with the columns from HS to HSP zeroed
void pad_rows(float* dst, const float* X, int64_t n, int64_t HS, int64_t HSP, int64_t rs) {
  for (int64_t i = 0; i < n; i++) {
    std::memcpy(dst + i * HSP, X + i * rs, HS * sizeof(float));
    std::fill(dst + i * HSP + HS, dst + (i + 1) * HSP, 0.f);
  }
}

// The keys query i sees: [begin(i), end(i)) (before key_mask), causal and window as in the header.
struct KeyRange {
  int64_t Tk, offset, window;
  bool causal;
  int64_t end(int64_t i) const { return causal ? std::min(Tk, i + 1 + offset) : Tk; }
  int64_t begin(int64_t i) const { return window > 0 ? std::max<int64_t>(0, i + 1 + offset - window) : 0; }
  // whether key_mask (Tk, or null) leaves query i a key in its range
  bool sees_a_key(const uint8_t* mask, int64_t i) const {
    int64_t j = begin(i);
    const int64_t e = end(i);
    if (mask)
      while (j < e && !mask[j]) j++;
    return j < e;
  }
};

// Whether n rows of X (len floats each, rs apart) are all finite: x * 0 is 0 for a finite x, NaN otherwise.
inline bool rows_finite(const float* X, int64_t n, int64_t len, int64_t rs) {
  V acc = zero();
  for (int64_t i = 0; i < n; i++)
    for (int64_t d = 0; d < len; d += W) acc = add(acc, mul(loadn(X + i * rs + d, len - d), zero()));
  return reduce_add(acc) == 0.f;
}

// Backward: scores of one tile are masked with kbias (BK): 0 for visible keys, -inf for padded-out keys and for
// the columns past the tile's last key; on tiles that cross the causal diagonal also per row (iota > limit), and
// on tiles that cross a window's lower edge (iota < low).
struct TileMask {
  alignas(64) float kbias[BK];
  alignas(64) float iota[BK];
  TileMask() {
    for (int64_t j = 0; j < BK; j++) iota[j] = (float)j;
  }
  void set(const uint8_t* key_mask, int64_t j0, int64_t nk) {
    for (int64_t j = 0; j < BK; j++) kbias[j] = (j < nk && (!key_mask || key_mask[j0 + j])) ? 0.f : kNegInf;
  }
  // scores j .. j + W of row s: s * scale + kbias, and -inf where j > limit (limit < BK: causal) or j < low
  // (low > 0: a window)
  V scores(const float* s, int64_t j, V scale, int64_t limit, int64_t low) const {
    V x = fma(load(s + j), scale, load(kbias + j));
    if (limit < BK) x = select_gt(load(iota + j), set1((float)limit), set1(kNegInf), x);
    return low > 0 ? select_lt(load(iota + j), set1((float)low), set1(kNegInf), x) : x;
  }
};
}  // namespace

// A few queries (decoding: one new position per sequence) over many keys: one query position at a time, scores
// in scratch, then the softmax and the weighted sum of V rows, vectorised along the keys or the head. The query
// heads of one key/value head (grouped-query attention) go together, up to kGroupHeads at a time: each key and
// value row is read once for all of them, and the weighted sums are kGroupHeads x kValueVecs independent
// accumulator chains per value row. The tiled path below would pad every query block to BQ rows and do BQ times
// the work.
constexpr int64_t kRowQueries = 4;
constexpr int kGroupHeads = 4;
constexpr int64_t kAhead = 8;  // key rows prefetched ahead
// A cache of (position, key/value head) rows (bthd) is read one head at a time, its rows kv_rs apart: key/value
// head 0's pass asks for every head's row of each position ahead (the later heads' passes then find them in cache,
// where the hardware prefetcher left each head's rows of a strided run waiting on memory) while a row's span of
// keys and values fits this many bytes (L2). On an AMD Zen 5: one SmolLM2 row's attention over 84 keys, its cache
// from memory, 1.22x; the 16-row decode step 1.04x (bench/NOTES.md, session 23)
constexpr int64_t kSpanAheadBytes = 256 << 10;
constexpr int kValueVecs = W >= 16 ? 4 : 2;  // (beside kGroupHeads x kValueVecs accumulators: the vector registers)

// A cache's rows hold float32 or halves (float16, uint16_t bits): either widened in registers, the same float
// either way once a half is widened (tests/test_kv_cache.py: the same bits as the float32 caches of the widened
// values).
inline V loadn_kv(const float* p, int64_t r) { return loadn(p, r); }
inline V loadn_kv(const uint16_t* p, int64_t r) { return loadn_f16(p, r); }
// n rows of X (HS values each, rs apart) as float32: in place, or widened into buf (n x HS) -> (rows, their stride)
inline std::pair<const float*, int64_t> rows_as_floats(const float* X, int64_t, int64_t, int64_t rs, float*) {
  return {X, rs};
}
inline std::pair<const float*, int64_t> rows_as_floats(const uint16_t* X, int64_t n, int64_t HS, int64_t rs,
                                                       float* buf) {
  for (int64_t j = 0; j < n; j++) f16_to_floats(buf + j * HS, X + j * rs, HS);
  return {buf, HS};
}

// O[u] (HS) = sum over the visible keys j < kend of scores[u * ld + j] * V row j, times inv[u], for NQ query heads.
// Padded-out keys are skipped by the mask (their rows are never read); a visible key counts even at weight 0, so a
// non-finite value row gives NaN as in the tiled product.
template <int NQ, int kHS, class T>
void value_sums(float* const* O, const float* scores, int64_t ld, const float* inv, const T* Vv, int64_t kv_rs,
                const uint8_t* mask, int64_t kend, int64_t head_size) {
  const int64_t HS = kHS ? kHS : head_size;
  for (int64_t d0 = 0; d0 < HS; d0 += kValueVecs * W) {
    const int nv = (int)std::min<int64_t>(kValueVecs, (HS - d0 + W - 1) / W);
    V acc[NQ][kValueVecs];
    for (int u = 0; u < NQ; u++)
      for (int c = 0; c < kValueVecs; c++) acc[u][c] = zero();
    for (int64_t j = 0; j < kend; j++) {
      if (mask && !mask[j]) continue;
      float p[NQ];
      for (int u = 0; u < NQ; u++) p[u] = scores[u * ld + j];
      const T* vr = Vv + j * kv_rs + d0;
      V x[kValueVecs];
      for (int c = 0; c < kValueVecs; c++) x[c] = c < nv ? loadn_kv(vr + c * W, HS - d0 - c * W) : zero();
      for (int u = 0; u < NQ; u++) {
        const V pu = set1(p[u]);
        for (int c = 0; c < kValueVecs; c++) acc[u][c] = fma(pu, x[c], acc[u][c]);
      }
    }
    for (int u = 0; u < NQ; u++)
      for (int c = 0; c < nv; c++) storen(O[u] + d0 + c * W, mul(acc[u][c], set1(inv[u])), HS - d0 - c * W);
  }
}

// scores[u ld + j] = (Q[u] . key row j) * scale for the NQ query heads of one key/value head over its keys 0 .. n
// (K, Vv: the first key's rows, kv_rs apart; mask: theirs, or null; `ahead` values from each row kAhead keys on
// asked for), each key row read once for all of them (halves widened in registers where the ISA has F16C, else
// into krow: HS floats); -inf for a padded-out key. Without a mask, W keys at a time: each head's W dot products
// summed across their lanes together (reduce_adds: the bits of one reduce_add each, a third of the operations).
// m[u]: head u's max over its visible keys, NaN from a NaN score on -> whether a key was visible.
template <int NQ, int kHS, class T>
static bool key_scores(float* scores, int64_t ld, float* m, const float* const* Q, const T* K, const T* Vv,
                       int64_t kv_rs, const uint8_t* mask, int64_t n, int64_t head_size, float scale, float* krow,
                       int64_t ahead) {
  const int64_t HS = kHS ? kHS : head_size;
  // the queries' vectors held in registers where the head size is a constant and they fit (else loads: the
  // stores of scores may alias them, so the compiler reloads them for every key)
  constexpr int kVecs = kHS % (2 * W) == 0 ? kHS / W : 0, kHeld = W >= 16 ? 16 : 6;
  constexpr bool kHold = kVecs > 0 && NQ * kVecs <= kHeld;
  V held[kHold ? NQ : 1][kHold ? kVecs : 1];
  if constexpr (kHold)
    for (int u = 0; u < NQ; u++)
      for (int c = 0; c < kVecs; c++) held[u][c] = load(Q[u] + c * W);
  auto query = [&](int u, int64_t d) {  // (Q[u]'s vector at d, d a multiple of W)
    if constexpr (kHold) return held[u][d / W];
    else return load(Q[u] + d);
  };
  auto dot_row = [&](const auto* kr, V acc[NQ]) {  // acc[u]: the lanes of Q[u] . kr, before their sum
    V acc1[NQ];
    for (int u = 0; u < NQ; u++) acc[u] = acc1[u] = zero();
    int64_t d = 0;
    for (; d + 2 * W <= HS; d += 2 * W) {
      const V k0 = loadn_kv(kr + d, W), k1 = loadn_kv(kr + d + W, W);
      for (int u = 0; u < NQ; u++) {
        acc[u] = fma(query(u, d), k0, acc[u]);
        acc1[u] = fma(query(u, d + W), k1, acc1[u]);
      }
    }
    for (; d < HS; d += W) {
      const V k0 = loadn_kv(kr + d, HS - d);
      for (int u = 0; u < NQ; u++) acc[u] = fma(loadn(Q[u] + d, HS - d), k0, acc[u]);
    }
    for (int u = 0; u < NQ; u++) acc[u] = add(acc[u], acc1[u]);
  };
  auto dots = [&](int64_t j, V acc[NQ]) {
    if (j + kAhead < n)  // (the rows come from memory: a cache of many sequences outgrows the caches)
      for (int64_t d = 0; d < ahead; d += 64 / (int64_t)sizeof(T)) {
        __builtin_prefetch(K + (j + kAhead) * kv_rs + d);
        __builtin_prefetch(Vv + (j + kAhead) * kv_rs + d);
      }
    if constexpr (std::is_same_v<T, float> || kF16InRegisters) {
      dot_row(K + j * kv_rs, acc);
    } else {  // (widened first: the accumulators would spill around each value's conversion call)
      f16_to_floats(krow, K + j * kv_rs, HS);
      dot_row(static_cast<const float*>(krow), acc);
    }
  };
  float mx[NQ];
  V mv[NQ];
  for (int u = 0; u < NQ; u++) mx[u] = kNegInf, mv[u] = set1(kNegInf);
  bool visible = false;  // (the same for every head of the group: one mask, one range)
  int64_t j = 0;
  if (!mask)
    for (; j + W <= n; j += W) {
      V part[NQ][W], acc[NQ];
      for (int e = 0; e < W; e++) {
        dots(j + e, acc);
        for (int u = 0; u < NQ; u++) part[u][e] = acc[u];
      }
      for (int u = 0; u < NQ; u++) {
        const V s = mul(reduce_adds(part[u]), set1(scale));
        store(scores + u * ld + j, s);
        mv[u] = max_keep_nan(mv[u], s);
      }
      visible = true;
    }
  for (; j < n; j++) {
    if (mask && !mask[j]) {
      for (int u = 0; u < NQ; u++) scores[u * ld + j] = kNegInf;
      continue;
    }
    visible = true;
    V acc[NQ];
    dots(j, acc);
    for (int u = 0; u < NQ; u++) {
      const float s = reduce_add(acc[u]) * scale;
      scores[u * ld + j] = s;
      mx[u] = max_keep_nan(mx[u], s);
    }
  }
  for (int u = 0; u < NQ; u++) {
    alignas(64) float lanes[W];
    store(lanes, mv[u]);
    for (int e = 0; e < W; e++) mx[u] = max_keep_nan(mx[u], lanes[e]);
    m[u] = mx[u];
  }
  return visible;
}

// The query heads Q[0 .. nh) (nh <= kGroupHeads) of one key/value head over its keys 0 .. n (key_scores) -> whether
// one was visible (if not, nothing is written). Each head's running max m[u] and sum l[u] of exp(score - m[u]), and
// O[u] = the exp-weighted sum of the value rows, divided by l[u] when `normalise` (a whole row's keys) or not (a
// chunk of them, merged later). Each key and value row is read once for the nh heads. scores: scratch of nh x ld
// floats, ld >= n rounded up to W; krow: HS floats.
template <int kHS, class T>
static bool attend_keys(float* const* O, float* m, float* l, const float* const* Q, int nh, const T* K,
                        const T* Vv, int64_t kv_rs, const uint8_t* mask, int64_t n, int64_t HS, float scale,
                        bool normalise, float* scores, int64_t ld, float* krow, int64_t ahead) {
  bool visible;
  switch (nh) {
    case 1: visible = key_scores<1, kHS>(scores, ld, m, Q, K, Vv, kv_rs, mask, n, HS, scale, krow, ahead); break;
    case 2: visible = key_scores<2, kHS>(scores, ld, m, Q, K, Vv, kv_rs, mask, n, HS, scale, krow, ahead); break;
    case 3: visible = key_scores<3, kHS>(scores, ld, m, Q, K, Vv, kv_rs, mask, n, HS, scale, krow, ahead); break;
    default: visible = key_scores<4, kHS>(scores, ld, m, Q, K, Vv, kv_rs, mask, n, HS, scale, krow, ahead);
  }
  if (!visible) return false;
  float inv[kGroupHeads];
  for (int u = 0; u < nh; u++) {  // (m NaN, or -inf with every visible score -inf: the weights are NaN)
    float* sc = scores + u * ld;
    const V vm = set1(m[u]);
    V vsum = zero();
    for (int64_t j = 0; j < n; j += W) {
      const int64_t r = std::min<int64_t>(W, n - j);
      const V p = exp(sub(loadn(sc + j, r), vm));  // masked keys: exp(-inf) = 0
      storen(sc + j, p, r);
      vsum = add(vsum, r == W ? p : load_partial(sc + j, r));
    }
    l[u] = reduce_add(vsum);
    inv[u] = normalise ? 1.f / l[u] : 1.f;
  }
  switch (nh) {
    case 1: value_sums<1, kHS>(O, scores, ld, inv, Vv, kv_rs, mask, n, HS); break;
    case 2: value_sums<2, kHS>(O, scores, ld, inv, Vv, kv_rs, mask, n, HS); break;
    case 3: value_sums<3, kHS>(O, scores, ld, inv, Vv, kv_rs, mask, n, HS); break;
    default: value_sums<4, kHS>(O, scores, ld, inv, Vv, kv_rs, mask, n, HS);
  }
  return true;
}

// attend_keys with the head size a constant where it is a common one (a row's loops unrolled, no trip counts to
// test per key): the same operations in the same order, the same bits
template <class T>
static bool attend_keys(float* const* O, float* m, float* l, const float* const* Q, int nh, const T* K,
                        const T* Vv, int64_t kv_rs, const uint8_t* mask, int64_t n, int64_t HS, float scale,
                        bool normalise, float* scores, int64_t ld, float* krow, int64_t ahead) {
  const auto with = [&](auto hs) {
    return attend_keys<decltype(hs)::value>(O, m, l, Q, nh, K, Vv, kv_rs, mask, n, HS, scale, normalise, scores, ld,
                                            krow, ahead);
  };
  switch (HS) {
    case 64: return with(std::integral_constant<int, 64>{});
    case 128: return with(std::integral_constant<int, 128>{});
    case 256: return with(std::integral_constant<int, 256>{});
    default: return with(std::integral_constant<int, 0>{});
  }
}

// One call's queries and keys, as the rows paths read them (T: the cache's element)
template <class T>
struct RowsCall {
  const float* q;
  const T *k, *v;
  const uint8_t* key_mask;
  Heads heads, kv_heads;
  int64_t Tq, Tk, Tkv;
  float scale;
};

// Every query head of key/value head g, at query i of sequence b, over the keys j0 .. j0 + n, kGroupHeads at a
// time (attend_keys): out(h) is where head h's output goes, done(h, O, visible, m, l) takes each head's results.
template <class T, class Out, class Done>
static void attend_heads(const RowsCall<T>& c, int64_t b, int64_t g, int64_t i, int64_t j0, int64_t n, bool normalise,
                         Out out, Done done) {
  const int64_t group = c.heads.NH / c.kv_heads.NH, HS = c.heads.HS, rs = c.heads.row_stride();
  const int64_t kv_rs = c.kv_heads.row_stride();
  const T* K = c.k + c.kv_heads.offset(b, g, c.Tkv) + j0 * kv_rs;
  const T* Vv = c.v + c.kv_heads.offset(b, g, c.Tkv) + j0 * kv_rs;
  const uint8_t* mask = c.key_mask ? c.key_mask + b * c.Tk + j0 : nullptr;
  const int64_t ld = round_up(std::max<int64_t>(n, 1), W);
  static thread_local ScratchBuffer buf;
  float* scores = buf.floats((size_t)(kGroupHeads * ld + HS));
  float* krow = scores + kGroupHeads * ld;  // (a key row of halves widened, where the ISA widens one value at a time)
  const bool span = g == 0 && 2 * n * kv_rs * (int64_t)sizeof(T) <= kSpanAheadBytes;
  const int64_t ahead = span ? kv_rs : HS;
  for (int64_t h0 = g * group; h0 < (g + 1) * group; h0 += kGroupHeads) {
    const int nh = (int)std::min<int64_t>(kGroupHeads, (g + 1) * group - h0);
    const float* Q[kGroupHeads];
    float* O[kGroupHeads];
    float m[kGroupHeads], l[kGroupHeads];
    for (int u = 0; u < nh; u++) {
      Q[u] = c.q + c.heads.offset(b, h0 + u, c.Tq) + i * rs;
      O[u] = out(h0 + u);
    }
    const bool visible =
        attend_keys(O, m, l, Q, nh, K, Vv, kv_rs, mask, n, HS, c.scale, normalise, scores, ld, krow, ahead);
    for (int u = 0; u < nh; u++) done(h0 + u, O[u], visible, m[u], l[u]);
  }
}

template <class T>
static void attention_rows(float* out, float* lse, const float* q, const T* k, const T* v, const uint8_t* key_mask,
                    int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t Tkv, int64_t HS, bool causal,
                    int64_t window, float scale, bool bthd) {
  const Heads heads{NH, HS, bthd};
  const RowsCall<T> call{q, k, v, key_mask, heads, {NKV, HS, bthd}, Tq, Tk, Tkv, scale};
  const int64_t rs = heads.row_stride(), ntasks = B * NKV * Tq;
  const KeyRange keys{Tk, Tk - Tq, window, causal};
  parallel_for(ntasks, B * NH * Tq * Tk * HS >= kParallelMacs / 4 ? threads() : 1, [&](int64_t t) {
    const int64_t bg = t / Tq, i = t % Tq, b = bg / NKV, g = bg % NKV;
    // (the keys from the window's first on, counted from there)
    const int64_t kbegin = keys.begin(i), kend = std::max<int64_t>(keys.end(i) - kbegin, 0);
    attend_heads(
        call, b, g, i, kbegin, kend, true, [&](int64_t h) { return out + heads.offset(b, h, Tq) + i * rs; },
        [&](int64_t h, float* O, bool visible, float m, float l) {
          if (!visible)  // no visible key: zeros, as the other paths
            for (int64_t d = 0; d < HS; d += W) storen(O + d, zero(), HS - d);
          lse[(b * NH + h) * Tq + i] = visible ? m + std::log(l) : kNegInf;
        });
  });
}

// Few (sequence, key/value head, query) rows over many keys (one sequence decoding: a few key/value heads, or one):
// each row's keys are split into chunks spread over the threads (split-K), each chunk giving every query head of
// the group its running max m, sum l and unnormalised output (attend_keys); the chunks are then merged with their
// log-sum-exp weights: M = max m_c, L = sum l_c e^(m_c - M), out = sum o_c e^(m_c - M) / L, lse = M + log L. A
// chunk also says whether it saw a key. Whether a call splits, and where, depends on its shape alone, never on the
// team size: the same bits on any number of threads (tests/test_threads.py), and a sequence decoding alone the same
// bits as in a serving batch (whose rows call this one by one).
constexpr int64_t kSplitKeys = 512;    // keys per chunk of long rows
constexpr int64_t kSplitMinKeys = 64;  // the fewest keys per chunk
constexpr int64_t kSplitTasks = 16;    // fewer rows than this split, into about this many tasks (or more)

template <class T>
static bool attention_rows_split(float* out, float* lse, const float* q, const T* k, const T* v,
                                 const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                                 int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale, bool bthd) {
  const int64_t rows = B * NKV * Tq;
  const int64_t span = window > 0 ? std::min(Tk, window) : Tk;  // the most keys one row sees
  if (rows >= kSplitTasks || B * NH * Tq * span * HS < kParallelMacs / 8) return false;
  const int64_t per_row = (kSplitTasks + rows - 1) / rows;  // (chunks per row for about kSplitTasks tasks)
  const int64_t csize = std::clamp(round_up((span + per_row - 1) / per_row, kSplitMinKeys), kSplitMinKeys, kSplitKeys);
  const int64_t chunks = (span + csize - 1) / csize;
  if (chunks < 2) return false;
  const Heads heads{NH, HS, bthd};
  const RowsCall<T> call{q, k, v, key_mask, heads, {NKV, HS, bthd}, Tq, Tk, Tkv, scale};
  const int64_t rs = heads.row_stride();
  const KeyRange keys{Tk, Tk - Tq, window, causal};
  const int64_t part = HS + 3;  // per query head and chunk: o (HS), m, l, whether the chunk holds a visible key
  static thread_local ScratchBuffer parts_buf;
  float* parts = parts_buf.floats((size_t)(B * NH * Tq * chunks * part));
  auto at = [&](int64_t b, int64_t h, int64_t i, int64_t c) { return parts + (((b * NH + h) * Tq + i) * chunks + c) * part; };
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t t = 0; t < rows * chunks; t++) {
    const int64_t row = t / chunks, ch = t % chunks;
    const int64_t bg = row / Tq, i = row % Tq, b = bg / NKV, g = bg % NKV;
    const int64_t j0 = keys.begin(i) + ch * csize, j1 = std::min(keys.end(i), j0 + csize);
    attend_heads(call, b, g, i, j0, std::max<int64_t>(j1 - j0, 0), false, [&](int64_t h) { return at(b, h, i, ch); },
                 [&](int64_t, float* P, bool visible, float m, float l) {
                   if (!visible)
                     for (int64_t d = 0; d < HS; d++) P[d] = 0.f;
                   P[HS] = visible ? m : kNegInf;
                   P[HS + 1] = visible ? l : 0.f;
                   P[HS + 2] = visible ? 1.f : 0.f;
                 });
  }
  for (int64_t bh = 0; bh < B * NH; bh++)  // merge the chunks of each row
    for (int64_t i = 0; i < Tq; i++) {
      const int64_t b = bh / NH, h = bh % NH;
      float* O = out + heads.offset(b, h, Tq) + i * rs;
      const float* P = at(b, h, i, 0);
      float M = kNegInf;
      bool visible = false;
      for (int64_t c = 0; c < chunks; c++) {
        M = max_keep_nan(M, P[c * part + HS]);
        visible |= P[c * part + HS + 2] != 0.f;
      }
      if (!visible) {  // no visible key: zeros, as the other paths
        for (int64_t d = 0; d < HS; d++) O[d] = 0.f;
        lse[bh * Tq + i] = kNegInf;
        continue;
      }
      float L = 0.f;  // (0 when every visible score is -inf: out 0 / 0 and lse NaN, as the other paths)
      for (int64_t d = 0; d < HS; d++) O[d] = 0.f;
      for (int64_t c = 0; c < chunks; c++) {
        const float mc = P[c * part + HS];
        if (mc == kNegInf) continue;
        const float w = std::exp(mc - M);
        L += P[c * part + HS + 1] * w;
        for (int64_t d = 0; d < HS; d++) O[d] += P[c * part + d] * w;
      }
      for (int64_t d = 0; d < HS; d++) O[d] /= L;
      lse[bh * Tq + i] = L > 0.f ? M + std::log(L) : std::numeric_limits<float>::quiet_NaN();
    }
  return true;
}

// Forward works on transposed tiles so that the online softmax runs across queries, W rows per vector, with no
// horizontal reductions: S^T (keys x BQ) = K Q^T, running max / sum per query as vectors, O^T (HS x BQ) +=
// V^T P^T. K and V are read in place as the broadcast operand (a cache of halves: each tile's rows widened first);
// only the query block is transposed, once.
template <class T>
static void forward(float* out, float* lse, const float* q, const T* k, const T* v, const uint8_t* key_mask,
                    int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t Tkv, int64_t HS, bool causal,
                    int64_t window, float scale, bool bthd) {
  if (B == 0 || NH == 0 || Tq == 0 || HS == 0) return;  // HS = 0 is refused by ops
  if (Tq <= kRowQueries) {
    if (attention_rows_split(out, lse, q, k, v, key_mask, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd))
      return;
    return attention_rows(out, lse, q, k, v, key_mask, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd);
  }
  const Heads heads{NH, HS, bthd}, kv_heads{NKV, HS, bthd};
  const int64_t rs = heads.row_stride(), kv_rs = kv_heads.row_stride(), group = NH / NKV;
  const int64_t offset = Tk - Tq;
  const KeyRange keys{Tk, offset, window, causal};
  const int64_t nqb = (Tq + BQ - 1) / BQ;
  const int64_t ntasks = B * NH * nqb;
  parallel_for<true>(ntasks, B * NH * Tq * Tk * HS >= kParallelMacs / 4 ? threads() : 1, [&](int64_t t) {
    [[maybe_unused]] const TileUse tiles;
    const int64_t bh = t / nqb, qb = t % nqb, b = bh / NH, h = bh % NH;
    const int64_t i0 = qb * BQ, nq = std::min(BQ, Tq - i0);
    const float* Q = q + heads.offset(b, h, Tq) + i0 * rs;
    // query head h reads key/value head h / group; a cache holds Tkv rows per sequence, Tk of them in use
    const T* K = k + kv_heads.offset(b, h / group, Tkv);
    const T* Vv = v + kv_heads.offset(b, h / group, Tkv);
    const uint8_t* mask = key_mask ? key_mask + b * Tk : nullptr;

    static thread_local ScratchBuffer buf;
    const bool widen = !std::is_same_v<T, float>;
    float* Qt = buf.floats((size_t)2 * HS * BQ + BK * BQ + (widen ? 2 * BK * HS : 0));
    float* Ot = Qt + HS * BQ;  // (HS x BQ)
    float* St = Ot + HS * BQ;  // (BK x BQ) scores, then probabilities
    float* Kf = St + BK * BQ;  // (BK x HS), (BK x HS): a tile's keys and values widened from halves
    float* Vf = Kf + BK * HS;
    transpose_rows(Qt, BQ, Q, rs, nq, HS, BQ);
    std::fill(Ot, Ot + HS * BQ, 0.f);

    const V sc = set1(scale), ninf = set1(kNegInf);
    V m[QV], l[QV], qi[QV];  // running max and sum per query; query index within the block
    for (int64_t u = 0; u < QV; u++) {
      m[u] = ninf;
      l[u] = zero();
      alignas(64) float idx[W];
      for (int64_t e = 0; e < W; e++) idx[e] = (float)(u * W + e);
      qi[u] = load(idx);
    }
    const int64_t kend = keys.end(i0 + nq - 1);
    for (int64_t j0 = keys.begin(i0); j0 < kend; j0 += BK) {
      const int64_t nk = std::min(BK, kend - j0);
      const auto [Kt, krs] = rows_as_floats(K + j0 * kv_rs, nk, HS, kv_rs, Kf);  // (the tile's rows, their stride)
      const auto [Vt, vrs] = rows_as_floats(Vv + j0 * kv_rs, nk, HS, kv_rs, Vf);
      tile_gemm(St, BQ, Kt, krs, 1, Qt, BQ, nk, BQ, HS, false);
      // key j0 + j is hidden from query i0 + i when j0 + j > i0 + i + offset, i.e. i < j0 + j - i0 - offset, and
      // by a window when j0 + j <= i0 + i + offset - window, i.e. i > j0 + j - i0 - offset + window - 1
      const bool diagonal = causal && j0 + nk - 1 > i0 + offset;
      const bool edge = window > 0 && keys.begin(i0 + nq - 1) > j0;
      V mx[QV];
      for (int64_t u = 0; u < QV; u++) mx[u] = ninf;
      bool padded = false;
      for (int64_t j = 0; j < nk; j++) {
        float* s = St + j * BQ;
        if (mask && !mask[j0 + j]) {  // padded-out key: no query sees it
          for (int64_t u = 0; u < QV; u++) store(s + u * W, ninf);
          padded = true;
          continue;
        }
        const V hidden_below = set1((float)(j0 + j - i0 - offset));
        const V hidden_above = set1((float)(j0 + j - i0 - offset + window - 1));
        for (int64_t u = 0; u < QV; u++) {
          V x = mul(load(s + u * W), sc);
          if (diagonal) x = select_lt(qi[u], hidden_below, ninf, x);
          if (edge) x = select_gt(qi[u], hidden_above, ninf, x);
          store(s + u * W, x);
          mx[u] = max(mx[u], x);
        }
      }
      V shift[QV], keep[QV], sum[QV];
      for (int64_t u = 0; u < QV; u++) {
        const V m_new = max(m[u], mx[u]);
        shift[u] = select_gt(m_new, ninf, m_new, zero());  // a query that has seen no key yet: exp(-inf) = 0
        keep[u] = exp(sub(m[u], shift[u]));
        m[u] = m_new;
        sum[u] = zero();
      }
      for (int64_t j = 0; j < nk; j++) {
        float* s = St + j * BQ;
        for (int64_t u = 0; u < QV; u++) {
          const V p = exp(sub(load(s + u * W), shift[u]));
          store(s + u * W, p);
          sum[u] = add(sum[u], p);
        }
      }
      for (int64_t u = 0; u < QV; u++) l[u] = fma(l[u], keep[u], sum[u]);
      for (int64_t d = 0; d < HS; d++)
        for (int64_t u = 0; u < QV; u++) store(Ot + d * BQ + u * W, mul(load(Ot + d * BQ + u * W), keep[u]));
      if ((padded || diagonal || edge) && !rows_finite(Vt, nk, HS, vrs)) {
        // a non-finite value row some query does not see: each query sums its own visible keys (rare, scalar),
        // as the product would give it 0 * inf = NaN
        for (int64_t j = 0; j < nk; j++) {
          if (mask && !mask[j0 + j]) continue;
          const float* vr = Vt + j * vrs;
          const int64_t i_end = edge ? std::min<int64_t>(nq, j0 + j - i0 - offset + window) : nq;
          for (int64_t i = diagonal ? std::max<int64_t>(0, j0 + j - i0 - offset) : 0; i < i_end; i++)
            for (int64_t d = 0; d < HS; d++) Ot[d * BQ + i] += St[j * BQ + i] * vr[d];
        }
      } else {
        tile_gemm(Ot, BQ, Vt, 1, vrs, St, BQ, HS, BQ, nk, true);  // O^T += V^T P^T
      }
    }
    // rows of out = columns of O^T / l, transposed back W x W; lse = m + log l (-inf when no key was visible;
    // NaN when l is NaN or 0 for a row that sees keys: a NaN score, or every visible score -inf)
    alignas(64) float mf[BQ], lf[BQ], inv[BQ];  // inv: 1 / row sum
    for (int64_t u = 0; u < QV; u++) {
      store(mf + u * W, m[u]);
      store(lf + u * W, l[u]);
    }
    for (int64_t i = 0; i < BQ; i++) {
      const bool seen = i < nq && keys.sees_a_key(mask, i0 + i);
      inv[i] = seen ? 1.f / lf[i] : 0.f;  // (l = 0: inf, and O 0 * inf = NaN)
      if (i < nq)
        lse[bh * Tq + i0 + i] = !seen ? kNegInf : lf[i] > 0.f ? mf[i] + std::log(lf[i])
                                                             : std::numeric_limits<float>::quiet_NaN();
    }
    float* O = out + heads.offset(b, h, Tq) + i0 * rs;
    for (int64_t i = 0; i < nq; i += W) {
      const V iv = load(inv + i);
      for (int64_t d0 = 0; d0 < HS; d0 += W) {
        const int64_t nd = std::min<int64_t>(W, HS - d0);
        V r[W];
        for (int64_t dd = 0; dd < W; dd++) r[dd] = dd < nd ? mul(load(Ot + (d0 + dd) * BQ + i), iv) : zero();
        transpose(r);
        for (int64_t ii = 0; ii < W && i + ii < nq; ii++) storen(O + (i + ii) * rs + d0, r[ii], nd);
      }
    }
  });
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                       int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale, bool bthd) {
  forward(out, lse, q, k, v, key_mask, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd);
}
void attention_forward_f16(float* out, float* lse, const float* q, const uint16_t* k, const uint16_t* v,
                           const uint8_t* key_mask, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                           int64_t Tkv, int64_t HS, bool causal, int64_t window, float scale, bool bthd) {
  forward(out, lse, q, k, v, key_mask, B, NH, NKV, Tq, Tk, Tkv, HS, causal, window, scale, bthd);
}

// dq (B, NH, Tq, HS), dk, dv (B, NKV, Tk, HS) overwritten. Recomputes the probabilities from lse, tile by tile;
// one task per (batch, key/value head), which walks the group of query heads that read it and sums their dk, dv
// (the first head writes them, the rest add), so no two threads touch the same gradient row.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_mask, int64_t B,
                        int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, bool causal, int64_t window,
                        float scale, bool bthd) {
  if (B == 0 || NH == 0 || HS == 0) return;
  const int64_t HSP = round_up(HS, W);
  const Heads heads{NH, HS, bthd}, kv_heads{NKV, HS, bthd};
  const int64_t rs = heads.row_stride(), kv_rs = kv_heads.row_stride(), group = NH / NKV;
  const int64_t offset = Tk - Tq;
  const int64_t ntasks = B * NKV;
  parallel_for<true>(ntasks, B * NH * Tq * Tk * HS >= kParallelMacs / 4 ? threads() : 1, [&](int64_t bkv) {
    [[maybe_unused]] const TileUse tiles;
    const int64_t b = bkv / NKV, kvh = bkv % NKV;
    const int64_t k_off = kv_heads.offset(b, kvh, Tk);
    const float* K = k + k_off;
    const float* Vv = v + k_off;
    const uint8_t* mask = key_mask ? key_mask + b * Tk : nullptr;

    static thread_local ScratchBuffer buf;
    static thread_local TileMask tm;
    float* Qp = buf.floats((size_t)3 * Tq * HSP + Tq + 2 * HS * BK + 3 * BK * HSP + 2 * BQ * BK);
    float* dOp = Qp + Tq * HSP;
    float* dQp = dOp + Tq * HSP;
    float* D = dQp + Tq * HSP;  // D_i = dout_i . out_i
    float* Kt = D + Tq;
    float* Vt = Kt + HS * BK;
    float* Kp = Vt + HS * BK;
    float* dKa = Kp + BK * HSP;
    float* dVa = dKa + BK * HSP;
    float* P = dVa + BK * HSP;
    float* dS = P + BQ * BK;
    for (int64_t g = 0; g < group; g++) {
      const int64_t h = kvh * group + g, bh = b * NH + h;
      const int64_t q_off = heads.offset(b, h, Tq);
      const float* Q = q + q_off;
      const float* dO = dout + q_off;
      const float* O = out + q_off;
      const float* L = lse + bh * Tq;
      pad_rows(Qp, Q, Tq, HS, HSP, rs);
      pad_rows(dOp, dO, Tq, HS, HSP, rs);
      std::fill(dQp, dQp + Tq * HSP, 0.f);
      for (int64_t i = 0; i < Tq; i++) {
        float acc = 0.f;
        for (int64_t d = 0; d < HS; d++) acc += dO[i * rs + d] * O[i * rs + d];
        D[i] = acc;
      }

      for (int64_t j0 = 0; j0 < Tk; j0 += BK) {
        const int64_t nk = std::min(BK, Tk - j0);
        transpose_rows(Kt, BK, K + j0 * kv_rs, kv_rs, nk, HS, BK);
        transpose_rows(Vt, BK, Vv + j0 * kv_rs, kv_rs, nk, HS, BK);
        pad_rows(Kp, K + j0 * kv_rs, nk, HS, HSP, kv_rs);
        std::fill(dKa, dKa + 2 * BK * HSP, 0.f);  // dKa and dVa
        tm.set(mask, j0, nk);
        // the queries that see a key of this tile: from the diagonal's to the window's last
        const int64_t i_first = causal ? std::max<int64_t>(0, j0 - offset) : 0;
        const int64_t i_last = window > 0 ? std::min(Tq, j0 + nk - 1 - offset + window) : Tq;
        for (int64_t i0 = i_first; i0 < i_last; i0 += BQ) {
          const int64_t nq = std::min(BQ, i_last - i0);
          tile_gemm(P, BK, Q + i0 * rs, rs, 1, Kt, BK, nq, BK, HS, false);
          tile_gemm(dS, BK, dO + i0 * rs, rs, 1, Vt, BK, nq, BK, HS, false);
          for (int64_t i = 0; i < nq; i++) {
            float* p = P + i * BK;
            float* ds = dS + i * BK;
            const float li = L[i0 + i];
            const int64_t limit = causal ? i0 + i + offset - j0 : BK;
            const int64_t low = window > 0 ? i0 + i + 1 + offset - window - j0 : 0;
            if (li == kNegInf || limit < 0 || low >= nk) {  // the row sees no key here: no gradient flows
              std::fill(p, p + BK, 0.f);
              std::fill(ds, ds + BK, 0.f);
              continue;
            }
            const V lv = set1(li), Dv = set1(D[i0 + i]), sc = set1(scale);
            for (int64_t j = 0; j < BK; j += W) {
              const V pj = exp(sub(tm.scores(p, j, sc, limit, low), lv));
              store(p + j, pj);
              store(ds + j, mul(mul(pj, sub(load(ds + j), Dv)), sc));
            }
          }
          tile_gemm(dVa, HSP, P, 1, BK, dOp + i0 * HSP, HSP, nk, HSP, nq, true);   // dV += P^T dO
          tile_gemm(dKa, HSP, dS, 1, BK, Qp + i0 * HSP, HSP, nk, HSP, nq, true);   // dK += dS^T Q
          tile_gemm(dQp + i0 * HSP, HSP, dS, BK, 1, Kp, HSP, nq, HSP, nk, true);   // dQ += dS K
        }
        for (int64_t j = 0; j < nk; j++) {
          float* dkr = dk + k_off + (j0 + j) * kv_rs;
          float* dvr = dv + k_off + (j0 + j) * kv_rs;
          if (g == 0) {
            std::memcpy(dkr, dKa + j * HSP, HS * sizeof(float));
            std::memcpy(dvr, dVa + j * HSP, HS * sizeof(float));
          } else {
            for (int64_t d = 0; d < HS; d += W) {
              const int64_t nd = std::min<int64_t>(W, HS - d);
              storen(dkr + d, add(loadn(dkr + d, nd), loadn(dKa + j * HSP + d, nd)), nd);
              storen(dvr + d, add(loadn(dvr + d, nd), loadn(dVa + j * HSP + d, nd)), nd);
            }
          }
        }
      }
      for (int64_t i = 0; i < Tq; i++) std::memcpy(dq + q_off + i * rs, dQp + i * HSP, HS * sizeof(float));
    }
  });
}

}  // namespace PT_NS
}  // namespace pt
