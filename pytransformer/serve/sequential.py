"""The engine's fallback for a model without decode_batch (not a BatchDecoder): each job its own KV cache, its
prompt prefilled when it is admitted, then one forward call per job per round (no batching across jobs)."""

from __future__ import annotations

import numpy as np


class SequentialRows:
    def __init__(self, model, context):
        self.model, self.context = model, context

    def admit(self, job):
        job.cache = self.model.new_cache(1, self.context)
        job.logits = self.model(np.array([job.ids], np.int64), cache=job.cache, last_only=True)[0, -1]

    def release(self, job):
        job.cache = None

    def step(self, going, before_step):
        before_step()
        for j in going:
            j.logits = self.model(np.array([[j.generated[-1]]], np.int64), cache=j.cache)[0, -1]
