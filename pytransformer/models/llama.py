"""Llama: decoder-only, pre-norm blocks with RMSNorm, rotary positions inside attention (Llama 3's "llama3" scaling
too), grouped-query attention (n_kv_head key/value heads shared by n_head query heads), a SwiGLU feed-forward, no
biases; the LM head tied to the token embedding or its own (SmolLM2, Llama 2/3/3.2, TinyLlama)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .decoder import Decoder, DecoderConfig


@dataclass
class LlamaConfig(ModelConfig):
    vocab_size: int = 32000
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_kv_head: int = 2               # key/value heads (grouped-query attention; n_head for plain MHA)
    intermediate_size: int = 172     # the SwiGLU hidden width
    max_positions: int = 2048        # (rotary: the longest context it was trained for)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    head_dim: int | None = None      # None: n_embd // n_head
    rope_interleaved: bool = False   # q and k projection rows in llama.cpp's order (GGUF): rotary pairs (2i, 2i + 1)
    rope_scaling: dict | None = None  # a Hugging Face rope scaling dict (Llama 3.1 / 3.2: "llama3"; nn.rope_scaling)

    SIZES = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "max_positions")

    def __post_init__(self):
        super().__post_init__()
        hs = self.head_size
        if self.n_head % self.n_kv_head:
            raise ValueError(f"key/value heads {self.n_kv_head} must divide query heads {self.n_head}")
        if hs < 2 or hs % 2:
            raise ValueError(f"rotary attention needs an even head size, got {hs}")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    def decoder(self) -> DecoderConfig:
        """Llama as a decoder description: pre-RMSNorm blocks, rotary positions, grouped-query attention, SwiGLU,
        no biases."""
        return DecoderConfig(vocab_size=self.vocab_size, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                             n_kv_head=self.n_kv_head, head_dim=self.head_dim, intermediate_size=self.intermediate_size,
                             max_positions=self.max_positions, norm="rmsnorm", norm_eps=self.norm_eps,
                             positions="rotary", rope_theta=self.rope_theta, rope_interleaved=self.rope_interleaved,
                             rope_scaling=self.rope_scaling,
                             ffn="gated", activation="silu", tie_word_embeddings=self.tie_word_embeddings)


# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct's config.json)
SMOLLM2_135M = LlamaConfig(vocab_size=49152, n_layer=30, n_embd=576, n_head=9, n_kv_head=3, intermediate_size=1536,
                           max_positions=8192, norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


class Llama(Decoder):
    """The decoder LlamaConfig.decoder() describes. Parameters under the names: embed.weight, blocks.i.attn.ln.weight
    (input RMSNorm), blocks.i.attn.sublayer.{q,k,v,o}.weight, blocks.i.ffn.ln.weight,
    blocks.i.ffn.sublayer.{gate,up,down}.weight, norm.weight, lm_head.weight (untied)."""

    config_class = LlamaConfig
