"""GPT: decoder-only, pre-LN blocks, learned positions, LM head tied to the token embedding (GPT-2/GPT-3)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .. import ops
from ..nn import DecoderBlock, Dropout, Embedding, LayerNorm, LearnedPositions
from .base import CrossEntropyHead, Model, check_ids


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in GPT_PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose from {', '.join(GPT_PRESETS)}")
        return replace(GPT_PRESETS[name], **overrides)

    def to_dict(self):
        return asdict(self)


# GPT-2 small, and the GPT-3 paper's Table 2.1 (n_ctx 2048; GPT-3 alternates dense and locally banded sparse
# attention, these configs use dense attention throughout).
GPT_PRESETS = {
    "gpt2": GPTConfig(50257, 1024, 12, 12, 768),
    "gpt2-medium": GPTConfig(50257, 1024, 24, 16, 1024),
    "gpt2-large": GPTConfig(50257, 1024, 36, 20, 1280),
    "gpt2-xl": GPTConfig(50257, 1024, 48, 25, 1600),
    "gpt3-small": GPTConfig(50257, 2048, 12, 12, 768),
    "gpt3-medium": GPTConfig(50257, 2048, 24, 16, 1024),
    "gpt3-large": GPTConfig(50257, 2048, 24, 16, 1536),
    "gpt3-xl": GPTConfig(50257, 2048, 24, 24, 2048),
    "gpt3-2.7b": GPTConfig(50257, 2048, 32, 32, 2560),
    "gpt3-6.7b": GPTConfig(50257, 2048, 32, 32, 4096),
    "gpt3-13b": GPTConfig(50257, 2048, 40, 40, 5120),
    "gpt3-175b": GPTConfig(50257, 2048, 96, 96, 12288),
}


class GPT(Model):
    """forward(idx (B, T) int) -> logits (B, T, V); loss(idx, targets) -> mean cross-entropy; backward()."""

    def __init__(self, config: GPTConfig, seed: int = 0):
        c = config
        self.config = c
        std, out_std = 0.02, 0.02 / math.sqrt(2 * c.n_layer)
        self.wte = Embedding(c.vocab_size, c.n_embd, std)
        self.wpe = LearnedPositions(c.block_size, c.n_embd, 0.01)
        self.drop = Dropout(c.dropout)
        self.blocks = [DecoderBlock(c.n_embd, c.n_head, 4 * c.n_embd, cross=False, activation="gelu", norm="pre",
                                    dropout=c.dropout, eps=c.layer_norm_eps, bias=c.bias, std=std, out_std=out_std)
                       for _ in range(c.n_layer)]
        self.ln_f = LayerNorm(c.n_embd, c.layer_norm_eps)
        self.head = CrossEntropyHead()
        self._build(seed)

    def forward(self, idx):
        idx = check_ids(idx, "idx", self.config.block_size)
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"idx values must lie in [0, {self.config.vocab_size})")
        x = self.drop.forward(self.wpe.forward(self.wte.forward(idx)))
        for block in self.blocks:
            x = block.forward(x)
        self._x = self.ln_f.forward(x)
        return ops.matmul_forward(self._x, self.wte.weight.data)  # tied LM head: (B, T, V)

    __call__ = forward

    def loss(self, idx, targets=None, ignore_index=-100, labels=None):
        """Mean next-token cross-entropy. Either targets (B, T), the id each position should predict, or
        labels (B, T) as transformers takes them (aligned with idx, shifted by one inside; -100 ignored)."""
        if (targets is None) == (labels is None):
            raise ValueError("pass exactly one of targets (already shifted) or labels (shifted inside)")
        if labels is not None:
            labels = np.asarray(labels, np.int64)
            targets = np.full_like(labels, ignore_index)
            targets[:, :-1] = labels[:, 1:]
        return self.head.loss(self.forward(idx), targets, ignore_index)

    def backward(self, dloss=1.0):
        """After loss(): accumulate every parameter's gradient into the flat gradient buffer."""
        dlogits = self.head.backward(dloss)
        dx, _, _ = ops.matmul_backward(dlogits, self._x, self.wte.weight.data, dweight=self.wte.weight.grad,
                                       compute_dbias=False)
        dx = self.ln_f.backward(dx)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.wte.backward(self.wpe.backward(self.drop.backward(dx)))

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
        """Append max_new_tokens sampled ids to idx (B, T); temperature 0 is greedy."""
        idx = check_ids(idx, "idx")
        rng = rng or np.random.default_rng()
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                context = np.ascontiguousarray(idx[:, -self.config.block_size:])
                logits = self.forward(context)[:, -1, :].astype(np.float64)
                idx = np.concatenate([idx, sample_next(logits, temperature, top_k, rng)[:, None]], axis=1)
        finally:
            self.train(was_training)
        return idx


def sample_next(logits, temperature, top_k, rng):
    """logits (B, V) -> ids (B,): argmax at temperature 0, else a sample from softmax(logits / T) (top-k)."""
    if temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], np.int64)
