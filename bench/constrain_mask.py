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


def run_llguidance(tok, ids):
    """(pytransformer.constrain, which is on llguidance)"""
    t0 = time.perf_counter()
    _lltokenizer(tok)
    t1 = time.perf_counter()
    matcher = Grammar.of(tok, json_schema=SCHEMA).matcher()
    t2 = time.perf_counter()
    steps = []
    for i in ids:
        s = time.perf_counter()
        allowed = matcher.allowed()
        assert allowed[i]
        matcher.consume(i)
        steps.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, steps


def run_xgrammar(tok, ids):
    import xgrammar as xgr

    t0 = time.perf_counter()
    tokens, eos = vocabulary(tok), tok.eos_id
    info = xgr.TokenizerInfo(tokens, xgr.VocabType.RAW, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info)
    t1 = time.perf_counter()
    matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(", ", ": ")))
    t2 = time.perf_counter()
    words = xgr.allocate_token_bitmask(1, len(tokens))
    steps = []
    for i in ids:
        s = time.perf_counter()
        matcher.fill_next_token_bitmask(words)
        allowed = np.unpackbits(words[0].numpy().view(np.uint8), bitorder="little")[:len(tokens)].view(bool)
        assert allowed[i]
        matcher.accept_token(i)
        steps.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, steps


def run_outlines(tok, ids):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    tokens, eos = vocabulary(tok), tok.eos_id
    by_text = {}
    for i, b in enumerate(tokens):
        if i != eos and b:
            by_text.setdefault(b, []).append(i)
    vocab = Vocabulary(eos, by_text)
    t1 = time.perf_counter()
    guide = Guide(Index(build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?"), vocab))
    t2 = time.perf_counter()
    steps = []
    for i in ids:
        s = time.perf_counter()
        allowed = np.zeros(len(tokens), bool)
        allowed[guide.get_tokens()] = True
        assert allowed[i]
        guide.advance(i)
        steps.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, steps


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
        setup, compile_s, steps = run(tok, ids)
        med = float(np.median(steps))
        print(f"{name + ' ' + version(package):<22}{setup:>12.2f}{compile_s:>11.3f}{med * 1e3:>32.3f}"
              f"{np.mean(steps) * 1e3:>8.3f}{max(steps) * 1e3:>8.2f}{100 * 16 * np.mean(steps) / step:>19.1f}%")


if __name__ == "__main__":
    main()
