"""What every byte-pair encoding shares: GPT-2's byte alphabet and the merge loop (the pure-Python twin of
_fast.BPECore's, which runs on token ids)."""

from __future__ import annotations

import heapq
from functools import lru_cache


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_merge(word: list, ranks) -> list:
    """Merge the adjacent pair of lowest rank until none is left, as Hugging Face's `tokenizers` does it: a heap of
    (rank, position) over a linked list of symbols, O(n log n) for n symbols.
    ranks: a dict (left, right) -> int rank, or a dict subclass whose ranks[pair] is the rank or None (a
    SentencePiece vocabulary's sentencepiece.ScoreRanks). A popped entry whose pair has changed since it was pushed
    is stale and skipped; the symbols' joint length tells (the same start and length: the same text)."""
    n = len(word)
    if n < 2:
        return list(word)
    sym = list(word)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = ranks.get if type(ranks) is dict else ranks.__getitem__
    heap = []
    for i in range(n - 1):
        r = get((sym[i], sym[i + 1]))
        if r is not None:
            heap.append((r, i, len(sym[i]) + len(sym[i + 1])))
    heapq.heapify(heap)
    while heap:
        _, i, length = heapq.heappop(heap)
        a, j = sym[i], nxt[i]
        if a is None or j < 0:
            continue
        b = sym[j]
        if len(a) + len(b) != length or get((a, b)) is None:
            continue
        sym[i] = a = a + b
        sym[j] = None
        k = nxt[i] = nxt[j]
        if k >= 0:
            prv[k] = i
            r = get((a, sym[k]))
            if r is not None:
                heapq.heappush(heap, (r, i, len(a) + len(sym[k])))
        p = prv[i]
        if p >= 0:
            r = get((sym[p], a))
            if r is not None:
                heapq.heappush(heap, (r, p, len(sym[p]) + len(a)))
    return [s for s in sym if s is not None]
