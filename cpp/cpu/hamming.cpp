// Hamming candidates: the first pass of a search over sign bits (pytransformer/search.py). One read of the packed
// rows, fused: xor with the query, popcount, the sum over a row's words and a running selection, so that no
// distance array is ever written. Each thread keeps, per query, a histogram of the distances it has seen and the
// distance of its n-th nearest row so far (its limit, which only falls); a row further than the limit can never be
// a candidate, so it costs one vector compare, and only rows within it are counted and kept. A thread's final limit
// is at least the true one (its rows are a subset of all rows), so at the end the merged histograms are exact up to
// the true limit, and the rows each thread kept include every row within it.
// Per ISA variant, like every kernel source; the vector loop is hamming_scan.h, once per popcount.
#include <algorithm>
#include <vector>

#include "scan_chunks.h"

namespace pt {
namespace PT_NS {
namespace {

struct Candidate {
  int64_t row, distance;
};

// One query's nearest rows among those one thread has seen.
struct Nearest {
  std::vector<int64_t> hist;   // (64 W + 1) rows seen at each distance: exact up to limit, partial above
  std::vector<Candidate> kept;  // every row that was within the limit when it was seen
  int64_t n = 0, limit = 0, within = 0;  // within: rows seen at distance <= limit
  size_t compact_at = 0;

  void reset(int64_t W, int64_t n_rows) {
    hist.assign((size_t)(64 * W + 1), 0);
    kept.clear();
    n = n_rows;
    limit = 64 * W;
    within = 0;
    compact_at = (size_t)(2 * n_rows + 4096);
  }

  void take(int64_t row, int64_t d) {
    if (d > limit) return;  // (a vector compare may have used a limit that has fallen since)
    hist[d]++;
    within++;
    kept.push_back({row, d});
    while (within - hist[limit] >= n) within -= hist[limit--];
    if (kept.size() >= compact_at) {  // drop the rows the limit has passed; amortised, ties can keep them all
      const int64_t lim = limit;
      kept.erase(std::remove_if(kept.begin(), kept.end(), [lim](const Candidate& c) { return c.distance > lim; }),
                 kept.end());
      compact_at = std::max(compact_at, 2 * kept.size());
    }
  }
};

}  // namespace
}  // namespace PT_NS
}  // namespace pt

#define PT_HAMMING_NS plain
#include "hamming_scan.h"
#undef PT_HAMMING_NS
#if defined(PT_ISA_AVX512) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx512vpopcntdq")
#define PT_HAMMING_NS vpopcnt
#define PT_HAMMING_VPOPCNT 1
#include "hamming_scan.h"
#undef PT_HAMMING_VPOPCNT
#undef PT_HAMMING_NS
#pragma GCC pop_options
#define PT_HAMMING_HAVE_VPOPCNT 1
#endif

namespace pt {
namespace PT_NS {
namespace {

constexpr int64_t kChunkRows = 1 << 14;  // rows per task (W = 6: 768 KB of words)
constexpr int64_t kBlockRows = 512;      // rows every query scans in turn while they are in L1 (W = 6: 24 KB)
constexpr int64_t kQueryGroup = 16;      // queries per read of the rows (their histograms: 16 x (64 W + 1) each)

struct Scratch {
  std::vector<Nearest> nearest;  // [thread][query]
  std::vector<int64_t> rows;
};

// Queries [q0, q1) (at most kQueryGroup) in one read of the rows.
template <class Scan>
void candidates(int64_t* ids, int64_t* counts, const uint64_t* signs, const uint64_t* queries, int64_t N,
                int64_t W, int64_t q0, int64_t q1, int64_t n, int64_t capacity, Scan scan) {
  const int64_t Q = q1 - q0;
  const int nt = scan_team(N, kChunkRows, N * W * Q);
  static thread_local Scratch scratch;  // the calling thread's, shared by its team
  scratch.nearest.resize((size_t)(nt * Q));
  for (Nearest& near : scratch.nearest) near.reset(W, n);
  Nearest* nearest = scratch.nearest.data();
  scan_chunks(nearest, Q, nt, N, kChunkRows, [&](Nearest* mine, int64_t first, int64_t last) {
    for (int64_t lo = first; lo < last; lo += kBlockRows)
      for (int64_t q = 0; q < Q; q++)
        scan(signs, N, W, queries + (q0 + q) * W, lo, std::min(last, lo + kBlockRows), mine[q]);
  });
  for (int64_t q = 0; q < Q; q++) {
    int64_t top = 64 * W;  // every thread's histogram is exact up to the least of their limits
    for (int t = 0; t < nt; t++) top = std::min(top, nearest[t * Q + q].limit);
    int64_t limit = top, seen = 0;
    for (int64_t d = 0; d <= top; d++) {
      for (int t = 0; t < nt; t++) seen += nearest[t * Q + q].hist[d];
      if (seen >= n) {
        limit = d;
        break;
      }
    }
    std::vector<int64_t>& rows = scratch.rows;
    rows.clear();
    for (int t = 0; t < nt; t++)
      for (const Candidate& c : nearest[t * Q + q].kept)
        if (c.distance <= limit) rows.push_back(c.row);
    std::sort(rows.begin(), rows.end());
    counts[q0 + q] = (int64_t)rows.size();
    std::copy(rows.begin(), rows.begin() + std::min<int64_t>(counts[q0 + q], capacity), ids + (q0 + q) * capacity);
  }
}

template <class Scan>
void candidates(int64_t* ids, int64_t* counts, const uint64_t* signs, const uint64_t* queries, int64_t N,
                int64_t W, int64_t Q, int64_t n, int64_t capacity, Scan scan) {
  n = std::min(n, N);
  if (n <= 0) {
    std::fill(counts, counts + Q, 0);
    return;
  }
  for (int64_t q0 = 0; q0 < Q; q0 += kQueryGroup)
    candidates(ids, counts, signs, queries, N, W, q0, std::min(Q, q0 + kQueryGroup), n, capacity, scan);
}

}  // namespace

void hamming_candidates_forward(int64_t* ids, int64_t* counts, const uint64_t* signs, const uint64_t* queries,
                                int64_t N, int64_t W, int64_t Q, int64_t n, int64_t capacity) {
  candidates(ids, counts, signs, queries, N, W, Q, n, capacity, plain::scan);
}

void hamming_candidates_vpopcnt_forward(int64_t* ids, int64_t* counts, const uint64_t* signs,
                                        const uint64_t* queries, int64_t N, int64_t W, int64_t Q, int64_t n,
                                        int64_t capacity) {
#ifdef PT_HAMMING_HAVE_VPOPCNT
  candidates(ids, counts, signs, queries, N, W, Q, n, capacity, vpopcnt::scan);
#else
  candidates(ids, counts, signs, queries, N, W, Q, n, capacity, plain::scan);
#endif
}

}  // namespace PT_NS
}  // namespace pt
