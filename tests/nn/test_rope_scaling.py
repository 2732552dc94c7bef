"""Rotary scaling (nn.rope_scaling, nn.Rotary's tables) against transformers' rotary embeddings: linear, llama3,
longrope (short and long factors chosen per call as transformers chooses them, the attention factor) and yarn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytransformer.nn import Rotary
from pytransformer.nn.rope_scaling import frequencies

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

HS, ORIGINAL = 16, 32
EPS32 = 2.0 ** -24


def _factors(rng):
    return [float(x) for x in rng.uniform(1.0, 6.0, HS // 2)]


def _cases(rng):
    return {
        "linear": ("llama", {"rope_type": "linear", "factor": 4.0}),
        "llama3": ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": ORIGINAL}),
        "yarn": ("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}),
        "yarn-mscale": ("llama", {"rope_type": "yarn", "factor": 4.0, "mscale": 0.8, "mscale_all_dim": 0.5,
                                  "beta_fast": 16, "original_max_position_embeddings": ORIGINAL,
                                  "truncate": False}),
        "longrope": ("phi3", {"rope_type": "longrope", "short_factor": _factors(rng), "long_factor": _factors(rng),
                              "original_max_position_embeddings": ORIGINAL}),
    }


def hf_rotary(kind, scaling):
    """transformers' rotary embedding of a model with heads of HS and 4 * ORIGINAL positions."""
    common = dict(hidden_size=4 * HS, num_attention_heads=4, max_position_embeddings=4 * ORIGINAL,
                  rope_parameters={**scaling, "rope_theta": 500.0})
    if kind == "phi3":  # (Phi-3 keeps original_max_position_embeddings beside rope_parameters)
        cfg = transformers.Phi3Config(original_max_position_embeddings=ORIGINAL, **common)
        return transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding(cfg)
    cfg = transformers.LlamaConfig(head_dim=HS, **common)
    return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)


@pytest.mark.parametrize("name", ["linear", "llama3", "yarn", "yarn-mscale", "longrope"])
@pytest.mark.parametrize("length", [ORIGINAL - 5, ORIGINAL, 3 * ORIGINAL])
def test_tables_equal_transformers_cos_and_sin(rng, name, length):
    """A call over positions 0 .. length - 1: our cos/sin rows equal transformers' (one half: rotate_half repeats
    them), within float32's error of an angle p * inv_freq (inv_freq and the product rounded) and of cos itself."""
    kind, scaling = _cases(rng)[name]
    emb = hf_rotary(kind, scaling)
    x = torch.zeros(1, length, HS)
    cos_hf, sin_hf = (t[0, :, :HS // 2].numpy() for t in emb(x, torch.arange(length)[None]))
    rope = Rotary(HS, 500.0, 8, scaling=scaling, max_positions=4 * ORIGINAL)
    cos, sin = (t[:length] for t in rope.tables(length - 1))
    scale = float(emb.attention_scaling)
    bound = 4 * EPS32 * length * scale + 2 * EPS32 * scale
    assert np.abs(cos - cos_hf).max() < bound and np.abs(sin - sin_hf).max() < bound
    assert np.abs(cos).max() > 0.99 * scale  # (position 0: cos is the attention factor itself)


def test_longrope_attention_factor_is_transformers_default(rng):
    scaling = _cases(rng)["longrope"][1]
    f = frequencies(HS, 500.0, scaling, 4 * ORIGINAL)
    assert f.attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(ORIGINAL)), rel=1e-15)
    assert f.pick(ORIGINAL - 1)[0] == "short" and f.pick(ORIGINAL)[0] == "long"


def test_the_same_rotary_moves_between_short_and_long_factors(rng):
    """A long call then a short one: each takes its own set (transformers' per-call choice), tables kept apart."""
    scaling = _cases(rng)["longrope"][1]
    rope = Rotary(HS, 500.0, 8, scaling=scaling, max_positions=4 * ORIGINAL)
    long_cos, _ = rope.tables(2 * ORIGINAL)
    short_cos, _ = rope.tables(3)
    assert long_cos.shape[0] > 2 * ORIGINAL and not np.allclose(long_cos[1], short_cos[1])


@pytest.mark.parametrize("scaling,field", [
    ({"rope_type": "linear", "factor": 0.0}, "factor"),
    ({"rope_type": "linear", "factor": "2"}, "factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 8}, "short_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [math.nan] * 8}, "long_factor"),
    ({"rope_type": "dynamic", "factor": 2.0}, "dynamic"),
])
def test_bad_scaling_fields_name_themselves(scaling, field):
    with pytest.raises(ValueError, match=field):
        frequencies(HS, 500.0, scaling, 4 * ORIGINAL)
