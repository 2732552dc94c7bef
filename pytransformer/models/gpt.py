"""GPT: decoder-only, pre-LN blocks, learned positions, LM head tied to the token embedding (GPT-2/GPT-3)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .decoder import Decoder, DecoderConfig


@dataclass
class GPTConfig(ModelConfig):
    vocab_size: int = 50257
    max_positions: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm_eps: float = 1e-5
    head_dim: int | None = None   # channels per head; None: n_embd // n_head (attention width n_head * head_dim)

    SIZES = ("vocab_size", "max_positions", "n_layer", "n_head", "n_embd")

    def decoder(self) -> DecoderConfig:
        """GPT-2 as a decoder description: pre-LayerNorm blocks, learned positions, biases everywhere, a plain GELU
        (tanh) feed-forward of 4 x n_embd, the LM head tied to the token embedding, GPT-2's scaled init."""
        return DecoderConfig(vocab_size=self.vocab_size, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                             head_dim=self.head_dim, intermediate_size=4 * self.n_embd, max_positions=self.max_positions,
                             norm="layernorm", norm_eps=self.norm_eps, qkv_bias=self.bias, o_bias=self.bias,
                             mlp_bias=self.bias, positions="learned", ffn="plain", activation="gelu_tanh",
                             tie_word_embeddings=True, dropout=self.dropout, scaled_out_init=True)


# GPT-2, and the GPT-3 paper's Table 2.1 as printed (n_layer, d_model, n_head, d_head; n_ctx 2048). GPT-3
# alternates dense and locally banded sparse attention; these configs use dense attention throughout.
# Two rows contradict themselves in the paper, and we resolve them like this:
# - XL prints 24 heads of 128 (an attention width of 3072) on d_model 2048, which would be 1.5B parameters,
#   not the 1.3B printed; 16 heads of 128 (attention width = d_model = 2048) give 1.32B, so we take that.
# - 13B prints d_model 5140, which is not 40 heads x 128; we use 5120 = 40 x 128 (12.9B parameters).
# Positional: (vocab_size, max_positions, n_layer, n_head, n_embd).
GPT_PRESETS = GPTConfig.PRESETS = {
    "gpt2": GPTConfig(50257, 1024, 12, 12, 768),
    "gpt2-medium": GPTConfig(50257, 1024, 24, 16, 1024),
    "gpt2-large": GPTConfig(50257, 1024, 36, 20, 1280),
    "gpt2-xl": GPTConfig(50257, 1024, 48, 25, 1600),
    "gpt3-small": GPTConfig(50257, 2048, 12, 12, 768, head_dim=64),
    "gpt3-medium": GPTConfig(50257, 2048, 24, 16, 1024, head_dim=64),
    "gpt3-large": GPTConfig(50257, 2048, 24, 16, 1536, head_dim=96),
    "gpt3-xl": GPTConfig(50257, 2048, 24, 16, 2048, head_dim=128),
    "gpt3-2.7b": GPTConfig(50257, 2048, 32, 32, 2560, head_dim=80),
    "gpt3-6.7b": GPTConfig(50257, 2048, 32, 32, 4096, head_dim=128),
    "gpt3-13b": GPTConfig(50257, 2048, 40, 40, 5120, head_dim=128),
    "gpt3-175b": GPTConfig(50257, 2048, 96, 96, 12288, head_dim=128),
}

# The rest of Table 2.1: (parameters as printed, batch size in tokens, learning rate), per GPT-3 preset.
GPT3_TRAINING = {
    "gpt3-small": (125e6, 0.5e6, 6.0e-4), "gpt3-medium": (350e6, 0.5e6, 3.0e-4),
    "gpt3-large": (760e6, 0.5e6, 2.5e-4), "gpt3-xl": (1.3e9, 1e6, 2.0e-4), "gpt3-2.7b": (2.7e9, 1e6, 1.6e-4),
    "gpt3-6.7b": (6.7e9, 2e6, 1.2e-4), "gpt3-13b": (13.0e9, 2e6, 1.0e-4), "gpt3-175b": (175.0e9, 3.2e6, 0.6e-4),
}


def gpt3_table() -> list[dict]:
    """Table 2.1 of the GPT-3 paper computed from the presets: each row's parameter count is counted from the
    config (nothing allocated) beside the paper's, with its shape and training batch and learning rate."""
    rows = []
    for name, (paper, batch, lr) in GPT3_TRAINING.items():
        c = GPT_PRESETS[name]
        rows.append({"name": name, "parameters": c.num_params(), "paper_parameters": paper, "n_layer": c.n_layer,
                     "n_embd": c.n_embd, "n_head": c.n_head, "head_dim": c.head_dim, "batch_tokens": batch,
                     "learning_rate": lr})
    return rows


class GPT(Decoder):
    """GPT-2 / GPT-3 (dense attention): the decoder GPTConfig.decoder() describes, under GPT-2's parameter names
    (wte, wpe, blocks.i..., ln_f). forward(idx (B, T) int) -> logits (B, T, V); loss(idx, targets) -> mean
    cross-entropy; backward()."""

    config_class = GPTConfig
    NAMES = {"embed": "wte", "positions": "wpe", "final_norm": "ln_f"}
