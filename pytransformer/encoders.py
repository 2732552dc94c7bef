"""What SentenceEncoder and CrossEncoder share: a Hugging Face encoder folder opened (weights and tokenizer), and
texts or text pairs turned into padded batches the way transformers' tokenizers do (special tokens, truncation to
a maximum length, 'longest_first' for pairs)."""

from __future__ import annotations

import numpy as np

from .io.hf_bert import load_bert
from .io.hf_common import read_config
from .tokenizers import from_folder

FAMILIES = ("bert",)  # encoder families (config.json model_type) a folder may hold


def model_folder(name):
    """The folder a model's name stands for: a path, a packaged name ('minilm') or a repo id in the local Hugging
    Face cache (io.resolve); None: the packaged all-MiniLM-L6-v2."""
    from .io.resolve import resolve

    found = resolve("minilm" if name is None else name)
    if found.kind != "hf":
        raise ValueError(f"{name}: an encoder is a Hugging Face folder (config.json + model.safetensors), got a "
                         f"{found.kind} file")
    return found.path


def load_encoder(path):
    """The encoder model of a Hugging Face folder, in eval mode."""
    kind = read_config(path).get("model_type")
    if kind not in FAMILIES:
        raise NotImplementedError(f"{path}: encoder family {kind!r} is not supported (supported: "
                                  f"{', '.join(FAMILIES)})")
    return load_bert(path)


class Batcher:
    """Texts (or pairs of texts) -> (ids (B, T) int64, attention_mask (B, T) int64, token_type_ids (B, T) int64),
    each row [specials] text [specials] cut to max_length tokens, padded on the right."""

    def __init__(self, path, max_length, pad_id):
        self.tokenizer = from_folder(path)
        self.max_length, self.pad_id = max_length, pad_id
        self.before, self.after = self.tokenizer.post_before, self.tokenizer.post_after
        self.roberta = read_config(path).get("model_type") in ("roberta", "xlm-roberta", "mpnet")

    def token_ids(self, text):
        """The ids of one text as the model reads it (specials added, cut to max_length)."""
        room = self.max_length - len(self.before) - len(self.after)
        return self.before + self.tokenizer.encode(text)[:max(room, 0)] + self.after

    def pair_ids(self, a, b):
        """(ids, token types) of a pair: [CLS] a [SEP] b [SEP] (types 0 then 1), or RoBERTa's <s> a </s></s> b </s>
        (types all 0), with the longer side cut first until it fits max_length."""
        ta, tb = self.tokenizer.encode(a), self.tokenizer.encode(b)
        middle = self.after * (2 if self.roberta else 1)
        room = self.max_length - len(self.before) - len(middle) - len(self.after)
        while len(ta) + len(tb) > max(room, 0):
            if len(ta) > len(tb):
                ta.pop()
            else:
                tb.pop()
        first = self.before + ta + middle
        second = tb + self.after
        return first + second, [0] * len(first) + [0 if self.roberta else 1] * len(second)

    def pad(self, rows, types=None):
        """rows: lists of ids -> (ids, mask, types) (B, T) int64, padded on the right."""
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), self.pad_id, np.int64)
        mask = np.zeros((len(rows), T), np.int64)
        tt = np.zeros((len(rows), T), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
            if types is not None:
                tt[i, :len(r)] = types[i]
        return ids, mask, tt


def check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)
