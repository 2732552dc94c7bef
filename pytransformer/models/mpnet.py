"""MPNet (MPNetModel, the encoder of sentence-transformers' all-mpnet-base-v2 family): BERT's post-LN encoder
without token types, whose attention adds a learned bias per head to the scores, looked up by the bucket of each
query-key distance (T5's buckets: exact up to 8 positions, then logarithmic up to 128, by direction) from one
(32, NH) table shared by every layer. Inference only.

The biased attention runs through NumPy's batched products and the softmax kernel, one sequence at a time (memory
NH * T * T): the fused attention kernel takes no additive bias, and its signature is shared by every ISA variant,
the AMX build, the CUDA module and the decode plan -- too much to change for one inference-only family."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..nn import (Embedding, EncoderBlock, FeedForward, LayerNorm, LearnedPositions, Linear, MultiHeadAttention,
                  Parameter)
from ..nn.attention import heads, merge_heads
from ..nn.module import normal
from .base import Model
from .bert import encoder_inputs
from .config import ModelConfig

BUCKETS = 32          # transformers' compute_position_bias always reads 32 buckets
MAX_DISTANCE = 128


@dataclass
class MPNetConfig(ModelConfig):
    vocab_size: int = 30527
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512       # positions of real tokens (transformers' table less its first pad + 1 rows)
    norm_eps: float = 1e-5
    activation: str = "gelu_exact"
    relative_buckets: int = 32     # rows of the bias table (at least BUCKETS)
    pooler: bool = True            # the checkpoint's pooler, kept so save_pretrained writes it back
    pad_token_id: int = 1

    SIZES = ("vocab_size", "n_embd", "n_layer", "n_head", "intermediate_size", "max_positions", "relative_buckets")


def relative_position_bucket(relative, buckets=BUCKETS, max_distance=MAX_DISTANCE):
    """relative (...) int64 key position - query position -> bucket ids (...), as transformers' MPNet computes
    them (the logarithmic part in float32, as torch does, so boundaries round the same way)."""
    half = buckets // 2
    n = -relative
    ret = (n < 0) * half
    n = np.abs(n)
    exact = half // 2
    scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact)) / np.float32(
        math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return ret + np.where(n < exact, n, large)


class BiasedAttention(MultiHeadAttention):
    """Bidirectional self-attention whose scores get an additive bias (NH, T, T) before the softmax."""

    def forward(self, x, bias, key_mask=None):
        """x (B, T, C), bias (NH, T, T) float32, key_mask (B, T) bool (True = attend) or None -> (B, T, C)."""
        B, T, _ = x.shape
        q, k, v = (heads(p.forward(x), self.NH).transpose(0, 2, 1, 3) for p in (self.q, self.k, self.v))
        out = np.empty((B, T, self.NH, self.HS), np.float32)
        scale = np.float32(1.0 / math.sqrt(self.HS))
        for b in range(B):
            scores = np.matmul(q[b], k[b].transpose(0, 2, 1)) * scale + bias  # (NH, T, T)
            if key_mask is not None:
                scores[:, :, ~key_mask[b]] = -np.inf
            out[b] = np.matmul(ops.softmax_forward(scores), v[b]).transpose(1, 0, 2)
        return self.o.forward(merge_heads(out))


class MPNet(Model):
    config_class = MPNetConfig

    def __init__(self, config: MPNetConfig, seed: int = 0):
        c = self.config = config
        C = c.n_embd
        if c.relative_buckets < BUCKETS:
            raise ValueError(f"relative_buckets must be at least {BUCKETS} (the buckets MPNet reads), got "
                             f"{c.relative_buckets}")
        self.word = Embedding(c.vocab_size, C, padding_idx=c.pad_token_id)
        self.position = LearnedPositions(c.max_positions, C)
        self.emb_ln = LayerNorm(C, c.norm_eps)
        self.relative_bias = Parameter((c.relative_buckets, c.n_head), normal(0.02))
        self.blocks = [EncoderBlock(attn=BiasedAttention(C, c.n_head),
                                    ffn=FeedForward(C, c.intermediate_size, c.activation),
                                    norm=lambda: LayerNorm(C, c.norm_eps), placement="post")
                       for _ in range(c.n_layer)]
        if c.pooler:
            self.pooler = Linear(C, C)
        self._build(seed)

    def position_bias(self, T):
        """The bias every layer adds to its scores: (NH, T, T) float32."""
        positions = np.arange(T, dtype=np.int64)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None])
        return np.ascontiguousarray(self.relative_bias.data[buckets].transpose(2, 0, 1))

    def encode(self, input_ids, attention_mask=None):
        """-> last hidden state (B, T, C). attention_mask (B, T): 1 = real token, 0 = padding (on the right)."""
        if self.training:
            raise NotImplementedError("MPNet runs inference only: call model.eval() first")
        ids, mask = encoder_inputs(self.config, input_ids, attention_mask)
        with self.evaluating():  # (nothing kept for a backward)
            x = self.emb_ln.forward(self.position.forward(self.word.forward(ids)))
            bias = self.position_bias(ids.shape[1])
            for block in self.blocks:
                x = block.ffn.forward(block.attn.forward(x, bias, mask))
        return x

    def __call__(self, input_ids, attention_mask=None):
        return self.encode(input_ids, attention_mask)
