"""Model families: every decoder-only family as a DecoderConfig (GPT, Llama, Qwen2, Qwen3, Phi-3, Mistral), the
encoders (BERT, RoBERTa as a BERT, MPNet), the 2017 encoder-decoder Transformer, ViT."""

from .bert import BERT, BertConfig, Roberta, RobertaConfig, mask_tokens
from .decoder import Decoder, DecoderConfig
from .decoders import Mistral, Phi3, Qwen2, Qwen3
from .gemma3 import Gemma3, gemma3_config
from .gpt import GPT, GPT3_TRAINING, GPT_PRESETS, GPTConfig, gpt3_table
from .llama import Llama, LlamaConfig
from .mpnet import MPNet, MPNetConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

__all__ = ["BERT", "BertConfig", "Decoder", "DecoderConfig", "GPT", "Gemma3", "gemma3_config", "GPTConfig", "GPT_PRESETS",
           "GPT3_TRAINING", "Llama", "LlamaConfig", "MPNet", "MPNetConfig", "Mistral", "Phi3", "Qwen2", "Qwen3", "Roberta", "RobertaConfig", "Transformer",
           "TransformerConfig", "ViT",
           "ViTConfig", "gpt3_table", "mask_tokens"]
