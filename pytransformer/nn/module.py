"""Parameters, modules and the flat buffer that holds a model's parameters and gradients.

A layer declares its parameters as `Parameter(shape, init)`; when a model is built, `FlatParameters` walks
the module tree (in declaration order), allocates one float32 buffer for all values and one for all
gradients, and makes every `Parameter.data` / `.grad` a C-contiguous view into them. Zeroing the gradients
or stepping the optimizer is then one call over one array. A Parameter reached twice (tied weights) is
stored once, and its gradient accumulates from both uses.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from .. import ops


def normal(std: float) -> Callable:
    return lambda rng, shape: rng.standard_normal(shape) * std


def zeros(rng, shape):
    return np.zeros(shape)


def ones(rng, shape):
    return np.ones(shape)


def uniform(bound: float) -> Callable:
    return lambda rng, shape: rng.uniform(-bound, bound, shape)


class Parameter:
    """A named slot for a float32 array and its gradient; both become views into the model's flat buffers."""

    def __init__(self, shape, init: Callable = zeros):
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.init = init
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None

    def __repr__(self):
        return f"Parameter{self.shape}"


# Per thread: the ids of the modules that `evaluating()` holds in eval mode in this thread (other threads see the
# modules' own flag), so that inference in one thread never changes what a training step in another computes.
_local = threading.local()


class Module:
    """Base of every layer: forward(...) keeps what backward needs; backward(dout) returns input gradients and
    accumulates parameter gradients into Parameter.grad.

    Two switches, as in torch: `train()` / `eval()` (dropout on or off; the module's own flag, every thread sees
    it) and `with module.evaluating():` (this thread only, like torch.inference_mode: eval mode, and forwards keep
    nothing for backward, so threads may run inference on one model while another trains it)."""

    _training = True

    @property
    def training(self) -> bool:
        return self._training and id(self) not in getattr(_local, "evaluating", ())

    @property
    def keeps_state(self) -> bool:
        """Whether a forward saves what backward needs: always, except under evaluating() in this thread."""
        return id(self) not in getattr(_local, "evaluating", ())

    @training.setter
    def training(self, mode: bool) -> None:
        self._training = bool(mode)

    def saved(self, value, what="backward"):
        """A forward's saved value, or a RuntimeError when there is none (no training-mode forward ran)."""
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.{what}() needs a forward first (a forward under "
                               "evaluating() keeps nothing)")
        return value

    def children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every (dotted name, Parameter) in declaration order; tied parameters appear once (first name)."""
        seen = set()
        for name, p in self._walk_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _walk_parameters(self, prefix):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child._walk_parameters(f"{prefix}{name}.")

    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    @contextmanager
    def evaluating(self):
        """`with model.evaluating():` runs the body for inference in this thread only: eval mode (no dropout, the
        dropout RNG untouched) and nothing kept for backward; other threads (a training loop) still see the
        model's own mode and state."""
        before = getattr(_local, "evaluating", frozenset())
        _local.evaluating = before | {id(m) for m in self.modules()}
        try:
            yield self
        finally:
            _local.evaluating = before


def _initialise(p: Parameter, rng, chunk_elements: int = 1 << 18) -> None:
    """p.data = p.init(rng, p.shape), drawn straight into the flat buffer a block of rows at a time (the same
    values as one draw: the generator is a stream), so building a model never holds a second copy of it."""
    if len(p.shape) == 0 or p.size <= chunk_elements:
        p.data[...] = p.init(rng, p.shape)
        return
    rows = max(1, chunk_elements // max(1, p.size // p.shape[0]))
    for r0 in range(0, p.shape[0], rows):
        r1 = min(p.shape[0], r0 + rows)
        p.data[r0:r1] = p.init(rng, (r1 - r0,) + p.shape[1:])


class FlatParameters:
    """One float32 buffer for a module tree's parameter values (`data`) and one for their gradients (`grad`)."""

    def __init__(self, module: Module, rng: np.random.Generator, initialise: bool = True):
        named = list(module.named_parameters())
        # matrices (weights, embeddings: decayed by AdamW) first, then vectors (biases, LayerNorm: not decayed),
        # so that each group is one contiguous slice: data[:decay_size] and data[decay_size:]
        self.named = [(n, p) for n, p in named if len(p.shape) >= 2] + [(n, p) for n, p in named if len(p.shape) < 2]
        self.decay_size = sum(p.size for _, p in self.named if len(p.shape) >= 2)
        total = sum(p.size for _, p in self.named)
        self.data = np.empty(total, np.float32)
        self.grad = np.zeros(total, np.float32)  # (calloc: pages cost memory only once a gradient is written)
        self.offsets = {}
        offset = 0
        for name, p in self.named:
            p.data = self.data[offset: offset + p.size].reshape(p.shape)
            p.grad = self.grad[offset: offset + p.size].reshape(p.shape)
            self.offsets[name] = (offset, p.size)
            offset += p.size
        for _, p in named:  # initial values in declaration order, whatever the layout above
            if initialise:
                _initialise(p, rng)

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        ops.zero_(self.grad)

    def to(self, device: str) -> None:
        """Move values and gradients to "cuda" (DeviceArrays) or "cpu" (NumPy), every Parameter's data and grad
        becoming a view into the moved buffers at the same offsets."""
        self.data, self.grad = ops.move(self.data, device), ops.move(self.grad, device)
        for name, p in self.named:
            offset, size = self.offsets[name]
            p.data = self.data[offset: offset + size].reshape(p.shape)
            p.grad = self.grad[offset: offset + size].reshape(p.shape)

    def __iter__(self):
        return iter(self.named)
