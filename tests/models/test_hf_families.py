"""Qwen2, Phi-3 (longrope, fused qkv_proj / gate_up_proj), Mistral and Llama 3.2 (llama3 scaling, tied) from tiny random transformers checkpoints made
here: logits, loss, every gradient, ten AdamW steps (torch fed our parameters before each), greedy tokens over the
KV cache, the sharded index, and save_pretrained read back by transformers."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import optim
from pytransformer.io.hf import from_pretrained
from pytransformer.models import Llama, Mistral, Phi3, Qwen2

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

V, C, F, NH, NKV = 101, 48, 80, 6, 2
HS = C // NH
ORIGINAL = 16  # Phi-3's pretraining length here: prompts and generations cross it (short -> long factors)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _longrope(rng):
    return {"rope_type": "longrope", "rope_theta": 500.0, "short_factor": list(rng.uniform(1, 3, HS // 2)),
            "long_factor": list(rng.uniform(2, 8, HS // 2))}


# family -> (transformers config class, model class, our class, extra config fields)
CASES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", Qwen2, {}),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", Qwen2, {"tie_word_embeddings": True}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", Phi3, {"original_max_position_embeddings": ORIGINAL,
                                                     "rope_parameters": _longrope}),
    "mistral": ("MistralConfig", "MistralForCausalLM", Mistral, {"sliding_window": None, "head_dim": 10}),
    # Llama 3.2's shape: llama3 rotary scaling (a smoothed band and a divided band at these sizes), tied head
    "llama3": ("LlamaConfig", "LlamaForCausalLM", Llama, {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL}}),
}


def hf_tiny(tmp_path, family, seed=0, shard=False):
    """A transformers model of the family with random weights (norms and biases away from their init) and its
    folder."""
    config_class, model_class, _, extra = CASES[family]
    rng = np.random.default_rng(seed)
    extra = {k: v(rng) if callable(v) else v for k, v in extra.items()}
    fields = dict(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=2, num_attention_heads=NH,
                  num_key_value_heads=NKV, max_position_embeddings=64, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_class)(**{**fields, **extra})
    model = getattr(transformers, model_class)(cfg).float().eval()
    model.model.embed_tokens.padding_idx = None  # (torch would keep the padding row's gradient at zero)
    with torch.no_grad():  # norms away from 1 and biases away from 0, so that their gradients are tested
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"{family}-{seed}"
    model.save_pretrained(folder, **({"max_shard_size": "40KB"} if shard else {}))
    return model, folder


@pytest.mark.parametrize("family", CASES)
def test_logits_loss_and_every_gradient_match_transformers(tmp_path, rng, family):
    hf, folder = hf_tiny(tmp_path, family)
    ours = from_pretrained(folder).train()
    assert type(ours) is CASES[family][2]
    ids = rng.integers(0, V, (3, 2 * ORIGINAL))  # (Phi-3: past its original length, the long factors)
    out = hf(torch.from_numpy(ids), labels=torch.from_numpy(ids))
    out.loss.backward()
    assert rel(ours(ids), out.logits.detach().numpy()) < 1e-4
    ours.zero_grad()
    loss = ours.loss(ids, labels=ids)
    assert abs(loss - out.loss.item()) < 1e-5 * out.loss.item()
    ours.backward()
    grads = ours.grad_dict()
    named = dict(hf.named_parameters())
    assert set(grads) == set(named) - ({"lm_head.weight"} if hf.config.tie_word_embeddings else set())
    for name, g in grads.items():
        assert rel(g, named[name].grad.numpy()) < 1e-4, name


@pytest.mark.parametrize("family", ["qwen2", "phi3"])
def test_ten_adamw_steps_match_torch(tmp_path, rng, family):
    """Before each of ten AdamW steps transformers is fed our current parameters and must give our loss and every
    gradient within one forward/backward's float32 error (no trajectory is compared: see test_llama)."""
    hf, folder = hf_tiny(tmp_path, family)
    hf.train()
    ours = from_pretrained(folder).train()
    opt = optim.AdamW(ours.params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_vectors=True)
    named = dict(hf.named_parameters())
    for step in range(10):
        with torch.no_grad():
            for name, v in ours.state_dict().items():
                named[name].copy_(torch.from_numpy(np.array(v)))
        hf.zero_grad()
        ids = rng.integers(0, V, (2, 12))
        out = hf(torch.from_numpy(ids), labels=torch.from_numpy(ids))
        out.loss.backward()
        ours.zero_grad()
        loss = ours.loss(ids, labels=ids)
        ours.backward()
        assert abs(loss - out.loss.item()) < 1e-5 * out.loss.item(), step
        for name, g in ours.grad_dict().items():
            assert rel(g, named[name].grad.numpy()) < 1e-4, (step, name)
        opt.step()


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
