# cython: language_level=3, boundscheck=False, wraparound=False
"""The tokenizers' hot loops, compiled: BPE merging of one word and WordPiece's greedy longest match.
bpe.py and wordpiece.py fall back to their pure-Python twins when this module is not built."""

from libcpp.pair cimport pair
from libcpp.queue cimport priority_queue
from libcpp.vector cimport vector

ctypedef long long i64
ctypedef pair[Py_ssize_t, Py_ssize_t] PosLen
ctypedef pair[i64, PosLen] Entry  # (-rank, (-position, joint length)) in a max-heap


def bpe_merge(list word, ranks):
    """Merge the adjacent pair of lowest rank until none is left: bpe.bpe_merge's heap of (rank, position) over a
    linked list of symbols, O(n log n), with a C++ heap and index arrays; ranks as bpe.bpe_merge takes them."""
    cdef Py_ssize_t n = len(word), i, j, k, p
    if n < 2:
        return list(word)
    cdef list sym = list(word)
    cdef vector[Py_ssize_t] nxt = vector[Py_ssize_t](n)
    cdef vector[Py_ssize_t] prv = vector[Py_ssize_t](n)
    cdef vector[Py_ssize_t] size = vector[Py_ssize_t](n)
    # the lowest rank, then the leftmost, on top
    cdef priority_queue[Entry] heap
    cdef Entry top
    get = ranks.get if type(ranks) is dict else ranks.__getitem__  # (see bpe.bpe_merge)
    for i in range(n):
        nxt[i] = i + 1 if i + 1 < n else -1
        prv[i] = i - 1
        size[i] = len(<str>sym[i])
    for i in range(n - 1):
        r = get((sym[i], sym[i + 1]))
        if r is not None:
            heap.push(_entry(r, i, size[i] + size[i + 1]))
    while not heap.empty():
        top = heap.top()
        heap.pop()
        i = -top.second.first
        j = nxt[i]
        if size[i] == 0 or j < 0 or size[i] + size[j] != top.second.second:
            continue
        a = sym[i]
        if get((a, sym[j])) is None:
            continue
        a = a + sym[j]
        sym[i] = a
        sym[j] = None
        size[i] += size[j]
        size[j] = 0
        k = nxt[j]
        nxt[i] = k
        if k >= 0:
            prv[k] = i
            r = get((a, sym[k]))
            if r is not None:
                heap.push(_entry(r, i, size[i] + size[k]))
        p = prv[i]
        if p >= 0:
            r = get((sym[p], a))
            if r is not None:
                heap.push(_entry(r, p, size[p] + size[i]))
    return [s for s in sym if s is not None]


cdef inline Entry _entry(i64 rank, Py_ssize_t pos, Py_ssize_t length):
    return Entry(-rank, PosLen(-pos, length))


def wordpiece(str word, dict vocab, long unk_id, Py_ssize_t max_chars):
    """Greedy longest-match-first WordPiece ids of one word ([unk_id] when it cannot be split)."""
    cdef Py_ssize_t start = 0, end, n = len(word)
    if n > max_chars:
        return [unk_id]
    ids = []
    while start < n:
        end = n
        found = None
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            found = vocab.get(piece)
            if found is not None:
                break
            end -= 1
        if found is None:
            return [unk_id]
        ids.append(found)
        start = end
    return ids
