"""SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model` = "llama": Gemma, Mistral, Phi-3, Llama 2):
pieces with scores and token types, byte tokens <0xNN>, the space written U+2581.

They tokenize as BPE with byte fallback whose merges are implied by the vocabulary: a pair (left, right) merges
when left, right and left+right are all tokens, the better pairs first -- the order transformers gives them when it
reads such a file (`generate_merges`): by the joined token's score (Gemma: by its position, as its scores do not
follow its merge order), then the longer left part, then the longer right part, then the token's position. The
pairs are ranked when asked (ScoreRanks.get), so the 262k-token Gemma vocabulary lists no merges at all.

Per architecture, as transformers builds them: Gemma replaces spaces by U+2581 (no prefix space); Phi-3 prepends
U+2581 then replaces (a normalizer); the others (Llama 2, Mistral) use Metaspace with prepend_scheme "first".
Control tokens are special added tokens; user-defined ones (Gemma's runs of newlines) added tokens; both matched
whole in the raw text."""

from __future__ import annotations

import numpy as np

from . import decoders, normalizers, pre_tokenizers
from .added import AddedToken
from .models import BPEModel
from .pipeline import Tokenizer

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
GEMMA = ("gemma", "gemma2", "gemma3")
SPACE = "\u2581"


class ScoreRanks(dict):
    """(left, right) -> rank for a vocabulary whose merges are implied by scores (see the module docstring), as a
    dict that ranks a pair the first time it is asked (ranks[pair]: the rank, or None for no merge) and remembers
    it, so that the merge loop's lookups of common pairs run at dict speed. Remembers at most MEMORY pairs.
    score: token -> score, in the order transformers iterates it (a dict; higher merges first)."""

    MEMORY = 1 << 20

    def __init__(self, vocab: dict, score: dict):
        super().__init__()
        self.vocab = vocab
        self.M = max((len(t) for t in score), default=1) + 1
        self.V = len(score) + 1
        if len(score) * self.M * self.M * self.V >= 2**62:
            raise ValueError("the vocabulary is too large to rank its implied merges in 64 bits")
        tokens = list(score)
        values = np.asarray([float(score[t]) for t in tokens])
        by_score = np.argsort(-values, kind="stable")
        dense = np.empty(len(tokens), np.int64)
        dense[by_score] = np.concatenate([[0], np.cumsum(values[by_score][1:] != values[by_score][:-1])])
        MMV = self.M * self.M * self.V
        self.head = {t: int(d) * MMV + k for k, (t, d) in enumerate(zip(tokens, dense.tolist()))}

    def __missing__(self, pair):
        left, right = pair
        head = self.head.get(left + right)
        rank = None
        if head is not None and left in self.vocab and right in self.vocab:
            M = self.M
            rank = head + ((M - 1 - len(left)) * M + (M - 1 - len(right))) * self.V
        if len(self) >= self.MEMORY:
            self.clear()
        self[pair] = rank
        return rank


def _token_id(metadata, key, n):
    v = metadata.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < n:
        raise ValueError(f"{key} must be a token id in [0, {n}), got {v!r}")
    return int(v)


def from_gguf_metadata(metadata: dict, source="the GGUF file") -> Tokenizer:
    """The tokenizer of a GGUF file whose tokenizer.ggml.model is "llama" (ValueError names what is missing)."""
    tokens, types = metadata.get("tokenizer.ggml.tokens"), metadata.get("tokenizer.ggml.token_type")
    scores = metadata.get("tokenizer.ggml.scores")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens must be a non-empty list of strings")
    n = len(tokens)
    types = np.full(n, NORMAL) if types is None else np.asarray(types)
    if types.shape != (n,):
        raise ValueError(f"{source}: tokenizer.ggml.token_type has {types.size} entries for {n} tokens")
    arch = metadata.get("general.architecture")
    gemma = arch in GEMMA
    if gemma:  # runs of spaces are stored as spaces; the pieces spell them U+2581
        spelled = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        score = {t: -i for i, t in enumerate(spelled)}
    else:
        if scores is None or len(scores) != n:
            raise ValueError(f"{source}: tokenizer.ggml.scores must have one score per token ({n})")
        spelled = list(tokens)
        score = dict(zip(spelled, np.asarray(scores, np.float64).tolist()))
    vocab = {t: i for i, t in enumerate(spelled)}
    unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", n)
    bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", n)
    eos_id = _token_id(metadata, "tokenizer.ggml.eos_token_id", n)
    eot_id = _token_id(metadata, "tokenizer.ggml.eot_token_id", n)  # (an end of turn that is not the eos)
    model = BPEModel(vocab, ScoreRanks(vocab, score), unk_token=spelled[unk_id] if gemma and unk_id is not None
                     else None, byte_fallback=True, fuse_unk=True)
    added = [AddedToken(vocab[t], t, special=True, normalized=False)
             for t, k in zip(tokens, types.tolist()) if k == CONTROL and t in vocab]
    added += [AddedToken(vocab[t], t, special=False, normalized=False)
              for t, k in zip(tokens, types.tolist()) if k == USER_DEFINED and t in vocab]
    sentencepiece_decoder = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                             {"type": "ByteFallback"}, {"type": "Fuse"}]
    if gemma:
        normalizer, pre = normalizers.build({"type": "Replace", "pattern": {"String": " "}, "content": SPACE}), None
    else:
        sentencepiece_decoder.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        if arch == "phi3":
            normalizer, pre = normalizers.build({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": SPACE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]}), None
        else:
            normalizer = None
            pre = pre_tokenizers.build({"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first",
                                        "split": False})
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", True))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    post = ([bos_id] if add_bos and bos_id is not None else [], [eos_id] if add_eos and eos_id is not None else [])
    return Tokenizer(model, vocab, added, normalizer, pre, decoders.build({"type": "Sequence",
                                                                            "decoders": sentencepiece_decoder}),
                     post, bos_id, [eos_id, eot_id], metadata.get("tokenizer.chat_template"),
                     f"{source} (tokenizer.chat_template)", kind=f"SentencePiece BPE ({arch})")
