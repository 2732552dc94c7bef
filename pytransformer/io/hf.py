"""Hugging Face checkpoints: `from_pretrained(folder)` for every family in the registry that transformers has
(config.json + model.safetensors, or a sharded index), chosen by config.json's model_type."""

from __future__ import annotations

import os

from .families import family_for_gguf, family_for_model_type
from .gguf import GGUFFile, is_gguf
from .hf_common import load, naming_the_file, read_config


def from_pretrained(path, mmap=True, dtype=None, activation_dtype=None):
    """A pytransformer model (eval mode) from a Hugging Face folder (GPT-2, BERT, ViT, Llama) or a GGUF file
    (the Llama family; its matrices stay in the file's quantised blocks unless dtype says otherwise).

    config.json and every tensor's name and size are checked before the model is allocated; a bad folder raises
    ValueError naming the file and the field. The weights are read by mmap and copied into the model's flat
    buffer; mmap=False reads each file into private memory first (no mapping that a truncation by another
    process could turn into SIGBUS while loading). dtype "float32" (a folder's default), "bfloat16" or "int8"
    gives those weights (Model.set_weight_dtype); a GGUF file's default is its own blocks. model.tokenizer is
    the file's or folder's tokenizer (pytransformer.tokenizers), or None with model.tokenizer_error saying why.
    activation_dtype "int8" or "float32": what the GGUF blocks' products round their input to
    (Model.set_activation_dtype; default: nn.weights.default_activations)."""
    path = os.fspath(path)
    if os.path.isfile(path) and is_gguf(path):
        f = GGUFFile(path, mmap)
        model = family_for_gguf(f).gguf.load(f)
        model = model if dtype is None else model.set_weight_dtype(dtype)
        return model if activation_dtype is None else model.set_activation_dtype(activation_dtype)
    if dtype is None:
        dtype = "float32"
    with naming_the_file(path):
        family = family_for_model_type(read_config(path).get("model_type"))
    model = load(family.hf, family.model_class, path, mmap)
    _attach_tokenizer(model, path)
    return model.set_weight_dtype(dtype)


def _attach_tokenizer(model, path):
    """model.tokenizer from the folder (tokenizers.from_folder), or None and model.tokenizer_error saying why."""
    from ..tokenizers import from_folder

    try:
        model.tokenizer, model.tokenizer_error = from_folder(path), None
    except ValueError as e:
        model.tokenizer, model.tokenizer_error = None, str(e)
