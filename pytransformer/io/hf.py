"""Hugging Face checkpoints: `from_pretrained(folder)` for every family in the registry that transformers has
(config.json + model.safetensors, or a sharded index), chosen by config.json's model_type."""

from __future__ import annotations

from .families import family_for_model_type
from .hf_common import load, read_config


def from_pretrained(path):
    """A pytransformer model (eval mode) from a Hugging Face folder: GPT-2, BERT or ViT."""
    try:
        family = family_for_model_type(read_config(path).get("model_type"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return load(family.hf, family.model_class, path)
