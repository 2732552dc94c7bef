// The packed layout of GGUF 32-value blocks that the AVX512-VNNI int8 products read (quant/int8_product.h's
// streamed rows, int8_panel.h's panels): a weight's rows taken 16 at a time, and for each block b of those 16 rows
// each field of the block stored for the 16 rows side by side -- d[16] (halves), then m[16] (types with a min),
// then Q5's fifth bits (below), then the values' bytes (and K types' scales) one dword at a time (dword t of row r
// at 64 t + 4 r of that run; Q6_K's d[16] after them, where its blocks keep d). So one load is a field of 16 (or with 256-bit vectors 8) rows: their scales convert with one `vcvtph2ps`
// (no gather), and a dword of each row's values lands in the lane of its row (the output: no lane sums, a VNNI panel
// made by a mask and a shift). Q5's fifth bits (qh, 32 a row) are stored as 8 words of 64 bits, word t holding bits
// 4 t .. 4 t + 3 of the 16 rows (row r's at 4 r): the byte mask of the values one dword of nibbles makes, so adding
// them is one masked add. A run is as large as the file's 16 rows and every bit goes to one place, so a packed
// weight is as large as the file's and its products give the same bits (the integer sums are exact, the float
// epilogue the same). llama.cpp's CPU backend repacks Q4_0 / IQ4_NL / Q4_K at load for the same reason.
// bench/NOTES.md session 20.
#pragma once
#include <cstdint>
#include <cstring>

#include "pytransformer/kernels.h"

namespace pt {

constexpr int64_t kPackRows = 16;

// Whether the int8 products can read type qtype packed: the 32-value types, Q4_K and Q5_K (whose 12 bytes of six-bit
// scales and mins go as three dwords a row, Q5_K's 32 bytes of fifth bits as 8, the 128 bytes of nibbles as 32) and
// Q6_K (ql as 32 dwords, qh as 16, the 16 int8 scales as 4, then d)
constexpr bool packable(int qtype) {
  return qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ5_0 || qtype == kQ5_1 || qtype == kQ8_0 || qtype == kIQ4_NL ||
         qtype == kQ4_K || qtype == kQ5_K || qtype == kQ6_K;
}
// the bytes of a block before its fifth bits (Q5), scales (Q4_K, Q5_K) or values: d, and m or dmin where the type
// has a min (halves); and after them (Q6_K's d)
constexpr int64_t packed_header(int qtype) {
  return qtype == kQ4_1 || qtype == kQ5_1 || qtype == kQ4_K || qtype == kQ5_K ? 4 : qtype == kQ6_K ? 0 : 2;
}
constexpr int64_t packed_trailer(int qtype) { return qtype == kQ6_K ? 2 : 0; }
constexpr bool fifth_bits(int qtype) { return qtype == kQ5_0 || qtype == kQ5_1; }

// Whether a weight of OC rows of a type can be packed: a packable type, whole runs of 16 rows
constexpr bool can_pack(int qtype, int64_t OC) { return packable(qtype) && OC % kPackRows == 0; }

// dst = src (OC rows of IC values of type qtype, can_pack) packed: the byte at offset o of row r's block b goes to
// 16 b (block) + 16 start + r size + (o - start) of its run of 16 rows, [start, start + size) the field holding o
// (2 bytes in the header and the trailer, else 4); Q5's fifth bits then transposed as above
inline void pack_rows(uint8_t* dst, const uint8_t* src, int qtype, int64_t OC, int64_t IC) {
  int64_t values = 0, block = 0;
  quant_block(qtype, &values, &block);
  const int64_t nb = IC / values, rb = nb * block, header = packed_header(qtype);
  const int64_t trailer = block - packed_trailer(qtype);
  for (int64_t g = 0; g < OC / kPackRows; g++)
    for (int64_t b = 0; b < nb; b++) {
      uint8_t* out = dst + g * kPackRows * rb + b * kPackRows * block;
      uint64_t words[8] = {};
      for (int64_t r = 0; r < kPackRows; r++) {
        const uint8_t* in = src + (g * kPackRows + r) * rb + b * block;
        for (int64_t start = 0; start < block;) {
          const int64_t size = start < header || start >= trailer ? 2 : 4;
          std::memcpy(out + kPackRows * start + r * size, in + start, (size_t)size);
          start += size;
        }
        uint32_t qh = 0;
        if (fifth_bits(qtype)) std::memcpy(&qh, in + header, 4);
        for (int t = 0; t < 8; t++) words[t] |= (uint64_t)((qh >> (4 * t)) & 15) << (4 * r);
      }
      if (fifth_bits(qtype)) std::memcpy(out + kPackRows * header, words, sizeof(words));
    }
}

}  // namespace pt
