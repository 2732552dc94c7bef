// The int8-activation products of 8-13 and more rows (by type: min_rows) on AMX-INT8 tiles (prefill, batched
// serving steps). The VNNI panels of int8_panel.h are already B tiles: per 32 values of a block, 8 rows of 64 bytes,
// row t holding each of the 16 outputs' quad t of unsigned bytes. So one `tdpbsud` multiplies A = 16 quantised
// activation rows (signed, read in place at stride IC; zero rows past the last) by a panel's 32 values (a block, or
// a K type's sub-block; `tdpbssd` for the types with an offset, their panels' bytes made signed again: kSignedTile)
// into a 16 x 16 tile of exact int32 sums, so that each block pair's scales apply to their own sums: each C tile goes
// to L1 and is scaled into float accumulators by int8_panel.h's add_block, as the panels do (a row's bits in any
// batch). Two sets of tiles (C, A, B) alternate unit by unit, so the tile unit multiplies the next 32 values while
// the vector unit scales the last; a thread's groups of 16 outputs are one pipeline. Fewer rows, the types scaled
// per 16 values (Q2_K, Q3_K, Q6_K) and IQ4_XS: the VNNI copy (avx512::matmul_q8_vnni_rows). Compiled only with the
// AMX flags, used where dispatch.cpp finds AMX-INT8 and the tile-data permission (amx::supported()), unless
// PYTRANSFORMER_INT8_DOT=vpdpbusd asks for the VNNI panels. bench/NOTES.md, sessions 11, 13, 14, 21 and 22.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "amx_tiles.h"
#include "int8_blocks.h"
#include "int8_rows.h"
#include "pytransformer/kernels.h"
#include "quant.h"
#define PT_Q8_NS tiles
#include "int8_panel.h"

namespace pt {
namespace avx512 {  // (int8.cpp's, compiled for AVX-512: the rounding of quantize_row_q8_0 / q8_K, vectorised, and
                    // the VNNI products of rows it quantised)
void quantize_rows(Q8Rows q8[2], const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC, int64_t rows);
void matmul_q8_vnni_rows(const QProduct* p, int64_t n, const Q8Rows q8[2], int64_t N, int64_t IC);
}
namespace PT_NS {
namespace PT_Q8_NS {
namespace {

// How far ahead of a panel's packed bytes its making asks for the weight's next bytes (a prefetch never faults, past
// the end too). A step of 16 rows reads each weight once, from memory: the few lines a panel reads came late (the
// makers ~32% of a SmolLM2 16-row step in perf), and asked for 4 KiB on (5-36 lines a panel, 2-13 blocks) the step
// ran 1.13-1.20x faster (1-8 KiB alike; bench/NOTES.md, session 21).
constexpr int64_t kPrefetch = 4096;

// Unit u's tiles (set k = u % 2): C k (16 x 16 int32), A 2 + k (16 rows x 32 bytes), B 4 + k (8 rows of the 16
// outputs' quads)
void configure() {
  amx::TileConfig cfg;
  for (int t = 0; t < 6; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  cfg.colsb[2] = cfg.colsb[3] = 32;
  cfg.rows[4] = cfg.rows[5] = 8;
  _tile_loadconfig(&cfg);
}

// Whether the tiles take type B's panels signed: the values v themselves, not v + kOff (tdpbssd), for the 32-value
// types with an offset (Q4_0, Q5_0, Q8_0, IQ4_NL): their sums then need no kOff (sum of a) taken off each row of
// each unit, the same integers (products at 64 rows 1.07-1.15x, a Gemma 3 16-row step 1.03x; bench/NOTES.md,
// session 22). The others' values are unsigned (tdpbsud); the K types' offsets go with their scales.
template <class B>
constexpr bool kSignedTile = !Vec<B>::kScales && Panel<Vec<B>>::kOff != 0;

// C k = the sums of the 16 rows at A (stride IC) with the panel's 32 values at B, signed or unsigned (S) (the tile
// numbers are immediates)
template <int k, bool S>
inline void issue(const int8_t* A, int64_t IC, const void* B) {
#define PT_TILE_UNIT(c, ta, tb)  \
  _tile_loadd(tb, B, 64);        \
  _tile_loadd(ta, A, IC);        \
  _tile_zero(c);                 \
  if constexpr (S)               \
    _tile_dpbssd(c, ta, tb);     \
  else                           \
    _tile_dpbsud(c, ta, tb)
  if constexpr (k == 0) {
    PT_TILE_UNIT(0, 2, 4);
  } else {
    PT_TILE_UNIT(1, 3, 5);
  }
#undef PT_TILE_UNIT
}

// Q8Rows' scales and sums regrouped by row tile and block, so that a unit's 16 rows are at constant offsets from one
// pointer: d, ds (tile, block, row: 16 floats a block) and sums (tile, block, row, the block's kV / 16 sums)
struct TileRows {
  const int8_t* q;
  const float *d, *ds;
  const int16_t* sums;
};

// a (rows a whole number of tiles) regrouped for blocks of kV values (32 or 256), in this thread's scratch for that
// size (valid until its next call for it)
TileRows regroup(const Q8Rows& a, int64_t rows, int64_t IC, int64_t kV) {
  const int64_t nb = IC / kV, g = kV / 16, tiles = rows / 16;
  static thread_local ScratchBuffer bufs[2];
  float* d = bufs[kV == 256].floats((size_t)(rows * nb * 2 + rows * IC / 32 + 16));
  float* ds = a.ds ? d + rows * nb : nullptr;
  int16_t* sums = reinterpret_cast<int16_t*>(d + 2 * rows * nb);
  for (int64_t t = 0; t < tiles; t++)
    for (int64_t b = 0; b < nb; b++)
      for (int64_t m = 0, n = 16 * t; m < 16; m++, n++) {
        const int64_t at = (t * nb + b) * 16 + m;
        d[at] = a.d[n * nb + b];
        if (ds) ds[at] = a.ds[n * nb + b];
        std::memcpy(sums + at * g, a.sums + (n * IC + b * kV) / 16, (size_t)g * sizeof(int16_t));
      }
  return {a.q, d, ds, sums};
}

// Whether a packed run of type B is a B tile as it lies (Q8_0: its values' bytes, the run's dword t of every row in
// row t, signed): its units' B tiles are then loaded from the weight and its panels hold its scales alone (the
// Q8_0 3072 x 576 product at 16 rows 1.18x, a Gemma 3 16-row step 1.08-1.10x: its Q8_0 head is ~38% of it)
template <class B>
constexpr bool kDirectTile = B::kType == kQ8_0;

// The packed run of block b of the weight's 16 rows o0 .. o0 + 16 (packed.h: the runs of a group one after another)
template <class B>
inline const uint8_t* packed_run(const uint8_t* packed, int64_t o0, int64_t b, int64_t nb) {
  return packed + (o0 * nb + b * kPackRows) * (int64_t)sizeof(B);
}

// Panel P = block b of the weight's 16 rows o0 .. o0 + 16 (rows past OC: zeros): from their packed run where the
// weight has one (packed.h; d alone where the run is the B tile: kDirectTile), else from the file's blocks
// (int8_panel.h's file_panel, as for_panel_groups)
template <class B>
void make_panel(Panel<Vec<B>>& P, const QProduct& p, const uint8_t* packed, int64_t o0, int64_t b, int64_t nb) {
  bool made = false;
  if constexpr (packable(B::kType))
    if (packed) {
      const uint8_t* run = packed_run<B>(packed, o0, b, nb);
      if constexpr (kDirectTile<B>) {
        P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)run));
        return;
      }
      packed_panel<B>(P, run), made = true;
    }
  if (!made) {
    static const uint8_t zero[sizeof(B)] = {};
    const uint8_t* at[16];
    for (int r = 0; r < 16; r++) at[r] = o0 + r < p.OC ? p.weight + ((o0 + r) * nb + b) * (int64_t)sizeof(B) : zero;
    file_panel<B>(P, at);
  }
  if constexpr (kSignedTile<B>)  // (v + kOff -> v; Q8_0's and IQ4_NL's + 128: their signed bytes again)
    for (int t = 0; t < 8; t++) P.q[0][t] = _mm512_sub_epi8(P.q[0][t], _mm512_set1_epi8((char)Panel<Vec<B>>::kOff));
}

// out (rows ldo floats apart) rows 0 .. N, columns 16 g0 .. 16 g1 (those under OC) = the weight's rows there times
// the quantised rows a (row tiles of 16, padded with zero rows past N) + bias; panels: 3 nb panels' scratch (group
// g's block b: panels[g % 3][b]).
// A run is a row tile against a group of 16 outputs, its units 32 values each (a block, or a K type's sub-block),
// the groups' runs one after another: each unit's C tile is stored and the next unit's product issued on the other
// tiles (across runs and groups too) before the vector unit scales the stored sums into the run's 16 accumulators
// (registers) by add_block, the panels' order (a row's bits in any batch); the K types' sums of sc[s] C_s gather in
// I until a block's last sub-block. A group's first run makes each panel `ahead` blocks (2-8, counted across groups:
// at most two groups on) before its tiles load it, after the next unit's loads: a tile load waits for the stores
// before it to reach the cache, so panels made all at once before the tiles held the first load back (15% of a
// 16-row product), made 2 blocks ahead each load waited (the tile products alone, their scaling left out: 1.38x /
// 1.18x the VNNI panels' speed; 8 ahead 1.62x / 1.46x), and made before the next unit's loads those loads waited
// (the Q4_1 3072 x 576 product at 16 rows 1.02x the panels' speed, against 1.11-1.17x after). Later runs reuse them.
template <class B>
void tile_rows(const QProduct& p, const uint8_t* packed, Panel<Vec<B>>* panels, const TileRows& a, int64_t N,
               int64_t IC, int64_t g0, int64_t g1) {
  using T = Vec<B>;
  constexpr int kV = 32 * T::kN, kS = T::kN, kG = kV / 16;
  const int64_t nb = IC / kV, units = nb * kS, rows = (N + 15) / 16, ahead = std::min<int64_t>(8, nb + 1);
  if (g0 >= g1) return;
  auto panel = [&](int64_t g) { return panels + g % 3 * nb; };  // (group g's panels)
  int64_t mg = g0, mb = 0;  // (the next panel to make: group mg's block mb)
  auto make = [&]() {  // (that panel, then the next one on; packed: asks for the bytes kPrefetch on)
    if (mg >= g1) return;
    make_panel<B>(panel(mg)[mb], p, packed, 16 * mg, mb, nb);
    if constexpr (packable(B::kType))
      if (packed) {
        const uint8_t* next = packed_run<B>(packed, 16 * mg, mb, nb) + kPrefetch;
        for (int64_t i = 0; i < kPackRows * (int64_t)sizeof(B); i += 64) __builtin_prefetch(next + i, 0, 3);
      }
    if (++mb == nb) mb = 0, mg++;
  };
  // unit u of the run of row tile r against group g: A rows at q + u / kS kV + 32 (u % kS), B the panel's quads (or
  // the packed run's values: kDirectTile)
  const bool direct = kDirectTile<B> && packed;
  auto start = [&](const int8_t* q, int64_t g, int64_t u, bool odd) {
    const int8_t* A = q + u / kS * kV + 32 * (u % kS);
    const void* Bt = direct ? packed_run<B>(packed, 16 * g, u / kS, nb) + packed_values<B>()
                            : (const void*)&panel(g)[u / kS].q[u % kS][0];
    if (odd) issue<1, kSignedTile<B>>(A, IC, Bt);
    else issue<0, kSignedTile<B>>(A, IC, Bt);
  };
  for (int64_t at = 0; at < ahead; at++) make();
  alignas(64) int32_t C[2][16][16];  // (the sums of unit v: C[v % 2])
  alignas(64) int32_t I[16][16];
  start(a.q, g0, 0, false);
  bool odd = false;
  for (int64_t g = g0; g < g1; g++)
    for (int64_t r = 0; r < rows; r++) {
      const int8_t* q = a.q + 16 * r * IC;
      const Panel<T>* P = panel(g);
      const bool last = r + 1 == rows;  // (the next run: row tile r + 1, or group g + 1's first)
      const int8_t* q_next = last ? a.q : q + 16 * IC;
      const int64_t g_next = last ? g + 1 : g;
      const float *d = a.d + r * nb * 16, *ds = T::kScales ? d : a.ds + r * nb * 16;
      const int16_t* s16 = a.sums + r * nb * 16 * kG;
      __m512 acc[16];
#pragma GCC unroll 16
      for (int m = 0; m < 16; m++) acc[m] = _mm512_setzero_ps();
      for (int64_t u = 0; u < units; u++, odd = !odd) {
        if (odd) _tile_stored(1, C[1], 64);
        else _tile_stored(0, C[0], 64);
        if (u + 1 < units) start(q, g, u + 1, !odd);
        else if (!last || g + 1 < g1) start(q_next, g_next, 0, !odd);
        const int64_t b = u / kS;
        const int s = (int)(u % kS);
        if (r == 0 && s == 0) make();  // (block b + ahead of the groups from g0)
        const Panel<T>& Pb = P[b];
#pragma GCC unroll 16
        for (int m = 0; m < 16; m++) {
          __m512i I_m = _mm512_load_si512(C[odd][m]);
          if constexpr (T::kScales) {
            I_m = _mm512_mullo_epi32(I_m, Pb.sc[s]);
            if (s) I_m = _mm512_add_epi32(_mm512_load_si512(I[m]), I_m);
            if (s < kS - 1) {
              _mm512_store_si512(I[m], I_m);
              continue;
            }
          }
          acc[m] = add_block<T, kSignedTile<B> ? 0 : Panel<T>::kOff>(
              acc[m], I_m, Pb, _mm512_set1_ps(d[16 * b + m]), _mm512_set1_ps(ds[16 * b + m]), s16 + (16 * b + m) * kG);
        }
      }
#pragma GCC unroll 16
      for (int m = 0; m < 16; m++)
        if (16 * r + m < N) store16(p.out + (16 * r + m) * p.ldo + 16 * g, acc[m], p.bias, 16 * g, p.OC - 16 * g);
    }
}

// The product p of N rows (min_rows or more) quantised into a (whole row tiles: zero rows past N), groups of 16
// outputs split among the threads in runs, each thread configuring its tiles once
template <class B>
void product(const QProduct& p, const TileRows& a, int64_t N, int64_t IC) {
  const uint8_t* packed = packed_rows(p);
  const int64_t groups = (p.OC + 15) / 16;
#pragma omp parallel num_threads((int)std::min<int64_t>(threads(), groups))
  {
    int64_t t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
    configure();
    static thread_local ScratchBuffer buf;
    auto* panels =
        reinterpret_cast<Panel<Vec<B>>*>(buf.floats((size_t)(3 * IC / B::kValues) * sizeof(Panel<Vec<B>>) / 4));
    tile_rows<B>(p, packed, panels, a, N, IC, groups * t / nt, groups * (t + 1) / nt);
    _tile_release();
  }
}

// The fewest rows whose product with a weight of type qtype runs on tiles (one row tile, padded with zero rows);
// fewer rows go to the VNNI panels. Measured (1536 x 1024, one thread; bench/NOTES.md, session 22), tiles against
// panels: Q8_0, its B tiles read from the packed runs, 1.28x at 8 rows; Q4_0, Q5_0, Q5_1 and IQ4_NL 1.08-1.16x at
// 10; Q4_1, Q4_K and Q5_K about even at 12-13 (their panels are cheap, or their scaling dearer). Never: the types
// scaled every 16 values (Q2_K, Q3_K, Q6_K: tile products 16 deep lost to the panels, 4.7-5.5 ms against 3.4) and
// IQ4_XS (0.77-0.99x from 13 to 512 rows).
int64_t min_rows(int qtype) {
  switch (qtype) {
    case kQ8_0: return 8;
    case kQ4_0: case kQ5_0: case kQ5_1: case kIQ4_NL: return 10;
    case kQ4_1: case kQ4_K: case kQ5_K: return 13;
    default: return std::numeric_limits<int64_t>::max();
  }
}

}  // namespace
}  // namespace PT_Q8_NS

void matmul_q8_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC) {
  if (writes_nothing(p, n, N)) return;
  auto tiled = [&](const QProduct& q) { return q.OC > 0 && N >= tiles::min_rows(q.qtype); };
  const bool tile = std::any_of(p, p + n, tiled);
  Q8Rows q8[2];
  avx512::quantize_rows(q8, p, n, inp, N, IC, tile ? (N + 15) / 16 * 16 : N);
  static thread_local std::vector<QProduct> rest;  // (the products left to the VNNI panels)
  rest.clear();
  for (int64_t i = 0; i < n; i++)
    if (!tiled(p[i])) rest.push_back(p[i]);
  if (!rest.empty()) avx512::matmul_q8_vnni_rows(rest.data(), (int64_t)rest.size(), q8, N, IC);
  if (!tile) return;
  tiles::TileRows a[2] = {};
  for (int k = 0; k < 2; k++)
    if (q8[k].q) a[k] = tiles::regroup(q8[k], (N + 15) / 16 * 16, IC, k ? 256 : 32);
  for (int64_t i = 0; i < n; i++) {
    if (!tiled(p[i])) continue;
    auto run = [&](auto blk) { tiles::product<decltype(blk)>(p[i], a[q8_block(p[i].qtype) == 256], N, IC); };
    if (!with_block(RegisterBlocks{}, p[i].qtype, run)) with_block(RowBlocks{}, p[i].qtype, run);
  }
}

}  // namespace PT_NS
}  // namespace pt
