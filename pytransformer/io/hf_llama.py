"""Hugging Face Llama (LlamaForCausalLM / LlamaModel: SmolLM2, TinyLlama, Llama 2, Llama 3 / 3.1 / 3.2 with their
"llama3" rotary scaling) <-> pytransformer's Llama: the llama-like layout of io/hf_decoder.py, whose config is a
LlamaConfig."""

from __future__ import annotations

from ..models.llama import LlamaConfig
from .hf_decoder import HFDecoder
from .safetensors import quote


def llama_config(fields: dict) -> LlamaConfig:
    """A LlamaConfig from DecoderConfig's fields (a config.json's or a GGUF file's): the parts a Llama lacks are
    refused by name."""
    lacks = {"partial_rotary_factor": 1.0, "sliding_window": None, "final_logit_softcapping": None}
    for name, plain in lacks.items():
        if fields.get(name, plain) != plain:
            raise ValueError(f"{name} {quote(fields[name])} is not supported by the llama family")
    return LlamaConfig(**{k: v for k, v in fields.items() if k not in (*lacks, "layer_types")})


LAYOUT = HFDecoder("llama", ("LlamaForCausalLM", "LlamaModel"), make_config=llama_config).layout()
