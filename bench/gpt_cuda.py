"""GPT-2 on a CUDA device: one training step (forward, backward, clipping, AdamW) and greedy decoding with a KV
cache, ours (`GPT(device="cuda")`) against torch on the same GPU (bench/torch_gpt.TorchGPT with fused AdamW for
the step; transformers' GPT2LMHeadModel.generate for decoding), medians over repeats, each call synchronised.

    python bench/gpt_cuda.py [--preset gpt2] [--batch 8] [--seq 256] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median_time  # noqa: E402

from pytransformer import cuda, optim  # noqa: E402
from pytransformer.models.gpt import GPT, GPTConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--layers", type=int, help="override n_layer (small runs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not cuda.is_available():
        sys.exit("no CUDA module and device here (build with PYTRANSFORMER_CUDA=ON)")
    cfg = GPTConfig.preset(args.preset, **({"n_layer": args.layers} if args.layers else {}))
    cpu_model = GPT(cfg, seed=0)
    model = GPT(cfg, seed=0, device="cuda")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (args.batch, args.seq))
    targets = rng.integers(0, cfg.vocab_size, (args.batch, args.seq))
    opt = optim.AdamW(model.params, lr=1e-4)

    def step():
        model.zero_grad()
        model.loss(idx, targets)
        model.backward()
        optim.clip_grad_norm(model.params, 1.0)
        opt.step()
        cuda.synchronize()

    prompt = idx[:1, :16]

    def decode():
        model.generate(prompt, args.new_tokens, temperature=0)

    tokens = args.batch * args.seq
    print(f"# {cuda.device_name()}{' (emulated)' if cuda.emulated() else ''}; {args.preset} n_layer={cfg.n_layer}, "
          f"batch {args.batch} x {args.seq}")
    ours_step = median_time(step, args.repeats, warmup=1)
    ours_decode = median_time(decode, args.repeats, warmup=1)
    print(f"ours   train step {ours_step * 1e3:8.1f} ms ({tokens / ours_step:9.0f} tok/s)   "
          f"decode {args.new_tokens / ours_decode:7.1f} tok/s")
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        print("# torch has no CUDA here: no comparison")
        return
    from torch_gpt import TorchGPT

    tm = TorchGPT(cpu_model).cuda()
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-4, fused=True)
    tidx, ttargets = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()

    def torch_step():
        topt.zero_grad(set_to_none=False)
        tm(tidx, ttargets).backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        topt.step()
        torch.cuda.synchronize()

    torch_step_t = median_time(torch_step, args.repeats, warmup=1)
    line = f"torch  train step {torch_step_t * 1e3:8.1f} ms ({tokens / torch_step_t:9.0f} tok/s)"
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.n_embd,
                                        n_layer=cfg.n_layer, n_head=cfg.n_head)).cuda().eval()
        tprompt = torch.from_numpy(prompt).cuda()

        def torch_decode():
            with torch.no_grad():
                hf.generate(tprompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                            do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()

        torch_decode_t = median_time(torch_decode, args.repeats, warmup=1)
        line += f"   decode {args.new_tokens / torch_decode_t:7.1f} tok/s (transformers)"
    except ImportError:
        torch_decode_t = None
    print(line)
    print(f"ratio (torch time / ours): train step {torch_step_t / ours_step:.2f}x" +
          (f", decode {torch_decode_t / ours_decode:.2f}x" if torch_decode_t else ""))


if __name__ == "__main__":
    main()
