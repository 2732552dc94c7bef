"""What every family's config shares: one vocabulary of field names (DecoderConfig's: vocab_size, n_layer, n_embd,
n_head, n_kv_head, head_dim, intermediate_size, max_positions, norm_eps, dropout), its dict form and the names
earlier versions wrote, the check that sizes are positive whole numbers, presets, and the parameter count.

Hugging Face's names (hidden_size, num_hidden_layers, ...) live only in io/, in each family's name map."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import ClassVar

import numpy as np

from .base import count_parameters

# Field names that checkpoints and saved config dicts of earlier versions hold -> the name now (read by from_dict).
OLD_NAMES = {
    "block_size": "max_positions", "max_position_embeddings": "max_positions", "max_len": "max_positions",
    "layer_norm_eps": "norm_eps", "rms_norm_eps": "norm_eps",
    "hidden_size": "n_embd", "d_model": "n_embd",
    "num_hidden_layers": "n_layer", "n_encoder_layers": "n_encoder_layer", "n_decoder_layers": "n_decoder_layer",
    "num_attention_heads": "n_head",
    "d_ff": "intermediate_size",
    "hidden_dropout_prob": "dropout",
    "hidden_act": "activation",
}


class ModelConfig:
    """The base of each family's config dataclass. A subclass names its positive sizes (SIZES) and its presets
    (PRESETS, filled after the class); its model class names it back (`config_class`), which num_params() reads."""

    SIZES: ClassVar[tuple] = ()     # fields that must be positive integers
    PRESETS: ClassVar[dict] = {}    # name -> config
    model_class: ClassVar[type]     # set by the model class that declares config_class = this config

    def __post_init__(self):
        for name in self.SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """The config a dict describes: to_dict()'s, or one an earlier version wrote (its old names renamed)."""
        known = {f.name for f in fields(cls)}
        renamed = {OLD_NAMES.get(key, key): value for key, value in values.items()}
        unknown = sorted(set(renamed) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
        return cls(**renamed)

    @classmethod
    def preset(cls, name: str, **overrides):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose from {', '.join(cls.PRESETS)}")
        return replace(cls.PRESETS[name], **overrides)

    def num_params(self) -> int:
        """The parameter count of the model this config describes, from the config alone (nothing allocated)."""
        return count_parameters(self.model_class, self)
