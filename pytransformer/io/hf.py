"""Hugging Face checkpoints: `from_pretrained(folder)` for every family in the registry that transformers has
(config.json + model.safetensors, or a sharded index), chosen by config.json's model_type."""

from __future__ import annotations

import os

from .families import family_for_model_type
from .hf_common import load, read_config


def from_pretrained(path, mmap=True, dtype="float32"):
    """A pytransformer model (eval mode) from a Hugging Face folder: GPT-2, BERT or ViT.

    config.json and every tensor's name and size are checked before the model is allocated; a bad folder raises
    ValueError naming the file and the field. The weights are read by mmap and copied into the model's flat
    buffer; mmap=False reads each file into private memory first (no mapping that a truncation by another
    process could turn into SIGBUS while loading). dtype="bfloat16" gives inference weights
    (Model.set_weight_dtype)."""
    path = os.fspath(path)
    try:
        family = family_for_model_type(read_config(path).get("model_type"))
        model = load(family.hf, family.model_class, path, mmap)
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith(path) else f"{path}: {message}") from None
    return model.set_weight_dtype(dtype)
