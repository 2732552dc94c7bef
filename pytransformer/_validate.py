"""Argument checks shared by the ops: dtype, rank, named dimensions, contiguity, outputs and aliasing.

Errors name the argument and say what was expected and what came, e.g.
`q must be float32 (B, NH, Tq, HS), got float64 (2, 4, 8)`.
"""

from __future__ import annotations

import numpy as np

from .cuda import DeviceArray

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


def _spec_str(spec, dims):
    names = ", ".join(str(s) for s in spec)
    bound = [f"{s}={dims[s]}" for s in spec if isinstance(s, str) and s in dims]
    return f"({names})" + (f" with {', '.join(bound)}" if bound else "")


def array(x, name, spec, dims, dtype=F32):
    """Check x against spec, a tuple of dimension names (bound in `dims` on first sight) or ints; a leading
    '...' takes any number of leading dimensions. Returns x unchanged (never a copy)."""
    dtype = np.dtype(dtype)
    if not isinstance(x, (np.ndarray, DeviceArray)):
        raise TypeError(f"{name} must be a numpy array of {dtype} {_spec_str(spec, dims)}, got {type(x).__name__}")
    lead = spec[0] == "..."
    fixed = spec[1:] if lead else spec
    if x.dtype != dtype or (x.ndim < len(fixed) if lead else x.ndim != len(fixed)):
        err = TypeError if x.dtype != dtype else ValueError
        raise err(f"{name} must be {dtype} {_spec_str(spec, dims)}, got {x.dtype} {tuple(x.shape)}")
    shape = x.shape[x.ndim - len(fixed):]
    for size, want in zip(shape, fixed):
        if isinstance(want, str):
            if dims.setdefault(want, size) != size:
                raise ValueError(f"{name} must be {dtype} {_spec_str(spec, dims)}, got {x.dtype} {tuple(x.shape)}")
        elif size != want:
            raise ValueError(f"{name} must be {dtype} {_spec_str(spec, dims)}, got {x.dtype} {tuple(x.shape)}")
    if type(x) is not DeviceArray and not x.flags.c_contiguous:  # (device arrays are always contiguous)
        raise ValueError(f"{name} must be C-contiguous (strides {x.strides} for shape {tuple(x.shape)}); "
                         "pass np.ascontiguousarray(...)")
    return x


def output(out, name, shape, like, dtype=F32, zero=False):
    """A fresh array of `shape` where `like` (the op's first input) lives when out is None, else `out` after checking
    it matches exactly and is writeable. (Overlaps with the other arguments: `no_overlaps`, before the op runs.)"""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if out is None:
        if type(like) is DeviceArray:  # outputs live where the op's first input does
            return DeviceArray.zeros(shape, dtype) if zero else DeviceArray.empty(shape, dtype)
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    device = type(out) is DeviceArray
    if not device and not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of {dtype} {shape}, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must be {dtype} {shape}, got {out.dtype} {tuple(out.shape)}")
    if tuple(out.shape) != shape:
        raise ValueError(f"{name} must be {dtype} {shape}, got {out.dtype} {tuple(out.shape)}")
    if not device and not out.flags.c_contiguous:  # (device arrays are always contiguous and writeable)
        raise ValueError(f"{name} must be C-contiguous: outputs are written in place, never copied")
    if not device and not out.flags.writeable:
        raise ValueError(f"{name} is read-only; outputs are written in place")
    return out


def no_overlaps(written, args, same):
    """Every array the op writes -- `written`, the names in `args` it was handed to write into -- shares no memory
    with any other array in `args` (every argument of the call, by name: inputs, outputs, index arrays, masks and the
    bytes behind a quantised weight, whatever their dtypes), judged by memory bounds. A pair in `same` ((written,
    other) names) may be the very same array (an in-place call: same address, dtype, shape and strides), never a
    shifted or partial view."""
    for name in written:
        out = args[name]
        device = type(out) is DeviceArray
        if not device and not isinstance(out, np.ndarray):
            continue  # (not an array: output() names the mistake)
        for other_name, other in args.items():
            if other_name == name or not isinstance(other, DeviceArray if device else np.ndarray):
                continue
            if not (out.overlaps(other) if device else np.may_share_memory(out, other)):
                continue
            in_place = (name, other_name) in same or (other_name, name) in same
            if in_place and _same_array(out, other):
                continue
            allowed = f" (it may be {other_name} itself, not a view into it)" if in_place else ""
            raise ValueError(f"{name} overlaps {other_name}: this kernel reads {other_name} while writing "
                             f"{name}{allowed}")


def _same_array(a, b) -> bool:
    if type(a) is DeviceArray:
        return a.ptr == b.ptr and a.dtype == b.dtype and a.shape == b.shape
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.dtype == b.dtype
            and a.shape == b.shape and a.strides == b.strides)


def key_mask_bytes(key_mask, dims):
    """key_mask (B, Tk) of bool or uint8 (1 = attend) as a uint8 view, or None."""
    if key_mask is None:
        return None
    if not isinstance(key_mask, (np.ndarray, DeviceArray)) or key_mask.dtype not in (np.bool_, np.uint8):
        got = key_mask.dtype if isinstance(key_mask, (np.ndarray, DeviceArray)) else type(key_mask).__name__
        raise TypeError(f"key_mask must be a bool or uint8 array (B, Tk), got {got}")
    array(key_mask, "key_mask", ("B", "Tk"), dims, key_mask.dtype)
    return key_mask.view(np.uint8)


def integer(x, name):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return int(x)


def finite_float(x, name, lo=None, hi=None, hi_open=False):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {type(x).__name__}") from None
    if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
        rng = f" in [{lo}, {hi}{')' if hi_open else ']'}" if lo is not None and hi is not None else ""
        raise ValueError(f"{name} must be a finite float{rng}, got {x!r}")
    return v
