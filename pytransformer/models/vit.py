"""ViT (Dosovitskiy et al., 2020): image patches through one shared linear layer, a class token, learned
positions, a pre-LN encoder with exact GELU, a final LayerNorm, and a classification head on the class token."""

from __future__ import annotations

from dataclasses import dataclass

from ..nn import (Dropout, EncoderBlock, FeedForward, LayerNorm, LearnedPositions, Linear, MultiHeadAttention,
                  PatchEmbedding)
from .base import CrossEntropyHead, Model, row_at, row_at_backward
from .config import ModelConfig


@dataclass
class ViTConfig(ModelConfig):
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    intermediate_size: int = 3072
    norm_eps: float = 1e-12
    num_labels: int = 1000        # 0: no classification head (ViTModel); forward returns the hidden state
    dropout: float = 0.0

    SIZES = ("image_size", "patch_size", "num_channels", "n_embd", "n_layer", "n_head", "intermediate_size")


class ViT(Model):
    config_class = ViTConfig
    runs_on_cuda = True

    """forward(pixel_values (B, Ch, H, W)) -> logits (B, num_labels)."""

    def __init__(self, config: ViTConfig, seed: int = 0):
        c = self.config = config
        n_patches = (c.image_size // c.patch_size) ** 2
        self.patch = PatchEmbedding(c.image_size, c.patch_size, c.num_channels, c.n_embd)
        self.pos = LearnedPositions(n_patches + 1, c.n_embd)
        self.drop = Dropout(c.dropout)
        C = c.n_embd
        self.blocks = [EncoderBlock(attn=MultiHeadAttention(C, c.n_head),
                                    ffn=FeedForward(C, c.intermediate_size, "gelu_exact"),
                                    norm=lambda: LayerNorm(C, c.norm_eps), placement="pre", dropout=c.dropout)
                       for _ in range(c.n_layer)]
        self.ln = LayerNorm(c.n_embd, c.norm_eps)
        self.classifier = Linear(c.n_embd, c.num_labels) if c.num_labels else None
        self.head = CrossEntropyHead()
        self._build(seed)

    def encode(self, pixel_values):
        """-> last hidden state after the final LayerNorm (B, 1 + patches, C)."""
        self._begin_forward()
        x = self.drop.forward(self.pos.forward(self.patch.forward(pixel_values)))
        for block in self.blocks:
            x = block.forward(x)
        hidden = self.ln.forward(x)
        if self.keeps_state:
            self._hidden_shape = hidden.shape
        return hidden

    def forward(self, pixel_values):
        """-> logits (B, num_labels), or the last hidden state (B, 1 + patches, C) without a head."""
        if self.classifier is None:
            return self.encode(pixel_values)
        return self.classifier.forward(row_at(self.encode(pixel_values), 0))

    __call__ = forward

    def loss(self, pixel_values, labels):
        if self.classifier is None:
            raise ValueError("this ViT has no classification head (num_labels = 0)")
        loss = self.head.loss(self.forward(pixel_values), labels, keep=self.keeps_state)
        self._loss_computed()
        return loss

    def _attention_forward(self, *inputs, **kwargs):
        return self.encode(*inputs, **kwargs)

    def backward(self, dloss=1.0):
        self._begin_backward()
        dcls = self.classifier.backward(self.head.backward(dloss))
        d = self.ln.backward(row_at_backward(dcls, self._hidden_shape, 0))
        for block in reversed(self.blocks):
            d = block.backward(d)
        self.patch.backward(self.pos.backward(self.drop.backward(d)))
