"""Model families: GPT (decoder-only), BERT (encoder), the 2017 encoder-decoder Transformer, ViT."""

from .gpt import GPT, GPT_PRESETS, GPTConfig

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS"]
