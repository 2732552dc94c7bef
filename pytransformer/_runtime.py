"""Machine facts and run-time settings: ISA variant, threads, OpenMP and CUDA availability."""

from __future__ import annotations

from . import _core

# Choose the kernel variant now, so that a bad PYTRANSFORMER_ISA fails at import with its message.
_core.active_isa()


def cpu_info() -> dict:
    """What the kernels run on: the active ISA, the ISAs this CPU and build support, OpenMP and threads."""
    return {
        "isa": _core.active_isa(),
        "available_isas": list(_core.available_isas()),
        "openmp": bool(_core.have_openmp()),
        "num_threads": int(_core.get_num_threads()),
        "cuda": False,  # the CUDA extension arrives in its own issue; the CPU package never needs it
    }


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
