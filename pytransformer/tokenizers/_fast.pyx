# cython: language_level=3, boundscheck=False, wraparound=False
"""The tokenizers' hot loops, compiled: BPE merging of one word and WordPiece's greedy longest match.
bpe.py and wordpiece.py fall back to their pure-Python twins when this module is not built."""


def bpe_merge(list word, dict ranks):
    """Merge the adjacent pair of lowest rank until none is left; word is a list of str symbols."""
    cdef Py_ssize_t i, n, best
    cdef object r, best_rank
    while True:
        n = len(word)
        if n < 2:
            return word
        best = -1
        best_rank = None
        for i in range(n - 1):
            r = ranks.get((word[i], word[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best = i
                best_rank = r
        if best < 0:
            return word
        a = word[best]
        b = word[best + 1]
        merged = []
        i = 0
        while i < n:
            if i < n - 1 and word[i] == a and word[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged


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
