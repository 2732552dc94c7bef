"""ViT on scikit-learn's bundled 8x8 digits (1,797 images; needs the optional scikit-learn).

    pip install scikit-learn && python examples/train_vit_digits.py

2x2 patches (16 of them plus the class token), 4 pre-LN encoder blocks, trained with AdamW; reports the
accuracy on a held-out 25% split.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from pytransformer.models import ViT, ViTConfig
from pytransformer.optim import AdamW, cosine_lr


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x = (x - x.mean()) / x.std()
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    n_test = len(x) // 4
    test, train = order[:n_test], order[n_test:]
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, n_embd=64, n_layer=4,
                    n_head=4, intermediate_size=128, num_labels=10, dropout=0.1)
    model = ViT(cfg, seed=0)
    opt = AdamW(model.params, lr=2e-3, weight_decay=0.05)
    steps = args.epochs * (len(train) // args.batch)
    t0, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        perm = rng.permutation(train)
        for i in range(0, len(perm) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            model.zero_grad()
            loss = model.loss(x[idx], y[idx])
            model.backward()
            opt.step(cosine_lr(step, 2e-3, 50, steps, 1e-5))
            step += 1
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d} loss {loss:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    pred = np.concatenate([model.forward(x[test[i:i + 256]]).argmax(-1) for i in range(0, len(test), 256)])
    acc = float((pred == y[test]).mean())
    print(f"test accuracy {acc:.4f} on {len(test)} held-out digits")
    os.makedirs(os.path.join(os.path.dirname(__file__), "..", "bench", "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "..", "bench", "results", "vit_digits.json"), "w") as f:
        json.dump({"test_accuracy": acc, "epochs": args.epochs, "seconds": time.perf_counter() - t0}, f)


if __name__ == "__main__":
    main()
