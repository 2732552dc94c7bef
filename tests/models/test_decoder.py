"""The decoder description (models/decoder.py): every decoder-only family is a DecoderConfig, built by one model
class and decoded by one C++ plan. GPT-2 and Llama shapes here (biases or none, LayerNorm or RMSNorm, learned or
rotary positions, plain or gated feed-forward, grouped heads, tied or untied heads, every weight format): the plan's
step equals the layers' path, and a continuous-batching step over slots equals each sequence alone."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops
from pytransformer.generate import KVCache
from pytransformer.models import GPT, Decoder, DecoderConfig, GPTConfig, Llama, LlamaConfig
from pytransformer.nn import Linear
from pytransformer.opcases import random_blocks

MODELS = {
    "gpt2": lambda: GPT(GPTConfig(vocab_size=64, max_positions=96, n_layer=2, n_head=4, n_embd=64), seed=2),
    "gpt-nobias-hd": lambda: GPT(GPTConfig(vocab_size=50, max_positions=96, n_layer=2, n_head=3, n_embd=48, bias=False,
                                           head_dim=20), seed=3),
    "llama-gqa": lambda: Llama(LlamaConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                           intermediate_size=96, tie_word_embeddings=False), seed=2),
    "llama-mqa-tied": lambda: Llama(LlamaConfig(vocab_size=64, n_layer=2, n_embd=48, n_head=6, n_kv_head=1,
                                                intermediate_size=80), seed=5),
    "rms-learned-relu": lambda: Decoder(DecoderConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=4, n_kv_head=2,
                                                      intermediate_size=56, max_positions=96, positions="learned",
                                                      ffn="plain", activation="relu", qkv_bias=True), seed=1),
    "ln-rotary-gelu": lambda: Decoder(DecoderConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=2, norm="layernorm",
                                                    ffn="plain", activation="gelu", mlp_bias=True,
                                                    tie_word_embeddings=False), seed=4),
}


def _quantise(model, rng, kinds):
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, Linear)):
        qt = kinds[i % len(kinds)]
        OC, IC = layer.weight.shape
        if qt.endswith("_K") and IC % 256 or IC % 32:
            qt = "F16" if IC % 32 else "Q8_0"
        layer.set_quantized(ops.Quantized(random_blocks(rng, qt, OC, IC), qt, (OC, IC)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "Q4_1", "Q8_0+Q4_K"])
@pytest.mark.parametrize("name", list(MODELS))
def test_cpp_decode_step_equals_the_layers_path(rng, name, dtype):
    """One token of one sequence runs as one C++ call: the same kernels in the same order as the layers' cached
    path, so the same tokens and logits, for every kind of weight, over a cache that grows past 64 rows."""
    model = MODELS[name]().eval()
    V = model.description.vocab_size
    if dtype in ("bfloat16", "int8"):
        model.set_weight_dtype(dtype)
    elif dtype != "float32":
        _quantise(model, rng, dtype.split("+"))
    ids = rng.integers(0, V, (1, 70))
    got = model.generate(ids, 8, temperature=0.0)
    model.decode_in_cpp = False
    want = model.generate(ids, 8, temperature=0.0)
    np.testing.assert_array_equal(got, want)
    cache_a, cache_b = model.new_cache(1, 80), model.new_cache(1, 80)
    with model.evaluating():
        model(ids, cache=cache_a)
        model(ids, cache=cache_b)
        b = model(ids[:, :1], cache=cache_b)
        model.decode_in_cpp = True
        a = model(ids[:, :1], cache=cache_a)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    np.testing.assert_allclose(cache_a.k[1][:, :71], cache_b.k[1][:, :71], rtol=1e-6, atol=1e-6)


def _slots(model, S, T):
    return model.new_slots(S, T)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_decode_over_slots_equals_one_sequence_at_a_time(rng, name):
    """decode_batch: rows of different lengths in slots of shared caches, one call, the same logits as each row
    decoded alone."""
    model = MODELS[name]().eval()
    V = model.description.vocab_size
    k, v = _slots(model, 4, 40)
    prompts = {3: rng.integers(0, V, 5), 0: rng.integers(0, V, 11), 2: rng.integers(0, V, 2)}
    with model.evaluating():
        for slot, p in prompts.items():
            model(p[None], cache=KVCache.of([a[slot:slot + 1] for a in k], [a[slot:slot + 1] for a in v]))
        nxt = rng.integers(0, V, 3)
        slots = np.array(list(prompts), np.int64)
        positions = np.array([len(p) for p in prompts.values()], np.int64)
        got = model.decode_batch(nxt, slots, positions, k, v)
        for row, (slot, p) in enumerate(prompts.items()):
            want = model(np.concatenate([p, nxt[row:row + 1]])[None])[0, -1]
            np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="increasing positions"):  # rows of one slot must come in order
        model.decode_batch(nxt, np.array([0, 0, 1]), np.array([6, 5, 2]), k, v)
    for slots, positions, what in (([0, 9, 1], [1, 1, 1], "slot 9"), ([0, 1, 2], [1, 40, 1], "position 40"),
                                   ([0, 1, 2], [1, -1, 1], "positions must lie")):
        with pytest.raises(ValueError, match=what):
            model.decode_batch(nxt, np.array(slots), np.array(positions), k, v)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_a_prompt_prefilled_as_rows_of_a_decode_step(rng, name):
    """decode_batch rows may share a slot in increasing positions: a prompt fed beside another sequence's decode
    row gives the prefill's logits at its last row (logit_rows: only the rows asked for)."""
    model = MODELS[name]().eval()
    V = model.description.vocab_size
    k, v = _slots(model, 3, 32)
    first, prompt = rng.integers(0, V, 6), rng.integers(0, V, 9)
    with model.evaluating():
        model.decode_batch(first, np.zeros(6, np.int64), np.arange(6), k, v)  # slot 0: a prompt alone
        nxt = int(rng.integers(0, V))
        ids = np.concatenate([[nxt], prompt])
        slots = np.array([0] + [2] * len(prompt), np.int64)
        positions = np.concatenate([[6], np.arange(len(prompt))]).astype(np.int64)
        got = model.decode_batch(ids, slots, positions, k, v, logit_rows=np.array([0, len(prompt)]))
        assert got.shape == (2, V)
        want_decode = model(np.concatenate([first, [nxt]])[None])[0, -1]
        want_prompt = model(prompt[None])[0, -1]
    np.testing.assert_allclose(got[0], want_decode, rtol=1e-5, atol=1e-5 * np.abs(want_decode).max())
    np.testing.assert_allclose(got[1], want_prompt, rtol=1e-5, atol=1e-5 * np.abs(want_prompt).max())


def test_gpt_and_llama_are_instances_of_the_description():
    gpt = GPTConfig(vocab_size=50, max_positions=32, n_layer=2, n_head=4, n_embd=32).decoder()
    assert (gpt.norm, gpt.positions, gpt.ffn, gpt.activation, gpt.qkv_bias, gpt.tie_word_embeddings) == \
        ("layernorm", "learned", "plain", "gelu_tanh", True, True)
    llama = LlamaConfig(n_kv_head=1).decoder()
    assert (llama.norm, llama.positions, llama.ffn, llama.activation, llama.qkv_bias, llama.n_kv_head_) == \
        ("rmsnorm", "rotary", "gated", "silu", False, 1)
    # the same parameters, drawn in the same order, as a Decoder built from the description directly
    a = GPT(GPTConfig(vocab_size=50, max_positions=32, n_layer=2, n_head=4, n_embd=32), seed=3)
    b = Decoder(gpt, seed=3)
    np.testing.assert_array_equal(a.params.data, b.params.data)


@pytest.mark.parametrize("field,value,match", [
    ("norm", "batchnorm", "norm must be one of"), ("activation", "swish", "activation must be one of"),
    ("n_kv_head", 3, "must divide"), ("n_embd", 30, "divisible"), ("vocab_size", 0, "positive"),
    ("layer_types", ("full",), "layer_types must be 2 entries"),
])
def test_a_bad_description_is_a_value_error_naming_the_field(field, value, match):
    base = dict(vocab_size=10, n_layer=2, n_embd=32, n_head=4)
    with pytest.raises(ValueError, match=match):
        DecoderConfig(**(base | {field: value}))


@pytest.mark.parametrize("field,value", [("partial_rotary_factor", 0.5),
                                         ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0})])
def test_a_description_the_engine_cannot_run_yet_says_what(field, value):
    config = DecoderConfig(vocab_size=10, n_layer=1, n_embd=32, n_head=4, **{field: value})
    with pytest.raises(NotImplementedError, match="does not run yet"):
        Decoder(config)
