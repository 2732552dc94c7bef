"""Weights: safetensors (read by mmap and validated, written atomically), the registry of model families, and
Hugging Face name maps (one module per family, each map written once as data)."""

from .safetensors import atomic_write, load_file, read_metadata, save_file
from .families import FAMILIES, Family, family_named, family_of
from .hf import from_pretrained
from . import peft  # (registers peft's adapter format with the models)

__all__ = ["FAMILIES", "Family", "atomic_write", "family_named", "family_of", "from_pretrained", "load_file",
           "read_metadata", "save_file"]
