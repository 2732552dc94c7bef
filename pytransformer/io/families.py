"""The one registry of model families: what checkpoints, Hugging Face loading and saving all read.

Adding a family is one `Family(...)` entry here (and, when transformers has it, one io/hf_<name>.py with its
name map as data). Models never import io; the registry hands each model class its Hugging Face layout
(models.base.register_hf_format), which is what `model.state_dict()`, `grad_dict()`, `load_state_dict()` and
`save_pretrained()` delegate to.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from ..models import (BERT, GPT, BertConfig, DecoderConfig, Gemma3, GPTConfig, Llama, LlamaConfig, Mistral, MPNet,
                      MPNetConfig, Phi3, Qwen2, Qwen3, Roberta, RobertaConfig, Transformer, TransformerConfig, ViT,
                      ViTConfig)
from ..models.base import register_hf_format
from . import gguf_decoder, gguf_gemma3, hf_bert, hf_decoder, hf_gemma3, hf_gpt2, hf_llama, hf_mpnet, hf_roberta, hf_vit
from .gguf import GGUFFile
from .hf_common import HFFormat, HFLayout
from .safetensors import quote


@dataclass(frozen=True)
class GGUFLayout:
    """How a family reads llama.cpp's GGUF files: the `general.architecture` names it takes, and its reader
    (an opened GGUFFile -> the model, its matrices kept in the file's blocks)."""
    architectures: tuple
    load: Callable


def gguf_decoder_layout(arch: gguf_decoder.GGUFArch) -> GGUFLayout:
    """The GGUF layout of a decoder architecture read by the one decoder reader (io/gguf_decoder.py)."""
    return GGUFLayout((arch.name,), partial(gguf_decoder.load_gguf, arch))


@dataclass(frozen=True)
class Family:
    name: str                      # as checkpoints record it
    config_class: type
    model_class: type
    hf: HFLayout | None = None     # its Hugging Face counterpart, if transformers has one
    gguf: GGUFLayout | None = None  # its GGUF reader, if llama.cpp has it

    @property
    def hf_architectures(self) -> tuple:
        return self.hf.architectures if self.hf else ()


FAMILIES = (
    Family("gpt", GPTConfig, GPT, hf_gpt2.LAYOUT),
    Family("roberta", RobertaConfig, Roberta, hf_roberta.LAYOUT),  # (before BERT, which they are)
    Family("xlm-roberta", RobertaConfig, Roberta, hf_roberta.XLM_LAYOUT),
    Family("bert", BertConfig, BERT, hf_bert.LAYOUT),
    Family("mpnet", MPNetConfig, MPNet, hf_mpnet.LAYOUT),
    Family("transformer", TransformerConfig, Transformer),
    Family("vit", ViTConfig, ViT, hf_vit.LAYOUT),
    Family("llama", LlamaConfig, Llama, hf_llama.LAYOUT, gguf_decoder_layout(gguf_decoder.LLAMA)),
    Family("qwen2", DecoderConfig, Qwen2, hf_decoder.QWEN2.layout(), gguf_decoder_layout(gguf_decoder.QWEN2)),
    Family("qwen3", DecoderConfig, Qwen3, hf_decoder.QWEN3.layout(), gguf_decoder_layout(gguf_decoder.QWEN3)),
    Family("phi3", DecoderConfig, Phi3, hf_decoder.PHI3.layout(), gguf_decoder_layout(gguf_decoder.PHI3)),
    Family("mistral", DecoderConfig, Mistral, hf_decoder.MISTRAL.layout()),
    Family("gemma3", DecoderConfig, Gemma3, hf_gemma3.LAYOUT, gguf_decoder_layout(gguf_gemma3.GEMMA3)),
)

for _family in FAMILIES:
    if _family.hf is not None:
        register_hf_format(_family.model_class, partial(HFFormat, _family.hf))


def family_named(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"unknown model family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")


def family_of(model) -> Family:
    for f in FAMILIES:
        if isinstance(model, f.model_class):
            return f
    raise TypeError(f"not a pytransformer model: {type(model).__name__}")


def family_for_model_type(model_type) -> Family:
    """The family whose Hugging Face config.json says this model_type."""
    for f in FAMILIES:
        if f.hf is not None and f.hf.model_type == model_type:
            return f
    supported = ", ".join(f.hf.model_type for f in FAMILIES if f.hf is not None)
    raise ValueError(f"config.json: unsupported model_type {quote(model_type)} (supported: {supported})")



def family_for_gguf(f: GGUFFile) -> Family:
    """The family that reads this GGUF file (by its general.architecture)."""
    arch = f.metadata.get("general.architecture")
    for family in FAMILIES:
        if family.gguf is not None and arch in family.gguf.architectures:
            return family
    supported = ", ".join(a for family in FAMILIES if family.gguf for a in family.gguf.architectures)
    raise ValueError(f"{f.path}: metadata general.architecture: unsupported GGUF architecture {quote(arch)} "
                     f"(supported: {supported})")
