"""The per-token cost of a grammar's allowed-token mask on SmolLM2's vocabulary (49,152 tokens), for each library
that could own constrained decoding (llguidance, xgrammar, outlines-core), beside a 16-row SmolLM2 decode step.

Each library compiles the same JSON schema once (timed: it is paid per request), then walks the tokens of a valid
document: per token, the mask of allowed tokens as a (V,) bool array the sampler can use, and the token consumed.

    python bench/constrain_mask.py
"""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import version

import numpy as np

import pytransformer
from pytransformer.constrain import Grammar, _lltokenizer, vocabulary

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0},
    "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.[a-z]{2,3}$"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"], "additionalProperties": False}},
    "required": ["name", "age", "email", "tags", "address"], "additionalProperties": False}
DOCUMENT = {"name": "Ada Lovelace", "age": 36, "email": "ada@analytical.org", "tags": ["math", "poetry"],
            "address": {"city": "London", "zip": "W1"}}


def walk(ids, allowed, consume):
    """Seconds per token of (the mask as a (V,) bool array, the token consumed) along ids."""
    steps = []
    for i in ids:
        s = time.perf_counter()
        assert allowed()[i]
        consume(i)
        steps.append(time.perf_counter() - s)
    return steps


def run_llguidance(tok):
    """(pytransformer.constrain, which is on llguidance) -> setup s, compile s, mask, consume."""
    t0 = time.perf_counter()
    _lltokenizer(tok)
    t1 = time.perf_counter()
    matcher = Grammar.of(tok, json_schema=SCHEMA).matcher()
    return t1 - t0, time.perf_counter() - t1, matcher.allowed, matcher.consume


def run_xgrammar(tok):
    import xgrammar as xgr

    t0 = time.perf_counter()
    tokens = vocabulary(tok)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(tokens, xgr.VocabType.RAW, stop_token_ids=[tok.eos_id]))
    t1 = time.perf_counter()
    matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                              separators=(", ", ": ")))
    compile_s = time.perf_counter() - t1
    words = xgr.allocate_token_bitmask(1, len(tokens))

    def allowed():
        matcher.fill_next_token_bitmask(words)
        return np.unpackbits(words[0].numpy().view(np.uint8), bitorder="little")[:len(tokens)].view(bool)
    return t1 - t0, compile_s, allowed, matcher.accept_token


def run_outlines(tok):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    by_bytes = {}
    for i, b in enumerate(vocabulary(tok)):
        if i != tok.eos_id and b:
            by_bytes.setdefault(b, []).append(i)
    vocab = Vocabulary(tok.eos_id, by_bytes)
    t1 = time.perf_counter()
    guide = Guide(Index(build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?"), vocab))
    compile_s = time.perf_counter() - t1

    def allowed():
        mask = np.zeros(tok.vocab_size, bool)
        mask[guide.get_tokens()] = True
        return mask
    return t1 - t0, compile_s, allowed, guide.advance


def decode_step(model, rows=16, repeats=5):
    """The median seconds of one decode_batch step of `rows` sequences at position 64."""
    layout = model.new_cache(rows, 128)
    ids = np.full(rows, 42, np.int64)
    slots = np.arange(rows, dtype=np.int64)
    positions = np.full(rows, 64, np.int64)
    times = []
    with model.evaluating():
        for _ in range(repeats):
            s = time.perf_counter()
            model.decode_batch(ids, slots, positions, layout.k, layout.v)
            times.append(time.perf_counter() - s)
    return float(np.median(times))


def main():
    model = pytransformer.from_pretrained("smollm2")
    tok = model.tokenizer
    ids = tok.encode(json.dumps(DOCUMENT))
    print(f"machine: {platform.processor() or platform.machine()}, {pytransformer.__name__} threads default; "
          f"vocabulary {tok.vocab_size} tokens, document {len(ids)} tokens")
    step = decode_step(model)
    print(f"16-row SmolLM2 decode step: {step * 1e3:.1f} ms")
    print(f"{'library':<22}{'tokenizer s':>12}{'compile s':>11}{'mask+consume ms/token: median':>32}{'mean':>8}{'max':>8}"
          f"{'16 rows, % of step':>20}")
    for name, run, package in (("llguidance", run_llguidance, "llguidance"),
                               ("xgrammar", run_xgrammar, "xgrammar"),
                               ("outlines-core", run_outlines, "outlines-core")):
        setup, compile_s, allowed, consume = run(tok)
        steps = walk(ids, allowed, consume)
        med = float(np.median(steps))
        print(f"{name + ' ' + version(package):<22}{setup:>12.2f}{compile_s:>11.3f}{med * 1e3:>32.3f}"
              f"{np.mean(steps) * 1e3:>8.3f}{max(steps) * 1e3:>8.2f}{100 * 16 * np.mean(steps) / step:>19.1f}%")


if __name__ == "__main__":
    main()
