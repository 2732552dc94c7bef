"""Llama against transformers' LlamaForCausalLM (tiny random models built here, grouped-query attention, tied and
untied heads): logits, loss, every parameter's gradient, ten AdamW steps; generation on the KV cache."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import greedy_by_recomputation
from torch_mirror import adamw_steps_match, transformers_step_matches

from pytransformer.io.hf import from_pretrained
from pytransformer.models import Llama, LlamaConfig

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def hf_tiny(tmp_path, tie, n_kv=2, head_dim=None, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=n_kv, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tie, head_dim=head_dim)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 1, so that their gradients and placement are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"llama-{tie}-{n_kv}-{head_dim}"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.mark.parametrize("tie,n_kv,head_dim", [(True, 2, None), (False, 3, None), (False, 6, 10), (True, 1, None)])
def test_logits_loss_and_every_gradient_match_transformers(tmp_path, rng, tie, n_kv, head_dim):
    hf, folder = hf_tiny(tmp_path, tie, n_kv, head_dim)
    ours = from_pretrained(folder).train()
    assert isinstance(ours, Llama) and ours.config.n_kv_head == n_kv
    transformers_step_matches(torch, hf, ours, rng.integers(0, 101, (3, 17)))


def test_ten_adamw_steps_match_torch(tmp_path, rng):
    """Ten AdamW steps, transformers fed our current parameters before each (torch_mirror.adamw_steps_match)."""
    hf, folder = hf_tiny(tmp_path, False, 2)
    adamw_steps_match(torch, hf.train(), from_pretrained(folder).train(), lambda _: rng.integers(0, 101, (2, 12)),
                      1e-4)


def test_greedy_generation_matches_transformers_and_batches_left_padded(tmp_path, rng):
    hf, folder = hf_tiny(tmp_path, True, 2)
    ours = from_pretrained(folder)
    prompt = rng.integers(0, 101, (1, 7))
    want = hf.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours.generate(prompt, 12, temperature=0.0), want)
    # a batch of different lengths, left-padded: each row as if alone
    short = rng.integers(0, 101, (1, 4))
    batch = np.zeros((2, 7), np.int64)
    batch[0] = prompt[0]
    batch[1, 3:] = short[0]
    mask = np.ones((2, 7), np.int64)
    mask[1, :3] = 0
    got = ours.generate(batch, 6, temperature=0.0, attention_mask=mask)
    np.testing.assert_array_equal(got[0, 7:], ours.generate(prompt, 6, temperature=0.0)[0, 7:])
    np.testing.assert_array_equal(got[1, 7:], ours.generate(short, 6, temperature=0.0)[0, 4:])


def test_cache_decoding_equals_recomputation_past_the_table(rng):
    """Greedy decoding over the KV cache equals recomputing the whole sequence each step, also beyond the rotary
    tables' first size (they grow)."""
    model = Llama(LlamaConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=40,
                              max_positions=400), seed=3).eval()
    ids = rng.integers(0, 50, (1, 250))
    np.testing.assert_array_equal(model.generate(ids, 10, temperature=0.0), greedy_by_recomputation(model, ids, 10))


def test_save_pretrained_loads_in_transformers(tmp_path, rng):
    model = Llama(LlamaConfig(vocab_size=60, n_layer=1, n_embd=32, n_head=4, n_kv_head=1, intermediate_size=48,
                              tie_word_embeddings=False), seed=1)
    model.save_pretrained(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).float().eval()
    ids = rng.integers(0, 60, (2, 9))
    with model.evaluating():
        assert rel(model(ids), hf(torch.from_numpy(ids)).logits.detach().numpy()) < 1e-4


def test_config_counts_parameters_like_transformers():
    cfg = LlamaConfig(vocab_size=101, n_layer=3, n_embd=48, n_head=6, n_kv_head=2, intermediate_size=80,
                      tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, tie_word_embeddings=False))
    assert cfg.num_params() == sum(p.numel() for p in hf.parameters()) == Llama(cfg).num_parameters()


def test_fused_gate_up_and_qkv_equal_separate_products(rng):
    """Inference multiplies by gate|up and q|k|v at once (views of the flat buffer): the same numbers as each Linear
    on its own, and the same logits as the training-mode path."""
    model = Llama(LlamaConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=48),
                  seed=5)
    ids = rng.integers(0, 40, (2, 9))
    train_logits = model(ids)
    with model.evaluating():
        np.testing.assert_allclose(model(ids), train_logits, rtol=1e-5, atol=1e-5)
        ffn = model.blocks[0].ffn.sublayer
        x = rng.standard_normal((1, 1, 32)).astype(np.float32)
        g, u = ffn._gate_up(x)
        np.testing.assert_allclose(g, ffn.gate.forward(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(u, ffn.up.forward(x), rtol=1e-6, atol=1e-6)
        assert np.shares_memory(ffn._gate_up.fused.data, model.params.data)


def test_interleaved_rope_model_saves_in_hugging_face_order(tmp_path, rng):
    """A model whose q and k rows are in llama.cpp's order (as loaded from GGUF) computes what its Hugging Face
    save computes in transformers."""
    model = Llama(LlamaConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=40,
                              rope_interleaved=True, tie_word_embeddings=False), seed=4)
    model.save_pretrained(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).float().eval()
    ids = rng.integers(0, 50, (2, 11))
    with model.evaluating():
        assert rel(model(ids), hf(torch.from_numpy(ids)).logits.detach().numpy()) < 1e-4
    back = from_pretrained(tmp_path)  # (read back in Hugging Face's order)
    assert not back.config.rope_interleaved and rel(back(ids), model(ids)) < 1e-5
