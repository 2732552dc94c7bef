"""A saved embedding index: texts embedded once into a folder, searched in milliseconds after.

The folder holds the texts (texts.bin, UTF-8, cut by offsets.npy), their unit-length float32 embeddings
(float32.npy, (N, D)) and, when asked for, two compressed copies for a fast first pass: int8 codes with a scale per
row (int8.npy, int8_scale.npy) and sign bits (binary.npy, (W, N) uint64). meta.json is written last, so a folder
without it is an unfinished build; every file is written to a temporary name and renamed into place (io.safetensors.atomic_write). Arrays are
memory-mapped on open. A search scans the compressed copy, keeps top_k * rescore candidates and ranks them by
their float32 scores.

A build embeds the texts in chunks saved under .partial/ as they finish, so an interrupted build resumes where it
stopped (the same texts, model and prompt); under mpiexec the ranks share the chunks out (a shared folder)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from typing import NamedTuple

import numpy as np

from .io.hf_common import read_json
from .io.safetensors import atomic_write
from .ops import hamming_candidates_forward, int8_candidates_forward, quantize_int8
from .search import check_embeddings, check_top_k, pack_signs, semantic_search, unit_rows

FORMAT = "pytransformer-index-1"
STORES = ("int8", "binary")         # the compressed copies an index may keep beside float32
FIRST_PASSES = ("binary", "int8", "exact")
BUILD_CHUNK = 4096                  # texts per resumable step of a build


class Hit(NamedTuple):
    id: int
    score: float
    text: str


def _npy(dtype, shape, chunks):
    """The bytes of a .npy file of this dtype and shape whose data are the arrays in chunks, in order."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    yield header.getvalue()
    for c in chunks:
        yield np.ascontiguousarray(c, dtype).tobytes()


def _save(path, array):
    atomic_write(path, _npy(array.dtype, array.shape, [array]))


def _load(path, dtype, shape):
    """A memory-mapped .npy of this dtype and shape, or ValueError naming the file."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e}); rebuild the index") from None
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise ValueError(f"{path} must hold {np.dtype(dtype)} {shape}, got {a.dtype} {a.shape}; rebuild the index")
    return a


def _job_key(texts, model, prompt_name):
    h = hashlib.sha256(json.dumps([FORMAT, model, prompt_name, BUILD_CHUNK, len(texts)]).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _check_texts(texts):
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: an index needs at least one text")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] must be a string, got {type(texts[bad]).__name__}")
    return texts


class Index:
    """An index folder opened for search: Index(folder, encoder=None). Text queries need an encoder: the one
    given, else the model recorded at build time, loaded on the first text query."""

    def __init__(self, folder, encoder=None):
        self.folder = os.fspath(folder)
        meta_path = os.path.join(self.folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{self.folder} is not an index (no meta.json: build it with `pytransformer "
                                    f"index FILE --out {self.folder}`, or finish an interrupted build)")
        try:
            meta = read_json(meta_path)
            ok = meta["format"] == FORMAT and set(meta["stores"]) <= set(STORES)
            N, D = int(meta["count"]), int(meta["dim"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_path} is not an index's metadata ({type(e).__name__}: {e})") from None
        if not ok or N < 1 or D < 1:
            raise ValueError(f"{meta_path} is not a {FORMAT} index's metadata (format, stores, count or dim)")
        self.meta, self.encoder = meta, encoder
        path = lambda name: os.path.join(self.folder, name)  # noqa: E731
        self.float32 = _load(path("float32.npy"), np.float32, (N, D))
        self.int8 = self.int8_scale = self.binary = None
        if "int8" in meta["stores"]:
            self.int8, self.int8_scale = _load(path("int8.npy"), np.int8, (N, D)), _load(path("int8_scale.npy"),
                                                                                       np.float32, (N,))
        if "binary" in meta["stores"]:
            self.binary = _load(path("binary.npy"), np.uint64, (-(-D // 64), N))
        self.offsets = np.asarray(_load(path("offsets.npy"), np.int64, (N + 1,)))
        self.texts = np.memmap(path("texts.bin"), np.uint8, "r") if self.offsets[-1] else np.zeros(0, np.uint8)
        if self.offsets[0] != 0 or self.offsets[-1] != self.texts.size or (np.diff(self.offsets) < 0).any():
            raise ValueError(f"{path('offsets.npy')} does not cut texts.bin ({self.texts.size} bytes) into "
                             f"{N} texts; rebuild the index")

    def __len__(self):
        return self.float32.shape[0]

    @property
    def dim(self):
        return self.float32.shape[1]

    def text(self, i) -> str:
        return bytes(self.texts[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8", "surrogatepass")

    def _query(self, query, prompt_name):
        """query: a string, a list of strings or embeddings (D,) / (Q, D) -> (unit rows (Q, D), one query?)."""
        if isinstance(query, str) or (isinstance(query, (list, tuple)) and query and isinstance(query[0], str)):
            if self.encoder is None:
                from .sentence import SentenceEncoder

                self.encoder = SentenceEncoder(self.meta["model"])
            q = self.encoder.encode(query, prompt_name=prompt_name)
        else:
            q = check_embeddings(query, "query", (1, 2), self.dim)
        single = q.ndim == 1
        if q.shape[-1] != self.dim:
            raise ValueError(f"the query's embeddings have {q.shape[-1]} dims; this index holds {self.dim}")
        return unit_rows(q.reshape(-1, self.dim)), single

    def search(self, query, top_k=10, first_pass=None, rescore=10, prompt_name=None):
        """The top_k texts nearest each query -> [Hit(id, score, text)] best first (a list of such lists for
        several queries). first_pass: "binary" (sign bits, Hamming distance), "int8" or "exact" (every float32
        row); default the fastest copy kept. rescore: the first pass keeps top_k * rescore candidates, which are
        then ranked by their float32 cosine (so scores are always exact cosines)."""
        q, single = self._query(query, prompt_name)
        first_pass = first_pass or ("binary" if self.binary is not None else "int8" if self.int8 is not None
                                    else "exact")
        if first_pass not in FIRST_PASSES:
            raise ValueError(f"first_pass must be one of {FIRST_PASSES}, got {first_pass!r}")
        if first_pass != "exact" and getattr(self, first_pass) is None:
            raise ValueError(f"first_pass {first_pass!r}: this index keeps no {first_pass} copy (it keeps "
                             f"{', '.join(['float32', *self.meta['stores']])})")
        k = check_top_k(top_k, len(self))
        if isinstance(rescore, bool) or not isinstance(rescore, int) or rescore < 1:
            raise ValueError(f"rescore must be an integer >= 1, got {rescore!r}")
        hits = [self._search_one(row, k, cand) for row, cand in zip(q, self._first_pass(q, first_pass, k * rescore))]
        return hits[0] if single else hits

    def _first_pass(self, q, first_pass, n):
        """q (Q, D) unit -> each query's candidates (ascending ids; None: every row), every query in one read of
        the compressed copy: the rows within the Hamming distance of the n-th nearest (sign bits), or the n best
        by the int8 product (the query rounded to int8 as the rows were; its scale, common to all rows, dropped)."""
        if first_pass == "binary":
            return hamming_candidates_forward(self.binary, np.ascontiguousarray(pack_signs(q).T), n)
        if first_pass == "int8":
            return int8_candidates_forward(self.int8, self.int8_scale, quantize_int8(q)[0], n)
        return [None] * len(q)

    def _search_one(self, q, k, cand):
        """q (D,) unit -> [Hit] of the k best among the candidates (all rows where cand is None)."""
        if cand is None:
            scores, ids = semantic_search(q, self.float32, k, score="dot")
        else:
            scores, pos = semantic_search(q, self.float32[cand], k, score="dot")
            ids = cand[pos]
        return [Hit(int(i), float(s), self.text(i)) for i, s in zip(ids, scores)]

    @classmethod
    def build(cls, texts, encoder, folder, stores=STORES, batch_size=32, prompt_name=None, model=None,
              show_progress=False, world=None):
        """Embed texts with encoder into folder (created; an index already there is replaced) -> the Index.
        stores: the compressed copies to keep ("int8", "binary"). model: the name recorded for text queries
        (default encoder.path). world: a distributed.World to share the chunks out among ranks (the root writes
        the index; the others return None)."""
        from .distributed import World

        texts = _check_texts(texts)
        if not set(stores) <= set(STORES):
            raise ValueError(f"stores must be a subset of {STORES}, got {tuple(stores)}")
        world = world or World()
        folder = os.fspath(folder)
        model = model if model is not None else getattr(encoder, "path", None)
        partial = os.path.join(folder, ".partial")
        key = _job_key(texts, model, prompt_name)
        if world.is_root:
            os.makedirs(folder, exist_ok=True)
            if os.path.exists(os.path.join(folder, "meta.json")):
                os.unlink(os.path.join(folder, "meta.json"))  # the old index is void from here on
            job = os.path.join(partial, "job.json")
            if not os.path.isfile(job) or open(job, "rb").read(len(key) + 1) != key.encode():
                shutil.rmtree(partial, ignore_errors=True)
                os.makedirs(partial)
                atomic_write(job, [key.encode()])
        world.barrier()
        chunks = range(0, len(texts), BUILD_CHUNK)
        mine = [a for c, a in enumerate(chunks) if c % world.size == world.rank]
        progress = None
        if show_progress and world.is_root:
            from .sentence import progress_counter

            done = sum(os.path.isfile(os.path.join(partial, f"{a // BUILD_CHUNK:06d}.npy")) for a in mine)
            if done:
                import sys

                print(f"resuming: {done} of {len(mine)} chunks of {BUILD_CHUNK} texts already embedded",
                      file=sys.stderr)
            progress = progress_counter(sum(len(texts[a:a + BUILD_CHUNK]) for a in mine), "text")
        for a in mine:
            path = os.path.join(partial, f"{a // BUILD_CHUNK:06d}.npy")
            part = texts[a:a + BUILD_CHUNK]
            if not os.path.isfile(path):
                emb = np.asarray(encoder.encode(part, batch_size=batch_size, prompt_name=prompt_name), np.float32)
                _save(path, unit_rows(emb))
            if progress:
                progress(len(part))
        if progress:
            progress(0, done=True)
        world.barrier()
        if not world.is_root:
            return None
        cls._assemble(texts, folder, partial, stores, model, prompt_name)
        shutil.rmtree(partial, ignore_errors=True)
        return cls(folder, encoder)

    @staticmethod
    def _assemble(texts, folder, partial, stores, model, prompt_name):
        """The chunks under partial/ -> the index's files, meta.json last."""
        N = len(texts)
        parts = [os.path.join(partial, f"{c:06d}.npy") for c in range(-(-N // BUILD_CHUNK))]
        D = np.load(parts[0], mmap_mode="r").shape[1]

        def embeddings():
            for c, p in enumerate(parts):
                yield _load(p, np.float32, (min(N, (c + 1) * BUILD_CHUNK) - c * BUILD_CHUNK, D))

        atomic_write(os.path.join(folder, "float32.npy"), _npy(np.float32, (N, D), embeddings()))
        if "int8" in stores:
            atomic_write(os.path.join(folder, "int8.npy"),
                         _npy(np.int8, (N, D), (quantize_int8(e)[0] for e in embeddings())))
            _save(os.path.join(folder, "int8_scale.npy"), np.concatenate([quantize_int8(e)[1] for e in embeddings()]))
        if "binary" in stores:
            _save(os.path.join(folder, "binary.npy"), np.concatenate([pack_signs(e) for e in embeddings()], 1))
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        _save(os.path.join(folder, "offsets.npy"), np.concatenate([[0], np.cumsum([len(b) for b in encoded])]))
        atomic_write(os.path.join(folder, "texts.bin"), encoded)
        meta = {"format": FORMAT, "count": N, "dim": D, "stores": [s for s in STORES if s in stores],
                "model": model, "prompt_name": prompt_name}
        atomic_write(os.path.join(folder, "meta.json"), [json.dumps(meta, indent=1).encode()])
