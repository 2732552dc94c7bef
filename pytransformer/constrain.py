"""Constrained decoding: a grammar (a JSON schema, a regular expression, a Lark or GBNF grammar) compiled once per
request, then for each generated token a mask of the tokens the grammar allows next, applied to the logits before
any sampler (greedy, temperature, top-k/p all choose among allowed tokens only), and the chosen token consumed.

On llguidance (the `structured` extra: `pip install "pytransformer[structured]"`); bench/constrain_mask.py and
bench/NOTES.md give why it over xgrammar and outlines-core. A tokenizer takes part through its tokens' bytes
(`vocabulary`), its stop ids (the grammar's end: once it is complete only they are allowed) and `encode`.

    grammar = Grammar.of(tokenizer, json_schema={...})   # ValueError naming the problem when it is not usable
    matcher = grammar.matcher()                          # one per generated sequence
    matcher.mask(logits)                                 # logits (V,) in place: disallowed tokens -inf
    matcher.consume(token)

A batch of sequences computes its masks in one call (`compute_masks`: llguidance's threads, the GIL released), and
`MasksAhead` runs that call beside the model's step (a mask depends only on the tokens consumed so far, so it is
ready by the time the step's logits are); `mask_rows` applies a batch's masks to its rows of logits in one C++ pass
(ops.mask_logits).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import weakref

import numpy as np

from . import ops


class ConstraintError(ValueError):
    """A sequence's grammar cannot go on: it allows no next token, refuses the chosen one, or failed in the library
    mid-run (a lexer past its limits, say). Only that sequence ends."""


INSTALL = 'constrained decoding needs llguidance: pip install "pytransformer[structured]"'


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ImportError(INSTALL) from None
    return llguidance


def vocabulary(tokenizer) -> list[bytes]:
    """Each token id's bytes, as the tokenizer's decode joins them (special tokens: their text)."""
    if hasattr(tokenizer, "token_bytes"):
        return [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    return [tokenizer.decode([i]).encode("utf-8") for i in range(tokenizer.vocab_size)]


class _Wrapper:
    """llguidance's view of one of our tokenizers (its TokenizerWrapper protocol)."""

    def __init__(self, tokenizer):
        self.tokens = vocabulary(tokenizer)
        stops = list(tokenizer.stop_ids)
        self.eos_token_id = stops[0] if stops else None
        self.bos_token_id = getattr(tokenizer, "bos_id", None)
        self.special_token_ids = stops
        self.encode = tokenizer.encode

    def __call__(self, data: bytes) -> list[int]:
        return self.encode(data.decode("utf-8", errors="replace"))


_compiled_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lltokenizer(tokenizer):
    """llguidance's tokenizer for ours, built once per tokenizer (about a second for 50k tokens)."""
    lltok = _compiled_tokenizers.get(tokenizer)
    if lltok is None:
        llg = _llguidance()
        stops = list(tokenizer.stop_ids)
        if not stops:
            raise ValueError("constrained decoding needs a tokenizer with stop ids (the grammar's end)")
        lltok = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapper(tokenizer)), eos_token=stops)
        _compiled_tokenizers[tokenizer] = lltok
    return lltok


def _source(json_schema, regex, grammar):
    """(format, text) of the one constraint given, or None when none is."""
    given = [(name, value) for name, value in (("json_schema", json_schema), ("regex", regex),
                                               ("grammar", grammar)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of json_schema, regex, grammar; got {', '.join(n for n, _ in given)}")
    if not given:
        return None
    name, value = given[0]
    if name == "json_schema":
        if isinstance(value, bool) or not isinstance(value, (dict, str)):
            raise TypeError(f"json_schema must be a dict or a JSON string, got {type(value).__name__}")
        return name, value if isinstance(value, str) else json.dumps(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return name, value


class Grammar:
    """A grammar compiled for one tokenizer; `matcher()` gives each sequence its own state."""

    def __init__(self, lltokenizer, text, vocab_size, stop_ids):
        self.lltokenizer, self.text, self.vocab_size, self.stop_ids = lltokenizer, text, vocab_size, stop_ids

    @classmethod
    def of(cls, tokenizer, json_schema=None, regex=None, grammar=None) -> Grammar | None:
        """The grammar of the one constraint given (None when none is). grammar: Lark (llguidance's dialect) or
        GBNF (llama.cpp's). ValueError naming the argument and the library's complaint when it is not usable."""
        source = _source(json_schema, regex, grammar)
        if source is None:
            return None
        name, value = source
        llg = _llguidance()
        lltok = _lltokenizer(tokenizer)
        try:
            text = llg.grammar_from({"json_schema": "json_schema", "regex": "regex", "grammar": "grammar"}[name],
                                    value)
        except ValueError as e:
            raise ValueError(f"{name} is not usable: {e}") from None
        error = llg.LLMatcher.validate_grammar(text, lltok)
        if error:
            raise ValueError(f"{name} is not usable: {error}")
        return cls(lltok, text, tokenizer.vocab_size, list(tokenizer.stop_ids))

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """One sequence's place in its grammar: the tokens allowed next, and those chosen so far consumed. Its mask
    (`words`: one bit a token, llguidance's layout) is computed once per state, by `compute_masks` for a batch or
    by the first call that needs it."""

    def __init__(self, grammar: Grammar):
        llg = _llguidance()
        self.inner = llg.LLMatcher(grammar.lltokenizer, grammar.text, log_level=0)
        if self.inner.is_error():
            raise ConstraintError(f"the grammar cannot start: {self.inner.get_error()}")
        self.vocab_size, self.stop_ids = grammar.vocab_size, grammar.stop_ids  # (stop ids: where it ends)
        self.words = np.zeros(_words(grammar.vocab_size), np.int32)  # (the mask of the state reached)
        self.fresh = False  # (words is the mask of the state reached)

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens the grammar takes next."""
        compute_masks([self])
        return np.unpackbits(self.words.view(np.uint8), bitorder="little")[:self.vocab_size].view(bool)

    def mask(self, logits: np.ndarray) -> None:
        """logits (V,) (V >= the tokenizer's vocabulary: a padded head's extra ids are never allowed): every token
        the grammar does not take next set to -inf, in place. ConstraintError when it takes none (a grammar that
        cannot go on)."""
        mask_rows(logits[None], [self])

    def consume(self, token: int) -> None:
        self.fresh = False
        if not self.inner.consume_token(int(token)):
            raise ConstraintError(f"token {token} does not follow the grammar: {self.inner.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and takes nothing more (only a stop token)."""
        return self.inner.is_stopped()


def _words(vocab_size):
    return (vocab_size + 31) // 32


def compute_masks(matchers) -> None:
    """The masks of the matchers' states not yet computed (`fresh` false), in one llguidance call over its threads,
    the GIL released."""
    todo = [m for m in matchers if not m.fresh]
    if not todo:
        return
    batch = np.empty((len(todo), todo[0].words.size), np.int32)  # (each matcher keeps its row: fresh per call)
    if len(todo) == 1:  # (one: the matcher's own call, without waking the executor's threads)
        todo[0].inner.unsafe_compute_mask_ptr(batch.ctypes.data, batch.nbytes)
    else:
        _kept(_executor, lambda: _llguidance().LLExecutor()).unsafe_compute_mask_ptr(
            [(m.inner, k) for k, m in enumerate(todo)], batch.ctypes.data, batch[0].nbytes, len(todo))
    for m, words in zip(todo, batch):
        m.words, m.fresh = words, True


class MasksAhead:
    """compute_masks(matchers) on the masks' worker thread, handed over when the block is entered and awaited when
    it is left: `with MasksAhead(matchers): model step` (llguidance releases the GIL), then the masks are ready.
    Should the batch fail, its matchers stay as they were and each computes its own mask when used, so that a
    failure ends only its own sequence. (One worker kept for the process: starting a thread per step cost the
    engine's thread 7 ms a round on this loaded machine, waiting for the new thread to be scheduled.)"""

    def __init__(self, matchers):
        self.stale = [m for m in matchers if not m.fresh]
        self.future = None

    def __enter__(self):
        if self.stale:
            self.future = _kept(_worker, lambda: concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="pytransformer-masks")).submit(compute_masks, self.stale)
        return self

    def __exit__(self, *exc):
        if self.future is not None:
            concurrent.futures.wait([self.future])  # (its error, if any, left: the matchers stay stale)


def _kept(held, make):
    """held[pid] (a pool of threads, kept for the process), made on first use: a fork()ed child makes its own (its
    parent's pool has no threads in it, and work handed to it would never run)."""
    pid = os.getpid()
    if pid not in held:
        held.clear()
        held[pid] = make()
    return held[pid]


_worker: dict = {}    # pid -> the masks' worker thread (a ThreadPoolExecutor of 1)
_executor: dict = {}  # pid -> llguidance's LLExecutor


def mask_rows(logits: np.ndarray, matchers) -> None:
    """logits (N, V) in place (C-contiguous float32, V >= the tokenizer's vocabulary): row n masked by matchers[n]
    in one pass (ops.mask_logits); a row whose matcher is None (a finished row) loses only the ids past the
    tokenizer's vocabulary. ConstraintError when a matcher's grammar allows no next token (a cheap check: any
    nonzero word)."""
    N = logits.shape[0]
    live = [m for m in matchers if m is not None]
    if not live:
        return
    compute_masks(live)
    for m in live:
        if not np.count_nonzero(m.words):
            raise ConstraintError(f"the grammar allows no next token: {m.inner.get_error() or 'it cannot go on'}")
    vocab = live[0].vocab_size
    if N == 1:  # (one row, the engine's: its matcher's own words)
        words = live[0].words[None]
    else:
        words = np.full((N, _words(vocab)), -1, np.int32)  # (a row without a matcher: every bit set)
        for n, m in enumerate(matchers):
            if m is not None:
                words[n] = m.words
    ops.mask_logits(logits, words, vocab)
