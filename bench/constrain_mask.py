"""The per-token cost of a grammar's allowed-token mask on SmolLM2's vocabulary (49,152 tokens) and Gemma 3's
(262,144), for each library that could own constrained decoding (llguidance, xgrammar, outlines-core), beside a
16-row decode step of the same model, and what the server's engine pays for it.

Each library compiles the same JSON schema once (timed: it is paid per request), then walks the tokens of a valid
document: per token, the mask of allowed tokens as a (V,) bool array the sampler can use, and the token consumed.
Each token's time is the least of 3 walks (fresh matchers), the step's the least of 5: the machine is shared.
The "engine, one row" rows are a row's whole cost when its mask is computed on its own: Matcher.mask on a row of
float32 logits (llguidance's bitmask, then -inf where not allowed, ops.mask_logits) and the token consumed, for the
schema and for a chat request offering a tool (tool_choice auto: free text, then calls) along a reply that talks,
then calls.

The second table is what the engine does now for a step of 16 constrained rows (each walking the same tokens): the
16 masks computed in one llguidance call (constrain.compute_masks) beside the model's 16-row step
(constrain.MasksAhead), then each row masked in place and its token consumed. Per token: the step alone, the step
with the masks computed beside it (alternated, so both meet the same load), the 16 masks applied and consumed; the
engine's mask cost is what the step lost to the masks beside it plus the application, as a % of the step alone.
--engine: a real 16-job batch through serve.Engine (greedy, half of the jobs constrained by the schema, against
all 16 free): the median round and the median round less its model step.

    python bench/constrain_mask.py [--models smollm2 gemma3-270m] [--libraries llguidance xgrammar outlines-core]
                                   [--engine]
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from importlib.metadata import version

import numpy as np

import pytransformer
from pytransformer.constrain import Grammar, MasksAhead, _lltokenizer, compute_masks, vocabulary
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
    """The engine's cost per row with the row's mask computed on its own: Matcher.mask on a row of float32 logits
    (V,) in place (-inf where not allowed), the token consumed."""
    grammar, logits = Grammar.of(tok, **constraint), np.zeros(V, np.float32)

    def make():
        matcher = grammar.matcher()

        def mask():
            matcher.mask(logits)
            return Finite(logits)
        return mask, matcher.consume
    return 0.0, 0.0, make


class Finite:
    """Indexed by a token id: whether the masked logits allow it. The row is then reset (outside the timing): the
    engine masks each step's fresh row."""

    def __init__(self, logits):
        self.logits = logits

    def __getitem__(self, i):
        allowed = self.logits[i] > -np.inf
        self.logits.fill(0.0)
        return allowed


def stepper(model, rows=16):
    """One decode_batch step of `rows` sequences at position 64, as a function."""
    layout = model.new_cache(rows, 128)
    ids = np.full(rows, 42, np.int64)
    slots = np.arange(rows, dtype=np.int64)
    positions = np.full(rows, 64, np.int64)
    return lambda: model.decode_batch(ids, slots, positions, layout.k, layout.v)


def decode_step(model, rows=16, repeats=5):
    """The least seconds of `repeats` decode_batch steps of `rows` sequences at position 64."""
    step, times = stepper(model, rows), []
    with model.evaluating():
        for _ in range(repeats):
            s = time.perf_counter()
            step()
            times.append(time.perf_counter() - s)
    return float(np.min(times))


def batch_walk(model, tok, constraint, ids, rows=16):
    """16 matchers walking ids together as the engine runs them -> per token (the step alone s, the step with the
    masks computed beside it s, the masks computed alone s, the rows masked and consumed s)."""
    grammar, step = Grammar.of(tok, **constraint), stepper(model, rows)
    logits = np.zeros((rows, model.config.vocab_size), np.float32)
    ahead, alone = [grammar.matcher() for _ in range(rows)], [grammar.matcher() for _ in range(rows)]
    times = np.zeros((len(ids), 4))
    with model.evaluating():
        for k, i in enumerate(ids):
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            with MasksAhead(ahead):
                step()
            t2 = time.perf_counter()
            compute_masks(alone)
            t3 = time.perf_counter()
            for m, row in zip(ahead, logits):
                m.mask(row)
                m.consume(i)
            t4 = time.perf_counter()
            for m in alone:
                m.consume(i)
            times[k] = t1 - t0, t2 - t1, t3 - t2, t4 - t3
    return times


def batch_table(model, tok, walks):
    print(f"{'16 rows a step':<26}{'step ms':>9}{'+ masks beside':>16}{'masks alone ms':>16}"
          f"{'apply+consume ms':>18}{'mask cost, % of step':>22}  (medians; mean %)")
    for label, constraint, ids in walks:
        t = batch_walk(model, tok, constraint, ids) * 1e3
        step, beside, alone, apply = np.median(t, 0)
        cost = (t[:, 1] - t[:, 0]) + t[:, 3]
        print(f"{label:<26}{step:>9.1f}{beside:>16.1f}{alone:>16.2f}{apply:>18.2f}"
              f"{100 * np.median(cost) / step:>21.1f}%  ({100 * np.mean(cost) / np.mean(t[:, 0]):.1f}%)")


def engine_rounds(model, tok, constraint, constrained, jobs=16, max_tokens=48):
    """A batch of `jobs` greedy requests through serve.Engine, `constrained` of them under the constraint -> the
    rounds' seconds and each round's model step's."""
    from pytransformer.generate import Sampler
    from pytransformer.serve.engine import Engine, Job

    class Timed(Engine):
        def _round(self):
            s = time.perf_counter()
            super()._round()
            rounds.append(time.perf_counter() - s)

    rounds, steps = [], []
    engine = Timed(model, tok, max_running=jobs, context=512)
    step = engine.rows.step

    def timed_step(going, before):
        s = time.perf_counter()
        step(going, before)
        steps.append(time.perf_counter() - s)
    engine.rows.step = timed_step
    grammar = Grammar.of(tok, **constraint)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Describe a person as JSON."}]))
    done, left = threading.Event(), [jobs]

    class Out:  # (a job's queue: counts the jobs that ended)
        def put_nowait(self, item):
            if item[0] in ("done", "error"):
                left[0] -= 1
                if not left[0]:
                    done.set()

    class Loop:  # (the event loop: items delivered on the engine's thread)
        def call_soon_threadsafe(self, f, items):
            f(items)

    engine.submit([Job(list(prompt), max_tokens, Sampler(0.0), 0, [], None, Loop(), Out(),
                       grammar.matcher() if k < constrained else None) for k in range(jobs)])
    done.wait(600)
    engine.close()
    return np.array(rounds), np.array(steps)


def engine_table(model, tok):
    schema = {"json_schema": SCHEMA}
    print(f"{'serve.Engine, 16 jobs':<26}{'rounds':>8}{'round ms':>10}{'round - step ms':>17}  (medians of the "
          "rounds where all 16 decode)")
    for label, constrained in (("all free", 0), ("8 constrained", 8), ("all free", 0), ("8 constrained", 8)):
        rounds, steps = engine_rounds(model, tok, schema, constrained)
        decoding = slice(len(rounds) // 4, len(rounds) // 2)  # (past the prompts, before any job ends)
        print(f"{label:<26}{len(rounds):>8}{np.median(rounds[decoding]) * 1e3:>10.1f}"
              f"{np.median(rounds[decoding] - steps[decoding]) * 1e3:>17.2f}")


LIBRARIES = {"llguidance": (run_llguidance, "llguidance"), "xgrammar": (run_xgrammar, "xgrammar"),
             "outlines-core": (run_outlines, "outlines-core")}


def table(name, libraries, engine):
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
    rows += [("engine, one row: schema", run_engine, schema, ids),
             (f"  tools, auto ({len(reply)} tok)", run_engine, tools, reply)]
    for label, run, constraint, walked in rows:
        setup, compile_s, make = run(tok, constraint, V) if run is run_engine else run(tok, constraint)
        steps, first = walk(walked, make)
        print(f"{label:<26}{setup:>12.2f}{compile_s:>11.3f}{np.median(steps) * 1e3:>32.3f}"
              f"{np.mean(steps) * 1e3:>8.3f}{max(steps) * 1e3:>8.2f}{100 * 16 * np.mean(steps) / step:>19.1f}%"
              f"{np.mean(first) * 1e3:>18.3f}{100 * 16 * np.mean(first) / step:>6.1f}%")
    batch_table(model, tok, [("schema", schema, ids), (f"tools, auto ({len(reply)} tok)", tools, reply)])
    if engine:
        engine_table(model, tok)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--engine", action="store_true", help="also a 16-job batch through serve.Engine")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {pytransformer.get_num_threads()} threads, "
          f"{pytransformer.cpu_info()['isa']}")
    for name in args.models:
        table(name, args.libraries, args.engine)


if __name__ == "__main__":
    main()
