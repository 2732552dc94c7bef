"""The GPT-2 layout against transformers' own numbers: ../shared/data/hf/gpt2-tiny (logits, loss, greedy
continuation and the gradient of every parameter). Skips when the shared data folder is absent."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from pytransformer.io.hf_gpt2 import load_gpt2, ours_to_hf

GPT2_DIR = SHARED_DATA / "hf" / "gpt2-tiny"
pytestmark = pytest.mark.skipif(not (GPT2_DIR / "model.safetensors").exists(), reason="shared data absent")


@pytest.fixture(scope="module")
def ref():
    return np.load(GPT2_DIR / "ref.npz")


def test_gpt2_tiny_logits_and_loss_match_transformers(ref):
    model = load_gpt2(GPT2_DIR)
    ids = ref["input_ids"]
    logits = model.forward(ids)
    err = np.abs(logits - ref["logits"]).max() / np.abs(ref["logits"]).max()
    assert err < 1e-4, f"logits relative error {err:.2e}"
    loss = model.loss(ids, labels=ids)  # shifted inside, as transformers does
    assert abs(loss - float(ref["loss"])) < 1e-4 * abs(float(ref["loss"]))


def test_gpt2_tiny_gradients_match_transformers(ref):
    model = load_gpt2(GPT2_DIR)
    ids = ref["input_ids"]
    labels = np.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    model.zero_grad()
    model.loss(ids, labels)
    model.backward()
    grads = ours_to_hf(model.grad_dict(), model.config.n_layer)
    names = [k[len("grad."):] for k in ref.keys() if k.startswith("grad.")]
    assert set(names) == set(grads), set(names) ^ set(grads)
    for name in names:
        want = ref["grad." + name]
        err = np.abs(grads[name] - want).max() / max(np.abs(want).max(), 1e-6)
        assert err < 1e-3, f"{name}: gradient relative error {err:.2e}"


def test_gpt2_tiny_greedy_continuation_matches_transformers(ref):
    model = load_gpt2(GPT2_DIR)
    prompt = ref["input_ids"][:1, :4]
    np.testing.assert_array_equal(model.generate(prompt, ref["greedy"].shape[1] - 4, temperature=0.0), ref["greedy"])
