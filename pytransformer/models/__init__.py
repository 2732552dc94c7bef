"""Model families: GPT (decoder-only), BERT (encoder), the 2017 encoder-decoder Transformer, ViT, Llama."""

from .bert import BERT, BertConfig, mask_tokens
from .gpt import GPT, GPT3_TRAINING, GPT_PRESETS, GPTConfig, gpt3_table
from .llama import Llama, LlamaConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

__all__ = ["BERT", "BertConfig", "GPT", "GPTConfig", "GPT_PRESETS", "GPT3_TRAINING", "Llama", "LlamaConfig", "Transformer", "TransformerConfig", "ViT",
           "ViTConfig", "gpt3_table", "mask_tokens"]
