"""The per-token cost of a grammar's allowed-token mask on SmolLM2's vocabulary (49,152 tokens) and Gemma 3's
(262,144), for each library that could own constrained decoding (llguidance, xgrammar, outlines-core), beside a
16-row decode step of the same model.

Each library compiles the same JSON schema once (timed: it is paid per request), then walks the tokens of a valid
document: per token, the mask of allowed tokens as a (V,) bool array the sampler can use, and the token consumed.
Each token's time is the least of 3 walks (fresh matchers), the step's the least of 5: the machine is shared.
The last rows of each table are what the server's engine pays per row and token: pytransformer.constrain's
Matcher.mask on a row of float32 logits (disallowed tokens set to -inf) and the token consumed, for the schema and for
a chat request offering a tool (tool_choice auto: free text, then calls) along a reply that talks, then calls.

    python bench/constrain_mask.py [--models smollm2 gemma3-270m] [--libraries llguidance xgrammar outlines-core]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version

import numpy as np

import pytransformer
from pytransformer.constrain import Grammar, _lltokenizer, vocabulary
from pytransformer.serve import structured

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
# a chat request offering a tool with tool_choice auto (free text, then calls), and a reply that talks, then calls
TOOLS = {"tools": [{"type": "function", "function": {"name": "get_person", "parameters": SCHEMA}}]}
REPLY = ("Let me look her up in the registry of members before I answer your question. <tool_call>"
         + json.dumps({"name": "get_person", "arguments": DOCUMENT}) + "</tool_call>")


def walk(ids, make, repeats=3):
    """Seconds per token of (the mask, the token consumed) along ids, each walk with a fresh matcher from make() ->
    (mask() -> something indexed by token id that is true where allowed, consume(id)) -> (for each token the least
    of `repeats` walks, the first walk's). (The least: this machine is shared, and a walk preempted mid-token
    would count the wait; the first: what a grammar's first request pays where the library caches across them.)"""
    walks = np.zeros((repeats, len(ids)))
    for r in range(repeats):
        mask, consume = make()
        for k, i in enumerate(ids):
            s = time.perf_counter()
            allowed = mask()
            consume(i)
            walks[r, k] = time.perf_counter() - s
            assert allowed[i]
    return walks.min(0), walks[0]


def bits(words, V):
    """(V,) bool of a bitmask (32 tokens a word, lowest bit first)."""
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:V].view(bool)


def run_llguidance(tok, constraint):
    """(pytransformer.constrain, which is on llguidance, as a (V,) bool array) -> setup s, compile s, make."""
    t0 = time.perf_counter()
    _lltokenizer(tok)
    t1 = time.perf_counter()
    grammar = Grammar.of(tok, **constraint)
    compile_s = time.perf_counter() - t1

    def make():
        matcher = grammar.matcher()
        return matcher.allowed, matcher.consume
    return t1 - t0, compile_s, make


def run_xgrammar(tok, constraint):
    import xgrammar as xgr

    t0 = time.perf_counter()
    tokens = vocabulary(tok)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(tokens, xgr.VocabType.RAW, stop_token_ids=[tok.eos_id]))
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(constraint["json_schema"]), any_whitespace=False,
                                           separators=(", ", ": "))
    compile_s = time.perf_counter() - t1
    words = xgr.allocate_token_bitmask(1, len(tokens))

    def make():
        matcher = xgr.GrammarMatcher(compiled)

        def mask():
            matcher.fill_next_token_bitmask(words)
            return bits(words[0].numpy(), len(tokens))
        return mask, matcher.accept_token
    return t1 - t0, compile_s, make


def run_outlines(tok, constraint):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    by_bytes = {}
    for i, b in enumerate(vocabulary(tok)):
        if i != tok.eos_id and b:
            by_bytes.setdefault(b, []).append(i)
    vocab = Vocabulary(tok.eos_id, by_bytes)
    t1 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(constraint["json_schema"]), r"[ ]?"), vocab)
    compile_s = time.perf_counter() - t1

    def make():
        guide = Guide(index)

        def mask():
            allowed = np.zeros(tok.vocab_size, bool)
            allowed[guide.get_tokens()] = True
            return allowed
        return mask, guide.advance
    return t1 - t0, compile_s, make


def run_engine(tok, constraint, V):
    """The engine's own cost per row: a row of float32 logits (V,) copied, Matcher.mask on it (-inf where not
    allowed), the token consumed."""
    grammar, raw = Grammar.of(tok, **constraint), np.zeros(V, np.float32)

    def make():
        matcher = grammar.matcher()

        def mask():
            logits = np.array(raw)
            matcher.mask(logits)
            return Finite(logits)
        return mask, matcher.consume
    return 0.0, 0.0, make


class Finite:
    """Indexed by a token id: whether the masked logits allow it."""

    def __init__(self, logits):
        self.logits = logits

    def __getitem__(self, i):
        return self.logits[i] > -np.inf


def decode_step(model, rows=16, repeats=5):
    """The least seconds of `repeats` decode_batch steps of `rows` sequences at position 64."""
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
    return float(np.min(times))


LIBRARIES = {"llguidance": (run_llguidance, "llguidance"), "xgrammar": (run_xgrammar, "xgrammar"),
             "outlines-core": (run_outlines, "outlines-core")}


def table(name, libraries):
    model = pytransformer.from_pretrained(name)
    tok = model.tokenizer
    ids, reply, V = tok.encode(json.dumps(DOCUMENT)), tok.encode(REPLY), model.config.vocab_size
    step = decode_step(model)
    print(f"\n{name}: vocabulary {tok.vocab_size} tokens, document {len(ids)} tokens, "
          f"16-row decode step {step * 1e3:.1f} ms (least of 5)")
    print(f"{'library':<26}{'tokenizer s':>12}{'compile s':>11}{'mask+consume ms/token: median':>32}{'mean':>8}"
          f"{'max':>8}{'16 rows, % of step':>20}{'first walk: mean':>18}{'%':>7}")
    schema, tools = {"json_schema": SCHEMA}, structured.plan(TOOLS).constraint
    rows = [(lib + " " + version(LIBRARIES[lib][1]), LIBRARIES[lib][0], schema, ids) for lib in libraries]
    rows += [("engine: Matcher.mask", run_engine, schema, ids),
             (f"  tools, auto ({len(reply)} tok)", run_engine, tools, reply)]
    for label, run, constraint, walked in rows:
        setup, compile_s, make = run(tok, constraint, V) if run is run_engine else run(tok, constraint)
        steps, first = walk(walked, make)
        print(f"{label:<26}{setup:>12.2f}{compile_s:>11.3f}{np.median(steps) * 1e3:>32.3f}"
              f"{np.mean(steps) * 1e3:>8.3f}{max(steps) * 1e3:>8.2f}{100 * 16 * np.mean(steps) / step:>19.1f}%"
              f"{np.mean(first) * 1e3:>18.3f}{100 * 16 * np.mean(first) / step:>6.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARIES), choices=list(LIBRARIES))
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {pytransformer.get_num_threads()} threads, "
          f"{pytransformer.cpu_info()['isa']}")
    for name in args.models:
        table(name, args.libraries)


if __name__ == "__main__":
    main()
