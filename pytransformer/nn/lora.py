"""LoRA (Hu et al., 2021, as peft's tuners/lora/layer.py): a frozen weight of any format plus a trained low-rank
update, one more class of the interface in nn/weights.py.

    y = base(x) + scale * dropout(x) @ A^T @ B^T,   scale = alpha / r,   A (r, IC), B (OC, r)

The base keeps its own format (float32, bfloat16, int8, GGUF blocks): nothing widens it; backward passes through
its `dinp`. A and B are float32 Parameters in the adapter's own FlatParameters, so the optimizer, clipping and
zeroing see only them. `attach` freezes every weight of a model (its products give the input's gradient only) and
wraps the targeted ones; `Adapter.detach` puts the bases back.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from .layers import Dropout, HoldsWeight
from .module import FlatParameters, Module, Parameter, uniform, zeros
from .weights import Weight


class LoRAWeight(Module, Weight):
    """A frozen base weight (OC, IC) of any class and its adapter A (r, IC), B (OC, r) (Parameters). A Module, so
    that train/eval and evaluating() reach its dropout and what it keeps for backward. It does not fuse (q|k|v and
    gate|up take one product each), and the C++ decode plan cannot run it (spec raises: the model decodes through
    its layers while an adapter is attached)."""

    kind, code = "lora", None

    def __init__(self, base: Weight, rank: int, alpha: float, dropout: float = 0.0, lora_A: Parameter = None):
        OC, IC = base.shape
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, float(alpha) / rank
        # (peft's kaiming_uniform(a=sqrt(5)); one A shared by the Linears of a fused module: its gradient sums theirs)
        self.lora_A = lora_A if lora_A is not None else Parameter((rank, IC), uniform(1.0 / math.sqrt(IC)))
        self.lora_B = Parameter((OC, rank), zeros)
        self.drop = Dropout(dropout)

    _saved = None  # (dropout(x), scale * x A^T, whether dropout masked x) of the last forward that keeps state

    @property
    def shape(self):
        return self.base.shape

    @property
    def activations(self):
        return self.base.activations

    def forward(self, x, bias=None):
        """x (..., IC) -> base(x) + bias + scale * dropout(x) @ A^T @ B^T (..., OC): the adapter's part added in
        one pass over the base's output."""
        y = self.base.forward(x, bias)
        xd = self.drop.forward(x)
        h = ops.scale_(ops.matmul_forward(xd, self.lora_A.data), self.scale)  # (..., r)
        add_product(y, h, np.ascontiguousarray(self.lora_B.data.T))
        if self.keeps_state:
            self._saved = (xd, h, xd is not x)
        return y

    def backward(self, dout):
        """dout (..., OC) -> dx (..., IC) = base.dinp(dout) + the adapter's part; dA and dB accumulate. Without a
        dropout mask the adapter's part is added into the base's dx in one pass."""
        xd, h, masked = self.saved(self._saved)
        dx = self.base.dinp(dout)
        dh, _, _ = ops.matmul_backward(dout, h, self.lora_B.data, dweight=self.lora_B.grad, compute_dbias=False)
        ops.scale_(dh, self.scale)
        dxd, _, _ = ops.matmul_backward(dh, xd, self.lora_A.data, dweight=self.lora_A.grad, compute_dbias=False,
                                        compute_dinp=masked)
        return ops.add_into(dx, self.drop.backward(dxd)) if masked else add_product(dx, dh, self.lora_A.data)

    def dinp(self, dout):
        """dout (..., OC) -> dout @ (W + scale B A) (..., IC), no gradient kept."""
        dx = self.base.dinp(dout)
        return add_product(dx, ops.scale_(ops.matmul_dinp(dout, self.lora_B.data), self.scale), self.lora_A.data)

    def delta(self) -> np.ndarray:
        """scale * B @ A (OC, IC) in float32: what merging adds to the base."""
        return ops.scale_(ops.matmul_forward(self.lora_B.data, np.ascontiguousarray(self.lora_A.data.T)),
                          self.scale)

    def with_activations(self, dtype):
        self.base = self.base.with_activations(dtype)
        return self

    def to(self, device):
        check_device(device)
        return self

    def spec(self):
        raise NotImplementedError("the C++ decode plan cannot run a LoRA weight (the model decodes through its "
                                  "layers while an adapter is attached; merge_adapter() folds it in)")


def add_product(out, a, b):
    """out (..., M) += a (..., r) @ b (r, M) in place, returned: the weight-gradient product (out^T's rows are
    out's columns) reads and writes out once, where a product and an add would write a temporary and pass twice."""
    rows = out.reshape(-1, out.shape[-1])
    ops.matmul_backward(np.ascontiguousarray(a.reshape(len(rows), -1).T), b, None, dweight=rows,
                        compute_dinp=False, compute_dbias=False)
    return out


class _Matrices(Module):
    """The adapter's Parameters under their names, for FlatParameters."""

    def __init__(self, named):
        self._named = named

    def named_parameters(self, prefix=""):
        return iter(self._named)


class Adapter:
    """The LoRA adapter attached to a model: `layers` {our Linear's name: (the Linear, its LoRAWeight)}, `params`
    (FlatParameters of every A and B, named `<linear>.lora_A` / `.lora_B`), rank, alpha, dropout, targets."""

    def __init__(self, layers, rank, alpha, dropout, targets, params):
        self.layers, self.rank, self.alpha, self.dropout, self.targets = layers, rank, alpha, dropout, targets
        self.params = params

    def detach(self, model) -> None:
        """Every targeted layer back to its base weight, every layer of the model unfrozen."""
        for layer, lora in self.layers.values():
            layer.stored = lora.base
        for m in model.modules():
            if isinstance(m, HoldsWeight):
                m.frozen = False


def check_device(device) -> None:
    """LoRA weights stay on the CPU: any other device is refused (a model checks before it moves anything)."""
    if device != "cpu":
        raise NotImplementedError(f"LoRA adapters run on the CPU, not {device!r}; merge_adapter() first to move "
                                  "the model")


def module_at(root, name: str):
    """The module at a dotted name ("blocks.0.attn.sublayer.q": attributes and list indices), or None."""
    m = root
    for part in name.split("."):
        m = m[int(part)] if isinstance(m, (list, tuple)) and part.isdigit() and int(part) < len(m) else \
            getattr(m, part, None)
        if m is None:
            return None
    return m


def check_settings(rank, alpha, dropout) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not math.isfinite(alpha) \
            or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.number)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def attach(model, layers: dict, rank: int, alpha: float, dropout: float, targets, seed: int = 0,
           groups=()) -> Adapter:
    """Freeze every weight of model and wrap each of layers {name: Linear} in a LoRAWeight of (rank, alpha,
    dropout); A drawn from a seeded RNG, B zero (the adapted model starts equal to its base). groups: lists of
    names in layers that share one A (a fused module's Linears); it is named after the first."""
    check_settings(rank, alpha, dropout)
    if rank > min(min(layer.weight.shape) for layer in layers.values()):
        raise ValueError(f"rank {rank} exceeds the smallest targeted matrix "
                         f"{min((layer.weight.shape for layer in layers.values()), key=min)}")
    first = {name: group[0] for group in groups for name in group}
    held = {}
    for name, layer in layers.items():
        shared = held[first[name]][1].lora_A if first.get(name, name) != name else None
        held[name] = (layer, LoRAWeight(layer.stored, int(rank), float(alpha), float(dropout), shared))
    named = [(f"{name}.{part}", getattr(lora, part)) for name, (_, lora) in held.items()
             for part in ("lora_A", "lora_B") if part == "lora_B" or first.get(name, name) == name]
    params = FlatParameters(_Matrices(named), np.random.default_rng(seed))
    for m in model.modules():
        if isinstance(m, HoldsWeight):
            m.frozen = True
    for layer, lora in held.values():
        lora.drop.rng = model.dropout_rng
        lora.train(model.training)
        layer.stored = lora
    return Adapter(held, int(rank), float(alpha), float(dropout), tuple(targets), params)
