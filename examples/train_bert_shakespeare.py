"""BERT on Tiny Shakespeare: masked-LM plus a sentence-pair task through the [CLS] head (do two lines follow
each other?), char-level, trained from scratch.

    python examples/train_bert_shakespeare.py [--steps 1500]

Lines come from the first 90% of the corpus for training and the last 10% for evaluation. Each step runs
the MLM loss (BERT's 15% selection, 80/10/10) and the pair loss (half true next lines, half random lines),
adding their gradients before one AdamW step. Reports both losses and held-out pair accuracy (chance: 50%).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from pytransformer.models import BERT, BertConfig, mask_tokens
from pytransformer.optim import AdamW, clip_grad_norm, cosine_lr

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SEG = 60  # characters kept of each line


class Vocab:
    def __init__(self, text):
        self.chars = sorted(set(text))
        self.index = {c: i + 4 for i, c in enumerate(self.chars)}
        self.size = len(self.chars) + 4

    def encode(self, s):
        return [self.index[c] for c in s[:SEG]]


def pair_batch(lines, vocab, rng, B):
    """[CLS] a [SEP] b [SEP] with b the next line (label 1) or a random line (label 0)."""
    T = 2 * SEG + 3
    ids = np.full((B, T), PAD, np.int64)
    types = np.zeros((B, T), np.int64)
    labels = rng.integers(0, 2, B)
    for i in range(B):
        j = rng.integers(0, len(lines) - 1)
        k = j + 1 if labels[i] else rng.integers(0, len(lines))
        a, b = vocab.encode(lines[j]), vocab.encode(lines[k])
        seq = [CLS] + a + [SEP] + b + [SEP]
        ids[i, :len(seq)] = seq
        types[i, len(a) + 2:len(seq)] = 1
    return ids, ids != PAD, types, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data", default=CORPUS)
    args = ap.parse_args()
    text = open(args.data, encoding="utf-8").read()
    split = int(0.9 * len(text))
    vocab = Vocab(text)
    train_lines = [l for l in text[:split].split("\n") if l.strip()]
    test_lines = [l for l in text[split:].split("\n") if l.strip()]
    cfg = BertConfig(vocab_size=vocab.size, n_embd=128, n_layer=4, n_head=4,
                     intermediate_size=512, max_positions=2 * SEG + 3, dropout=0.1, num_labels=2)
    model = BERT(cfg, seed=0)
    opt = AdamW(model.params, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01)
    rng = np.random.default_rng(0)
    history = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        ids, mask, types, labels = pair_batch(train_lines, vocab, rng, args.batch)
        inputs, mlm_labels = mask_tokens(ids, rng, vocab.size, MASK, special_ids=(PAD, CLS, SEP))
        model.zero_grad()
        mlm = model.mlm_loss(inputs, mlm_labels, mask, types)
        model.backward()
        pair = model.classify_loss(ids, labels, mask, types)
        model.backward()
        clip_grad_norm(model.params, 1.0)
        opt.step(cosine_lr(step, 1e-3, 100, args.steps, 1e-5))
        history.append((mlm, pair))
        if (step + 1) % 100 == 0:
            m = np.mean(history[-100:], axis=0)
            print(f"step {step + 1:5d} mlm {m[0]:.4f} pair {m[1]:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    test_rng = np.random.default_rng(99)
    correct = total = 0
    mlm_test = []
    for _ in range(20):
        ids, mask, types, labels = pair_batch(test_lines, vocab, test_rng, 50)
        correct += (model.classify_logits(ids, mask, types).argmax(-1) == labels).sum()
        total += len(labels)
        inputs, mlm_labels = mask_tokens(ids, test_rng, vocab.size, MASK, special_ids=(PAD, CLS, SEP))
        mlm_test.append(model.mlm_loss(inputs, mlm_labels, mask, types))
    acc = correct / total
    first = np.mean(history[:50], axis=0)
    print(f"MLM loss {first[0]:.3f} -> {np.mean(history[-100:], axis=0)[0]:.3f} (train), held-out {np.mean(mlm_test):.3f}; "
          f"held-out pair accuracy {acc:.3f} on {total} pairs (chance 0.5)")
    os.makedirs(os.path.join(HERE, "..", "bench", "results"), exist_ok=True)
    with open(os.path.join(HERE, "..", "bench", "results", "bert_shakespeare.json"), "w") as f:
        json.dump({"mlm_first": float(first[0]), "mlm_last": float(np.mean(history[-100:], axis=0)[0]),
                   "mlm_heldout": float(np.mean(mlm_test)), "pair_accuracy": float(acc), "steps": args.steps,
                   "seconds": time.perf_counter() - t0}, f)


if __name__ == "__main__":
    main()
