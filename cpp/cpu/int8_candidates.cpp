// int8 candidates: the first pass of a search over int8 rows (pytransformer/search.py), fused in one read of the
// rows: each row's integer dot product with the query (int8 widened to int16 in registers and vpmaddwd: exact for
// every int8 value, and a few instructions against the 384 bytes a row brings from memory, which bound the pass),
// its score float32(dot) * scale[row], and per thread and query a heap of the n best rows so far, so that no array
// of N scores is ever written. The heaps meet at the end: the n best of all of them, in row order.
// Per ISA variant, like every kernel source.
#include <algorithm>
#include <cmath>
#include <vector>

#include "scan_chunks.h"

namespace pt {
namespace PT_NS {
namespace {

struct Scored {
  float score;
  int64_t row;
};

// a ranks before b: the higher score, then the lower row
inline bool before(const Scored& a, const Scored& b) {
  return a.score > b.score || (a.score == b.score && a.row < b.row);
}

// The n best rows one thread has seen for one query: a heap whose front is the worst of them.
struct Best {
  std::vector<Scored> heap;
  int64_t n = 0;

  void reset(int64_t n_rows) {
    heap.clear();
    n = n_rows;
  }

  void offer(float score, int64_t row) {
    const Scored s{std::isnan(score) ? -INFINITY : score, row};
    if ((int64_t)heap.size() < n) {
      heap.push_back(s);
      std::push_heap(heap.begin(), heap.end(), before);
    } else if (before(s, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), before);
      heap.back() = s;
      std::push_heap(heap.begin(), heap.end(), before);
    }
  }
};

// codes (D) int8 . query (D) widened to int16 -> the exact integer sum (|sum| <= 127 * 127 * D < 2^31)
inline int32_t dot(const int8_t* codes, const int16_t* query, int64_t D) {
  int64_t i = 0;
  int32_t sum = 0;
#if defined(PT_ISA_AVX512)
  __m512i acc = _mm512_setzero_si512();
  for (; i + 32 <= D; i += 32) {
    const __m512i c = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i)));
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(c, _mm512_loadu_si512(query + i)));
  }
  sum = _mm512_reduce_add_epi32(acc);
#elif defined(PT_ISA_AVX2)
  __m256i acc = _mm256_setzero_si256();
  for (; i + 16 <= D; i += 16) {
    const __m256i c = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(query + i))));
  }
  const __m128i half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  const __m128i quarter = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
  sum = _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0xb1)));
#endif
  for (; i < D; i++) sum += (int32_t)codes[i] * query[i];
  return sum;
}

constexpr int64_t kChunkRows = 1 << 13;  // rows per task (D = 384: 3 MB)
constexpr int64_t kBlockRows = 64;       // rows every query reads in turn while they are in L1 (D = 384: 24 KB)
constexpr int64_t kQueryGroup = 16;      // queries per read of the rows
constexpr int64_t kAhead = 16;           // rows ahead a scan asks memory for (6 KB at D = 384)

struct Scratch {
  std::vector<Best> best;        // [thread][query]
  std::vector<int16_t> queries;  // the group's queries widened
  std::vector<Scored> merged;
};

// Queries [q0, q1) in one read of the rows.
void candidates(int64_t* ids, const int8_t* codes, const float* scale, const int8_t* queries, int64_t N, int64_t D,
                int64_t q0, int64_t q1, int64_t n) {
  const int64_t Q = q1 - q0;
  const int nt = scan_team(N, kChunkRows, N * D * Q);
  static thread_local Scratch scratch;  // the calling thread's, shared by its team
  scratch.best.resize((size_t)(nt * Q));
  for (Best& b : scratch.best) b.reset(n);
  scratch.queries.assign(queries + q0 * D, queries + q1 * D);
  Best* best = scratch.best.data();
  const int16_t* wide = scratch.queries.data();
  scan_chunks(best, Q, nt, N, kChunkRows, [&](Best* mine, int64_t first, int64_t last) {
    for (int64_t lo = first; lo < last; lo += kBlockRows) {
      const int64_t end = std::min(last, lo + kBlockRows);
      for (int64_t q = 0; q < Q; q++) {
        Best& b = mine[q];
        for (int64_t r = lo; r < end; r++) {
          if (q == 0 && r + kAhead < N)  // (the hardware prefetcher alone leaves each row's loads waiting)
            for (int64_t i = 0; i < D; i += 64) __builtin_prefetch(codes + (r + kAhead) * D + i, 0, 3);
          const float score = (float)dot(codes + r * D, wide + q * D, D) * scale[r];
          if ((int64_t)b.heap.size() == b.n && score < b.heap.front().score) continue;  // (the common case)
          b.offer(score, r);
        }
      }
    }
  });
  for (int64_t q = 0; q < Q; q++) {
    std::vector<Scored>& all = scratch.merged;
    all.clear();
    for (int t = 0; t < nt; t++) all.insert(all.end(), best[t * Q + q].heap.begin(), best[t * Q + q].heap.end());
    std::nth_element(all.begin(), all.begin() + (n - 1), all.end(), before);
    int64_t* out = ids + (q0 + q) * n;
    for (int64_t i = 0; i < n; i++) out[i] = all[i].row;
    std::sort(out, out + n);
  }
}

}  // namespace

void int8_candidates_forward(int64_t* ids, const int8_t* codes, const float* scale, const int8_t* queries, int64_t N,
                             int64_t D, int64_t Q, int64_t n) {
  if (n <= 0) return;
  for (int64_t q0 = 0; q0 < Q; q0 += kQueryGroup)
    candidates(ids, codes, scale, queries, N, D, q0, std::min(Q, q0 + kQueryGroup), n);
}

}  // namespace PT_NS
}  // namespace pt
