"""`pytransformer info`: the machine and a self-check of every kernel, a model's architecture, or the GPT-3 table."""

from __future__ import annotations

import platform

from .. import __version__, _runtime, selfcheck
from .common import load_model


def add_parsers(sub, parents):
    p = sub.add_parser("info", parents=parents, help="the machine and a self-check of the kernels, or a model's size",
                       description="Print the version, the ISA chosen, OpenMP, threads and CUDA, then check every "
                                   "kernel against the float64 reference; given a MODEL, print its architecture, "
                                   "sizes and tensor types instead.")
    p.add_argument("model", nargs="?", help="a GGUF file, a Hugging Face folder, a packaged name ('smollm2') or a "
                   "repo id in the local Hugging Face cache")
    p.add_argument("--gpt3", action="store_true", help="print the GPT-3 paper's size table computed from the presets")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    if args.gpt3:
        return _gpt3_table()
    if args.model:
        return _model_info(args.model)
    info = _runtime.cpu_info()
    print(f"pytransformer {__version__} (Python {platform.python_version()}, {platform.machine()})")
    print(f"isa: {info['isa']}")
    print(f"available isas: {', '.join(info['available_isas'])}")
    print(f"openmp: {'yes' if info['openmp'] else 'no (kernels run serially)'}")
    print(f"threads: {info['num_threads']}")
    print(f"cuda: {'available' if info['cuda'] else 'not available (CPU build)'}")
    amx = "yes (train --precision bfloat16, set_matmul_precision)" if info["amx_bf16"] else "no (float32 only)"
    print(f"amx-bf16: {amx}")
    print("\nself-check: every kernel, forward and backward, vs the float64 reference (relative error; "
          "tolerance 0 means bit-exact)")
    results = selfcheck.run()
    isas = list(results)
    names = list(next(iter(results.values())))
    width = max(len(n) for n in names)
    print(f"{'case':<{width}}  {'tol':>7}  " + "  ".join(f"{isa:>18}" for isa in isas))
    failed = 0
    for name in names:
        cells = []
        for isa in isas:
            err, tol = results[isa][name]
            ok = err <= tol
            failed += not ok
            cells.append(f"{'pass' if ok else 'FAIL'} ({err:8.1e})".rjust(18))
        tol = results[isas[0]][name][1]
        print(f"{name:<{width}}  {tol:7.0e}  " + "  ".join(cells))
    print(f"\n{'all kernels pass' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def _gpt3_table() -> int:
    from ..models import gpt3_table

    print("GPT-3 (Brown et al. 2020, Table 2.1), parameters counted from the configs; vocabulary 50,257, context 2,048")
    print(f"{'model':<12} {'parameters':>15} {'(paper)':>8} {'layers':>6} {'d_model':>7} {'heads':>5} {'d_head':>6} "
          f"{'batch tokens':>12} {'lr':>8}")
    for r in gpt3_table():
        paper = r["paper_parameters"]
        paper = f"{paper / 1e9:.1f}B" if paper >= 1e9 else f"{paper / 1e6:.0f}M"
        print(f"{r['name']:<12} {r['parameters']:>15,} {paper:>8} {r['n_layer']:>6} {r['n_embd']:>7} "
              f"{r['n_head']:>5} {r['head_dim']:>6} {r['batch_tokens'] / 1e6:>11.1f}M {r['learning_rate']:>8.1e}")
    print("13B: the paper prints d_model 5140, which is not 40 heads x 128; the preset uses 5120 (= 40 x 128). XL: "
          "24 heads of 128 would not fit d_model 2048; the preset uses 16 (see models/gpt.py).")
    return 0


def _model_info(name) -> int:
    import os

    from ..io.gguf import read_gguf
    from ..io.resolve import resolve

    found = resolve(name)
    model = load_model(found.path, need_tokenizer=False)
    tokenizer = getattr(model, "tokenizer", None)
    c = model.config
    print(f"{found.path}")
    print(f"architecture: {type(model).__name__.lower()} ({c.n_layer} blocks, width {c.n_embd}, "
          f"{c.n_head} query heads / {getattr(c, 'n_kv_head', c.n_head)} key-value heads of "
          f"{getattr(c, 'head_size', c.n_embd // c.n_head)}, feed-forward {getattr(c, 'intermediate_size', 4 * c.n_embd)})")
    print(f"context: {model.max_positions} positions" + (f", rope base {c.rope_theta:g}" if hasattr(c, "rope_theta") else ""))
    print(f"parameters: {c.num_params():,}")
    if found.kind == "gguf":
        f = read_gguf(found.path)
        kinds = {}
        for info in f.tensors.values():
            n, b = kinds.get(info.qtype, (0, 0))
            kinds[info.qtype] = (n + 1, b + info.nbytes)
        print(f"file: GGUF v{f.version}, {os.path.getsize(found.path) / 2**20:.1f} MiB, {len(f.tensors)} tensors: " +
              ", ".join(f"{n} {k} ({b / 2**20:.1f} MiB)" for k, (n, b) in sorted(kinds.items(), key=lambda x: -x[1][1])))
    if hasattr(tokenizer, "chat_template"):
        print(f"tokenizer: {getattr(tokenizer, 'kind', type(tokenizer).__name__)}, {tokenizer.vocab_size:,} tokens, "
              f"chat template: {'yes' if tokenizer.chat_template else 'ChatML (built in)'}")
    elif tokenizer is not None:
        print(f"tokenizer: {type(tokenizer).__name__}, {tokenizer.vocab_size:,} tokens")
    return 0
