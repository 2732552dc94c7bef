"""Every layer's backward against central finite differences of its own forward (float32, sampled coordinates),
for inputs and parameters. Whole-model tests compare the same layers against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_difference

from pytransformer import nn

B, T, C = 2, 5, 12


def build(layer, seed=0):
    nn.FlatParameters(layer, np.random.default_rng(seed))
    for m in layer.modules():
        if isinstance(m, nn.Dropout):
            m.rng = np.random.default_rng(1)
    return layer


def fd_check(forward, backward, inputs, params, rng, n=6, eps=1e-2, tol=3e-2):
    """forward() -> output (uses the arrays in `inputs` and the Parameters); backward(g) -> input gradients."""
    g = rng.standard_normal(forward().shape).astype(np.float32)
    for p in params:
        p.grad[...] = 0
    dins = backward(g)
    dins = dins if isinstance(dins, tuple) else (dins,)
    loss = lambda: float((forward().astype(np.float64) * g).sum())
    checks = [(x, d, f"input {i}") for i, (x, d) in enumerate(zip(inputs, dins)) if d is not None]
    checks += [(p.data, p.grad.copy(), repr(p)) for p in params]
    # float32 forward passes put a noise floor under the differences: no tensor's scale goes below 2% of the
    # largest gradient in the layer
    floor = 0.02 * max(np.abs(d).max() for _, d, _ in checks)
    for x, analytic, name in checks:
        flat, ana = x.reshape(-1), analytic.reshape(-1)
        scale = max(np.abs(ana).max(), floor, 1e-3)
        picked = rng.choice(flat.size, min(n, flat.size), replace=False)
        for i, num in zip(picked, central_difference(loss, x, picked, eps)):
            assert abs(num - ana[i]) <= tol * scale, f"{name}[{i}]: numeric {num:.5f} vs analytic {ana[i]:.5f}"


def params_of(layer):
    return [p for _, p in layer.named_parameters()]


def x3(rng, shape=(B, T, C)):
    return rng.standard_normal(shape).astype(np.float32)


def encoder_block(activation, placement):
    return nn.EncoderBlock(attn=nn.MultiHeadAttention(C, 3), ffn=nn.FeedForward(C, 20, activation),
                           norm=lambda: nn.LayerNorm(C), placement=placement)


def decoder_block(placement, cross, activation="gelu"):
    return nn.DecoderBlock(attn=nn.MultiHeadAttention(C, 3, causal=True), ffn=nn.FeedForward(C, 20, activation),
                           norm=lambda: nn.LayerNorm(C), placement=placement,
                           cross=nn.MultiHeadAttention(C, 3) if cross else None)


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(C, 7), lambda: nn.LayerNorm(C), lambda: nn.Activation("gelu"),
    lambda: nn.Activation("gelu_exact"), lambda: nn.Activation("relu"), lambda: nn.LearnedPositions(8, C),
    lambda: nn.SinusoidalPositions(8, C), lambda: nn.FeedForward(C, 20, "gelu"),
    lambda: nn.MultiHeadAttention(C, 3, causal=False), lambda: nn.MultiHeadAttention(C, 3, causal=True),
    lambda: nn.MultiHeadAttention(C, 6, causal=True, n_kv_head=2), lambda: nn.MultiHeadAttention(C, 3, head_dim=5),
    lambda: nn.MultiHeadAttention(C, 4, causal=True, n_kv_head=1, head_dim=7, bias=False),
    lambda: encoder_block("gelu_exact", "post"), lambda: encoder_block("gelu", "pre"),
    lambda: decoder_block("pre", cross=False),
    lambda: nn.RMSNorm(C, 1e-6, offset=1.0), lambda: nn.GatedFeedForward(C, 20, activation="gelu_tanh"),
    lambda: nn.MultiHeadAttention(C, 4, causal=True, n_kv_head=2, head_dim=6, bias=False, rope=nn.Rotary(6, 30.0),
                                  qk_norm=lambda: nn.RMSNorm(6, 1e-6, offset=1.0), window=2, scale=0.3),
    # (weights of std 0.3: the post-norms divide by their sublayer's output, which must not be tiny for the differences)
    lambda: nn.DecoderBlock(attn=nn.MultiHeadAttention(C, 3, causal=True, window=3, std=0.3),
                            ffn=nn.GatedFeedForward(C, 20, std=0.3, activation="gelu_tanh"),
                            norm=lambda: nn.RMSNorm(C, 1e-6, offset=1.0), placement="sandwich"),
], ids=["linear", "layernorm", "gelu", "gelu_exact", "relu", "learned_pos", "sinusoidal", "ffn", "mha", "mha_causal",
        "mha_grouped_kv", "mha_head_dim", "mha_one_kv_head_dim_7", "encoder_post", "encoder_pre", "decoder_pre",
        "rmsnorm_offset", "geglu_ffn", "mha_qk_norm_window_scale", "decoder_sandwich"])
def test_layer_backward_matches_finite_differences(make, rng):
    layer = build(make())
    x = x3(rng)
    fd_check(lambda: layer.forward(x), layer.backward, [x], params_of(layer), rng)


@pytest.mark.parametrize("make", [lambda: nn.Scale(12 ** 0.5), lambda: nn.SoftCap(1.5)], ids=["scale", "softcap"])
def test_in_place_layer_backward_matches_finite_differences(make, rng):
    """Layers that write over their argument (the fresh output of the layer next to them): each call gets a copy."""
    layer = build(make())
    x = x3(rng) * np.float32(2.0)
    fd_check(lambda: layer.forward(x.copy()), lambda g: layer.backward(g.copy()), [x], params_of(layer), rng)


def test_rmsnorm_offset_scales_by_one_plus_weight(rng):
    x, w = x3(rng), rng.standard_normal(C).astype(np.float32)
    plain, gemma = build(nn.RMSNorm(C)), build(nn.RMSNorm(C, offset=1.0))
    assert not gemma.weight.data.any()  # (1 + 0: the identity scale at init)
    plain.weight.data[...] = 1.0 + w
    gemma.weight.data[...] = w
    np.testing.assert_allclose(gemma.forward(x), plain.forward(x), rtol=1e-6, atol=1e-6)


def test_softcap_is_cap_tanh_of_x_over_cap(rng):
    x = x3(rng) * np.float32(10.0)
    np.testing.assert_allclose(nn.SoftCap(4.0).forward(x.copy()), 4.0 * np.tanh(x.astype(np.float64) / 4.0),
                               rtol=1e-6, atol=1e-6)


def test_window_needs_causal_attention():
    with pytest.raises(ValueError, match="window"):
        nn.MultiHeadAttention(C, 3, causal=False, window=2)


def test_cross_attention_backward_matches_finite_differences(rng):
    layer = build(nn.MultiHeadAttention(C, 3))
    x, mem = x3(rng), x3(rng, (B, 7, C))
    mask = np.ones((B, 7), bool)
    mask[1, 4:] = False
    fd_check(lambda: layer.forward(x, mem, mask), layer.backward, [x, mem], params_of(layer), rng)


def test_decoder_block_with_cross_attention_backward(rng):
    # (ReLU kinks defeat finite differences; the Transformer test checks ReLU blocks against torch)
    layer = build(decoder_block("post", cross=True, activation="gelu_exact"))
    x, mem = x3(rng), x3(rng, (B, 6, C))
    fd_check(lambda: layer.forward(x, mem), layer.backward, [x, mem], params_of(layer), rng)


def test_grouped_cross_attention_backward_matches_finite_differences(rng):
    layer = build(nn.MultiHeadAttention(C, 4, n_kv_head=2, head_dim=4))
    x, mem = x3(rng), x3(rng, (B, 7, C))
    fd_check(lambda: layer.forward(x, mem), layer.backward, [x, mem], params_of(layer), rng)


def grouped_attention_reference(x, layer, causal):
    """float64 attention written out head by head: query head h reads key/value head h // (NH / NKV)."""
    NH, NKV, HS = layer.NH, layer.NKV, layer.HS
    lin = lambda m, a: a.astype(np.float64) @ m.weight.data.T.astype(np.float64) + (
        0 if m.bias is None else m.bias.data)
    q, k, v = lin(layer.q, x), lin(layer.k, x), lin(layer.v, x)
    out = np.zeros(x.shape[:2] + (NH * HS,))
    for b in range(x.shape[0]):
        for h in range(NH):
            g = h // (NH // NKV)
            qh, kh, vh = q[b, :, h * HS:(h + 1) * HS], k[b, :, g * HS:(g + 1) * HS], v[b, :, g * HS:(g + 1) * HS]
            s = qh @ kh.T / np.sqrt(HS)
            if causal:
                s = np.where(np.tril(np.ones_like(s, bool)), s, -np.inf)
            p = np.exp(s - s.max(1, keepdims=True))
            out[b, :, h * HS:(h + 1) * HS] = (p / p.sum(1, keepdims=True)) @ vh
    return lin(layer.o, out)


@pytest.mark.parametrize("NH,NKV,HS", [(4, 4, 3), (4, 2, 5), (6, 1, 4), (2, 1, 16)])
def test_grouped_query_attention_matches_a_head_by_head_reference(rng, NH, NKV, HS):
    layer = build(nn.MultiHeadAttention(C, NH, causal=True, n_kv_head=NKV, head_dim=HS))
    assert layer.q.weight.shape == (NH * HS, C) and layer.k.weight.shape == (NKV * HS, C)
    assert layer.o.weight.shape == (C, NH * HS)
    x = x3(rng)
    want = grouped_attention_reference(x, layer, causal=True)
    got = layer.forward(x)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()


def test_attention_rejects_heads_that_do_not_fit():
    with pytest.raises(ValueError, match="divisible by heads"):
        nn.MultiHeadAttention(C, 5)
    with pytest.raises(ValueError, match="must divide query heads"):
        nn.MultiHeadAttention(C, 4, n_kv_head=3)
    with pytest.raises(ValueError, match="placement must be 'pre', 'post' or 'sandwich'"):
        nn.Residual(nn.Linear(C, C), nn.LayerNorm(C), "middle")


def test_tied_lm_head_shares_and_accumulates_into_the_embedding(rng):
    emb = nn.Embedding(9, C)
    head = nn.TiedLMHead(emb.weight, nn.Parameter((9,)))
    holder = nn.Module()
    holder.emb, holder.head = emb, head
    build(holder)
    assert [n for n, _ in holder.named_parameters()] == ["emb.weight", "head.bias"]  # the table stored once
    x = x3(rng)
    fd_check(lambda: head.forward(x), head.backward, [x], [emb.weight, head.bias], rng)
    ids = rng.integers(0, 9, (B, T))
    g_emb, g_head = x3(rng), x3(rng, (B, T, 9))
    emb.weight.grad[...] = 0
    emb.forward(ids)
    emb.backward(g_emb)
    head.forward(x)
    head.backward(g_head)
    want = np.zeros((9, C))
    np.add.at(want, ids.reshape(-1), g_emb.reshape(-1, C))
    want += g_head.reshape(-1, 9).T.astype(np.float64) @ x.reshape(-1, C)
    assert np.abs(emb.weight.grad - want).max() <= 1e-5 * np.abs(want).max()


def test_evaluating_restores_the_training_flag():
    layer = nn.Dropout(0.5)
    with layer.evaluating():
        assert not layer.training
    assert layer.training
    layer.eval()
    with pytest.raises(RuntimeError):
        with layer.evaluating():
            raise RuntimeError
    assert not layer.training


def test_embedding_and_patch_embedding_parameter_gradients(rng):
    emb = build(nn.Embedding(9, C))
    ids = rng.integers(0, 9, (B, T))
    fd_check(lambda: emb.forward(ids), emb.backward, [], params_of(emb), rng)
    patch = build(nn.PatchEmbedding(8, 4, 3, C))
    images = rng.standard_normal((B, 3, 8, 8)).astype(np.float32)
    fd_check(lambda: patch.forward(images), patch.backward, [], params_of(patch), rng)


def test_image_to_patches_matches_a_strided_convolution(rng):
    images = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    patches = nn.image_to_patches(images, 4)  # (B, 4, 48)
    conv = np.einsum("bchpwq,ocpq->bhwo", images.reshape(2, 3, 2, 4, 2, 4), w).reshape(2, 4, 5)
    np.testing.assert_allclose(patches @ w.reshape(5, -1).T, conv, rtol=1e-4, atol=1e-4)


def test_dropout_is_identity_in_eval_and_scales_in_training(rng):
    layer = build(nn.Dropout(0.5))
    x = np.ones((1000,), np.float32)
    y = layer.forward(x)
    assert set(np.unique(y)) <= {0.0, 2.0} and abs((y == 0).mean() - 0.5) < 0.06
    np.testing.assert_array_equal(layer.backward(x), y)  # same mask in backward
    layer.eval()
    assert layer.forward(x) is x


def test_sinusoidal_table_matches_the_paper():
    pe = nn.sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
