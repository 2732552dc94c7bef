"""Model families: GPT (decoder-only), BERT (encoder), the 2017 encoder-decoder Transformer, ViT."""

from .bert import BERT, BertConfig, mask_tokens
from .gpt import GPT, GPT_PRESETS, GPTConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

__all__ = ["BERT", "BertConfig", "GPT", "GPTConfig", "GPT_PRESETS", "Transformer", "TransformerConfig", "ViT",
           "ViTConfig", "mask_tokens"]
