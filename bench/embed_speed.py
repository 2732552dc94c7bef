"""Sentence-embedding throughput, 2 threads: pytransformer's SentenceEncoder (all-MiniLM-L6-v2, no torch) vs the
same model in sentence-transformers on torch (if installed), else transformers + mean pooling on torch.
Sentences are the non-empty lines of Tiny Shakespeare; the embeddings are compared first.

    python bench/embed_speed.py [--n 2000] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import pytransformer
from pytransformer import SentenceEncoder
from pytransformer.encoders import model_folder

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default=["float32"], nargs="+", choices=["float32", "bfloat16", "int8"],
                    help="our weights; each is timed and compared (cosine) with float32")
    args = ap.parse_args()
    lines = [l for l in open(CORPUS, encoding="utf-8").read().split("\n") if l.strip()][: args.n]
    pytransformer.set_num_threads(args.threads)
    print(f"# {len(lines)} sentences, batch {args.batch}, {args.threads} threads, isa {pytransformer.cpu_info()['isa']}")
    results = {}
    for dtype in dict.fromkeys(["float32", *args.dtype]):
        enc = SentenceEncoder(dtype=dtype)
        enc.encode(lines[:64], args.batch)
        t = time.perf_counter()
        results[dtype] = (enc.encode(lines, args.batch), time.perf_counter() - t)
        cos = np.sum(results[dtype][0] * results["float32"][0], axis=1).min()
        print(f"pytransformer SentenceEncoder ({dtype} weights): {len(lines) / results[dtype][1]:,.0f} sentences/s"
              f"{'' if dtype == 'float32' else f', min cosine to float32 {cos:.4f}'}")
    ours, t_ours = results["float32"]
    import torch

    torch.set_num_threads(args.threads)
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_folder(None), device="cpu")
        name = "sentence-transformers"
        run = lambda: st.encode(lines, batch_size=args.batch, normalize_embeddings=True)
    except ImportError:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(model_folder(None))
        model = transformers.AutoModel.from_pretrained(model_folder(None)).eval()
        name = "transformers + mean pooling (sentence-transformers not installed)"

        def run():
            out = []
            with torch.no_grad():
                for i in range(0, len(lines), args.batch):
                    b = tok(lines[i:i + args.batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
                    h = model(**b).last_hidden_state
                    m = b["attention_mask"][..., None].float()
                    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                    out.append(torch.nn.functional.normalize(e, dim=1).numpy())
            return np.concatenate(out)

    run()
    t = time.perf_counter()
    theirs = run()
    t_theirs = time.perf_counter() - t
    print(f"{name}: {len(lines) / t_theirs:,.0f} sentences/s  (ours {t_theirs / t_ours:.2f}x; "
          f"max |difference| {np.abs(ours - theirs).max():.2e})")
    for dtype, (_, t) in results.items():
        if dtype != "float32":
            print(f"  ours with {dtype} weights: {t_theirs / t:.2f}x {name}")


if __name__ == "__main__":
    main()
