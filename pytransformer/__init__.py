"""pytransformer: a transformer engine for CPU-only Python (C++ SIMD + OpenMP kernels, NumPy in and out)."""

from ._version import __version__
from ._runtime import (cpu_info, get_matmul_precision, get_num_threads, matmul_precision, set_isa,
                       set_matmul_precision, set_num_threads)
from . import ops, reference
from .io import from_pretrained  # loads the model-family registry, which Model.state_dict() and friends read


def __getattr__(name):  # heavier pieces load on first use
    if name == "SentenceEncoder":
        from .sentence import SentenceEncoder

        return SentenceEncoder
    raise AttributeError(f"module 'pytransformer' has no attribute {name!r}")


__all__ = ["__version__", "cpu_info", "get_num_threads", "set_num_threads", "set_isa", "set_matmul_precision",
           "get_matmul_precision", "matmul_precision", "ops", "reference", "SentenceEncoder", "from_pretrained"]
