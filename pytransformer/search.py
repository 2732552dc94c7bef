"""Nearest embeddings: exact top-k by cosine or dot product, and the two compressed forms an index keeps for a fast
first pass -- int8 rows with a scale per row (ops.quantize_int8, scanned by ops.int8_candidates_forward) and sign
bits packed into 64-bit words (scanned by ops.hamming_candidates_forward). Letters: N corpus rows, Q queries, D
dimensions, W = ceil(D / 64) words of sign bits, k results."""

from __future__ import annotations

import numpy as np

from . import ops

SCORES = ("cosine", "dot")
CHUNK = 1 << 15  # corpus rows per step of a scan: its scores stay in cache, its memory stays small


def check_embeddings(x, name, ndim=(2,), dim=None):
    """x as a float32 array of one of the ranks in ndim and, given dim, that many columns; else ValueError."""
    a = np.asarray(x)
    if a.ndim not in ndim or a.dtype.kind not in "fiu" or a.size == 0 or (dim is not None and a.shape[-1] != dim):
        want = " or ".join({1: "(D,)", 2: "(N, D)"}[n] for n in ndim).replace("D", str(dim) if dim else "D")
        raise ValueError(f"{name} must be a non-empty array of numbers {want}, got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a, np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinity")
    return a


def check_top_k(top_k, n):
    """top_k as an int, clamped to the n rows there are (asking for more than exist returns them all)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    return int(min(top_k, n))


def unit_rows(x):
    """x (N, D) float32 -> rows scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k_rows(scores, k):
    """scores (Q, N) -> (values, ids) each (Q, k), best first (ties: the lower id first)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    vals = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1).astype(np.int64)


def semantic_search(query_emb, corpus_emb, top_k=10, score="cosine"):
    """The top_k corpus rows nearest each query, exactly.

    query_emb (Q, D) or (D,), corpus_emb (N, D) -> (scores, ids), each (Q, k) (or (k,) for one query), best first,
    k = min(top_k, N). score: "cosine" (as sentence-transformers' util.semantic_search) or "dot" (equal to cosine
    on unit rows, and skips the norms). The corpus is read in chunks, so memory stays O(Q * (CHUNK + k))."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    corpus = corpus_emb if isinstance(corpus_emb, np.ndarray) else np.asarray(corpus_emb)
    if corpus.ndim != 2 or corpus.size == 0 or corpus.dtype.kind not in "fiu":
        raise ValueError(f"corpus_emb must be a non-empty array of numbers (N, D), got {corpus.dtype} {corpus.shape}")
    q = check_embeddings(query_emb, "query_emb", (1, 2), corpus.shape[1])
    single = q.ndim == 1
    q = q.reshape(-1, corpus.shape[1])
    if score == "cosine":
        q = unit_rows(q)
    k = check_top_k(top_k, corpus.shape[0])
    best_s, best_i = np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
    for a in range(0, corpus.shape[0], CHUNK):
        c = np.ascontiguousarray(corpus[a:a + CHUNK], np.float32)  # (a NaN row scores NaN: never among the top)
        s = ops.matmul_forward(q, unit_rows(c) if score == "cosine" else c)
        ids = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + c.shape[0]), s.shape)], 1)
        best_s, pos = top_k_rows(np.concatenate([best_s, s], 1), k)
        best_i = np.take_along_axis(ids, pos, 1)
    return (best_s[0], best_i[0]) if single else (best_s, best_i)


# --- compressed forms --------------------------------------------------------------------------------------------

def pack_signs(x):
    """x (N, D) float32 -> (W, N) uint64: bit j of word w of row n is set where x[n, 64w + j] > 0 (zero-padded).
    Words are stored one after another over all rows, so a scan reads each word contiguously (ops.hamming_candidates_
    forward: a vector of rows per load)."""
    N, D = x.shape
    W = -(-D // 64)
    bits = np.zeros((N, W * 64), np.uint8)
    bits[:, :D] = x > 0
    return np.ascontiguousarray(np.packbits(bits, axis=1, bitorder="little").view("<u8").T)
