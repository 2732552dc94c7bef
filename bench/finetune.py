"""LoRA fine-tuning speed and memory: SmolLM2-135M, rank 8 on every projection (q, k, v, o, gate, up, down), AdamW,
batch 8 x 256 tokens by default. Each side runs in its own subprocess with its threads pinned (OMP_NUM_THREADS,
torch.set_num_threads) and reports tokens/s over timed steps (after one warm-up step) and its peak RSS:

    ours-float32   pytransformer, the base widened to float32 and frozen
    torch+peft     transformers' LlamaForCausalLM in float32 (the same weights, written by us as a Hugging Face
                   folder first, in a process of its own) with peft's LoRA
    ours-Q4_1      pytransformer on the packaged Q4_1 blocks, frozen as they are (backward through the blocks)
    ours-bf16      pytransformer, the base stored as bfloat16 (set_weight_dtype) with the bf16 matmul precision: its
                   forward and dinp on AMX tiles, the inputs rounded to bf16 (as are the LoRA and attention
                   products), float32 sums, float32 A/B and AdamW (needs AMX-BF16)
    torch+peft-bf16  torch+peft's float32 model under torch.autocast("cpu", dtype=torch.bfloat16): the same rounding
                   of every product's inputs (its linears and attention run in oneDNN's bf16 kernels)

    python bench/finetune.py [--threads 2] [--steps 3] [--batch 8] [--context 256] [--json bench/results/finetune.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PAIRS = [("ours-float32", "torch+peft", "float32 bases"), ("ours-bf16", "torch+peft-bf16", "bf16 products")]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# one side's run: prints one JSON line {"tokens_per_s", "cpu_s_per_step" (every thread's: on a shared machine the
# steadier figure), "peak_rss_mib", "loss"}; argv: side, steps, batch, context,
# folder of the float32 Hugging Face copy
CHILD = r"""
import json, resource, sys, time
import numpy as np
side, steps, B, T, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ids = np.random.default_rng(0).integers(0, 49152, (B, T))
if side.startswith("torch+peft"):
    import contextlib, torch, transformers, peft
    torch.set_num_threads(int(sys.argv[6]))
    model = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=%(targets)r)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.from_numpy(ids)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if side.endswith("-bf16") else contextlib.nullcontext()
    def step():
        opt.zero_grad()
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        return loss.item()
else:
    import pytransformer as pt
    from pytransformer.optim import AdamW
    model = pt.from_pretrained("smollm2", dtype=None if side == "ours-Q4_1" else "float32")
    if side == "ours-bf16":
        model.set_weight_dtype("bfloat16")
        pt.set_matmul_precision("bfloat16")
    model.add_adapter(rank=8, alpha=16, targets=%(targets)r).train()
    opt = AdamW(model.trainable, lr=1e-4)
    def step():
        model.zero_grad()
        loss = model.loss(ids, labels=ids)
        model.backward()
        opt.step()
        return loss
step()
t, cpu = time.perf_counter(), time.process_time()
losses = [step() for _ in range(steps)]
elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({"tokens_per_s": steps * B * T / elapsed, "cpu_s_per_step": cpu / steps,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loss": float(losses[-1])}))
""" % {"targets": TARGETS}

# writes the float32 Hugging Face copy of the packaged model (a process of its own: no side pays for it)
EXPORT = "import sys, pytransformer as pt; pt.from_pretrained('smollm2', dtype='float32').save_pretrained(sys.argv[1])"


def run(cmd, threads):
    # (the children import this checkout's package: a PYTHONPATH of "." would name bench/, where they run, and
    # they would measure whatever pytransformer site-packages holds)
    path = os.pathsep.join(p for p in (os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    if r.returncode:
        raise SystemExit(f"{cmd[3] if len(cmd) > 3 else 'export'} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--sides", default="ours-float32,torch+peft,ours-Q4_1,ours-bf16,torch+peft-bf16")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    import peft
    import torch
    import transformers

    sys.path.insert(0, HERE)
    from timing import machine, write_json

    line = machine(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    print(f"{line}; {args.threads} threads; batch {args.batch} x {args.context} tokens, {args.steps} timed steps")
    results = {"machine": line, "threads": args.threads, "batch": args.batch, "context": args.context, "sides": {}}
    with tempfile.TemporaryDirectory() as folder:
        run([sys.executable, "-c", EXPORT, folder], args.threads)
        print(f"{'side':16s} {'tokens/s':>10s} {'CPU s/step':>11s} {'peak RSS MiB':>13s} {'loss':>8s}")
        for side in args.sides.split(","):
            out = json.loads(run([sys.executable, "-c", CHILD, side, str(args.steps), str(args.batch),
                                  str(args.context), folder, str(args.threads)], args.threads).splitlines()[-1])
            results["sides"][side] = out
            print(f"{side:16s} {out['tokens_per_s']:10.1f} {out['cpu_s_per_step']:11.2f} {out['peak_rss_mib']:13.0f} "
                  f"{out['loss']:8.4f}", flush=True)
    sides = results["sides"]
    for ours, theirs, what in PAIRS:
        if ours in sides and theirs in sides:
            a, b = sides[ours], sides[theirs]
            print(f"{ours} / {theirs} ({what}): {a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
                  f"{b['cpu_s_per_step'] / a['cpu_s_per_step']:.2f}x by CPU time, "
                  f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x peak RSS")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
