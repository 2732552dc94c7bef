"""The serving engine: the model on one worker thread, continuous batching at the request level. Jobs join the
running set as they arrive and leave as they finish, one token each per round.

It runs any model of the protocols below: a BatchDecoder has its running jobs advanced together in one step over
slots of shared caches (serve/slots.py); a model that is only a Decoder steps them one by one
(serve/sequential.py)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import numpy as np

from ..constrain import ConstraintError, MasksAhead
from ..generate import KVCache
from ..tokenizers.textstream import TextStream
from .sequential import SequentialRows
from .slots import SlotRows


class Tokenizer(Protocol):
    """What the server needs of a tokenizer."""

    @property
    def stop_ids(self) -> list[int]:  # end-of-turn (and end-of-text) ids: a reply ends at any of them
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict]) -> str: ...


@runtime_checkable
class Decoder(Protocol):
    """A causal language model as generate.py drives it: one sequence per call over its own cache."""

    @property
    def max_positions(self) -> int: ...

    def evaluating(self) -> AbstractContextManager: ...

    def new_cache(self, B: int, T_max: int) -> KVCache:  # per layer k, v (B, T_max, NKV, HS)
        ...

    def __call__(self, ids: np.ndarray, cache: KVCache = None, last_only: bool = False) -> np.ndarray:
        ...  # ids (1, T) -> logits (1, T, V) ((1, 1, V) with last_only), the cache filled and advanced


@runtime_checkable
class BatchDecoder(Decoder, Protocol):
    """A decoder that advances many sequences in one step, each in its own slot of caches shared by all: per layer
    k, v (S, T, NKV, HS), the layout of new_cache(S, T)."""

    def decode_batch(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray, k: list[np.ndarray],
                     v: list[np.ndarray], logit_rows: np.ndarray | None = None) -> np.ndarray:
        ...  # ids, slots, positions (N,) int64: row i is token ids[i] at positions[i] of slot slots[i] (a slot's
        # rows in increasing positions) -> logits (len(logit_rows), V) of the rows logit_rows (all when None)


class Busy(Exception):
    """The engine's queue of waiting jobs is full."""


class _Tagged:
    """A job's view of its request's queue: every item it puts goes in as (choice index, item)."""

    def __init__(self, out, index):
        self.out, self.index = out, index

    def put_nowait(self, item):
        self.out.put_nowait((self.index, item))


class Job:
    """One completion being generated: its prompt, sampling settings, cache and where its items go:
    ("token", text, logprob info) for each token (text "" while it is held back), then one
    ("done", finish_reason, usage) or ("error", message, status): 400 when its grammar cannot go on (the
    request's constraint, a constrain.ConstraintError), 500 for any other failure."""

    def __init__(self, ids, max_tokens, sampler, seed, stop, logprobs, loop, out, matcher=None, ignore_eos=False):
        self.ids, self.max_tokens, self.sampler, self.stop, self.logprobs = ids, max_tokens, sampler, stop, logprobs
        self.ignore_eos = ignore_eos  # (an end-of-turn token is generated like any other: max_tokens always)
        self.matcher = matcher  # (a constrain.Matcher: its grammar's mask applies before the sampler)
        self.rng = np.random.default_rng(seed)
        self.loop, self.out = loop, out
        self.cancelled = False
        self.generated = []
        self.text = None  # its TextStream (set by the engine that takes it)
        self.cache = self.logits = self.slot = self.best = None  # (best: the logits' argmax, when the step has it)
        self.pending, self.fed, self.reused = [], 0, 0  # prompt tokens not yet in the cache, those that are
        self.sink = None  # the list of items its engine delivers after each round (set by Engine.submit)

    @classmethod
    def choices(cls, n, ids, max_tokens, sampler, seed, stop, logprobs, loop, out, grammar=None,
                ignore_eos=False) -> list[Job]:
        """n jobs of one request, seeds seed, seed + 1, ...; their items reach `out` tagged by choice index; each
        has its own matcher of the grammar (a constrain.Grammar) when there is one."""
        return [cls(list(ids), max_tokens, sampler, None if seed is None else seed + i, stop, logprobs, loop,
                    _Tagged(out, i), None if grammar is None else grammar.matcher(), ignore_eos) for i in range(n)]

    def emit(self, item):
        self.sink.append((self, item))

    def fail(self, e: Exception):
        """The job ends with the error e (its status: 400 for its grammar's, 500 for anything else)."""
        self.emit(("error", f"{type(e).__name__}: {e}", 400 if isinstance(e, ConstraintError) else 500))

    def usage(self):
        return {"prompt_tokens": len(self.ids), "completion_tokens": len(self.generated),
                "total_tokens": len(self.ids) + len(self.generated)}


def _deliver(items):
    """On the event loop: a round's items, each into its job's queue."""
    for out, item in items:
        out.put_nowait(item)


class Engine:
    """The model on one worker thread. submit() jobs from any thread (the event loop); their items come back on
    each job's queue through its loop. Each round admits waiting jobs, samples one token for every running job
    and advances them all."""

    def __init__(self, model: Decoder, tokenizer: Tokenizer, max_queue=64, max_running=16, context=2048):
        self.model, self.tok = model, tokenizer
        self.end_ids = frozenset(tokenizer.stop_ids)
        self.max_queue, self.max_running = max_queue, max_running
        self.context = min(model.max_positions, context)
        self.rows = (SlotRows(model, max_running, self.context) if isinstance(model, BatchDecoder)
                     else SequentialRows(model, self.context))
        self.waiting = collections.deque()
        self.changed = threading.Condition()  # (guards waiting and closing)
        self.closing = False
        self.running: list[Job] = []
        self.outbox: list = []  # (job, item) emitted this round, delivered by _flush
        self.thread = threading.Thread(target=self._work, name="pytransformer-engine", daemon=True)
        self.thread.start()

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue the jobs, all or none: Busy when the queue has no room for all of them; ValueError when a job
        does not fit in the context."""
        for job in jobs:
            if len(job.ids) + job.max_tokens > self.context:
                raise ValueError(f"the prompt ({len(job.ids)} tokens) and max_tokens ({job.max_tokens}) exceed the "
                                 f"engine's context of {self.context}")
            job.sink, job.text = self.outbox, TextStream(self.tok.decode, job.stop)
        with self.changed:
            if self.closing:
                raise RuntimeError("the engine is closed")
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise Busy(f"too many requests waiting ({len(self.waiting)} of {self.max_queue})")
            self.waiting.extend(jobs)
            self.changed.notify()

    def cancel(self, jobs: Sequence[Job]) -> None:
        """The jobs end: those waiting leave the queue now, running ones free their place at the next round."""
        with self.changed:
            for job in jobs:
                job.cancelled = True
            self.waiting = collections.deque(j for j in self.waiting if not j.cancelled)

    def close(self, timeout=10.0):
        """Stop the worker once the running jobs are done (waiting ones are dropped) and wait for it."""
        with self.changed:
            self.closing = True
            self.waiting.clear()
            self.changed.notify()
        self.thread.join(timeout)

    def _next(self, wait):
        """The next waiting job (None: none, or closing); wait: block until there is one."""
        with self.changed:
            while wait and not self.waiting and not self.closing:
                self.changed.wait()
            return self.waiting.popleft() if self.waiting and not self.closing else None

    def _work(self):
        with self.model.evaluating():  # (for the worker's lifetime: entering it walks every module, ~2 ms)
            while True:
                job = self._next(wait=not self.running)
                if job is None and not self.running:
                    return  # (closing)
                while job is not None:
                    self._admit(job)
                    job = self._next(wait=False) if len(self.running) < self.max_running else None
                try:
                    self._round()
                except Exception as e:  # a failed step ends the round's jobs, never the worker
                    for job in self.running:
                        job.fail(e)
                        self.rows.release(job)
                    self.running = []
                self._flush()

    def _flush(self):
        """Deliver the items the jobs emitted since the last flush: one wake-up of each event loop per round
        (one per item cost the loop a wake-up and a pipe write for every token of every stream)."""
        by_loop = {}
        for job, item in self.outbox:
            by_loop.setdefault(job.loop, []).append((job.out, item))
        self.outbox.clear()
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _admit(self, job):
        if job.cancelled:
            return
        try:
            self.rows.admit(job)
            self.running.append(job)
        except Exception as e:
            job.fail(e)
            self.rows.release(job)

    def _round(self):
        going = []
        for job in list(self.running):
            try:  # (a job's own failure -- its grammar's, its sampler's -- ends that job alone)
                finish = None if job.cancelled or job.pending else self._sample(job)
            except Exception as e:
                job.fail(e)
                job.cancelled, finish = True, None
            if job.cancelled or finish is not None:
                if finish is not None:
                    job.emit(("done", finish, job.usage()))
                self.running.remove(job)
                self.rows.release(job)
            else:
                going.append(job)
        if going:  # (the event loop streams the last round's tokens while the step runs without the GIL)
            with MasksAhead([j.matcher for j in going if j.matcher is not None]):  # (the grammars' next masks)
                self.rows.step(going, self._flush)

    def _sample(self, job):
        """The job's next token from its logits, its text emitted -> the finish reason, or None to go on."""
        raw = logits = job.logits
        if job.matcher is not None:  # (the grammar's mask before any sampler, in place; logprobs: the model's own)
            logits = np.array(raw) if job.logprobs is not None else raw
            job.matcher.mask(logits)
        if job.best is not None and job.matcher is None and job.sampler.temperature == 0.0 and \
                job.sampler.repetition_penalty == 1.0:
            tok = job.best  # (greedy: the step's argmax, the Sampler's own rule)
        else:
            seen = None
            if job.sampler.repetition_penalty != 1.0:
                seen = np.zeros((1, logits.shape[-1]), bool)
                seen[0, job.ids + job.generated] = True
            tok = int(job.sampler(logits[None], seen, job.rng)[0])
        info = None
        if job.logprobs is not None:
            x = raw.astype(np.float64)
            lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            top = np.argsort(-lp)[:job.logprobs]
            info = (float(lp[tok]), [(self.tok.decode([int(i)]), float(lp[i])) for i in top])
        job.generated.append(tok)
        if job.matcher is not None and tok not in self.end_ids:
            job.matcher.consume(tok)
        finish = None
        if tok in self.end_ids and not job.ignore_eos:
            piece, finish = job.text.flush(), "stop"
        else:
            piece = job.text.push(tok)
            if job.text.stopped:
                finish = "stop"
            elif len(job.generated) >= job.max_tokens or len(job.ids) + len(job.generated) >= self.context:
                piece, finish = piece + job.text.flush(), "length"
        if piece or info is not None:  # (with logprobs, one item per token: its text may be "")
            job.emit(("token", piece, info))
        return finish
