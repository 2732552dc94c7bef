"""Rotary frequencies under Hugging Face's scaling rules (transformers' modeling_rope_utils, the same formulas).

A rule turns the plain inverse frequencies base^(-2i / HS) (i < HS / 2) into the ones a model was trained with, and
may scale cos and sin by an attention factor (q and k both: scores by its square). "longrope" (Phi-3 128k) has two
sets: transformers takes the long factors for a whole call when its largest position + 1 passes
original_max_position_embeddings, else the short ones; `Frequencies.pick` is that choice. "dynamic" (NTK) changes
with the sequence length of every call and is not run. GGUF files give llama3's result as a per-frequency divisor
(llama.cpp's rope_freqs tensor): the rule "factors" divides by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TYPES = ("default", "linear", "llama3", "longrope", "yarn", "factors")


@dataclass(frozen=True)
class Frequencies:
    """inv_freq (HS / 2,) float64, and cos/sin's factor; long_inv_freq for positions past original_max (longrope)."""
    inv_freq: np.ndarray
    attention_factor: float = 1.0
    long_inv_freq: np.ndarray | None = None
    original_max: int = 0

    def pick(self, max_position: int):
        """-> (name, inv_freq) of a call whose largest position is max_position."""
        if self.long_inv_freq is not None and max_position + 1 > self.original_max:
            return "long", self.long_inv_freq
        return "short", self.inv_freq


def rope_type(scaling) -> str:
    """The rule a rope_scaling / rope_parameters dict names ("type" in older configs; Phi-3's "su"/"yarn" are its
    longrope, which the caller maps)."""
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def _number(scaling, key, lo=0.0, default=None):
    value = scaling.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= lo:
        raise ValueError(f"rope scaling {key} must be a number > {lo}, got {value!r}")
    return float(value)


def _factor_list(scaling, key, n):
    value = scaling.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"rope scaling {key} must be {n} positive numbers (one per rotary pair), got "
                         f"{type(value).__name__} of {len(value) if isinstance(value, (list, tuple)) else '?'}")
    return np.asarray(value, np.float64)


def frequencies(head_dim: int, base: float, scaling: dict | None, max_positions: int) -> Frequencies:
    """The rotary frequencies of heads of head_dim channels (all rotated) at base theta under a Hugging Face
    scaling dict (None or {"rope_type": "default"}: plain); max_positions is max_position_embeddings. Every field
    is checked (ValueError naming it)."""
    kind = rope_type(scaling)
    if kind not in TYPES:
        raise ValueError(f"rope scaling type {kind!r} is not supported (supported: {', '.join(TYPES)})")
    dim = head_dim
    exponent = np.arange(0, dim, 2, dtype=np.float64) / dim
    inv_freq = 1.0 / base ** exponent
    if kind == "default":
        return Frequencies(inv_freq)
    if kind == "factors":
        return Frequencies(inv_freq / _factor_list(scaling, "factors", dim // 2))
    if kind == "linear":
        return Frequencies(inv_freq / _number(scaling, "factor"))
    original = scaling.get("original_max_position_embeddings", max_positions)
    if isinstance(original, bool) or not isinstance(original, (int, np.integer)) or original < 2:
        raise ValueError(f"rope scaling original_max_position_embeddings must be an integer >= 2, got {original!r}")
    if kind == "llama3":
        factor, low, high = (_number(scaling, k) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        if high <= low:
            raise ValueError(f"rope scaling high_freq_factor {high} must exceed low_freq_factor {low}")
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        medium = ~(wavelen < original / high) & ~(wavelen > original / low)
        return Frequencies(np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled))
    if kind == "longrope":
        factor = scaling.get("factor")
        factor = max_positions / original if factor is None else _number(scaling, "factor")
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        else:
            attention = _number(scaling, "attention_factor")
        plain = base ** exponent
        return Frequencies(1.0 / (_factor_list(scaling, "short_factor", dim // 2) * plain), attention,
                           1.0 / (_factor_list(scaling, "long_factor", dim // 2) * plain), original)
    return _yarn(scaling, dim, base, original, max_positions)


def _yarn(scaling, dim, base, original, max_positions) -> Frequencies:
    factor = scaling.get("factor")
    factor = max_positions / original if factor is None else _number(scaling, "factor")

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is not None:
        attention = _number(scaling, "attention_factor")
    elif scaling.get("mscale") and scaling.get("mscale_all_dim"):
        attention = mscale(factor, _number(scaling, "mscale")) / mscale(factor, _number(scaling, "mscale_all_dim"))
    else:
        attention = mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(_number({"beta_fast": beta_fast}, "beta_fast")), \
        correction_dim(_number({"beta_slow": beta_slow}, "beta_slow"))
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # (transformers' guard against a zero-width ramp)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    plain = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = 1.0 / (factor * plain) * (1 - extrapolation) + 1.0 / plain * extrapolation
    return Frequencies(inv_freq, attention)
