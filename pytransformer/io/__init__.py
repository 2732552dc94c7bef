"""Weights: safetensors (read by mmap and validated, written atomically) and Hugging Face name maps."""

from .safetensors import atomic_write, load_file, read_metadata, save_file

__all__ = ["atomic_write", "load_file", "read_metadata", "save_file"]
