"""Machine facts and run-time settings: ISA variant, threads, OpenMP and CUDA availability."""

from __future__ import annotations

try:
    from . import _core
except ImportError:
    import importlib.machinery as _machinery
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if any(_os.path.exists(_os.path.join(_here, "_core" + s)) for s in _machinery.EXTENSION_SUFFIXES):
        raise  # (a compiled core that does not load: its own message)
    raise ImportError(f"{_here} has no compiled core (_core): it is the source checkout, not the installed package. "
                      f"Run Python from another folder after `pip install .`, or build in place (README's developer "
                      f"loop)") from None

# Choose the kernel variant now, so that a bad PYTRANSFORMER_ISA fails at import with its message.
_core.active_isa()
# Freed blocks up to 32 MiB stay in glibc's heap: each forward pass's fresh arrays reuse them instead of faulting
# in new pages (runtime.cpp; PYTRANSFORMER_MALLOC_TUNING=0 turns it off).
_MALLOC_TUNED = bool(_core.tune_malloc())


def cpu_info() -> dict:
    """What the kernels run on: the active ISA, the ISAs this CPU and build support, OpenMP and threads."""
    return {
        "isa": _core.active_isa(),
        "available_isas": list(_core.available_isas()),
        "openmp": bool(_core.have_openmp()),
        "num_threads": int(_core.get_num_threads()),
        "cuda": _cuda_available(),  # the _cuda module is built and a device answers (loads it: never at import)
        "amx_bf16": bool(_core.have_amx()),
        "matmul_precision": _core.get_matmul_precision(),
        "int8_dot": _core.int8_dot(),  # the integer dot product the int8-activation products run (quant/int8.cpp)
        "int8_tiles": bool(_core.int8_tiles()),  # ... and their 8-13+ rows on AMX-INT8 tiles (quant/int8_amx.cpp)
        "activations": _gguf_activations(),  # what GGUF integer blocks' products round their input to by default
        "popcount": _core.popcount(),  # the bit count search's Hamming candidates run (hamming.cpp)
        "forked_child": bool(_core.in_forked_child()),  # a fork() child runs every kernel on one thread
        "capped_by_load": bool(_core.threads_capped_by_load()),  # a busy machine: kernels on one thread for now
        "malloc_tuned": _MALLOC_TUNED,  # glibc keeps freed blocks up to 32 MiB for the next arrays (runtime.cpp)
    }


def _gguf_activations() -> str:
    from . import ops
    from .nn import weights

    return weights.default_activations(ops.INTEGER_QTYPES[0])


def _cuda_available() -> bool:
    from . import cuda

    return cuda.is_available()


def set_num_threads(n: int) -> None:
    """Cap the OpenMP threads every kernel uses (like torch.set_num_threads)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the next kernel call will use."""
    return int(_core.get_num_threads())


def set_isa(name: str) -> None:
    """Switch the kernel variant ('baseline', 'avx2', 'avx512'); for tests and benchmarks.

    PYTRANSFORMER_ISA=<name> in the environment does the same at import.
    """
    _core.set_isa(name)


def set_matmul_precision(precision: str) -> None:
    """Choose how Linear products are computed: "float32" (default) or "bfloat16".

    "bfloat16" rounds both inputs of every matmul (forward and the dinp/dweight products) and of attention's
    products (Q K^T, P V and their backward) to bfloat16 and accumulates in float32 on Intel AMX tiles -- what
    torch.autocast("cpu", torch.bfloat16) does to Linear and attention. Everything else (parameters, optimizer
    state, layernorm, the softmax, bias gradients) stays float32. Raises RuntimeError where AMX-BF16 is not
    usable.
    """
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a str, got {type(precision).__name__}")
    try:
        _core.set_matmul_precision(precision)
    except ValueError as e:
        raise ValueError(str(e)) from None


def get_matmul_precision() -> str:
    """"float32" or "bfloat16": see set_matmul_precision."""
    return _core.get_matmul_precision()


class matmul_precision:
    """Context manager: `with matmul_precision("bfloat16"): ...` restores the previous setting on exit."""

    def __init__(self, precision: str):
        self.precision = precision

    def __enter__(self):
        self._previous = get_matmul_precision()
        set_matmul_precision(self.precision)
        return self

    def __exit__(self, *exc):
        set_matmul_precision(self._previous)
        return False
