"""The training loop for language models: batches, warmup + cosine LR, gradient accumulation and clipping,
evaluation, progress (step, loss, tokens/s, ETA), atomic checkpoints and exact resume.

A NaN or infinite loss (or gradient norm) stops training with TrainingDiverged; checkpoints are only ever
written after a good step, so the last one on disk stays usable.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ._runtime import matmul_precision
from .checkpoint import restore_checkpoint, save_checkpoint
from .optim import AdamW, clip_grad_norm, cosine_lr


class TrainingDiverged(FloatingPointError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during train_lm: the step under way was finished and, when cfg.checkpoint is set, saved;
    `step` is the number of steps done, `checkpoint` the file written (or None)."""

    def __init__(self, step, checkpoint):
        super().__init__(f"interrupted after step {step}")
        self.step, self.checkpoint = step, checkpoint


class _StopRequest:
    """A first SIGINT asks the loop to stop after the step under way (so the optimizer never stops half-way and
    the checkpoint is exact); a second one interrupts at once. Only the main thread can take signals; elsewhere
    this does nothing and KeyboardInterrupt behaves as usual."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    log_file: str | None = None   # JSON lines: step, loss, lr, tokens/s (rank 0 writes)
    accum: int = 1
    eval_every: int = 100
    eval_batches: int = 10
    log_every: int = 10
    checkpoint: str | None = None      # path of the checkpoint file (written every checkpoint_every steps)
    checkpoint_every: int = 100
    seed: int = 0
    precision: str = "float32"         # matmul precision during training: "float32" or "bfloat16" (AMX)
    context: int | None = None         # positions per training sequence (default: all the model's max_positions)


@dataclass
class History:
    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    val_step: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    tokens_per_s: float = 0.0


def get_batch(data, batch_size, block_size, rng):
    """Random windows of a 1-D token array -> inputs (B, T) and next-token targets (B, T). data may also be (2, N):
    tokens and their labels, -100 where no loss is taken (a chat's prompts: train only on the assistant's tokens);
    each window then holds at least one labelled target."""
    tokens, labels = (data, data) if data.ndim == 1 else data
    if len(tokens) <= block_size:
        raise ValueError(f"the data ({len(tokens)} tokens) must be longer than the context ({block_size})")
    if data.ndim == 1:
        starts = rng.integers(0, len(data) - block_size, batch_size)
    else:  # a labelled target p drawn, then a window around it: p - 1 - offset, held inside the data
        labelled = np.flatnonzero(labels[1:] != -100) + 1
        if not labelled.size:
            raise ValueError("the data has no labelled token to learn")
        p = labelled[rng.integers(0, labelled.size, batch_size)]
        starts = np.clip(p - 1 - rng.integers(0, block_size, batch_size), 0, len(tokens) - block_size - 1)
    x = np.stack([tokens[s: s + block_size] for s in starts])
    y = np.stack([labels[s + 1: s + 1 + block_size] for s in starts])
    return x, y


def evaluate(model, data, batch_size, block_size, batches, seed=1234):
    """Mean loss over `batches` fixed random batches (its own RNG: evaluation never shifts training batches)."""
    if data.shape[-1] <= block_size:
        return float("nan")
    rng = np.random.default_rng(seed)
    with model.evaluating():
        return float(np.mean([model.loss(*get_batch(data, batch_size, block_size, rng)) for _ in range(batches)]))


def train_lm(model, train_data, val_data, cfg: TrainConfig, resume=False, tokenizer=None, log=None, extra=None):
    """Train a language model (an attached LoRA adapter only, when it has one) on token arrays (get_batch);
    returns a History (of the whole run, resumed parts included). With
    resume=True and cfg.checkpoint present, it continues from that checkpoint exactly as if never interrupted.
    cfg.precision applies while it runs. `extra` (JSON-able) is stored in every checkpoint. Ctrl-C finishes the
    step under way, saves a checkpoint and raises TrainingInterrupted; a second Ctrl-C stops at once."""
    with matmul_precision(cfg.precision), _StopRequest() as stop:
        return _train_lm(model, train_data, val_data, cfg, resume, tokenizer, log, extra, stop)


def _train_lm(model, train_data, val_data, cfg, resume, tokenizer, log, extra, stop):
    from .distributed import GradientSync, world

    mpi = world()  # one process (rank 0 of 1), or one rank of a data-parallel job under mpiexec
    if cfg.batch_size % mpi.size:
        raise ValueError(f"the global batch {cfg.batch_size} must be a multiple of the {mpi.size} ranks")
    rows = slice(mpi.rank * (cfg.batch_size // mpi.size), (mpi.rank + 1) * (cfg.batch_size // mpi.size))
    sync = GradientSync(model, mpi) if mpi.size > 1 else None
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not mpi.is_root:  # rank 0 speaks and writes for the job
        log = lambda msg: None  # noqa: E731
    T = cfg.context or model.config.max_positions
    if T > model.config.max_positions:
        raise ValueError(f"context {T} exceeds the model's {model.config.max_positions} positions")
    opt = AdamW(model.trainable, cfg.lr, cfg.betas, 1e-8, cfg.weight_decay)  # (an attached adapter's A and B alone)
    data_rng = np.random.default_rng(cfg.seed)
    start = 0
    hist = History()
    saved = None  # the checkpoint this run last wrote (or resumed from): the last good one
    if resume and cfg.checkpoint and os.path.exists(cfg.checkpoint):
        start, rngs = restore_checkpoint(cfg.checkpoint, model, opt)
        data_rng = rngs["data"]
        hist = History(**{**asdict(History()), **(read_history(cfg.checkpoint) or {})})
        saved = cfg.checkpoint
        log(f"resumed from {cfg.checkpoint} at step {start}")

    def save(step):
        nonlocal saved
        if mpi.is_root:  # (every rank holds the same state)
            save_checkpoint(cfg.checkpoint, model, opt, step, {"data": data_rng}, tokenizer,
                            {"train": asdict(cfg), "history": asdict(hist), **(extra or {})})
        mpi.barrier()  # (no rank goes on, or stops, before the checkpoint is whole)
        saved = cfg.checkpoint

    model.train()
    tokens_per_step = cfg.batch_size * T * cfg.accum
    t0, timed_steps = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        lr = cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        model.zero_grad()
        loss = 0.0
        for micro_step in range(cfg.accum):
            x, y = get_batch(train_data, cfg.batch_size, T, data_rng)  # the global batch (the same on every rank)
            try:
                micro = model.loss(x[rows], y[rows])  # this rank's rows
            except FloatingPointError as e:
                raise TrainingDiverged(_diverged(step, str(e), saved)) from None
            if sync is not None and micro_step == cfg.accum - 1:
                with sync:  # gradients averaged across ranks, bucket by bucket as backward finishes them
                    model.backward(1.0 / cfg.accum)
            else:
                model.backward(1.0 / cfg.accum)
            loss += mpi.mean(micro) / cfg.accum
        norm = clip_grad_norm(model.trainable, cfg.grad_clip)
        if not math.isfinite(norm):
            raise TrainingDiverged(_diverged(step, f"gradient norm is {norm}", saved))
        opt.step(lr)
        timed_steps += 1
        hist.step.append(step + 1)
        hist.loss.append(loss)
        hist.lr.append(lr)
        elapsed = time.perf_counter() - t0
        tps = timed_steps * tokens_per_step / elapsed
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.log_every == 0 or last or step == start:
            eta = (cfg.steps - step - 1) * elapsed / timed_steps
            log(f"step {step + 1:5d}/{cfg.steps}  loss {loss:.4f}  lr {lr:.2e}  |g| {norm:.2f}  "
                f"{tps:,.0f} tok/s  ETA {_fmt_time(eta)}")
        if cfg.log_file and mpi.is_root:  # one JSON line per step, for comparing runs
            with open(cfg.log_file, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": loss, "lr": lr, "tokens_per_s": tps,
                                    "ranks": mpi.size,
                                    "allreduce_wait_s": sync.wait_seconds if sync is not None else 0.0,
                                    "elapsed_s": elapsed}) + "\n")
        if val_data is not None and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
            val = evaluate(model, val_data, cfg.batch_size, T, cfg.eval_batches)
            hist.val_step.append(step + 1)
            hist.val_loss.append(val)
            log(f"step {step + 1:5d}  val loss {val:.4f}")
        if cfg.checkpoint and ((step + 1) % cfg.checkpoint_every == 0 or last):
            save(step + 1)
        if stop.requested and not last:
            if cfg.checkpoint and (step + 1) % cfg.checkpoint_every:  # (else it was saved just above)
                save(step + 1)
            raise TrainingInterrupted(step + 1, cfg.checkpoint)
    hist.tokens_per_s = timed_steps * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
    return hist


def _diverged(step, why, saved):
    keep = f"; the last good checkpoint is {saved}" if saved else "; this run wrote no checkpoint yet"
    return f"training stopped at step {step + 1}: {why}{keep}"


def read_history(path):
    """The History (as a dict) a checkpoint written by train_lm carries, or None."""

    from .io.safetensors import read_metadata

    extra = json.loads(read_metadata(path).get("extra", "null")) or {}
    return extra.get("history")


def _fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plot_history(hist: History, path, title="loss", extra=None) -> bool:
    """Loss curve PNG (train and validation; `extra` {label: (steps, losses)} adds curves). False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(hist.step, hist.loss, label="train", lw=1)
    if hist.val_step:
        ax.plot(hist.val_step, hist.val_loss, "o-", label="validation")
    for label, (steps, losses) in (extra or {}).items():
        ax.plot(steps, losses, label=label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
