"""What every Hugging Face family shares: reading a folder (config.json + model.safetensors or a sharded
index), name maps written as data (one rule per Hugging Face tensor, read in both directions), and the generic
load / export / save that the family registry (families.py) runs for each family."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models.base import parameter_shapes
from .safetensors import MAX_HEADER, atomic_write, load_file, parse_json, quote, save_file


def read_json(path) -> dict:
    """A JSON object from a file (config.json, an index) of at most MAX_HEADER bytes, or ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_HEADER:
            raise ValueError(f"{path}: more than {MAX_HEADER} bytes, far more than any config or index")
        return parse_json(f.read(size), path)  # (what it held when measured: a file that grows is cut)


def read_config(path) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{path}: no config.json")
    return read_json(cfg_path)


def read_folder(path, mmap=True):
    """-> (config dict, {name: array}) from config.json and model.safetensors or model.safetensors.index.json.
    mmap=False reads the weights into private memory (see safetensors.load_file)."""
    config = read_config(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return config, load_file(single, mmap=mmap)
    if os.path.exists(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: expected a JSON object with a weight_map of tensor name -> shard file")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if os.path.basename(shard) != shard or not shard:
                raise ValueError(f"{index}: shard name {quote(shard)} must be a file in the folder")
            tensors.update(load_file(os.path.join(path, shard), mmap=mmap))
        return config, tensors
    raise ValueError(f"{path}: no model.safetensors (or sharded index) found")


# --- config.json fields, checked before anything is built ---------------------------------------------------------

MAX_LAYERS = 4096   # far above any real model (GPT-3 175B has 96); a claim past it is refused before a build
MAX_SIZE = 2**31 - 1
MAX_HEAD_SIZE = 1 << 12  # (rotary attention builds a (positions, head size / 2) table as the model is described)
_MISSING = object()


def int_field(cfg: dict, name: str, lo: int = 1, hi: int = MAX_SIZE, default=_MISSING) -> int:
    value = cfg.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json has no {name}")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"config.json: {name} must be an integer in [{lo}, {hi}], got {quote(value)}")
    return value


def float_field(cfg: dict, name: str, lo: float, hi: float, default=_MISSING) -> float:
    value = cfg.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json has no {name}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value < hi:
        raise ValueError(f"config.json: {name} must be a number in ({lo}, {hi}), got {quote(value)}")
    return float(value)


def label_count(cfg: dict) -> int:
    """The classes of a classification head: len(id2label), else num_labels, else 2 (transformers' default)."""
    id2label = cfg.get("id2label", {})
    if not isinstance(id2label, dict):
        raise ValueError(f"config.json: id2label must be an object, got {type(id2label).__name__}")
    return len(id2label) or int_field(cfg, "num_labels", default=2)


def divisible(cfg: dict, width: str, heads: str) -> None:
    if cfg[width] % cfg[heads]:
        raise ValueError(f"config.json: {width} {cfg[width]} must be a multiple of {heads} {cfg[heads]}")


# --- layouts: how our tensors (one or several) become one Hugging Face tensor, and back --------------------------


class Same:
    """One tensor, the same values; only the shape may differ (hf_shape, e.g. a conv kernel or (1, T, C))."""

    def __init__(self, hf_shape=None):
        self.hf_shape = hf_shape

    def hf_shape_of(self, shapes):
        return tuple(shapes[0] if self.hf_shape is None else self.hf_shape)

    def to_ours(self, value, shapes):
        return [value.reshape(shapes[0])]

    def to_hf(self, values):
        return values[0] if self.hf_shape is None else np.asarray(values[0]).reshape(self.hf_shape)


class Transposed:
    """GPT-2's Conv1D keeps a Linear's weight as (in, out); ours is (out, in)."""

    def hf_shape_of(self, shapes):
        return tuple(shapes[0][::-1])

    def to_ours(self, value, shapes):
        return [np.ascontiguousarray(value.reshape(shapes[0][::-1]).T)]

    def to_hf(self, values):
        return np.ascontiguousarray(np.asarray(values[0]).T)


class Fused:
    """Several of ours side by side in one Hugging Face tensor: GPT-2's c_attn (q, k, v: weights (in, sum of outs)
    concatenated along axis 1 after the Conv1D transpose, biases along axis 0); Phi-3's qkv_proj and gate_up_proj
    (not transposed: (out, in) weights stacked by rows)."""

    def __init__(self, transposed: bool):
        self.transposed = transposed

    def hf_shape_of(self, shapes):
        total = sum(s[0] for s in shapes)
        return (shapes[0][1], total) if self.transposed else (total, *shapes[0][1:])

    def to_ours(self, value, shapes):
        sizes = [s[0] for s in shapes]
        cuts = np.cumsum(sizes)[:-1]
        if self.transposed:
            return [np.ascontiguousarray(part.T) for part in np.split(value.reshape(-1, sum(sizes)), cuts, axis=1)]
        return [np.ascontiguousarray(part.reshape(shape))
                for part, shape in zip(np.split(value.reshape(sum(sizes), -1), cuts), shapes)]

    def to_hf(self, values):
        if self.transposed:
            return np.concatenate([np.asarray(v).T for v in values], axis=1)
        return np.concatenate([np.asarray(v) for v in values])


SAME, TRANSPOSED = Same(), Transposed()


@dataclass(frozen=True)
class Rule:
    hf: str                 # the Hugging Face tensor name
    ours: tuple             # our parameter name(s) it holds
    layout: object = SAME


def rule(hf, *ours, layout=SAME) -> Rule:
    return Rule(hf, tuple(ours), layout)


def weight_and_bias(hf, ours) -> list:
    """The two rules of a Linear or LayerNorm: hf.weight -> ours.weight, hf.bias -> ours.bias."""
    return [rule(f"{hf}.weight", f"{ours}.weight"), rule(f"{hf}.bias", f"{ours}.bias")]


def encoder_layer_rules(prefix, n_layer, parts) -> list:
    """Every layer's rules of a transformers encoder ({prefix}encoder.layer.i.<part> -> blocks.i.<ours>), from a
    family's table of (Hugging Face part, our part) pairs, each a Linear or LayerNorm."""
    return [r for i in range(n_layer) for hf_part, ours in parts
            for r in weight_and_bias(f"{prefix}encoder.layer.{i}.{hf_part}", f"blocks.{i}.{ours}")]


class NameMap:
    """The rules between one model's parameters and a Hugging Face state dict. Rules whose parameters the
    model lacks (an absent head) are skipped. `to_ours` checks that every tensor the model needs is present with
    the shape its layout gives (`hf_shape_of` our shapes), names whatever is missing, mis-shaped or (when strict)
    left over, and warns of any that hold NaN or inf."""

    def __init__(self, rules, ignore=(), strict=False):
        self.rules = list(rules)
        self.ignore = tuple(ignore)  # Hugging Face names (suffixes) that are never ours: buffers, tied copies
        self.strict = strict         # unexpected tensors are an error, not skipped

    def to_ours(self, hf: dict, shapes: dict, source="checkpoint") -> dict:
        out, missing, bad, used, not_finite = {}, [], [], set(), []
        for r in self.rules:
            if not all(n in shapes for n in r.ours):
                continue
            used.add(r.hf)
            if r.hf not in hf:
                missing.append(quote(r.hf))
                continue
            want = [shapes[n] for n in r.ours]
            expected = r.layout.hf_shape_of(want)
            if tuple(np.shape(hf[r.hf])) != expected:
                bad.append(f"{r.hf}: expected {expected}, found {tuple(np.shape(hf[r.hf]))}")
                continue
            value = np.asarray(hf[r.hf], np.float32)
            if value.size and not (np.isfinite(value.min()) and np.isfinite(value.max())):  # (NaN and inf propagate)
                not_finite.append(r.hf)
            out.update(zip(r.ours, r.layout.to_ours(value, want)))
        extra = [quote(n) for n in hf if n not in used and not n.endswith(self.ignore)]
        if missing or bad or (self.strict and extra):
            raise ValueError(f"checkpoint does not fit the model: missing {listed(missing)}, mis-shaped {listed(bad)}, "
                             f"unexpected {listed(extra)}")
        warn_not_finite(source, not_finite)
        return out

    def to_hf(self, ours: dict) -> dict:
        return {r.hf: r.layout.to_hf([ours[n] for n in r.ours]) for r in self.rules if all(n in ours for n in r.ours)}


def decoder_names(c, prefix: str, layer_rules) -> NameMap:
    """A decoder-only family's name map (transformers' *ForCausalLM layout): the embeddings and final norm under
    prefix, each layer's rules from layer_rules(its Hugging Face prefix, our block's prefix), the head when untied."""
    rules = [rule(f"{prefix}embed_tokens.weight", "embed.weight"), rule(f"{prefix}norm.weight", "norm.weight")]
    for i in range(c.n_layer):
        rules += layer_rules(f"{prefix}layers.{i}.", f"blocks.{i}.")
    if not c.tie_word_embeddings:
        rules.append(rule("lm_head.weight", "lm_head.weight"))
    return NameMap(rules, ignore=(".rotary_emb.inv_freq",) + (("lm_head.weight",) if c.tie_word_embeddings else ()),
                   strict=True)


def listed(items, shown=4) -> str:
    """A list for an error message: its first few items, and how many more (a hostile file may name thousands)."""
    items = list(items)
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"[{', '.join(items[:shown])}{more}]"


def warn_not_finite(source, names) -> None:
    """The one warning of a load whose weights hold NaN or inf (they are loaded as they are)."""
    if names:
        warnings.warn(f"{source}: NaN or inf in {len(names)} tensor(s): {listed(names)}", RuntimeWarning,
                      stacklevel=3)


@contextmanager
def naming_the_file(path):
    """ValueErrors raised inside say which file or folder they are about (once)."""
    path = os.fspath(path)
    try:
        yield
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith(path) else f"{path}: {message}") from None


def detect_prefix(tensors: dict, prefix: str) -> str:
    """The base-model prefix ("bert.", "vit.", "transformer.") when the checkpoint's names carry it, else ""."""
    return prefix if any(k.startswith(prefix) for k in tensors) else ""


def check_activation(config: dict, key: str, allowed, default):
    act = config.get(key, default)
    if not isinstance(act, str) or act not in allowed:
        raise ValueError(f"config.json: {key} {quote(act)} is not supported (expected one of {tuple(allowed)})")


def labels(n: int) -> dict:
    return {"id2label": {str(i): f"LABEL_{i}" for i in range(n)}, "label2id": {f"LABEL_{i}": i for i in range(n)}}


@dataclass(frozen=True)
class HFLayout:
    """How one family looks in transformers.

    model_type:       config.json's "model_type"
    architectures:    the architectures this loader takes
    from_hf:          (config.json dict, tensors) -> (our config, name prefix the tensors use)
    names:            (our config, prefix) -> NameMap
    to_hf:            our config -> (config.json dict, prefix to save under)
    """

    model_type: str
    architectures: tuple
    from_hf: Callable
    names: Callable
    to_hf: Callable


def shapes_of(model) -> dict:
    return {n: p.shape for n, p in model.params}


class HFFormat:
    """One built model's Hugging Face face: state dicts both ways, its config.json, save_pretrained."""

    def __init__(self, layout: HFLayout, model):
        self.config, prefix = layout.to_hf(model.config)
        self.names = layout.names(model.config, prefix)
        self.shapes = shapes_of(model)

    def to_hf(self, ours: dict) -> dict:
        return self.names.to_hf(ours)

    def to_ours(self, hf: dict) -> dict:
        return self.names.to_ours(hf, self.shapes)

    def save(self, model, folder) -> None:
        """config.json + model.safetensors, as transformers writes them."""
        os.makedirs(folder, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.to_hf(model.params_dict()).items()},
                  os.path.join(folder, "model.safetensors"), {"format": "pt"})
        atomic_write(os.path.join(folder, "config.json"), [json.dumps(self.config, indent=2).encode()])


def load(layout: HFLayout, model_class, path, mmap=True):
    """A model of model_class from a Hugging Face folder in this layout, in eval mode. Everything is checked
    before the model is allocated: config.json's fields (types, ranges), then every tensor the config implies
    against the file's (names and shapes, from a shapes-only build of the model); ValueErrors name the folder.
    Weights holding NaN or inf are loaded, with a warning naming them."""
    with naming_the_file(path):
        config_json, tensors = read_folder(path, mmap)
        arch = (config_json.get("architectures") or [layout.architectures[0]])
        arch = arch[0] if isinstance(arch, list) else arch
        if not isinstance(arch, str) or arch not in layout.architectures:
            raise ValueError(f"config.json: unsupported {layout.model_type} architecture {quote(arch)} "
                             f"(supported: {', '.join(layout.architectures)})")
        config, prefix = layout.from_hf(config_json, tensors)
        ours = layout.names(config, prefix).to_ours(tensors, parameter_shapes(model_class, config), os.fspath(path))
    model = model_class(config)
    model.load_params(ours)
    return model.eval()
