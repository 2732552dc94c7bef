"""A tiny Llama GGUF written by the `gguf` package, as llama.cpp's converter lays it out: the tests of the reader
and of the Llama loader start from it and change one thing (a metadata field, a tensor's type or shape)."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.opcases import random_blocks
from pytransformer.tokenizers.bpe import bytes_to_unicode

gguf = pytest.importorskip("gguf")
V = gguf.GGUFValueType
# a byte-level vocabulary: the 256 byte symbols and one merge
TOKENS = list(bytes_to_unicode().values()) + ["Ġt"]
N_EMBD, N_HEAD, N_KV, N_FF, N_LAYER, VOCAB = 64, 4, 2, 96, 2, len(TOKENS)


def metadata(**changes):
    """The llama.* and tokenizer.* entries: {key: (value, GGUFValueType)}, with `changes` by key (its dots written
    as "__": llama__block_count=(3, V.UINT32)); a change of None drops the key."""
    md = {"llama.block_count": (N_LAYER, V.UINT32), "llama.context_length": (128, V.UINT32),
          "llama.embedding_length": (N_EMBD, V.UINT32), "llama.feed_forward_length": (N_FF, V.UINT32),
          "llama.attention.head_count": (N_HEAD, V.UINT32), "llama.attention.head_count_kv": (N_KV, V.UINT32),
          "llama.rope.freq_base": (1000.0, V.FLOAT32),
          "llama.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32), "tokenizer.ggml.model": ("gpt2", V.STRING),
          "tokenizer.ggml.tokens": (TOKENS, V.ARRAY), "tokenizer.ggml.merges": (["Ġ t"], V.ARRAY)}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            md.pop(key, None)
        else:
            md[key] = value
    return md


def tensors(rng, types=None, shapes=None):
    """[(name, data, type name, numpy shape)]: matrices in Q8_0 and norms in F32 unless `types` says otherwise."""
    shapes = {"token_embd.weight": (VOCAB, N_EMBD), "output_norm.weight": (N_EMBD,), "output.weight": (VOCAB, N_EMBD),
              **{f"blk.{i}.{name}.weight": shape for i in range(N_LAYER) for name, shape in (
                  ("attn_norm", (N_EMBD,)), ("ffn_norm", (N_EMBD,)), ("attn_q", (N_EMBD, N_EMBD)),
                  ("attn_k", (N_EMBD // N_HEAD * N_KV, N_EMBD)), ("attn_v", (N_EMBD // N_HEAD * N_KV, N_EMBD)),
                  ("attn_output", (N_EMBD, N_EMBD)), ("ffn_gate", (N_FF, N_EMBD)), ("ffn_up", (N_FF, N_EMBD)),
                  ("ffn_down", (N_EMBD, N_FF)))}, **(shapes or {})}
    out = []
    for name, shape in shapes.items():
        qtype = (types or {}).get(name, "F32" if len(shape) == 1 else "Q8_0")
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        data = random_blocks(rng, qtype, rows, shape[-1])
        out.append((name, data.view(np.float32).reshape(shape) if qtype == "F32" else data, qtype, shape))
    return out


def write(path, tensor_list=(), md=None, arch="llama"):
    """tensor_list: (name, uint8 data (rows, row_bytes) or float32 array, type name, numpy shape)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, (value, vtype) in (md or {}).items():
        w.add_key_value(key, value, vtype)
    for name, data, qtype, shape in tensor_list:
        if qtype == "F32":
            w.add_tensor(name, np.ascontiguousarray(data, np.float32))
        else:
            data = data.reshape(*shape[:-1], -1)  # (the byte shape: rows of blocks)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=getattr(gguf.GGMLQuantizationType, qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama(path, seed=0, types=None, shapes=None, **changes):
    return write(path, tensors(np.random.default_rng(seed), types, shapes), metadata(**changes))
