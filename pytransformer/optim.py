"""Optimizers over a model's flat parameter buffer, gradient clipping and learning-rate schedules.

AdamW follows torch.optim.AdamW and runs as one fused kernel per parameter group: the matrices (decayed) and
the vectors (biases and LayerNorm parameters, not decayed), each a contiguous slice of the flat buffer.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .nn import FlatParameters


class AdamW:
    def __init__(self, params: FlatParameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 decay_vectors=False):
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.decay_vectors = decay_vectors
        self.m = ops.zeros_like(params.data)
        self.v = ops.zeros_like(params.data)
        self.step_count = 0

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        if ops.device_of(self.m) != ops.device_of(self.params.data):  # the model moved (Model.to) since
            self.m, self.v = (ops.like(a, self.params.data) for a in (self.m, self.v))
        self.step_count += 1
        b1, b2 = self.betas
        p, g, m, v, k = self.params.data, self.params.grad, self.m, self.v, self.params.decay_size
        if self.decay_vectors:
            ops.adamw_step(p, m, v, g, lr, b1, b2, self.eps, self.weight_decay, self.step_count)
            return
        for sl, wd in ((slice(0, k), self.weight_decay), (slice(k, None), 0.0)):
            if p[sl].size:
                ops.adamw_step(p[sl], m[sl], v[sl], g[sl], lr, b1, b2, self.eps, wd, self.step_count)

    def state_dict(self):
        return {"m": ops.to_host(self.m), "v": ops.to_host(self.v), "step": np.array(self.step_count, np.int64)}

    def load_state_dict(self, state):
        ops.copy_into(self.m, np.asarray(state["m"], np.float32))
        ops.copy_into(self.v, np.asarray(state["v"], np.float32))
        self.step_count = int(state["step"])


class SGD:
    """p -= lr * (g + weight_decay * p), with optional momentum (torch.optim.SGD semantics)."""

    def __init__(self, params: FlatParameters, lr=1e-2, momentum=0.0, weight_decay=0.0):
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.buf = np.zeros_like(params.data) if momentum else None
        self.step_count = 0

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        self.step_count += 1
        g = self.params.grad
        if self.weight_decay:
            g = g + np.float32(self.weight_decay) * self.params.data
        if self.buf is not None:
            if self.step_count == 1:
                self.buf[...] = g
            else:
                self.buf *= np.float32(self.momentum)
                self.buf += g
            g = self.buf
        self.params.data -= np.float32(lr) * g

    def state_dict(self):
        state = {"step": np.array(self.step_count, np.int64)}
        if self.buf is not None:
            state["momentum"] = self.buf
        return state

    def load_state_dict(self, state):
        self.step_count = int(state["step"])
        if self.buf is not None:
            self.buf[...] = state["momentum"]


def clip_grad_norm(params: FlatParameters, max_norm: float) -> float:
    """Scale the gradients so that their global L2 norm is at most max_norm; returns the norm before."""
    norm = ops.global_norm(params.grad)
    if max_norm > 0 and norm > max_norm:
        ops.scale_(params.grad, max_norm / (norm + 1e-6))
    return norm


def cosine_lr(step: int, max_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to min_lr at `total` (step counts from 0)."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def inverse_sqrt_lr(step: int, d_model: int, warmup: int = 4000, factor: float = 1.0) -> float:
    """"Attention Is All You Need", section 5.3: lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5),
    rising linearly for `warmup` steps, then falling as 1 / sqrt(step) (step counts from 1; step 0 is taken as 1)."""
    if d_model < 1 or warmup < 1:
        raise ValueError(f"d_model and warmup must be >= 1, got {d_model}, {warmup}")
    step = max(int(step), 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
