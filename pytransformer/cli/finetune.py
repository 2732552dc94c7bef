"""`pytransformer finetune MODEL --data FILE`: a LoRA adapter for any language model from_pretrained takes, trained
by train.py's loop (warmup + cosine, accumulation, evaluation, progress, atomic checkpoints, --resume, Ctrl-C saves)
on plain text or chat JSONL ({"messages": [...]} a line, rendered by the model's chat template, the loss on the
assistant's tokens only). --out holds the adapter in peft's files, the checkpoint and the loss curve."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from .common import COUNT, POSITIVE, UsageError, load_model, number, read_text, run_settings

IGNORE = -100  # the label of a token no loss is taken on (CrossEntropyHead's ignore_index)
DEFAULTS = {"data": None, "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "targets": None, "steps": 200,
            "lr": 1e-3, "batch": 8, "accum": 1, "context": None, "eval_fraction": 0.1, "eval_every": 50, "warmup": None,
            "seed": 0}
DESCRIPTION = ("Train a LoRA adapter (peft's files) for a language model, its weights frozen in their own format. "
               "--data: plain text, or chat JSONL (one {\"messages\": [...]} a line; the loss on the assistant's "
               "replies only). With --resume the run's settings come from its checkpoint: only --steps may change.")
# settings a resumed run keeps (--steps may change)
RUN_SETTINGS = tuple(k for k in DEFAULTS if k != "steps")


def add_parsers(sub, parents):
    d = DEFAULTS
    p = sub.add_parser("finetune", parents=parents, help="train a LoRA adapter for a language model",
                       description=DESCRIPTION)
    p.add_argument("model", help="a GGUF file, a Hugging Face folder, a packaged name ('smollm2') or a cached repo id")
    p.add_argument("--data", help="a UTF-8 text file, or a .jsonl file of chats")
    p.add_argument("--out", default="pytransformer-adapter", help="folder for the adapter, checkpoint and loss curve")
    p.add_argument("--lora-rank", dest="lora_rank", type=POSITIVE, help=f"LoRA rank r (default {d['lora_rank']})")
    p.add_argument("--lora-alpha", dest="lora_alpha", type=number(float, 0.0, lo_open=True),
                   help=f"LoRA alpha: the update is scaled by alpha / r (default {d['lora_alpha']:g})")
    p.add_argument("--lora-dropout", dest="lora_dropout", type=number(float, 0.0, hi=1.0, hi_open=True),
                   help=f"dropout on the adapter's input (default {d['lora_dropout']})")
    p.add_argument("--targets", help="comma-separated modules to adapt (default: every attention and MLP projection, "
                   "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    p.add_argument("--steps", type=COUNT, help=f"optimizer steps in the whole run (default {d['steps']})")
    p.add_argument("--lr", type=number(float, 0.0, lo_open=True), help=f"peak learning rate (default {d['lr']})")
    p.add_argument("--batch", type=POSITIVE, help=f"sequences per micro-batch (default {d['batch']})")
    p.add_argument("--accum", type=POSITIVE, help=f"micro-batches per step (default {d['accum']})")
    p.add_argument("--context", type=POSITIVE, help="tokens per sequence (default: 256, or the model's positions "
                   "when fewer)")
    p.add_argument("--warmup", type=COUNT, help="steps of linear warmup before the cosine decay (default: 5%% of "
                   "--steps)")
    p.add_argument("--eval-fraction", dest="eval_fraction", type=number(float, 0.0, lo_open=True, hi=0.5),
                   help=f"share of the data held out for evaluation (default {d['eval_fraction']})")
    p.add_argument("--eval-every", dest="eval_every", type=POSITIVE,
                   help=f"steps between evaluations and checkpoints (default {d['eval_every']})")
    p.add_argument("--seed", type=COUNT, help=f"seed of the adapter, batches and dropout (default {d['seed']})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--force", action="store_true", help="start a new run even if --out already holds one")
    p.add_argument("--log", help="append one JSON line per step to this file (step, loss, lr, tokens/s)")
    p.set_defaults(func=cmd_finetune)


# --- data -------------------------------------------------------------------------------------------------------


def conversation(tok, messages, where):
    """One chat -> (ids, labels) int64 (N,): the model's chat template's text, the assistant's replies (their end of
    turn included) labelled with their ids, everything else IGNORE. where names the chat in errors."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise UsageError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        raise UsageError(f"{where}: no assistant message to learn")
    text = tok.apply_chat_template(messages, add_generation_prompt=False)
    cuts = [0]
    for i in replies:  # each reply is the text its conversation adds after the prompt that asks for it
        before = tok.apply_chat_template(messages[:i], add_generation_prompt=True)
        after = tok.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (after.startswith(before) and text.startswith(after) and len(before) >= cuts[-1]):
            raise UsageError(f"{where}: the model's chat template does not render this conversation turn by turn")
        cuts += [len(before), len(after)]
    cuts.append(len(text))
    ids, labels = [], []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        piece = tok.encode(text[a:b]) if b > a else []
        ids += piece
        labels += piece if k % 2 else [IGNORE] * len(piece)
    return np.array(ids, np.int64), np.array(labels, np.int64)


def read_data(path, tok, eval_fraction):
    """(train, held out) token arrays from --data: plain text -> (N,) ids split at the end; a .jsonl file of chats ->
    (2, N) ids and labels (train.get_batch's form), the last chats held out."""
    text = read_text(path, "--data")
    if not path.endswith(".jsonl"):
        data = np.asarray(tok.encode(text), np.int64)
        split = int(round(len(data) * (1 - eval_fraction)))
        return data[:split], data[split:]
    chats = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {n}: not JSON ({e.msg})") from None
        chats.append(conversation(tok, record.get("messages") if isinstance(record, dict) else None,
                                  f"{path} line {n}"))
    held = max(1, int(round(len(chats) * eval_fraction)))
    if len(chats) < 2:
        raise UsageError(f"{path}: {len(chats)} chat; at least 2 are needed (one is held out for evaluation)")

    def joined(part):
        return np.stack([np.concatenate([c[0] for c in part]), np.concatenate([c[1] for c in part])])

    return joined(chats[:-held]), joined(chats[-held:])


# --- the run ----------------------------------------------------------------------------------------------------


def trainable_base(model, say):
    """The model, its weights widened to float32 first when their format has no backward yet (a note says so)."""
    from ..nn.layers import HoldsWeight

    for m in model.modules():
        if isinstance(m, HoldsWeight):
            try:
                m.stored.dinp(np.zeros((1, m.stored.shape[0]), np.float32))
            except NotImplementedError:
                say(f"note: {m.stored.kind} weights have no backward yet: training on their float32 widening")
                return model.set_weight_dtype("float32")
    return model


def _settings(args, ckpt):
    """The run's settings (common.run_settings) and its step; a run already in --out is kept without --force."""
    if not args.resume and os.path.exists(ckpt) and not args.force:
        raise UsageError(f"{args.out} already holds a run; continue it with --resume, or start over with --force "
                         f"(or choose another --out)")
    return run_settings(args, ckpt, DEFAULTS, RUN_SETTINGS, "finetune", "finetune")


def cmd_finetune(args) -> int:
    from .. import _runtime
    from ..train import TrainConfig, TrainingDiverged, TrainingInterrupted, plot_history, train_lm

    ckpt = os.path.join(args.out, "ckpt.safetensors")
    s, done = _settings(args, ckpt)
    if not s["data"]:
        raise UsageError("--data FILE is required (plain text, or a .jsonl file of chats)")
    if args.resume and done >= s["steps"]:
        print(f"the run in {args.out} is complete ({done} of {s['steps']} steps); pass --steps N (> {done}) to go on")
        return 0
    say = lambda *a, **k: print(*a, **k, flush=True)  # noqa: E731
    model = load_model(args.model)
    train, held = read_data(s["data"], model.tokenizer, s["eval_fraction"])
    T = s["context"] = s["context"] or min(256, model.max_positions)
    if T > model.max_positions:
        raise UsageError(f"--context {T} exceeds the model's {model.max_positions} positions")
    for part, name in ((train, "training"), (held, "held-out")):
        if part.shape[-1] <= T:
            raise UsageError(f"{s['data']}: its {name} part has {part.shape[-1]:,} tokens, too few for --context {T}; "
                             f"give more data, a shorter --context or another --eval-fraction")
    targets = None if s["targets"] is None else [t.strip() for t in s["targets"].split(",")]
    try:
        trainable_base(model, say).add_adapter(s["lora_rank"], s["lora_alpha"], s["lora_dropout"], targets, s["seed"])
    except ValueError as e:
        raise UsageError(f"{args.model}: {e}") from None
    model.train()
    os.makedirs(args.out, exist_ok=True)
    steps = s["steps"]
    warmup = s["warmup"] if s["warmup"] is not None else max(1, steps // 20)
    cfg = TrainConfig(steps=steps, batch_size=s["batch"], lr=s["lr"], min_lr=s["lr"] / 10, warmup=warmup,
                      weight_decay=0.0, accum=s["accum"], eval_every=s["eval_every"], checkpoint=ckpt,
                      checkpoint_every=s["eval_every"], seed=s["seed"], log_file=args.log, context=T)
    chats = train.ndim == 2
    say(f"data: {s['data']}: {train.shape[-1]:,} tokens to train on"
        + (f" ({int((train[1] != IGNORE).sum()):,} of them assistant replies)" if chats else "")
        + f", {held.shape[-1]:,} held out")
    say(f"adapter: rank {s['lora_rank']}, alpha {s['lora_alpha']:g} on {', '.join(model.adapter.targets)}: "
        f"{model.trainable.size:,} parameters; base {args.model} frozen; {_runtime.get_num_threads()} threads")
    try:
        hist = train_lm(model, train, held, cfg, resume=args.resume, log=say, extra={"finetune": s})
    except TrainingInterrupted as e:
        model.save_adapter(args.out)
        say(f"\ninterrupted after step {e.step}: adapter and checkpoint in {args.out}; continue with: pytransformer "
            f"finetune {args.model} --resume --out {args.out}", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        raise UsageError(str(e)) from None
    model.save_adapter(args.out)
    say(f"adapter: {args.out} ({hist.tokens_per_s:,.0f} tokens/s); use it with: pytransformer chat {args.model} "
        f"--adapter {args.out}")
    if plot_history(hist, os.path.join(args.out, "loss.png"), f"LoRA on {os.path.basename(s['data'])}"):
        say(f"loss curve: {os.path.join(args.out, 'loss.png')}")
    return 0
