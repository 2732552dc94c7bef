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
from .hf_common import MAX_HEAD_SIZE, MAX_LAYERS, MAX_SIZE, listed, naming_the_file, warn_not_finite
from .safetensors import quote

ARCHITECTURES = ("llama",)
FLOAT_TYPES = ("F32", "F16", "BF16")  # what a vector (a norm's weight) may be stored as


def _field(md, key, kind=int, lo=1, hi=MAX_SIZE, default=None):
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


def config_from_metadata(md: dict, tensors: dict) -> LlamaConfig:
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"metadata general.architecture {quote(arch)} is not supported "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    a = arch
    n_head = _field(md, f"{a}.attention.head_count")
    n_embd = _field(md, f"{a}.embedding_length")
    given = [key for key in (f"{a}.attention.key_length", f"{a}.rope.dimension_count") if key in md]
    if given:
        head_dim = _field(md, given[0], hi=MAX_HEAD_SIZE)
    elif n_embd % n_head or not 1 <= n_embd // n_head <= MAX_HEAD_SIZE:
        raise ValueError(f"metadata {a}.embedding_length {n_embd} / {a}.attention.head_count {n_head} must be a "
                         f"whole head size in [1, {MAX_HEAD_SIZE}] (no {a}.attention.key_length gives one)")
    else:
        head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"metadata {given[0] if given else f'{a}.embedding_length'}: rotary attention needs an even "
                         f"head size, got {head_dim}")
    scaling = md.get(f"{a}.rope.scaling.type")
    if not (scaling is None or isinstance(scaling, str) and scaling == "none"):
        raise ValueError(f"metadata {a}.rope.scaling.type {quote(scaling)} is not supported")
    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_SIZE:
        raise ValueError(f"token_embd.weight must be a (vocabulary, {n_embd}) matrix, got "
                         f"{'none' if embd is None else embd.shape}")
    vocab = embd.shape[0]
    if _field(md, f"{a}.vocab_size", default=vocab) != vocab:
        raise ValueError(f"metadata {a}.vocab_size {md[f'{a}.vocab_size']} is not token_embd.weight's {vocab} rows")
    tokens = md.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > vocab:
        raise ValueError(f"metadata tokenizer.ggml.tokens has {len(tokens)} tokens, token_embd.weight only {vocab} "
                         f"rows")
    n_kv = _field(md, f"{a}.attention.head_count_kv", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"metadata {a}.attention.head_count_kv {n_kv} must divide {a}.attention.head_count {n_head}")
    return LlamaConfig(vocab_size=vocab, n_layer=_field(md, f"{a}.block_count", hi=MAX_LAYERS), n_embd=n_embd,
                       n_head=n_head, n_kv_head=n_kv, intermediate_size=_field(md, f"{a}.feed_forward_length"),
                       max_positions=_field(md, f"{a}.context_length", default=2048),
                       norm_eps=_field(md, f"{a}.attention.layer_norm_rms_epsilon", float, 0.0, 1.0, 1e-5),
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
    """A Llama (eval mode) from a GGUF file (a path or an opened GGUFFile), its matrices kept quantised;
    model.tokenizer from the metadata. A tensor holding NaN or inf is loaded, with a warning that names it."""
    f = path if isinstance(path, GGUFFile) else GGUFFile(path, mmap)
    path = f.path
    with naming_the_file(path):
        config = config_from_metadata(f.metadata, f.tensors)
        mapping = names(config)
        shapes = parameter_shapes(Llama, config)
        missing = [quote(n) for n in mapping if n not in f.tensors]
        extra = [quote(n) for n in f.tensors if n not in mapping and n != "rope_freqs.weight"]
        bad = [f"{n}: expected {shapes[ours]}, found {f.tensors[n].shape}" for n, ours in mapping.items()
               if n in f.tensors and f.tensors[n].shape != shapes[ours]]
        if missing or extra or bad:
            raise ValueError(f"tensors do not fit the config: missing {listed(missing)}, unexpected {listed(extra)}, "
                             f"mis-shaped {listed(bad)}")
        narrow = [f"{n} ({f.tensors[n].qtype})" for n in mapping
                  if len(f.tensors[n].shape) == 1 and f.tensors[n].qtype not in FLOAT_TYPES]
        if narrow:
            raise ValueError(f"vectors must be stored as {', '.join(FLOAT_TYPES)}, not in blocks: {listed(narrow)}")
        warn_not_finite(path, [n for n in mapping if not f.finite(n)])
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
