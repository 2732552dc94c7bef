"""pytransformer: a transformer engine for CPU-only Python (C++ SIMD + OpenMP kernels, NumPy in and out)."""

from ._version import __version__
from ._runtime import cpu_info, get_num_threads, set_isa, set_num_threads
from . import ops, reference

__all__ = ["__version__", "cpu_info", "get_num_threads", "set_num_threads", "set_isa", "ops", "reference"]
