"""The 2017 encoder-decoder Transformer on a synthetic task: reverse a string of digits.

    python examples/train_reverse.py [--steps 1500]

Sources are random digit strings of length 1..12; the target is the same string reversed, framed by BOS/EOS.
1,000 held-out strings of length 4..12 (excluded from training) are decoded greedily; the script reports the
exact-match accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from pytransformer.models import Transformer, TransformerConfig
from pytransformer.optim import AdamW, clip_grad_norm, cosine_lr

PAD, BOS, EOS = 0, 1, 2  # digits are 3..12
MAX_LEN = 12


def make_pairs(rng, n, min_len=1):
    lengths = rng.integers(min_len, MAX_LEN + 1, n)
    return [rng.integers(3, 13, L) for L in lengths]


def encode_batch(seqs):
    """-> src (B, S), src_mask, tgt_in (B, T), tgt_out (B, T) with -100 on padding."""
    B, S = len(seqs), MAX_LEN
    src = np.full((B, S), PAD, np.int64)
    tgt_in = np.full((B, S + 1), PAD, np.int64)
    tgt_out = np.full((B, S + 1), -100, np.int64)
    for i, s in enumerate(seqs):
        src[i, :len(s)] = s
        rev = s[::-1]
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:len(s) + 1] = rev
        tgt_out[i, :len(s)] = rev
        tgt_out[i, len(s)] = EOS
    return src, src != PAD, tgt_in, tgt_out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--test", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cfg = TransformerConfig(src_vocab_size=13, tgt_vocab_size=13, n_embd=64, n_head=4, n_encoder_layer=2,
                            n_decoder_layer=2, intermediate_size=256, dropout=0.0, max_positions=32, share_embeddings=True)
    model = Transformer(cfg, seed=0)
    opt = AdamW(model.params, lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    # held-out strings are never trained on; they have length >= 4 so that holding them out leaves the
    # training distribution whole (all 10 strings of length 1 would otherwise be unseen)
    test = make_pairs(np.random.default_rng(12345), args.test, min_len=4)
    seen = {tuple(s) for s in test}
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = [s for s in make_pairs(rng, args.batch * 2) if tuple(s) not in seen][: args.batch]
        src, mask, tgt_in, tgt_out = encode_batch(batch)
        model.zero_grad()
        loss = model.loss(src, tgt_in, tgt_out, mask)
        model.backward()
        clip_grad_norm(model.params, 1.0)
        opt.step(cosine_lr(step, 1e-3, 100, args.steps, 1e-5))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:5d} loss {loss:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    correct = 0
    for i in range(0, len(test), 100):
        chunk = test[i:i + 100]
        src, mask, _, _ = encode_batch(chunk)
        out = model.greedy_decode(src, BOS, EOS, MAX_LEN + 1, mask)
        for s, row in zip(chunk, out):
            pred = row[1:]
            pred = pred[: np.argmax(pred == EOS)] if (pred == EOS).any() else pred
            correct += np.array_equal(pred, s[::-1])
    acc = correct / len(test)
    beam = model.beam_search(encode_batch(test[:1])[0], BOS, EOS, MAX_LEN + 1, beam_size=4,
                             src_mask=encode_batch(test[:1])[1])
    print(f"held-out exact match (greedy): {acc:.4f} on {len(test)} strings; beam example "
          f"{test[0] - 3} -> {beam[0, 1:-1] - 3}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "..", "bench", "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "..", "bench", "results", "reverse.json"), "w") as f:
        json.dump({"exact_match": acc, "steps": args.steps, "final_loss": float(loss),
                   "seconds": time.perf_counter() - t0}, f)


if __name__ == "__main__":
    main()
