"""What SentenceEncoder and CrossEncoder share: a Hugging Face encoder folder opened (weights and tokenizer), and
texts or text pairs turned into padded batches the way transformers' tokenizers do (special tokens, truncation to
a maximum length, 'longest_first' for pairs)."""

from __future__ import annotations

import os

import numpy as np

from .io.hf_bert import load_bert
from .io.hf_common import read_config, read_json
from .io.hf_mpnet import load_mpnet
from .io.hf_roberta import load_roberta
from .tokenizers import from_folder

# encoder families (config.json model_type) a folder may hold -> their loader; RoBERTa-shaped ones put two
# separators between the texts of a pair and number positions after the padding index
FAMILIES = {"bert": load_bert, "roberta": load_roberta, "xlm-roberta": load_roberta, "mpnet": load_mpnet}
ROBERTA_SHAPED = ("roberta", "xlm-roberta")


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
    return FAMILIES[kind](path)


DEFAULT_MAX_LENGTH = 512


def optional_json(folder, name, default=None):
    """The JSON object in folder/name, default when there is no such file."""
    path = os.path.join(folder, name)
    return read_json(path) if os.path.isfile(path) else default


def max_seq_length(folder, positions):
    """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length (where newer
    sentence-transformers saves it), at most the model's positions."""
    given = optional_json(folder, "sentence_bert_config.json", {}).get("max_seq_length")
    if given is None:
        given = optional_json(folder, "tokenizer_config.json", {}).get("model_max_length")
    if not isinstance(given, int) or isinstance(given, bool) or given < 1:
        given = DEFAULT_MAX_LENGTH
    return min(given, positions)


class Batcher:
    """Texts (or pairs of texts) -> (ids (B, T) int64, attention_mask (B, T) int64, token_type_ids (B, T) int64),
    each row [specials] text [specials] cut to max_length tokens (max_seq_length: at most `positions`), padded on
    the right with pad_id."""

    def __init__(self, path, positions, pad_id):
        self.tokenizer = from_folder(path)
        self.max_length, self.pad_id = max_seq_length(path, positions), pad_id
        self.before, self.after = self.tokenizer.post_before, self.tokenizer.post_after
        self.roberta = read_config(path).get("model_type") in ROBERTA_SHAPED

    def token_ids(self, text):
        """The ids of one text as the model reads it (specials added, cut to max_length)."""
        room = self.max_length - len(self.before) - len(self.after)
        return self.before + self.tokenizer.encode(text)[:max(room, 0)] + self.after

    def pair_ids(self, a, b):
        """(ids, token types) of a pair: [CLS] a [SEP] b [SEP] (types 0 then 1), or RoBERTa's <s> a </s></s> b </s>
        (types all 0), cut to max_length as transformers' 'longest_first' cuts: a side no longer than half the
        room stays whole, else the longer side keeps the larger half (the second side, for equal lengths)."""
        ta, tb = self.tokenizer.encode(a), self.tokenizer.encode(b)
        middle = self.after * (2 if self.roberta else 1)
        room = max(self.max_length - len(self.before) - len(middle) - len(self.after), 0)
        if len(ta) + len(tb) > room:
            if len(ta) > len(tb):
                keep_b = min(len(tb), room // 2)
                ta, tb = ta[:room - keep_b], tb[:keep_b]
            else:
                keep_a = min(len(ta), room // 2)
                ta, tb = ta[:keep_a], tb[:room - keep_a]
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
