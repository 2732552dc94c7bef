"""The GPT-2 layout against transformers' own numbers: ../shared/data/hf/gpt2-tiny (logits, loss, greedy
continuation and the gradient of every parameter). Skips when the shared data folder is absent."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from pytransformer.io.hf_gpt2 import load_gpt2

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
    model.zero_grad()
    model.loss(ids, labels=ids)
    model.backward()
    grads = model.grad_dict()  # Hugging Face names, Conv1D layout
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


def test_save_pretrained_round_trips_through_the_loader(tmp_path, ref):
    model = load_gpt2(GPT2_DIR)
    model.save_pretrained(tmp_path)
    again = load_gpt2(tmp_path)
    np.testing.assert_array_equal(again.params.data, model.params.data)
    assert set(model.state_dict()) == {n for n in load_file_names(GPT2_DIR / "model.safetensors")}


def load_file_names(path):
    from pytransformer.io import load_file

    return set(load_file(path))
