"""Greedy decoding of GPT-2 small (124M, random weights) with a KV cache: pytransformer against a plain PyTorch
eager loop with a KV cache over the same weights, in one run, at 1 and 2 threads.

    python bench/generate.py [--threads 1 2] [--prompt 64] [--new 32] [--batch 1] [--dtype float32 bfloat16 int8]
                             [--json bench/results/generate.json] [--plot]

Reports prefill time of the prompt, decode tokens/s (new tokens after the first), and the bandwidth bound: the
weights' bytes read once per token over the read bandwidth bench/limits.py measures in the same run
(read_bandwidth: streaming 400 MB arrays that no cache holds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("PYTRANSFORMER_ADAPTIVE_THREADS", "0")  # pinned threads, like the torch side
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import pyplot  # noqa: E402
from timing import machine, write_json  # noqa: E402
import pytransformer  # noqa: E402
from pytransformer.models import GPT, GPTConfig  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


class TorchKVGPT:
    """The same GPT in torch eager with a preallocated KV cache: what a torch user writes for fast decoding."""

    def __init__(self, model):
        self.c = model.config
        self.p = {name: torch.from_numpy(p.data.copy()) for name, p in model.params}

    def ln(self, x, prefix):
        return F.layer_norm(x, x.shape[-1:], self.p[prefix + "weight"], self.p[prefix + "bias"], self.c.norm_eps)

    def lin(self, x, prefix):
        return F.linear(x, self.p[prefix + "weight"], self.p[prefix + "bias"])

    @torch.inference_mode()
    def generate(self, ids, new):
        c, p = self.c, self.p
        B, T = ids.shape
        NH, HS = c.n_head, c.n_embd // c.n_head
        total = T + new
        ks = [torch.zeros(B, NH, total, HS) for _ in range(c.n_layer)]
        vs = [torch.zeros(B, NH, total, HS) for _ in range(c.n_layer)]
        out = [ids]
        x_ids, start = ids, 0
        for step in range(new):
            Tn = x_ids.shape[1]
            x = p["wte.weight"][x_ids] + p["wpe.weight"][start:start + Tn]
            for l in range(c.n_layer):
                pre = f"blocks.{l}."
                h = self.ln(x, pre + "attn.ln.")
                q, k, v = (self.lin(h, f"{pre}attn.sublayer.{n}.").view(B, Tn, NH, HS).transpose(1, 2) for n in "qkv")
                ks[l][:, :, start:start + Tn] = k
                vs[l][:, :, start:start + Tn] = v
                a = F.scaled_dot_product_attention(q, ks[l][:, :, :start + Tn], vs[l][:, :, :start + Tn],
                                                   is_causal=Tn > 1)
                x = x + self.lin(a.transpose(1, 2).reshape(B, Tn, -1), pre + "attn.sublayer.o.")
                h = self.ln(x, pre + "ffn.ln.")
                x = x + self.lin(F.gelu(self.lin(h, pre + "ffn.sublayer.fc1."), approximate="tanh"),
                                 pre + "ffn.sublayer.fc2.")
            logits = self.ln(x[:, -1:], "ln_f.") @ p["wte.weight"].T
            start += Tn
            x_ids = logits[:, -1].argmax(-1, keepdim=True)
            out.append(x_ids)
        return torch.cat(out, 1)


def hf_gpt2(model):
    """transformers' GPT2LMHeadModel with our weights (through save_pretrained's names), or None."""
    try:
        import transformers
    except ImportError:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        hf = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    hf.generation_config.pad_token_id = hf.generation_config.eos_token_id
    return hf


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "int8"],
                    help="our weights, each timed in the same run (torch stays float32, as the targets compare)")
    ap.add_argument("--json", default="bench/results/generate.json")
    ap.add_argument("--plot", action="store_true", help="also draw the JSON's PNG (needs matplotlib)")
    args = ap.parse_args()
    import limits

    model = GPT(GPTConfig.preset("gpt2"), seed=0).eval()
    ids = np.random.default_rng(0).integers(0, 50257, (args.batch, args.prompt))
    tmodel = TorchKVGPT(model) if torch else None  # float32 weights
    hf = hf_gpt2(model) if torch else None
    f32_bytes = model.params.data.nbytes - model.wpe.weight.data.nbytes  # every matrix read once per token
    print(f"# {machine(torch=torch.__version__ if torch else None)}; "
          f"GPT-2 small {model.num_parameters() / 1e6:.0f}M, batch {args.batch}, prompt {args.prompt}, "
          f"{args.new} new tokens, greedy")
    rows = []
    for n in args.threads:
        pytransformer.set_num_threads(n)
        if torch:
            torch.set_num_threads(n)
        bw = limits.read_bandwidth(n)
        torch_row = {}
        if torch:
            tids = torch.from_numpy(ids)
            torch_prefill, _ = timed(lambda: tmodel.generate(tids, 1))
            torch_total, torch_out = timed(lambda: tmodel.generate(tids, args.new))
            torch_row = dict(torch_prefill_ms=torch_prefill * 1e3,
                             torch_decode_tok_s=(args.new - 1) * args.batch / (torch_total - torch_prefill))
            if hf is not None:
                with torch.inference_mode():
                    gen = lambda k: hf.generate(tids, max_new_tokens=k, do_sample=False)  # noqa: E731
                    hf_prefill, _ = timed(lambda: gen(1))
                    hf_total, hf_out = timed(lambda: gen(args.new))
                torch_row.update(transformers_decode_tok_s=(args.new - 1) * args.batch / (hf_total - hf_prefill),
                                 transformers_tokens=hf_out.numpy())
        for dtype in args.dtype:
            model.set_weight_dtype(dtype)
            weight_bytes = f32_bytes // {"float32": 1, "bfloat16": 2, "int8": 4}[dtype]
            ours_prefill, _ = timed(lambda: model.generate(ids, 1, temperature=0.0))
            ours_total, ours_out = timed(lambda: model.generate(ids, args.new, temperature=0.0))
            row = {"threads": n, "dtype": dtype, "bandwidth_GBs": bw, "bound_tok_s": bw * 1e9 / weight_bytes,
                   "ours_prefill_ms": ours_prefill * 1e3,
                   "ours_decode_tok_s": (args.new - 1) * args.batch / (ours_total - ours_prefill), **torch_row}
            line = (f"threads {n}, {dtype:8s}: prefill ours {row['ours_prefill_ms']:.1f} ms; decode ours "
                    f"{row['ours_decode_tok_s']:.1f} tok/s ({100 * row['ours_decode_tok_s'] / args.batch / row['bound_tok_s']:.0f}% "
                    f"of the {row['bound_tok_s']:.1f} tok/s bound at {bw:.1f} GB/s)")
            if "transformers_tokens" in row:
                hf_tokens = row.pop("transformers_tokens")
                row["same_tokens_as_transformers"] = bool(np.array_equal(hf_tokens, ours_out))
            if torch:
                row["same_tokens"] = bool((torch_out.numpy() == ours_out).all())
                line += (f"; torch float32 prefill {row['torch_prefill_ms']:.1f} ms, decode "
                         f"{row['torch_decode_tok_s']:.1f} tok/s; ours/torch decode "
                         f"{row['ours_decode_tok_s'] / row['torch_decode_tok_s']:.2f}x, prefill "
                         f"{row['torch_prefill_ms'] / row['ours_prefill_ms']:.2f}x; same tokens: {row['same_tokens']}")
            if "transformers_decode_tok_s" in row:
                line += (f"; transformers generate {row['transformers_decode_tok_s']:.1f} tok/s (ours "
                         f"{row['ours_decode_tok_s'] / row['transformers_decode_tok_s']:.2f}x, same tokens: "
                         f"{row['same_tokens_as_transformers']})")
            rows.append(row)
            print(line)
        model.set_weight_dtype("float32")
    if args.json:
        write_json(args.json, {"args": vars(args), "cpu_info": pytransformer.cpu_info(), "rows": rows})
        if args.plot:
            plot(rows, os.path.splitext(args.json)[0] + ".png", args)


def plot(rows, path, args):
    """Decode tokens/s per weight dtype and thread count, ours beside torch's float32 KV-cache loop."""
    plt = pyplot()
    if plt is None:
        return
    labels = [f"{r['dtype']}\n{r['threads']} thr" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 4))
    ax.bar(x - 0.2, [r["ours_decode_tok_s"] for r in rows], 0.4, label="pytransformer")
    if "torch_decode_tok_s" in rows[0]:
        ax.bar(x + 0.2, [r["torch_decode_tok_s"] for r in rows], 0.4, label="torch float32 KV-cache loop")
    ax.scatter(x - 0.2, [r["bound_tok_s"] * args.batch for r in rows], marker="_", s=400, color="black",
               label="bandwidth bound (ours)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"GPT-2 small greedy decoding, batch {args.batch}, prompt {args.prompt}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
