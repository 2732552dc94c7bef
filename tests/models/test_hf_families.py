"""Qwen2 (biases, sliding layers), Qwen3 (q/k norms), Phi-3 (longrope, fused qkv_proj / gate_up_proj), Mistral
(sliding window) and Llama 3.2 (llama3 scaling, tied) from tiny random transformers checkpoints made
here: logits, loss, every gradient, ten AdamW steps (torch fed our parameters before each), greedy tokens over the
KV cache, the sharded index, and save_pretrained read back by transformers."""

from __future__ import annotations

import numpy as np
import pytest

import torch_mirror as tm
from hf_families import CASES, ORIGINAL, V, hf_tiny
from pytransformer.io.hf import from_pretrained

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("family", CASES)
def test_logits_loss_and_every_gradient_match_transformers(tmp_path, rng, family):
    hf, folder = hf_tiny(tmp_path, family)
    ours = from_pretrained(folder).train()
    assert type(ours) is CASES[family][2]
    # (Phi-3: past its original length, the long factors)
    tm.transformers_step_matches(torch, hf, ours, rng.integers(0, V, (3, 2 * ORIGINAL)))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3"])
def test_ten_adamw_steps_match_torch(tmp_path, rng, family):
    """Before each of ten AdamW steps transformers is fed our current parameters and must give our loss and every
    gradient within one forward/backward's float32 error (no trajectory is compared: see test_llama)."""
    hf, folder = hf_tiny(tmp_path, family)
    hf.train()
    tm.adamw_steps_match(torch, hf, from_pretrained(folder).train(), lambda step: rng.integers(0, V, (2, 12)), 1e-4)


@pytest.mark.parametrize("family", CASES)
def test_greedy_tokens_match_transformers(tmp_path, rng, family):
    """Prefill then decoding over the KV cache (the C++ plan); Phi-3's generation crosses its original length."""
    hf, folder = hf_tiny(tmp_path, family)
    ours = from_pretrained(folder)
    prompt = rng.integers(0, V, (1, ORIGINAL - 5))
    want = hf.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours.generate(prompt, 12, temperature=0.0), want)


@pytest.mark.parametrize("family", CASES)
def test_save_pretrained_reads_back_in_transformers(tmp_path, rng, family):
    hf, folder = hf_tiny(tmp_path, family, shard=True)
    assert (folder / "model.safetensors.index.json").exists()
    ours = from_pretrained(folder)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").float().eval()
    assert type(back) is type(hf)
    want = dict(hf.state_dict())
    for name, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[name].numpy(), err_msg=name)
    ids = rng.integers(0, V, (2, 2 * ORIGINAL))
    with torch.no_grad():
        np.testing.assert_array_equal(back(torch.from_numpy(ids)).logits.numpy(),
                                      hf(torch.from_numpy(ids)).logits.numpy())
    assert type(from_pretrained(tmp_path / "ours")) is CASES[family][2]
