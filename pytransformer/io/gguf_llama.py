"""A Llama-family GGUF file (architecture "llama": SmolLM2, Llama 2/3, TinyLlama, ...) -> pytransformer's Llama.

The hyperparameters come from the file's `llama.*` metadata, checked before anything is built; every tensor the
config implies is then checked against the file (name, shape, type). Matrices stay in their quantised blocks,
memory-mapped from the file (Linear.set_quantized, Embedding.set_quantized): the float32 parameters of the model
are allocated but never written, so loading costs the file's pages and the small float32 tensors (norms) only.

GGUF files store the query and key projections of llama with their rows permuted (llama.cpp rotates adjacent
pairs; Hugging Face's rotate_half rotates pairs HS/2 apart). The rows stay as stored (no copy) and the model
rotates adjacent pairs (LlamaConfig.rope_interleaved): q and k permuted alike give the same attention scores.
save_pretrained writes them back in Hugging Face's order (io/hf_llama.py).
"""

from __future__ import annotations

import os

import numpy as np

from ..models.base import parameter_shapes, unwritten_parameters
from ..models.llama import Llama, LlamaConfig
from ..tokenizers import from_gguf_metadata
from .gguf import GGUFFile
from .hf_common import MAX_LAYERS, MAX_SIZE

ARCHITECTURES = ("llama",)


def _field(md, key, kind=int, lo=1, hi=MAX_SIZE, default=None):
    value = md.get(key, default)
    if value is None:
        raise ValueError(f"metadata has no {key}")
    if kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi
    else:
        ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and lo < value < hi
    if not ok:
        raise ValueError(f"metadata {key} must be {'an integer in' if kind is int else 'a number in'} "
                         f"[{lo}, {hi}], got {value!r}")
    return kind(value)


def config_from_metadata(md: dict, tensors: dict) -> LlamaConfig:
    arch = md.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    a = arch
    n_head = _field(md, f"{a}.attention.head_count")
    n_embd = _field(md, f"{a}.embedding_length")
    head_dim = _field(md, f"{a}.attention.key_length", default=_field(md, f"{a}.rope.dimension_count",
                                                                        default=n_embd // n_head))
    if md.get(f"{a}.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"rope scaling {md[f'{a}.rope.scaling.type']!r} is not supported")
    if "token_embd.weight" not in tensors:
        raise ValueError("no token_embd.weight tensor")
    vocab = tensors["token_embd.weight"].shape[0]
    n_kv = _field(md, f"{a}.attention.head_count_kv", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"key/value heads {n_kv} must divide the {n_head} query heads")
    return LlamaConfig(vocab_size=vocab, n_layer=_field(md, f"{a}.block_count", hi=MAX_LAYERS), n_embd=n_embd,
                       n_head=n_head, n_kv_head=n_kv, intermediate_size=_field(md, f"{a}.feed_forward_length"),
                       max_positions=_field(md, f"{a}.context_length", default=2048),
                       rms_norm_eps=_field(md, f"{a}.attention.layer_norm_rms_epsilon", float, 0.0, 1.0, 1e-5),
                       rope_theta=_field(md, f"{a}.rope.freq_base", float, 0.0, 1e12, 10000.0),
                       tie_word_embeddings="output.weight" not in tensors,
                       head_dim=None if head_dim * n_head == n_embd else head_dim, rope_interleaved=True)


def names(c: LlamaConfig) -> dict:
    """GGUF tensor name -> our parameter name."""
    out = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight"}
    if not c.tie_word_embeddings:
        out["output.weight"] = "lm_head.weight"
    for i in range(c.n_layer):
        g, b = f"blk.{i}.", f"blocks.{i}."
        out.update({f"{g}attn_norm.weight": f"{b}attn.ln.weight", f"{g}ffn_norm.weight": f"{b}ffn.ln.weight",
                    f"{g}attn_q.weight": f"{b}attn.sublayer.q.weight", f"{g}attn_k.weight": f"{b}attn.sublayer.k.weight",
                    f"{g}attn_v.weight": f"{b}attn.sublayer.v.weight",
                    f"{g}attn_output.weight": f"{b}attn.sublayer.o.weight",
                    f"{g}ffn_gate.weight": f"{b}ffn.sublayer.gate.weight",
                    f"{g}ffn_up.weight": f"{b}ffn.sublayer.up.weight",
                    f"{g}ffn_down.weight": f"{b}ffn.sublayer.down.weight"})
    return out


def load_llama_gguf(path, mmap=True) -> Llama:
    """A Llama (eval mode) from a GGUF file, its matrices kept quantised; model.tokenizer from the metadata."""
    f = GGUFFile(path, mmap)
    config = config_from_metadata(f.metadata, f.tensors)
    mapping = names(config)
    shapes = parameter_shapes(Llama, config)
    missing = [n for n in mapping if n not in f.tensors]
    extra = [n for n in f.tensors if n not in mapping and n != "rope_freqs.weight"]
    bad = [f"{n} {f.tensors[n].shape} (expected {shapes[ours]})" for n, ours in mapping.items()
           if n in f.tensors and f.tensors[n].shape != shapes[ours]]
    if missing or extra or bad:
        raise ValueError(f"{path}: tensors do not fit the config: missing {missing}, unexpected {extra}, "
                         f"mis-shaped {bad}")
    with unwritten_parameters():
        model = Llama(config)
    params = model.named_parameters_dict()
    layers = {name: m for name, m in _named_modules(model)}
    for gguf_name, ours in mapping.items():
        if len(f.tensors[gguf_name].shape) == 1:
            params[ours].data[...] = f.tensor(gguf_name)
        else:  # the file's blocks, mapped: read as they are used, never copied
            layers[ours.rsplit(".", 1)[0]].set_quantized(f.quantized(gguf_name))
    if config.tie_word_embeddings:
        model.lm_head.set_quantized(model.embed.quantized)
    try:
        model.tokenizer = from_gguf_metadata(f.metadata, os.fspath(path))  # byte-level BPE or SentencePiece
    except ValueError as e:
        model.tokenizer = None
        model.tokenizer_error = str(e)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        f.metadata.pop(key, None)  # (now the tokenizer's; 100k strings not kept twice)
    model.gguf = f
    return model.eval()


def _named_modules(module, prefix=""):
    yield prefix.rstrip("."), module
    for name, child in module.children():
        yield from _named_modules(child, f"{prefix}{name}.")
