"""The engine's batched rows: every running job holds a slot of caches shared by all of them, and one
decode_batch step per round advances them all (each weight read once for the whole batch), prompts fed in beside
the decoding jobs' tokens. A prefix store lets a prompt that begins like a recent one copy those rows."""

from __future__ import annotations

import mmap

import numpy as np

from .. import ops


def _zeros(shape, dtype):
    """Zeros (float32, or float16: the model's cache_dtype) whose pages cost memory only once written, and in 4 KiB
    pages: with transparent huge pages a request's first rows in a fresh slot each faulted in (and zeroed) 2 MiB,
    200-300 ms per prompt on this machine (anonymous mmap + MADV_NOHUGEPAGE: 1.5 ms)."""
    n = int(np.prod(shape))
    m = mmap.mmap(-1, max(n * dtype.itemsize, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype, n).reshape(shape)


class PrefixStore:
    """The keys and values of recent prompts, so that a prompt sharing a prefix with one of them (a chat
    template's system prompt, a few-shot preamble, an earlier turn of the conversation) prefills only the rest:
    the shared rows are copied into its cache slot (as vLLM's prefix caching and llama.cpp's prompt cache do).
    The copied rows are the ones the earlier prefill computed, so a reply can differ from a cold one by float
    rounding only."""

    min_tokens = 16  # shorter shared prefixes are not worth a copy
    entries = 8      # prompts kept (least recently used dropped)

    def __init__(self):
        self.items = []  # (token ids, [k per layer (T, NKV, HS)], [v per layer]), most recently used last

    def restore(self, ids, slot, k, v) -> int:
        """Copy the longest stored prefix of ids (at most len(ids) - 1 tokens: the last one is prefilled for its
        logits) into slot's rows of the caches k, v -> its length (0: none)."""
        best, best_len = None, 0
        for item in self.items:
            n = min(len(item[0]), len(ids) - 1)
            same = np.flatnonzero(np.asarray(item[0][:n]) != np.asarray(ids[:n]))
            length = int(same[0]) if same.size else n
            if length > best_len:
                best, best_len = item, length
        if best is None or best_len < self.min_tokens:
            return 0
        self.items.remove(best)
        self.items.append(best)
        for dst, src in zip(k, best[1]):
            dst[slot, :best_len] = src[:best_len]
        for dst, src in zip(v, best[2]):
            dst[slot, :best_len] = src[:best_len]
        return best_len

    def keep(self, ids, slot, k, v) -> None:
        """Store the prompt ids whose keys and values fill slot's first len(ids) rows."""
        n = len(ids)
        self.items.append((list(ids), [a[slot, :n].copy() for a in k], [a[slot, :n].copy() for a in v]))
        del self.items[:-self.entries]


def step_rows(model) -> int:
    """Rows a step takes beside its decoding jobs' before prompt rows wait for the next one. The float32 products
    take ops.small_batch_rows() in one pass (a step of more costs about twice as much); with int8 activations (every
    product of GGUF integer blocks) they run panels of 4-row tiles whose cost per row keeps falling with the rows
    (SmolLM2, 2 threads: 3.0 ms of CPU a row at 16 rows, 2.4 at 24, 2.45 at 32), so twice that: a new prompt goes in
    one or two steps instead of a few rows a step, and its first token comes about twice as soon (bench/NOTES.md,
    session 17)."""
    int8 = getattr(model, "activation_dtypes", set)() == {"int8"}
    return ops.small_batch_rows() * (2 if int8 else 1)


class SlotRows:
    """Jobs in slots of shared caches k[l], v[l] (S, T, NKV, HS) (the layout of the model's new_cache, allocated
    once: pages cost memory only once written), all advanced by one model.decode_batch per round."""

    prompt_rows = 128  # prompt tokens fed per step at most (a long prompt over several steps: others keep going)

    def __init__(self, model, slots, context):
        self.model = model
        layout = model.new_cache(1, 1)  # (a probe of the layout: per layer (1, 1, NKV, HS))
        self.k = [_zeros((slots, context) + a.shape[2:], a.dtype) for a in layout.k]
        self.v = [_zeros((slots, context) + a.shape[2:], a.dtype) for a in layout.v]
        self.free = list(range(slots))
        self.prefixes = PrefixStore()
        self.batch_rows = step_rows(model)  # (the rows a step fills up to with prompt rows beside decoding ones)

    def admit(self, job):
        """The job takes a free slot; its prompt is fed to the next rounds' steps, beside the other jobs' tokens."""
        job.slot = self.free.pop()
        job.fed = job.reused = self.prefixes.restore(job.ids, job.slot, self.k, self.v)
        job.pending = list(job.ids[job.fed:])

    def release(self, job):
        if job.slot is not None:
            self.free.append(job.slot)
            job.slot = None

    def step(self, going, before_step):
        """One batched step: every decoding job's last token, and prompt tokens of the jobs still prefilling (rows
        of one slot in increasing positions); logits for the rows whose next token is wanted. before_step() runs
        just before the model does (while it runs without the GIL)."""
        ids, slots, positions, wanted, owners, complete = [], [], [], [], [], []
        # prompt rows fill the step up to batch_rows beside the decoding jobs' (step_rows: where more would cost the
        # decoding jobs too much); a backlog of prompts (many arriving at once) goes in wide steps, as a prefill would
        decoding = sum(1 for j in going if not j.pending)
        backlog = sum(len(j.pending) for j in going)
        budget = self.prompt_rows if backlog >= self.prompt_rows // 2 else max(1, self.batch_rows - decoding)
        for j in going:
            if j.pending:
                take = j.pending[:budget]  # (at least one prompt row per step: the first waiting job's)
                if not take:
                    continue
                budget -= len(take)
                ids += take
                slots += [j.slot] * len(take)
                positions += range(j.fed, j.fed + len(take))
                j.fed += len(take)
                j.pending = j.pending[len(take):]
                if j.pending:
                    continue
                complete.append(j)
            else:
                ids.append(j.generated[-1])
                slots.append(j.slot)
                positions.append(len(j.ids) + len(j.generated) - 1)
            wanted.append(len(ids) - 1)
            owners.append(j)
        ids, slots, positions = (np.array(a, np.int64) for a in (ids, slots, positions))
        before_step()
        logits = self.model.decode_batch(ids, slots, positions, self.k, self.v,
                                         logit_rows=np.array(wanted, np.int64))
        best = logits.argmax(-1)  # (every row's greedy token in one call)
        for j, row, b in zip(owners, logits, best.tolist()):
            j.logits, j.best = row, b
        for j in complete:  # (after the step wrote their rows) prompts with something new to share
            if j.reused < len(j.ids) - PrefixStore.min_tokens:
                self.prefixes.keep(j.ids, j.slot, self.k, self.v)
