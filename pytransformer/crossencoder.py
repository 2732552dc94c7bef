"""Rerankers without torch: a sequence-classification encoder (BertForSequenceClassification, as the ms-marco
cross-encoders are) reads a query and a document together and scores the pair, as sentence-transformers'
CrossEncoder does: logits, through the activation the checkpoint names (sigmoid for one label by default)."""

from __future__ import annotations

import numpy as np

from .encoders import Batcher, check_batch_size, load_encoder, model_folder, optional_json
from .search import check_top_k

ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
               "torch.nn.modules.linear.Identity": lambda x: x,
               "torch.nn.modules.activation.Tanh": np.tanh}


def _activation(cfg, num_labels, path):
    """The activation sentence-transformers applies to this checkpoint's logits."""
    name = (cfg.get("sentence_transformers") or {}).get("activation_fn") or \
        cfg.get("sbert_ce_default_activation_function")
    if name is None:
        name = "torch.nn.modules.activation.Sigmoid" if num_labels == 1 else "torch.nn.modules.linear.Identity"
    if name not in ACTIVATIONS:
        raise NotImplementedError(f"{path}: activation {name!r} is not supported ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class CrossEncoder:
    """CrossEncoder(name_or_path, dtype="float32"): a sequence-classification checkpoint (a folder, a packaged name
    or a repo id in the local Hugging Face cache) that scores (query, document) pairs."""

    def __init__(self, path, dtype="float32"):
        self.path = path = model_folder(path)
        self.model = load_encoder(path).set_weight_dtype(dtype)
        c = self.model.config
        if not (c.pooler and getattr(c, "num_labels", 0)):  # (an encoder family without a classifier has none)
            raise ValueError(f"{path} is not a sequence-classification checkpoint (a cross-encoder needs a "
                             f"...ForSequenceClassification head)")
        self.num_labels = c.num_labels
        self.activation = _activation(optional_json(path, "config.json", {}), c.num_labels, path)
        self.batcher = Batcher(path, c.max_positions, c.pad_token_id or 0)

    def predict(self, pairs, batch_size: int = 32, activation: bool = True):
        """pairs: [(query, document), ...] -> (N,) float32 scores ((N, num_labels) for several labels); one pair
        -> its score. activation=False gives the raw logits."""
        single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs)
        pairs = [pairs] if single else list(pairs)
        for i, p in enumerate(pairs):
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(t, str) for t in p)):
                raise TypeError(f"pairs[{i}] must be a pair of strings (query, document), got {p!r:.60}")
        batch_size = check_batch_size(batch_size)
        rows = [self.batcher.pair_ids(a, b) for a, b in pairs]
        out = np.zeros((len(pairs), self.num_labels), np.float32)
        order = np.argsort([len(ids) for ids, _ in rows], kind="stable")
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, mask, types = self.batcher.pad([rows[j][0] for j in idx], [rows[j][1] for j in idx])
            with self.model.evaluating():
                out[idx] = self.model.classify_logits(ids, mask, types)
        if activation:
            out = self.activation(out).astype(np.float32)
        out = out[:, 0] if self.num_labels == 1 else out
        return out[0] if single else out

    def rank(self, query: str, documents, top_k=None, batch_size: int = 32, return_documents: bool = False):
        """The documents ordered by their score with query -> [{"corpus_id", "score"(, "text")}] best first, the
        top_k of them (all by default)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        documents = list(documents)
        if not documents:
            raise ValueError("documents is empty: give at least one document to rank")
        if self.num_labels != 1:
            raise ValueError(f"rank needs a model with one score per pair; this one gives {self.num_labels}")
        k = len(documents) if top_k is None else check_top_k(top_k, len(documents))
        scores = self.predict([(query, d) for d in documents], batch_size)
        order = np.argsort(-scores, kind="stable")[:k]
        return [{"corpus_id": int(i), "score": float(scores[i]), **({"text": documents[i]} if return_documents
                                                                   else {})} for i in order]
