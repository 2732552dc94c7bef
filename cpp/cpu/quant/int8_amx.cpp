// The int8-activation products of 16 and more rows on AMX-INT8 tiles (prefill, batched serving steps). The VNNI
// panels of int8_panel.h are already B tiles: per 32 values of a block, 8 rows of 64 bytes, row t holding each of
// the 16 outputs' quad t of unsigned bytes. So one `tdpbsud` multiplies A = 16 quantised activation rows (signed,
// read in place at stride IC) by a panel's 32 values (a block, or a K type's sub-block) into a 16 x 16 tile of
// exact int32 sums, so that each block pair's scales apply to their own sums: each C tile goes to L1 and is scaled
// into float accumulators by int8_panel.h's add_block, as the panels do (a row's bits in any batch). Per 32 values
// both panels' B tiles (tmm6-7) are loaded once and every row tile runs against them, double-buffered (tmm0-1 /
// tmm2-3 C, tmm4 / tmm5 A) so the tile unit works while the vector unit scales. Fewer than 16 rows, and the types
// scaled per 16 values (Q2_K, Q3_K, Q6_K): the VNNI copy (avx512::matmul_q8_vnni_rows). Compiled only with the
// AMX flags, used where dispatch.cpp finds AMX-INT8 and the tile-data permission (amx::supported()) and
// PYTRANSFORMER_INT8_DOT=tiles asks for it: no faster than the VNNI panels on the machine measured (dispatch.cpp).
// bench/NOTES.md, sessions 11, 13 and 14.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
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

constexpr int64_t kMinRows = 16;  // one A tile of rows; fewer go to the VNNI panels

// tmm0-3: C, 16 x 16 int32; tmm4-5: A, 16 rows x 32 bytes; tmm6-7: B, 8 rows of 16 outputs' quads
void configure() {
  amx::TileConfig cfg;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  cfg.colsb[4] = cfg.colsb[5] = 32;
  cfg.rows[6] = cfg.rows[7] = 8;
  _tile_loadconfig(&cfg);
}

// C tiles 2 u, 2 u + 1 = the sums of the 16 rows at A (stride IC) with the B tiles in 6 and 7 (A in tile 4 + u).
// Issued a row tile ahead of the epilogue that reads them, so the tile unit works while the vector unit scales.
template <int u>
inline void issue(const int8_t* A, int64_t IC) {
#define PT_TILE_STEP(c0, c1, ta) /* (the tile numbers are immediates) */ \
  _tile_zero(c0);                                                      \
  _tile_zero(c1);                                                      \
  _tile_loadd(ta, A, IC);                                              \
  _tile_dpbsud(c0, ta, 6);                                             \
  _tile_dpbsud(c1, ta, 7)
  if constexpr (u == 0) {
    PT_TILE_STEP(0, 1, 4);
  } else {
    PT_TILE_STEP(2, 3, 5);
  }
#undef PT_TILE_STEP
}

// out (rows ldo floats apart) rows 0 .. N, columns o0 .. o0 + nc = the group's panels p times the quantised rows
// (row tiles of 16, padded with zero rows past N; das: Q8Rows' da (sum a), the 32-value types') + bias.
// Per 32 values (a block, or a K type's sub-block) both B tiles are loaded once and every row tile runs against
// them; acc (rows x 32 floats) and I (the K types' sum_s sc[s] C_s) are per-thread scratch.
template <class T>
void tile_rows(float* out, int64_t ldo, const Panel<T>* p, const int8_t* q, const float* da, const int16_t* sums,
               const float* das, const float* bias, int64_t N, int64_t nb, int64_t IC, int64_t o0, int64_t nc) {
  constexpr int kV = 32 * T::kN;
  const int64_t tiles = (N + 15) / 16;
  static thread_local ScratchBuffer buf;
  float* acc = buf.floats((size_t)(tiles * 16 * 32 * 2));  // row n, panel j: acc + 32 n + 16 j
  int32_t* I = reinterpret_cast<int32_t*>(acc + tiles * 16 * 32);
  std::memset(acc, 0, (size_t)(tiles * 16 * 32) * sizeof(float));
  alignas(64) int32_t C[kPanelP][16][16];  // one row tile's sums, panel j
  for (int64_t b = 0; b < nb; b++) {
    const Panel<T>* pb = p + b * kPanelP;
    for (int s = 0; s < T::kN; s++) {
      _tile_loadd(6, &pb[0].q[s][0], 64);
      _tile_loadd(7, &pb[1].q[s][0], 64);
      const int8_t* a = q + b * kV + 32 * s;
      issue<0>(a, IC);
      for (int64_t r = 0; r < tiles; r++) {
        const bool odd = r % 2;
        if (r + 1 < tiles) {
          if (odd) issue<0>(a + (r + 1) * 16 * IC, IC);
          else issue<1>(a + (r + 1) * 16 * IC, IC);
        }
        if (odd) {
          _tile_stored(2, C[0], 64);
          _tile_stored(3, C[1], 64);
        } else {
          _tile_stored(0, C[0], 64);
          _tile_stored(1, C[1], 64);
        }
        for (int m = 0; m < 16; m++) {  // (block b's sums: add_block, the panels' order, so a row is the same bits
          const int64_t n = 16 * r + m;  // in any batch; the K types' sums of sc[s] C_s gathered in I until the last)
          const int16_t* s16 = sums + (n * IC + b * kV) / 16;
          const __m512 dd = _mm512_set1_ps(da[n * nb + b]), ds = T::kScales ? dd : _mm512_set1_ps(das[n * nb + b]);
          for (int j = 0; j < kPanelP; j++) {
            float* an = acc + 32 * n + 16 * j;
            int32_t* in = I + 32 * n + 16 * j;
            __m512i x = _mm512_load_si512(C[j][m]);
            if (T::kScales) x = _mm512_mullo_epi32(x, pb[j].sc[s]);
            if (s) x = _mm512_add_epi32(_mm512_load_si512(in), x);
            if (s < T::kN - 1) _mm512_store_si512(in, x);
            else _mm512_store_ps(an, add_block(_mm512_load_ps(an), x, pb[j], dd, ds, s16));
          }
        }
      }
    }
  }
  for (int64_t n = 0; n < N; n++)
    for (int j = 0; j < kPanelP; j++)
      store16(out + n * ldo + o0 + 16 * j, _mm512_load_ps(acc + 32 * n + 16 * j), bias, o0 + 16 * j, nc - 16 * j);
}

// The product p of N >= 16 rows quantised into a (whole row tiles: zero rows past N)
template <class B>
void product(const QProduct& p, const Q8Rows& a, int64_t N, int64_t IC) {
  for_panel_groups<B>(p.weight, packed_rows(p), N, IC, p.OC, [&](const Panel<Vec<B>>* panels, int64_t o0, int64_t nc) {
    configure();
    tile_rows<Vec<B>>(p.out, p.ldo, panels, a.q, a.d, a.sums, a.ds, p.bias, N, IC / B::kValues, IC, o0, nc);
    _tile_release();
  });
}

// Whether tiles take a type: not Q2_K, Q3_K, Q6_K, scaled every 16 values (tile products 16 deep lost to the VNNI
// panels, 4.7-5.5 ms against 3.4)
bool tiled(int qtype) { return qtype != kQ2_K && qtype != kQ3_K && qtype != kQ6_K; }

}  // namespace
}  // namespace PT_Q8_NS

void matmul_q8_forward(const QProduct* p, int64_t n, const float* inp, int64_t N, int64_t IC) {
  using tiles::tiled;
  if (writes_nothing(p, n, N)) return;
  const bool tile = N >= tiles::kMinRows;
  Q8Rows q8[2];
  avx512::quantize_rows(q8, p, n, inp, N, IC, tile ? (N + 15) / 16 * 16 : N);
  static thread_local std::vector<QProduct> rest;  // (the products left to the VNNI panels)
  rest.clear();
  for (int64_t i = 0; i < n; i++)
    if (!tile || !tiled(p[i].qtype) || p[i].OC == 0) rest.push_back(p[i]);
  if (!rest.empty()) avx512::matmul_q8_vnni_rows(rest.data(), (int64_t)rest.size(), q8, N, IC);
  if ((int64_t)rest.size() == n) return;
  for (int64_t i = 0; i < n; i++) {
    if (!tiled(p[i].qtype) || p[i].OC == 0) continue;
    auto run = [&](auto blk) { tiles::product<decltype(blk)>(p[i], q8[q8_block(p[i].qtype) == 256], N, IC); };
    if (!with_block(RegisterBlocks{}, p[i].qtype, run)) with_block(RowBlocks{}, p[i].qtype, run);
  }
}

}  // namespace PT_NS
}  // namespace pt
