"""Generation for every decoder model: a KV cache preallocated for the whole sequence, the prompt in one pass
(prefill), then one position per step over the cache; samplers apart from the model; greedy decoding and
sampling (`stream`, `generate`) and beam search (`beam_search`), one implementation for decoder-only models and
the encoder-decoder alike.

A model takes part by providing `new_cache(B, T_max) -> KVCache`, `max_positions`, `device`, `evaluating()` and
`forward(ids (B, T), cache=, position_ids=, key_mask=, last_only=) -> logits (B, T, V)` (last_only: (B, 1, V),
the last position's) that writes the new keys and values into the cache. A decoder-only model is one; the
encoder-decoder gives one per batch of sources (`Transformer.decoder_for`: the sources encoded once, their
cross-attention keys and values kept). Everything runs under `model.evaluating()`: nothing is kept for backward,
the dropout RNG is not touched, and other threads may use the model meanwhile. Logits that are not finite (NaN or
inf weights) raise ValueError instead of giving token 0 forever.

Batches follow the Hugging Face convention: prompts left-padded to one length, `attention_mask` (B, T) with 1 for
real tokens; positions count from each row's first real token, and each row's new tokens are those it would get
alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ops
from .tokenizers.textstream import TextStream


class KVCache:
    """Keys and values of every self-attention layer: k[l], v[l] (B, T_max, NKV, HS), allocated once; `length`
    positions are filled (the same count for every row: a left-padded batch masks its pads). dtype "float32", or
    "float16" on the CPU (half the memory and the bytes a decoded token reads: rows rounded to the nearest half as
    they are written, widened exactly as they are read; llama.cpp's default cache type)."""

    def __init__(self, n_layer, B, T_max, NKV, HS, device="cpu", dtype="float32"):
        dtype = check_cache_dtype(dtype, device)
        self.k = [ops.zeros((B, T_max, NKV, HS), device, dtype) for _ in range(n_layer)]
        self.v = [ops.zeros((B, T_max, NKV, HS), device, dtype) for _ in range(n_layer)]
        self.length = 0
        self.capacity = T_max

    @classmethod
    def of(cls, k, v, length=0):
        """A cache over existing per-layer arrays (B, T_max, NKV, HS) (e.g. one slot of a server's caches)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.length, cache.capacity = list(k), list(v), length, k[0].shape[1] if k else 0
        return cache

    @classmethod
    def for_blocks(cls, blocks, B, T_max, device="cpu", dtype="float32"):
        """A cache for the self-attention of these decoder blocks (their key/value heads and head size)."""
        attn = blocks[0].attn.sublayer if blocks else None
        return cls(len(blocks), B, T_max, attn.NKV if attn else 1, attn.HS if attn else 1, device, dtype)

    def layer(self, i):
        return self.k[i], self.v[i], self.length

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)


def check_cache_dtype(dtype, device="cpu") -> np.dtype:
    """A KV cache's element type: float32 anywhere, float16 on the CPU (the CUDA kernels read float32 caches)."""
    if dtype not in ("float32", "float16", np.float32, np.float16):
        raise ValueError(f"a KV cache holds 'float32' or 'float16', got {dtype!r}")
    dtype = np.dtype(dtype)
    if dtype == np.float16 and device != "cpu":
        raise ValueError(f"a float16 KV cache lives on the CPU; this one is on {device} (use 'float32')")
    return dtype


# A prompt's characters at most, per position of the model's context (the server's bound on a request's prompt and
# the generate command's on stdin): text that long cannot fit, whatever its tokens, and is refused before tokenising.
PROMPT_CHARS_PER_POSITION = 16

# The sampling defaults, one table (README "Sampling defaults"): the HTTP API follows OpenAI's; the generate command
# is greedy; the chat command's was measured by bench/chat_defaults.py (SmolLM2 on the README's own question).
DEFAULTS = {
    "api": {"temperature": 1.0, "top_p": 1.0},
    "generate": {"temperature": 0.0, "top_p": None},
    "chat": {"temperature": 0.7, "top_p": 0.9},
}


@dataclass
class Sampler:
    """How the next token is chosen from the logits (B, V).

    temperature 0 is greedy (argmax); otherwise logits / temperature, then top_k (keep the k largest), then top_p
    (keep the smallest set of tokens whose probability reaches p, the likeliest always kept), then a draw.
    repetition_penalty (transformers' rule): a token already in the row has its logit divided by the penalty when
    positive and multiplied by it when negative."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 (or None), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or None), got {self.top_p}")
        if not (self.repetition_penalty > 0.0 and np.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def __call__(self, logits, seen, rng):
        """logits (B, V), seen (B, V) bool (tokens already in each row; may be None without a repetition
        penalty) -> ids (B,)."""
        if self.temperature == 0.0 and self.repetition_penalty == 1.0:  # greedy: the order is the same in float32
            return np.asarray(logits).argmax(-1).astype(np.int64)
        logits = np.asarray(logits, np.float64)
        if self.repetition_penalty != 1.0:
            penalised = np.where(logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty)
            logits = np.where(seen, penalised, logits)
        if self.temperature == 0.0:
            return logits.argmax(-1).astype(np.int64)
        logits = logits / self.temperature
        V = logits.shape[-1]
        if self.top_k is not None and self.top_k < V:
            kth = np.partition(logits, -self.top_k, axis=-1)[:, -self.top_k][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if self.top_p is not None and self.top_p < 1.0:
            order = np.argsort(-p, axis=-1, kind="stable")
            sorted_p = np.take_along_axis(p, order, -1)
            before = np.cumsum(sorted_p, -1) - sorted_p  # probability of the tokens ranked above each one
            keep_sorted = before < self.top_p  # the likeliest token always stays (nothing ranks above it)
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        u = rng.random((p.shape[0], 1))
        ids = (np.cumsum(p, -1) < u).sum(-1)  # inverse CDF
        return np.minimum(ids, V - 1).astype(np.int64)


def _check_prompt(model, ids, attention_mask):
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise TypeError(f"ids must be an integer numpy array (B, T), got {getattr(ids, 'dtype', type(ids).__name__)} "
                        f"{getattr(ids, 'shape', '')}")
    ids = np.ascontiguousarray(ids, np.int64)
    if attention_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(attention_mask) != 0
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {mask.shape} must match ids {ids.shape}")
        if (mask[:, 1:] < mask[:, :-1]).any():
            raise ValueError("attention_mask must be left-padded: zeros (padding) before the ones of each row")
        if ids.shape[1] and not mask[:, -1].all():
            raise ValueError("every row needs at least one real token (attention_mask all zero in a row)")
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token per row")
    return ids, mask


def stream(model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
           rng=None, seed=None, stop=None, stop_strings=None, decode=None, pad_id=None, attention_mask=None,
           json_schema=None, regex=None, grammar=None, tokenizer=None):
    """Yields the next token of every row, (B,) int64, as each is generated (at most max_new_tokens times).

    stop: token id(s) that end a row (the id itself is yielded). stop_strings: text that ends a row once its
    generated text contains it (the token completing it is yielded); decode(ids) -> str gives that text. A
    stopped row yields pad_id from then on (default: the first stop id, else 0); the iteration ends when every
    row has stopped.

    json_schema (a dict or JSON text), regex or grammar (Lark or GBNF), one at most: every row's text follows it
    (pytransformer.constrain, the `structured` extra): each step the tokens it does not allow next are masked out
    of the logits before the sampler, and a row ends at the tokenizer's stop ids once it is complete. tokenizer:
    whose tokens these are (default model.tokenizer)."""
    sampler = Sampler(temperature, top_k, top_p, repetition_penalty)
    ids, mask = _check_prompt(model, ids, attention_mask)
    _check_count(max_new_tokens, "max_new_tokens", 0)
    rng = rng if rng is not None else np.random.default_rng(seed)
    stop_ids = _stop_ids(stop)
    tokenizer = getattr(model, "tokenizer", None) if tokenizer is None else tokenizer
    matchers = _matchers(tokenizer, ids.shape[0], json_schema, regex, grammar)
    if matchers:
        stop_ids = np.union1d(stop_ids, matchers[0].stop_ids)
    stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    if stop_strings and decode is None:
        raise ValueError("stop_strings needs decode=, a function from token ids to text (a tokenizer's decode)")
    pad = int(pad_id) if pad_id is not None else int(stop_ids[0]) if stop_ids.size else 0
    B, T = ids.shape
    texts = [TextStream(decode, stop_strings) for _ in range(B)] if stop_strings else []
    done = np.zeros(B, bool)
    window = model.max_positions
    with model.evaluating():
        tokens, mask_all = ids, mask
        cache, logits = _prefill(model, tokens[:, -window:], mask_all[:, -window:], window, T + max_new_tokens)
        seen = np.zeros(logits.shape, bool)  # (B, V): the tokens in each row, for the repetition penalty
        np.put_along_axis(seen, np.where(mask, ids, ids[:, -1:]), True, -1)
        for _ in range(int(max_new_tokens)):
            _check_finite(logits, ~done)
            if matchers:
                logits = _constrain(logits, matchers, done)
            nxt = np.where(done, pad, sampler(logits, seen, rng))
            finished = np.isin(nxt, stop_ids) & ~done if stop_ids.size else np.zeros(B, bool)
            for r in np.flatnonzero(~done & ~finished) if matchers else ():
                matchers[r].consume(nxt[r])
            for r in np.flatnonzero(~done & ~finished) if texts else ():
                texts[r].push(int(nxt[r]))
                finished[r] = texts[r].stopped
            done |= finished
            seen[np.arange(B), nxt] = True
            yield nxt
            if done.all():
                return
            tokens = np.concatenate([tokens, nxt[:, None]], 1)
            mask_all = np.concatenate([mask_all, np.ones((B, 1), bool)], 1)
            with _masks_ahead(matchers, done):  # (the live rows' next masks computed while the model steps)
                if cache.length < cache.capacity:
                    logits = _decode(model, cache, tokens, mask_all)
                else:  # past the model's positions: the last `window` tokens again, as recomputing would see them
                    cache, logits = _prefill(model, tokens[:, -window:], mask_all[:, -window:], window, window)


def generate(model, ids, max_new_tokens, **kw):
    """The prompt (B, T) followed by the generated tokens: (B, T + n), n <= max_new_tokens (fewer when every row
    stopped). Options as `stream`."""
    ids = np.asarray(ids)
    new = list(stream(model, ids, max_new_tokens, **kw))
    if not new:
        return np.ascontiguousarray(ids, np.int64)
    return np.concatenate([np.ascontiguousarray(ids, np.int64), np.stack(new, 1)], 1)


def beam_search(model, ids, max_new_tokens, *, beam_size=4, length_penalty=0.6, stop=None):
    """The likeliest continuation of one prompt ids (1, T) by beam search -> (1, T + n), n <= max_new_tokens.

    Each step every live beam proposes its beam_size likeliest next tokens; the candidates, ranked by their sum of
    log-probabilities, fill up to beam_size live beams, and a candidate ending in a stop id joins the finished
    hypotheses instead. The search ends after max_new_tokens steps, when no beam is live, or once beam_size
    hypotheses have finished; the best finished one (the best live one if none finished) by
    log-prob / ((5 + length) / 6) ** length_penalty (Wu et al., 2016, as the 2017 Transformer paper uses; the
    length counts the prompt, which for an encoder-decoder is BOS alone) is returned. The beams are the rows of
    one KV cache, reordered after each step to follow their parents."""
    ids, mask = _check_prompt(model, ids, None)
    if ids.shape[0] != 1:
        raise ValueError(f"beam search decodes one prompt at a time: ids must be (1, T), got {ids.shape}")
    _check_count(beam_size, "beam_size", 1)
    _check_count(max_new_tokens, "max_new_tokens", 0)
    if not np.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty}")
    T, n, K = ids.shape[1], int(max_new_tokens), int(beam_size)
    if T + n > model.max_positions:
        raise ValueError(f"the prompt's {T} tokens and max_new_tokens {n} exceed the model's "
                         f"{model.max_positions} positions")
    if model.device != "cpu":
        raise NotImplementedError("beam search runs on the CPU for now (greedy decoding and sampling run on the "
                                  "device): model.to('cpu')")
    if n == 0:
        return ids
    stop_ids = set(_stop_ids(stop).tolist())
    beams, finished = [(0.0, ids[0].tolist())], []  # (sum of log-probabilities, tokens)
    with model.evaluating():
        cache = model.new_cache(K, T + n)
        live = _rows(cache, 1)
        logits = _fill(model, live, ids, mask)
        for step in range(n):
            _check_finite(logits, np.ones(len(beams), bool))
            logp = logits.astype(np.float64)
            logp -= logp.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            candidates = [(score + row[tok], seq + [int(tok)], parent)
                          for parent, ((score, seq), row) in enumerate(zip(beams, logp))
                          for tok in np.argsort(row)[-K:]]
            candidates.sort(key=lambda c: c[0], reverse=True)
            beams, parents = [], []
            for score, seq, parent in candidates:
                if seq[-1] in stop_ids:
                    finished.append((score, seq))
                else:
                    beams.append((score, seq))
                    parents.append(parent)
                if len(beams) == K:
                    break
            if not beams or len(finished) >= K or step == n - 1:
                break
            length = live.length
            for k, v in zip(cache.k, cache.v):  # each surviving beam takes its parent's keys and values
                k[:len(parents), :length] = k[parents, :length]
                v[:len(parents), :length] = v[parents, :length]
            live = _rows(cache, len(beams), length)
            last = np.array([[seq[-1]] for _, seq in beams], np.int64)
            logits = _decode(model, live, last, np.ones((len(beams), length + 1), bool))
    best = max(finished or beams, key=lambda c: c[0] / (((5 + len(c[1])) / 6) ** length_penalty))
    return np.array([best[1]], np.int64)


def _matchers(tokenizer, B, json_schema, regex, grammar):
    """One grammar matcher per row (pytransformer.constrain), or None without a constraint."""
    if json_schema is None and regex is None and grammar is None:
        return None
    from .constrain import Grammar

    if tokenizer is None:
        raise ValueError("json_schema, regex and grammar need tokenizer= (the model has none)")
    compiled = Grammar.of(tokenizer, json_schema, regex, grammar)
    return [compiled.matcher() for _ in range(B)]


def _live(matchers, done):
    return [None if d else m for m, d in zip(matchers, done)]


def _constrain(logits, matchers, done):
    """logits (B, V) with each live row's disallowed tokens at -inf (in place when contiguous)."""
    from .constrain import mask_rows

    logits = np.ascontiguousarray(logits)
    mask_rows(logits, _live(matchers, done))
    return logits


def _masks_ahead(matchers, done):
    """The live rows' next masks, computed beside the model's step in its block (constrain.MasksAhead)."""
    from .constrain import MasksAhead

    return MasksAhead([m for m in _live(matchers, done) if m is not None] if matchers else [])


def _rows(cache, n, length=0):
    """The first n sequences of a cache, as a cache of their own holding `length` positions (the live beams)."""
    return KVCache.of([k[:n] for k in cache.k], [v[:n] for v in cache.v], length)


def _check_count(value, name, least):
    if isinstance(value, bool) or int(value) != value or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value}")


def _stop_ids(stop):
    return np.asarray([] if stop is None else np.atleast_1d(stop), np.int64)


def _check_finite(logits, rows):
    """Refuses to choose a token from logits (B, V) whose rows `rows` (B,) bool hold a NaN or an inf: every choice
    would be meaningless (the argmax of NaN logits is token 0, forever). Two reductions; no copy when every row
    counts."""
    live = logits if rows.all() else logits[rows]
    if live.size and not (np.isfinite(live.max()) and np.isfinite(live.min())):
        bad = np.flatnonzero(rows & ~np.isfinite(logits).all(-1))
        raise ValueError(f"the model's logits are not finite (NaN or inf) in row(s) {bad.tolist()}: its weights or "
                         "activations hold NaN or inf (check model.params.data)")


def _positions(mask):
    """Each row's positions counted from its first real token (pads get 0; they are masked anyway)."""
    return np.maximum(np.cumsum(mask, 1) - 1, 0)


def _prefill(model, tokens, mask, window, total):
    """A fresh cache for min(total, window) positions, filled with the prompt -> (cache, last logits (B, V))."""
    B, T = tokens.shape
    cache = model.new_cache(B, min(max(total, T), window))
    return cache, _fill(model, cache, tokens, mask)


def _fill(model, cache, tokens, mask):
    """The prompt tokens (B, T) through the model into an empty cache -> the last position's logits (B, V)."""
    key_mask = None if mask.all() else mask
    logits = model.forward(tokens, cache=cache, position_ids=_positions(mask), key_mask=key_mask, last_only=True)
    return ops.to_host(logits)[:, -1]


def _decode(model, cache, tokens, mask):
    """One position per row over the cache -> logits (B, V)."""
    position = _positions(mask)[:, -1:]
    key_mask = None if mask.all() else np.ascontiguousarray(mask)
    return ops.to_host(model.forward(tokens[:, -1:], cache=cache, position_ids=position, key_mask=key_mask))[:, -1]


def score(model, ids, attention_mask=None):
    """log p(ids[:, t + 1] | ids[:, :t + 1]) for every t: (B, T - 1) float64, through the fused cross-entropy
    kernel (no (B, T, V) softmax materialised beyond the logits). In a left-padded batch, a target that is padding or
    a row's first real token (it has no context) gives 0.
    Sequences longer than the model's positions: see pytransformer.generate.perplexity."""
    from . import ops

    ids, mask = _check_prompt(model, ids, attention_mask)
    B, T = ids.shape
    if T > model.max_positions:
        raise ValueError(f"score takes at most {model.max_positions} positions, got {T}; use perplexity() for long "
                         "texts")
    if T < 2:
        return np.zeros((B, 0))
    with model.evaluating():
        logits = ops.to_host(model.forward(ids, position_ids=_positions(mask), key_mask=None if mask.all() else mask))
    # a target counts when it and the position predicting it are real (a row's first real token has no context)
    targets = np.where(mask[:, 1:] & mask[:, :-1], ids[:, 1:], -100).reshape(-1)
    V = logits.shape[-1]
    _, losses, _ = ops.crossentropy_forward(np.ascontiguousarray(logits[:, :-1].reshape(-1, V)), targets)
    return -losses.astype(np.float64).reshape(B, T - 1)


def perplexity(model, ids, stride=None, window=None):
    """exp(mean negative log-likelihood) of a 1-D token array, with a sliding window of the model's positions
    (or `window`, fewer: a long-context model on a long text) as transformers' perplexity recipe: windows start
    `stride` apart (default half the window) and each scores only the tokens the previous windows did not, the
    rest of it serving as context. The first token has no context and is not scored. -> (perplexity, tokens
    scored)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    window = model.max_positions if window is None else min(int(window), model.max_positions)
    if window < 2:
        raise ValueError(f"window must be at least 2 positions, got {window}")
    stride = max(1, window // 2) if stride is None else stride
    if isinstance(stride, bool) or int(stride) != stride or not 1 <= stride <= window:
        raise ValueError(f"stride must be an integer in [1, {window}], got {stride}")
    total, count, scored_to, begin = 0.0, 0, 1, 0
    while scored_to < len(ids):
        end = min(begin + window, len(ids))
        logp = score(model, ids[None, begin:end])[0]  # logp[j] scores token begin + j + 1
        new = logp[max(scored_to, begin + 1) - (begin + 1):]
        total -= float(new.sum())
        count += len(new)
        scored_to, begin = end, begin + stride
    return (float(np.exp(total / count)) if count else float("nan")), count
