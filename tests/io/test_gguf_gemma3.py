"""Gemma 3's GGUF layout (llama.cpp's architecture gemma3, io/gguf_gemma3.py): a tiny Gemma 3 written as
convert_hf_to_gguf.py lays it out (every norm weight plus one, q/k rows as they are, no output.weight) reads back as
the same model: the parts llama.cpp fixes in code (every sixth layer global, the local rotary base, the attention
scale) come out as Gemma 3's description, and the logits and greedy tokens (through the C++ plan) are the model's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tiny_gguf
from pytransformer import from_pretrained
from pytransformer.models import Gemma3, gemma3_config

V = tiny_gguf.V
LAYER = {"attn.ln": "attn_norm", "attn.post_ln": "post_attention_norm", "ffn.ln": "ffn_norm",
         "ffn.post_ln": "post_ffw_norm", "attn.sublayer.q": "attn_q", "attn.sublayer.k": "attn_k",
         "attn.sublayer.v": "attn_v", "attn.sublayer.o": "attn_output", "attn.sublayer.q_norm": "attn_q_norm",
         "attn.sublayer.k_norm": "attn_k_norm", "ffn.sublayer.gate": "ffn_gate", "ffn.sublayer.up": "ffn_up",
         "ffn.sublayer.down": "ffn_down"}
PATTERN = ("sliding",) * 5 + ("full",) + ("sliding",)  # llama.cpp's: layer i global when i % 6 == 5


def tiny_gemma3(seed=0):
    model = Gemma3(gemma3_config(vocab_size=tiny_gguf.VOCAB, n_layer=7, n_embd=40, n_head=2, n_kv_head=1, head_dim=16,
                                 intermediate_size=48, max_positions=64, norm_eps=2.0 ** -20, sliding_window=4,
                                 layer_types=PATTERN, rope_theta=1e6, rope_local_theta=1e4,
                                 query_pre_attn_scalar=16.0), seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters_dict().items():  # (Gemma's norms start at 0: draw them)
        if name.endswith(("ln.weight", "norm.weight")):
            p.data[...] = rng.normal(0.0, 0.5, p.data.shape)
    return model


def write_gemma3(path, model, **changes):
    """model's parameters as llama.cpp's gemma3 tensors (float32, norms plus one) and metadata (`changes` as in
    tiny_gguf.metadata, on the gemma3.* keys)."""
    d = model.description
    md = {key: value for key, value in tiny_gguf.metadata().items() if key.startswith("tokenizer.")}
    md.update({"gemma3.block_count": (d.n_layer, V.UINT32), "gemma3.context_length": (d.max_positions, V.UINT32),
               "gemma3.embedding_length": (d.n_embd, V.UINT32), "gemma3.feed_forward_length": (d.ffn_size, V.UINT32),
               "gemma3.attention.head_count": (d.n_head, V.UINT32),
               "gemma3.attention.head_count_kv": (d.n_kv_head_, V.UINT32),
               "gemma3.attention.key_length": (d.head_size, V.UINT32),
               "gemma3.attention.value_length": (d.head_size, V.UINT32),
               "gemma3.rope.freq_base": (d.rope_theta, V.FLOAT32),
               "gemma3.attention.layer_norm_rms_epsilon": (d.norm_eps, V.FLOAT32),
               "gemma3.attention.sliding_window": (d.sliding_window, V.UINT32)})
    for key, value in changes.items():
        md[key.replace("__", ".")] = value
    tensors = []
    for name, p in model.named_parameters_dict().items():
        if name == "embed.weight":
            gguf_name = "token_embd.weight"
        elif name == "norm.weight":
            gguf_name = "output_norm.weight"
        else:
            _, i, rest = name.split(".", 2)
            gguf_name = f"blk.{i}.{LAYER[rest.rsplit('.', 1)[0]]}.weight"
        data = p.data + np.float32(1) if name.endswith(("ln.weight", "norm.weight")) else p.data
        tensors.append((gguf_name, data, "F32", data.shape))
    return tiny_gguf.write(path, tensors, md, arch="gemma3")


def test_a_gemma3_file_reads_back_as_the_model_it_was_written_from(tmp_path, rng):
    model = tiny_gemma3()
    loaded = from_pretrained(write_gemma3(tmp_path / "gemma3.gguf", model))
    assert isinstance(loaded, Gemma3)
    assert loaded.description == model.description
    ids = rng.integers(0, tiny_gguf.VOCAB, (1, 12))  # (past the window of 4)
    with model.evaluating(), loaded.evaluating():
        want, got = model(ids), loaded(ids)
    # the norms' one added and taken off again: each weight within half an ulp of 1 of itself
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(loaded.generate(ids, 8, temperature=0.0), model.generate(ids, 8, temperature=0.0))


def test_linear_rotary_scaling_reads_as_the_global_layers_scaling(tmp_path, rng):
    """The 4B+ files' gemma3.rope.scaling (linear, factor 8): the global layers' table scaled, the sliding ones not
    (llama.cpp's rope_freq_scale_train_swa = 1)."""
    model = tiny_gemma3()
    want_model = Gemma3(dataclasses.replace(model.config, rope_scaling={"rope_type": "linear", "factor": 8.0}))
    want_model.load_state_dict(model.state_dict())
    loaded = from_pretrained(write_gemma3(tmp_path / "g.gguf", model, gemma3__rope__scaling__type=("linear", V.STRING),
                                          gemma3__rope__scaling__factor=(8.0, V.FLOAT32)))
    assert loaded.description.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    ids = rng.integers(0, tiny_gguf.VOCAB, (1, 30))
    with want_model.evaluating(), loaded.evaluating(), model.evaluating():
        want, got, unscaled = want_model(ids), loaded(ids), model(ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(unscaled - want).max() > 1e-3 * np.abs(want).max()  # (the scaling is seen)


@pytest.mark.parametrize("changes,message", [
    ({"gemma3__rope__scaling__type": ("yarn", V.STRING), "gemma3__rope__scaling__factor": (8.0, V.FLOAT32)},
     "rope.scaling.type 'yarn' is not supported"),
    ({"gemma3__attention__sliding_window": (0, V.UINT32)}, None),
])
def test_gemma3_metadata_refused_or_read_as_llama_cpp_does(tmp_path, changes, message):
    """Rotary scaling other than linear is refused by name; a window of 0 is none (every layer global, one base)."""
    path = write_gemma3(tmp_path / "g.gguf", tiny_gemma3(), **changes)
    if message:
        with pytest.raises(ValueError, match=message):
            from_pretrained(path)
        return
    d = from_pretrained(path).description
    assert (d.sliding_window, d.layer_types, d.rope_local_theta) == (None, None, None)
