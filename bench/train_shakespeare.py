"""Char-level GPT on Tiny Shakespeare, trained side by side in pytransformer and in a PyTorch mirror with the
same initial weights, the same batches and the same AdamW schedule (2 threads each, pinned).

    python bench/train_shakespeare.py [--steps 200] [--batch 16] [--layers 6 --heads 6 --embd 384 --context 256]
                                      [--precision bfloat16] [--torch-bf16]

--precision bfloat16 runs our matmuls on AMX in bf16 (float32 sums, float32 master weights and everything else);
torch always runs float32 eager as well, and --torch-bf16 adds a torch run under torch.autocast("cpu", bfloat16),
the like-for-like mixed-precision comparison.

Writes bench/results/<name>.json and <name>.png (--name, default shakespeare; all loss curves); prints final
validation losses and tokens/s. The corpus is ../shared/data/tinyshakespeare.txt (last 10% held out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("PYTRANSFORMER_ADAPTIVE_THREADS", "0")  # pinned threads, like the torch side
import numpy as np

import pytransformer
from pytransformer.models import GPT, GPTConfig
from pytransformer.optim import AdamW, clip_grad_norm, cosine_lr
from pytransformer.tokenizers import CharTokenizer
from pytransformer.train import History, evaluate, get_batch, plot_history

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--data", default=CORPUS)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--torch-bf16", action="store_true", help="also run torch under autocast(bfloat16)")
    ap.add_argument("--name", default="shakespeare", help="file name of the results under bench/results/")
    args = ap.parse_args()

    text = open(args.data, encoding="utf-8").read()
    tok = CharTokenizer.from_text(text)
    data = tok.encode_array(text)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    cfg = GPTConfig(vocab_size=tok.vocab_size, max_positions=args.context, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.embd)
    pytransformer.set_num_threads(args.threads)
    pytransformer.set_matmul_precision(args.precision)
    model = GPT(cfg, seed=0)
    print(f"# GPT {args.layers}L {args.heads}H {args.embd}C ctx {args.context}, {model.num_parameters():,} params, "
          f"batch {args.batch}, {args.steps} steps, {args.threads} threads, isa {pytransformer.cpu_info()['isa']}, "
          f"matmul precision {args.precision}")

    results = {"config": vars(args)}
    runs = [("pytransformer", None)]
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        from torch_gpt import TorchGPT

        results["torch_version"] = torch.__version__
        runs.append(("torch", TorchGPT(model)))  # same initial weights
        if args.torch_bf16:
            runs.append(("torch-bf16", TorchGPT(model)))

    hists = {}
    for name, tmodel in runs:
        rng = np.random.default_rng(1)  # same batches for both
        hist = History()
        if tmodel is None:
            opt = AdamW(model.params, args.lr, (0.9, 0.95), 1e-8, 0.1)
        else:
            opt = torch.optim.AdamW(tmodel.param_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        train_time = 0.0
        for step in range(args.steps):
            lr = cosine_lr(step, args.lr, max(1, args.steps // 20), args.steps, args.lr / 10)
            x, y = get_batch(train, args.batch, args.context, rng)
            t0 = time.perf_counter()
            if tmodel is None:
                model.zero_grad()
                loss = model.loss(x, y)
                model.backward()
                clip_grad_norm(model.params, 1.0)
                opt.step(lr)
            else:
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "torch-bf16"):
                    lt = tmodel(torch.from_numpy(x), torch.from_numpy(y))
                lt.backward()
                torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
                opt.step()
                loss = lt.item()
            train_time += time.perf_counter() - t0
            hist.step.append(step + 1)
            hist.loss.append(float(loss))
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                if tmodel is None:
                    v = evaluate(model, val, args.batch, args.context, args.eval_batches)
                else:
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "torch-bf16"):
                        vr = np.random.default_rng(1234)
                        v = float(np.mean([tmodel(*(torch.from_numpy(a) for a in get_batch(val, args.batch, args.context, vr))).item()
                                           for _ in range(args.eval_batches)]))
                hist.val_step.append(step + 1)
                hist.val_loss.append(v)
                print(f"{name:>13} step {step + 1:5d} loss {loss:.4f} val {v:.4f} "
                      f"{(step + 1) * args.batch * args.context / train_time:,.0f} tok/s", flush=True)
        hist.tokens_per_s = args.steps * args.batch * args.context / train_time
        hists[name] = hist
        results[name] = {"loss": hist.loss, "val_step": hist.val_step, "val_loss": hist.val_loss,
                         "tokens_per_s": hist.tokens_per_s}

    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, args.name + ".json"), "w") as f:
        json.dump(results, f)
    ours = hists["pytransformer"]
    extra = {}
    if "torch" in hists:
        t = hists["torch"]
        extra = {"torch train": (t.step, t.loss), "torch validation": (t.val_step, t.val_loss)}
        print(f"final val loss: pytransformer {ours.val_loss[-1]:.4f}, torch {t.val_loss[-1]:.4f} "
              f"({100 * abs(ours.val_loss[-1] - t.val_loss[-1]) / t.val_loss[-1]:.2f}% apart)")
        print(f"tokens/s: pytransformer ({args.precision}) {ours.tokens_per_s:,.0f}, torch {t.tokens_per_s:,.0f} "
              f"({ours.tokens_per_s / t.tokens_per_s:.2f}x)")
    if "torch-bf16" in hists:
        t = hists["torch-bf16"]
        extra.update({"torch bf16 train": (t.step, t.loss), "torch bf16 validation": (t.val_step, t.val_loss)})
        print(f"torch autocast bf16: val {t.val_loss[-1]:.4f}, {t.tokens_per_s:,.0f} tokens/s "
              f"(pytransformer {ours.tokens_per_s / t.tokens_per_s:.2f}x)")
    png = os.path.join(out, args.name + ".png")
    if plot_history(ours, png, "Tiny Shakespeare, char-level GPT: pytransformer vs torch", extra):
        print(f"loss curves: {png}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
