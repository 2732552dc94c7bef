"""Cross-attention doing its job: the 2017 encoder-decoder learns to write dates in words as ISO dates, and its
cross-attention shows which source words each output character reads.

    python examples/translate_dates.py [--steps 1200] [--out docs/dates_cross_attention.png]

"the twenty first of march nineteen ninety four" -> "1994-03-21". Sources are word tokens, targets characters.
Trained with the paper's recipe: label smoothing 0.1, the inverse-square-root warmup schedule, embeddings scaled by
sqrt(d_model) and shared by source, target and the output layer (one vocabulary for both sides). Held-out dates are
decoded greedily (exact match reported); the picture is the last decoder layer's cross-attention for one held-out
date, averaged over heads: year digits read the year words, month digits the month, day digits the day.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import numpy as np

from pytransformer.models import Transformer, TransformerConfig
from pytransformer.optim import AdamW, clip_grad_norm, inverse_sqrt_lr

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINALS = "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth " \
           "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split()
MONTHS = "january february march april may june july august september october november december".split()
SPECIAL = ["<pad>", "<bos>", "<eos>"]
WORDS = sorted(set(ONES + TENS[2:] + ORDINALS[1:] + MONTHS + ["thirtieth", "the", "of", "hundred", "thousand", "and",
                                                                 "oh"]))
CHARS = list("0123456789-")
VOCAB = SPECIAL + WORDS + CHARS  # one vocabulary for both sides (the embeddings are shared)
ID = {t: i for i, t in enumerate(VOCAB)}
PAD, BOS, EOS = 0, 1, 2
SRC_LEN, TGT_LEN = 12, 12


def number_words(n):
    if n < 20:
        return [ONES[n]]
    return [TENS[n // 10]] + ([ONES[n % 10]] if n % 10 else [])


def ordinal_words(n):
    if n <= 20:
        return [ORDINALS[n]]
    if n == 30:
        return ["thirtieth"]
    return [TENS[n // 10], ORDINALS[n % 10]]


def year_words(y):
    """1905: nineteen oh five; 1900: nineteen hundred; 2000: two thousand; 2007: two thousand and seven; 2024:
    twenty twenty four."""
    hi, lo = divmod(y, 100)
    if y == 2000:
        return ["two", "thousand"]
    if 2000 < y < 2010:
        return ["two", "thousand", "and", ONES[lo]]
    if lo == 0:
        return number_words(hi) + ["hundred"]
    return number_words(hi) + (["oh", ONES[lo]] if lo < 10 else number_words(lo))


def date_words(d):
    return ["the"] + ordinal_words(d.day) + ["of", MONTHS[d.month - 1]] + year_words(d.year)


def random_dates(rng, n):
    start = datetime.date(1900, 1, 1).toordinal()
    return [datetime.date.fromordinal(start + int(k)) for k in rng.integers(0, 200 * 365, n)]


def encode(dates):
    """-> src (B, S), src_mask, tgt_in (B, T), tgt_out (B, T) with -100 past the end."""
    B = len(dates)
    src = np.full((B, SRC_LEN), PAD, np.int64)
    tgt_in = np.full((B, TGT_LEN), PAD, np.int64)
    tgt_out = np.full((B, TGT_LEN), -100, np.int64)
    for i, d in enumerate(dates):
        words = [ID[w] for w in date_words(d)]
        src[i, :len(words)] = words
        iso = [ID[c] for c in d.isoformat()]
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:len(iso) + 1] = iso
        tgt_out[i, :len(iso)] = iso
        tgt_out[i, len(iso)] = EOS
    return src, src != PAD, tgt_in, tgt_out


def cross_attention(model, src, mask, tgt_in):
    """The last decoder layer's cross-attention (B, NH, T, S), recomputed on request."""
    layer = model.decoder[-1].cross.sublayer
    layer.keep_probs = True
    try:
        with model.evaluating():
            model.forward(src, tgt_in, mask)
        return layer.attention_probs()
    finally:
        layer.keep_probs = False


def train(steps=1200, batch=64, seed=0, log=print):
    rng = np.random.default_rng(seed)
    cfg = TransformerConfig(src_vocab_size=len(VOCAB), tgt_vocab_size=len(VOCAB), n_embd=64, n_head=4,
                            n_encoder_layer=2, n_decoder_layer=2, intermediate_size=128, dropout=0.0, max_positions=32,
                            share_embeddings=True, label_smoothing=0.1)
    model = Transformer(cfg, seed=seed)
    opt = AdamW(model.params, lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    warmup = max(1, steps // 10)
    peak = 3e-3
    factor = peak / inverse_sqrt_lr(warmup, cfg.n_embd, warmup)  # the paper's shape, scaled to a peak for this size
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        src, mask, tgt_in, tgt_out = encode(random_dates(rng, batch))
        model.zero_grad()
        loss = model.loss(src, tgt_in, tgt_out, mask)
        model.backward()
        clip_grad_norm(model.params, 1.0)
        opt.step(inverse_sqrt_lr(step, cfg.n_embd, warmup, factor))
        if step % 100 == 0:
            log(f"step {step:5d} loss {loss:.4f} ({time.perf_counter() - t0:.0f}s)")
    return model


def evaluate(model, dates):
    src, mask, _, _ = encode(dates)
    out = model.greedy_decode(src, BOS, EOS, TGT_LEN, mask)
    correct = 0
    for d, row in zip(dates, out):
        text = "".join(VOCAB[i] for i in row[1:] if i > EOS)
        correct += text == d.isoformat()
    return correct / len(dates)


def draw(model, date, path):
    from matplotlib import pyplot as plt  # (imported here: the example runs without matplotlib too)

    src, mask, tgt_in, _ = encode([date])
    probs = cross_attention(model, src, mask, tgt_in)[0].mean(0)  # (T, S), heads averaged
    words, chars = date_words(date), list(date.isoformat())
    grid = probs[:len(chars), :len(words)]  # rows: the character being written (input: the one before it)
    fig, ax = plt.subplots(figsize=(0.55 * len(words) + 2, 0.4 * len(chars) + 1.5))
    ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(words)), words, rotation=45, ha="right")
    ax.set_yticks(range(len(chars)), [f"writes {c}" for c in chars])
    ax.set_title(f"cross-attention (last decoder layer, heads averaged)\n{' '.join(words)} -> {date.isoformat()}",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return grid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--out", default="docs/dates_cross_attention.png")
    args = ap.parse_args()
    model = train(args.steps, log=lambda s: print(s, flush=True))
    test = random_dates(np.random.default_rng(999), 500)
    print(f"held-out exact match (greedy): {evaluate(model, test):.3f} on {len(test)} dates")
    date = datetime.date(1994, 3, 21)
    print(" ".join(date_words(date)), "->", "".join(
        VOCAB[i] for i in model.greedy_decode(encode([date])[0], BOS, EOS, TGT_LEN, encode([date])[1])[0, 1:] if i > EOS))
    try:
        draw(model, date, args.out)
        print(f"wrote {args.out}")
    except ImportError:
        print("matplotlib is not installed: no picture", file=sys.stderr)


if __name__ == "__main__":
    main()
