"""llama.cpp's GGUF files of decoder-only architectures -> pytransformer decoders, one reader for all of them.

An architecture is data (`GGUFArch`): its `general.architecture` name, the model class and config it makes, and how
its tensors differ from llama's (q/k/v biases, q/k norms, fused q|k|v and gate|up tensors, q/k rows permuted).
The hyperparameters come from the file's `<arch>.*` metadata, checked before anything is built; every tensor the
config implies is then checked against the file (name, shape, type). Matrices stay in their quantised blocks,
memory-mapped from the file (Linear.set_quantized, Embedding.set_quantized; a fused tensor's rows are split into
views of the same blocks): the float32 parameters are allocated but never written, so loading costs the file's
pages and the small float32 tensors (norms, biases) only.

convert_hf_to_gguf.py permutes the query and key rows of the llama architecture (llama.cpp rotates adjacent pairs;
Hugging Face's rotate_half rotates pairs HS/2 apart). The rows stay as stored (no copy) and the model rotates
adjacent pairs (rope_interleaved): q and k permuted alike give the same attention scores. save_pretrained writes
them back in Hugging Face's order. Qwen2, Qwen3 and Phi-3 are stored unpermuted (llama.cpp's NEOX rotary).

Rotary scaling: `<arch>.rope.scaling.type` linear (and its factor); llama 3's rope_freqs tensor (a divisor per
frequency: nn.rope_scaling's "factors"); Phi-3's rope_factors_long / rope_factors_short tensors with
`<arch>.rope.scaling.attn_factor` and `.original_context_length` (longrope, chosen per call as transformers does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import ops
from ..models import DecoderConfig, Llama, Phi3, Qwen2, Qwen3
from ..models.base import parameter_shapes, unwritten_parameters
from ..tokenizers import from_gguf_metadata
from .gguf import GGUFFile
from .hf_llama import llama_config
from .hf_common import MAX_HEAD_SIZE, MAX_LAYERS, MAX_SIZE, listed, naming_the_file, warn_not_finite
from .safetensors import quote

FLOAT_TYPES = ("F32", "F16", "BF16")  # what a vector (a norm's weight, a bias) may be stored as
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

# llama.cpp's per-layer tensor (blk.i.<name>) -> our parameters in block i, for every architecture that has them
LAYER_TENSORS = {
    "attn_norm.weight": ("attn.ln.weight",), "ffn_norm.weight": ("ffn.ln.weight",),
    "attn_q.weight": ("attn.sublayer.q.weight",), "attn_k.weight": ("attn.sublayer.k.weight",),
    "attn_v.weight": ("attn.sublayer.v.weight",), "attn_output.weight": ("attn.sublayer.o.weight",),
    "attn_q.bias": ("attn.sublayer.q.bias",), "attn_k.bias": ("attn.sublayer.k.bias",),
    "attn_v.bias": ("attn.sublayer.v.bias",),
    "ffn_gate.weight": ("ffn.sublayer.gate.weight",), "ffn_up.weight": ("ffn.sublayer.up.weight",),
    "ffn_down.weight": ("ffn.sublayer.down.weight",),
}
# Phi-3's fused tensors: rows of several of ours, one after another
FUSED_TENSORS = {
    "attn_qkv.weight": ("attn.sublayer.q.weight", "attn.sublayer.k.weight", "attn.sublayer.v.weight"),
    "ffn_up.weight": ("ffn.sublayer.gate.weight", "ffn.sublayer.up.weight"),
}
GLOBAL_TENSORS = {"token_embd.weight": ("embed.weight",), "output_norm.weight": ("norm.weight",),
                  "output.weight": ("lm_head.weight",)}


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp architecture: `make_config` takes DecoderConfig's fields (a dict) and gives the model's
    config; `layer_tensors` maps extra per-layer tensors (q/k norms) to ours."""
    name: str
    model_class: type
    make_config: Callable
    permuted_qk: bool = False     # convert_hf_to_gguf permutes q/k rows (llama): the model rotates adjacent pairs
    fused: bool = False           # attn_qkv and ffn_up (gate|up) instead of separate tensors (phi3)
    layer_tensors: dict = field(default_factory=dict)
    norm_shift: float = 0.0       # what convert_hf_to_gguf added to every norm weight (Gemma's 1 + w: 1), taken off

    def tensor_map(self, n_layer: int, shapes: dict) -> dict:
        """GGUF tensor name -> tuple of our parameter names, for the parameters the model has."""
        per_layer = {**LAYER_TENSORS, **self.layer_tensors}
        if self.fused:
            claimed = {n for ours in FUSED_TENSORS.values() for n in ours}
            per_layer = {g: o for g, o in per_layer.items() if not set(o) & claimed} | FUSED_TENSORS
        out = {g: o for g, o in GLOBAL_TENSORS.items() if all(n in shapes for n in o)}
        for i in range(n_layer):
            for g, ours in per_layer.items():
                ours = tuple(f"blocks.{i}.{n}" for n in ours)
                if all(n in shapes for n in ours):
                    out[f"blk.{i}.{g}"] = ours
        return out


def field_of(md, key, kind=int, lo=1, hi=MAX_SIZE, default=None):
    """A metadata number, checked: ValueError naming the key and what was expected."""
    value = md.get(key, default)
    if value is None:
        raise ValueError(f"metadata has no {key}")
    if kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi
    else:
        ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and lo < value < hi
    if not ok:
        wanted = f"an integer in [{lo}, {hi}]" if kind is int else f"a number in ({lo}, {hi})"
        raise ValueError(f"metadata {key} must be {wanted}, got {quote(value)}")
    return kind(value)


def decoder_fields(f: GGUFFile, arch: GGUFArch) -> dict:
    """DecoderConfig's fields from the file's metadata and tensor table, every one checked."""
    md, tensors, a = f.metadata, f.tensors, arch.name
    n_head = field_of(md, f"{a}.attention.head_count")
    n_embd = field_of(md, f"{a}.embedding_length")
    given = [key for key in (f"{a}.attention.key_length", f"{a}.rope.dimension_count") if key in md]
    if given:
        head_dim = field_of(md, given[0], hi=MAX_HEAD_SIZE)
    elif n_embd % n_head or not 1 <= n_embd // n_head <= MAX_HEAD_SIZE:
        raise ValueError(f"metadata {a}.embedding_length {n_embd} / {a}.attention.head_count {n_head} must be a "
                         f"whole head size in [1, {MAX_HEAD_SIZE}] (no {a}.attention.key_length gives one)")
    else:
        head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"metadata {given[0] if given else f'{a}.embedding_length'}: rotary attention needs an even "
                         f"head size, got {head_dim}")
    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_SIZE:
        raise ValueError(f"token_embd.weight must be a (vocabulary, {n_embd}) matrix, got "
                         f"{'none' if embd is None else embd.shape}")
    vocab = embd.shape[0]
    if field_of(md, f"{a}.vocab_size", default=vocab) != vocab:
        raise ValueError(f"metadata {a}.vocab_size {md[f'{a}.vocab_size']} is not token_embd.weight's {vocab} rows")
    tokens = md.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > vocab:
        raise ValueError(f"metadata tokenizer.ggml.tokens has {len(tokens)} tokens, token_embd.weight only {vocab} "
                         f"rows")
    n_kv = field_of(md, f"{a}.attention.head_count_kv", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"metadata {a}.attention.head_count_kv {n_kv} must divide {a}.attention.head_count {n_head}")
    n_layer = field_of(md, f"{a}.block_count", hi=MAX_LAYERS)
    window = md.get(f"{a}.attention.sliding_window")
    window = None if window in (None, 0) else field_of(md, f"{a}.attention.sliding_window")
    return dict(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv,
                intermediate_size=field_of(md, f"{a}.feed_forward_length"),
                max_positions=field_of(md, f"{a}.context_length", default=2048),
                norm_eps=field_of(md, f"{a}.attention.layer_norm_rms_epsilon", float, 0.0, 1.0, 1e-5),
                rope_theta=field_of(md, f"{a}.rope.freq_base", float, 0.0, 1e12, 10000.0),
                rope_scaling=_rope_scaling(f, a, head_dim), tie_word_embeddings="output.weight" not in tensors,
                head_dim=None if head_dim * n_head == n_embd else head_dim, rope_interleaved=arch.permuted_qk,
                sliding_window=window, layer_types=None if window is None else ("sliding",) * n_layer,
                final_logit_softcapping=None if md.get(f"{a}.final_logit_softcapping") is None else
                field_of(md, f"{a}.final_logit_softcapping", float, 0.0, 1e6))


def _factors(f: GGUFFile, name: str, head_dim: int) -> list:
    info = f.tensors[name]
    if info.shape != (head_dim // 2,) or info.qtype not in FLOAT_TYPES:
        raise ValueError(f"{name} must be {head_dim // 2} floats (one per rotary pair), got {info.qtype} "
                         f"{info.shape}")
    values = np.asarray(f.tensor(name), np.float64)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"{name} must hold positive finite factors")
    return [float(v) for v in values]


def _rope_scaling(f: GGUFFile, a: str, head_dim: int):
    """A Hugging Face style rope scaling dict (nn.rope_scaling) from the metadata and the rope tensors, or None."""
    md, tensors = f.metadata, f.tensors
    kind = md.get(f"{a}.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise ValueError(f"metadata {a}.rope.scaling.type {quote(kind)} is not supported (supported: none, linear)")
    if kind == "linear":
        return {"rope_type": "linear", "factor": field_of(md, f"{a}.rope.scaling.factor", float, 0.0, 1e6)}
    if "rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors:
        original = field_of(md, f"{a}.rope.scaling.original_context_length")
        return {"rope_type": "longrope", "original_max_position_embeddings": original,
                "attention_factor": field_of(md, f"{a}.rope.scaling.attn_factor", float, 0.0, 1e6, 1.0),
                **{f"{which}_factor": _factors(f, f"rope_factors_{which}.weight", head_dim)
                   for which in ("long", "short")}}
    if "rope_freqs.weight" in tensors:
        return {"rope_type": "factors", "factors": _factors(f, "rope_freqs.weight", head_dim)}
    return None


def load_gguf(arch: GGUFArch, path, mmap=True):
    """A model (eval mode) of arch from a GGUF file (a path or an opened GGUFFile), its matrices kept in the
    file's blocks; model.tokenizer from the metadata. A tensor holding NaN or inf is loaded, with a warning."""
    f = path if isinstance(path, GGUFFile) else GGUFFile(path, mmap)
    path = f.path
    with naming_the_file(path):
        config = arch.make_config(decoder_fields(f, arch))
        shapes = parameter_shapes(arch.model_class, config)
        mapping = arch.tensor_map(config.n_layer, shapes)
        missing = [quote(n) for n in mapping if n not in f.tensors]
        extra = [quote(n) for n in f.tensors if n not in mapping and n not in ROPE_TENSORS]
        bad = [f"{n}: expected {_shape(shapes, ours)}, found {f.tensors[n].shape}" for n, ours in mapping.items()
               if n in f.tensors and f.tensors[n].shape != _shape(shapes, ours)]
        if missing or extra or bad:
            raise ValueError(f"tensors do not fit the config: missing {listed(missing)}, unexpected {listed(extra)}, "
                             f"mis-shaped {listed(bad)}")
        narrow = [f"{n} ({f.tensors[n].qtype})" for n in mapping
                  if len(f.tensors[n].shape) == 1 and f.tensors[n].qtype not in FLOAT_TYPES]
        if narrow:
            raise ValueError(f"vectors must be stored as {', '.join(FLOAT_TYPES)}, not in blocks: {listed(narrow)}")
        warn_not_finite(path, [n for n in mapping if not f.finite(n)])
    with unwritten_parameters():
        model = arch.model_class(config)
    params = model.named_parameters_dict()
    layers = dict(_named_modules(model))
    for gguf_name, ours in mapping.items():
        if len(f.tensors[gguf_name].shape) == 1:
            shift = arch.norm_shift if gguf_name.endswith("norm.weight") else 0.0
            params[ours[0]].data[...] = f.tensor(gguf_name) - np.float32(shift) if shift else f.tensor(gguf_name)
            continue
        blocks, start = f.quantized(gguf_name), 0  # the file's blocks, mapped: read as they are used, never copied
        for name in ours:
            rows = shapes[name][0]
            layers[name.rsplit(".", 1)[0]].set_quantized(
                ops.Quantized(blocks.data[start:start + rows], blocks.qtype, (rows, blocks.shape[1])))
            start += rows
    if config.tie_word_embeddings:
        model.lm_head.set_quantized(model.embedding.quantized)
    try:
        model.tokenizer = from_gguf_metadata(f.metadata, os.fspath(path))  # byte-level BPE or SentencePiece
    except ValueError as e:
        model.tokenizer = None
        model.tokenizer_error = str(e)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        f.metadata.pop(key, None)  # (now the tokenizer's; 100k strings not kept twice)
    model.gguf = f
    return model.eval()


def _shape(shapes, ours) -> tuple:
    """The GGUF shape of our parameters ours: one's own, or several stacked by rows."""
    first = shapes[ours[0]]
    return (sum(shapes[n][0] for n in ours), *first[1:]) if len(ours) > 1 else first


def _named_modules(module, prefix=""):
    yield prefix.rstrip("."), module
    for name, child in module.children():
        yield from _named_modules(child, f"{prefix}{name}.")


def _described(**parts):
    """make_config of a family whose config is its DecoderConfig, with its own parts (biases, norms)."""
    return lambda fields: DecoderConfig(**parts, **fields)


LLAMA = GGUFArch("llama", Llama, llama_config, permuted_qk=True)
QWEN2 = GGUFArch("qwen2", Qwen2, _described(qkv_bias=True))
QWEN3 = GGUFArch("qwen3", Qwen3, _described(qk_norm=True),
                 layer_tensors={"attn_q_norm.weight": ("attn.sublayer.q_norm.weight",),
                                "attn_k_norm.weight": ("attn.sublayer.k_norm.weight",)})
PHI3 = GGUFArch("phi3", Phi3, _described(), fused=True)
