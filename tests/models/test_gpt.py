"""GPT against a PyTorch mirror (logits, loss, every gradient, ten AdamW steps) and its own invariants."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.models import GPT, GPTConfig

import torch_mirror as tm

CFG = GPTConfig(vocab_size=37, max_positions=24, n_layer=2, n_head=3, n_embd=24)


def batch(rng, B=3, T=17, V=37):
    idx = rng.integers(0, V, (B, T))
    return idx, np.roll(idx, -1, axis=1)


def test_gpt_matches_torch_mirror_logits_loss_and_every_gradient(torch, rng):
    model = GPT(CFG, seed=3)
    idx, targets = batch(rng)
    targets[0, :3] = -100
    P = tm.params_from(model, torch)
    logits_t = tm.gpt_logits(torch, P, idx, CFG)
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, CFG.vocab_size), torch.from_numpy(targets).reshape(-1))
    loss_t.backward()

    logits = model.forward(idx)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    model.zero_grad()
    loss = model.loss(idx, targets)
    assert abs(loss - loss_t.item()) < 1e-5 * abs(loss_t.item())
    model.backward()
    for name, p in model.params:
        want = P[name].grad.numpy()
        # floor: the key bias gets an exactly zero gradient (softmax ignores a per-row shift)
        err = np.abs(p.grad - want).max() / max(np.abs(want).max(), 1e-4)
        assert err < 1e-3, f"{name}: gradient relative error {err:.2e}"


def test_gpt_ten_adamw_steps_match_torch(torch, rng):
    """Ten clipped-free AdamW steps with weight decay on matrices only; every step's loss and gradients equal the
    float64 mirror's fed our current parameters."""
    model = GPT(CFG, seed=5)
    P = tm.params_from(model, torch)
    idx, targets = batch(rng)
    logits = lambda: tm.gpt_logits(torch, P, idx, CFG).reshape(-1, CFG.vocab_size)
    losses = tm.adamw_steps_agree(
        torch, model, P,
        lambda step: torch.nn.functional.cross_entropy(logits(), torch.from_numpy(targets).reshape(-1)),
        lambda step: model.loss(idx, targets), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert losses[-1] < 0.95 * losses[0]


def test_causal_outputs_ignore_future_tokens(rng):
    model = GPT(CFG, seed=1)
    idx, _ = batch(rng, B=2, T=12)
    changed = idx.copy()
    changed[:, 8:] = (changed[:, 8:] + 1) % CFG.vocab_size
    a, b = model.forward(idx), model.forward(changed)
    np.testing.assert_allclose(a[:, :8], b[:, :8], rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, 8:] - b[:, 8:]).max() > 1e-3


def test_parameters_and_gradients_are_views_into_one_buffer():
    model = GPT(CFG, seed=0)
    for _, p in model.params:
        assert p.data.base is model.params.data and p.grad.base is model.params.grad
    assert model.num_parameters() == sum(p.size for _, p in model.params)
    # the LM head is tied to the token embedding: one parameter, not two
    assert "wte.weight" in model.named_parameters_dict()


def test_generate_greedy_is_deterministic_and_extends(rng):
    model = GPT(CFG, seed=2)
    idx, _ = batch(rng, B=2, T=5)
    a = model.generate(idx, 6, temperature=0.0)
    b = model.generate(idx, 6, temperature=0.0)
    assert a.shape == (2, 11)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :5], idx)


def test_bad_ids_raise():
    model = GPT(CFG, seed=0)
    with pytest.raises(ValueError, match="at most 24"):
        model.forward(np.zeros((1, 30), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 37\)"):
        model.forward(np.full((1, 3), 40))
    with pytest.raises(TypeError):
        model.forward(np.zeros((1, 3), np.float32))


def test_gpt_with_head_size_apart_from_the_width_matches_torch_mirror(torch, rng):
    cfg = GPTConfig(vocab_size=37, max_positions=24, n_layer=2, n_head=3, n_embd=24, head_dim=10)  # attention 30 wide
    model = GPT(cfg, seed=5)
    assert model.blocks[0].attn.sublayer.q.weight.shape == (30, 24)
    idx, targets = batch(rng)
    P = tm.params_from(model, torch)
    logits_t = tm.gpt_logits(torch, P, idx, cfg)
    torch.nn.functional.cross_entropy(logits_t.reshape(-1, 37), torch.from_numpy(targets).reshape(-1)).backward()
    model.zero_grad()
    model.loss(idx, targets)
    model.backward()
    np.testing.assert_allclose(model.forward(idx), logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    for name, p in model.params:
        want = P[name].grad.numpy()
        err = np.abs(p.grad - want).max() / max(np.abs(want).max(), 1e-4)
        assert err < 1e-3, f"{name}: gradient relative error {err:.2e}"


# the GPT-3 paper's Table 2.1: parameter counts as printed
GPT3_TABLE = {"gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9, "gpt3-2.7b": 2.7e9,
              "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9, "gpt3-175b": 175.0e9}


@pytest.mark.parametrize("name", list(GPT3_TABLE))
def test_gpt3_presets_count_the_papers_parameters_without_allocating(name):
    cfg = GPTConfig.preset(name)
    assert abs(cfg.num_params() / GPT3_TABLE[name] - 1) < 0.02, f"{name}: {cfg.num_params() / 1e9:.3f}B"
    # d_model / heads / d_head as the paper prints them (XL: 16 heads x 128, see GPT_PRESETS)
    assert cfg.n_head * cfg.head_dim == cfg.n_embd


def test_gpt3_xl_builds_with_its_heads_of_128(rng):
    cfg = GPTConfig.preset("gpt3-xl", vocab_size=64, max_positions=8, n_layer=1)  # the XL block shapes, one layer
    model = GPT(cfg)
    attn = model.blocks[0].attn.sublayer
    assert (attn.NH, attn.HS) == (16, 128)
    assert model.num_parameters() == cfg.num_params()
    assert model.forward(rng.integers(0, 64, (1, 8))).shape == (1, 8, 64)


def test_gpt2_preset_counts_124m():
    assert GPTConfig.preset("gpt2").num_params() == 124_439_808  # GPT-2 small with its tied head


def test_dropout_is_reproducible_and_off_in_eval(rng):
    cfg = GPTConfig(vocab_size=37, max_positions=24, n_layer=1, n_head=2, n_embd=16, dropout=0.2)
    idx, targets = batch(rng, T=10)
    a, b = GPT(cfg, seed=4), GPT(cfg, seed=4)
    assert a.loss(idx, targets) == b.loss(idx, targets)
    a.eval()
    np.testing.assert_array_equal(a.forward(idx), a.forward(idx))


def test_attention_maps_are_causal_softmax_rows(rng):
    model = GPT(CFG, seed=1)
    idx, _ = batch(rng, B=2, T=9)
    maps = model.attention_maps(idx)
    assert maps.shape == (CFG.n_layer, CFG.n_head, 9, 9)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.abs(np.triu(maps, 1)).max() == 0.0
    # the first layer's map is softmax(q k^T / sqrt(HS)) of that layer's own projections
    from pytransformer import reference as ref
    attn = model.blocks[0].attn.sublayer
    q, k = (a.transpose(0, 2, 1, 3) for a in attn._saved[:2])  # kept as (B, T, NH, HS)
    np.testing.assert_allclose(maps[0], ref.attention_probs(q, k, causal=True)[0], rtol=1e-4, atol=1e-6)


def test_cli_attention_map_png(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    from pytransformer.checkpoint import save_checkpoint
    from pytransformer.tokenizers import CharTokenizer

    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,!?ABCDEFGHIJKL")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_positions=32, n_layer=2, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "c.safetensors", model, tokenizer=tok)
    out = tmp_path / "map.png"
    r = subprocess.run([sys.executable, "-m", "pytransformer", "attention", str(tmp_path / "c.safetensors"),
                        "hello world", "--layer", "1", "--head", "1", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_building_a_model_holds_one_copy_of_its_parameters():
    """Initial values go straight into the flat buffer (no second copy, no float64 temporary of a whole table):
    peak memory during the build is the parameters plus small change (inference memory = weights + cache)."""
    import tracemalloc

    cfg = GPTConfig(vocab_size=20000, max_positions=64, n_layer=2, n_head=4, n_embd=256)
    tracemalloc.start()
    try:
        model = GPT(cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    values = model.params.data.nbytes
    # values + the gradient buffer (tracemalloc counts its calloc; pages cost memory only once written) + one
    # block of draws; before, every initial value was held beside the buffer with a float64 copy of the largest
    assert peak < 2 * values + (16 << 20), f"peak {peak / 2**20:.1f} MiB for {values / 2**20:.1f} MiB of values"
