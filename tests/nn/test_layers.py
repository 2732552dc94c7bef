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


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(C, 7), lambda: nn.LayerNorm(C), lambda: nn.Activation("gelu"),
    lambda: nn.Activation("gelu_exact"), lambda: nn.Activation("relu"), lambda: nn.LearnedPositions(8, C),
    lambda: nn.SinusoidalPositions(8, C), lambda: nn.FeedForward(C, 20, "gelu"),
    lambda: nn.MultiHeadAttention(C, 3, causal=False), lambda: nn.MultiHeadAttention(C, 3, causal=True),
    lambda: nn.EncoderBlock(C, 3, 20, "gelu_exact", "post"), lambda: nn.EncoderBlock(C, 3, 20, "gelu", "pre"),
    lambda: nn.DecoderBlock(C, 3, 20, cross=False, norm="pre"),
], ids=["linear", "layernorm", "gelu", "gelu_exact", "relu", "learned_pos", "sinusoidal", "ffn", "mha", "mha_causal",
        "encoder_post", "encoder_pre", "decoder_pre"])
def test_layer_backward_matches_finite_differences(make, rng):
    layer = build(make())
    x = x3(rng)
    fd_check(lambda: layer.forward(x), layer.backward, [x], params_of(layer), rng)


def test_cross_attention_backward_matches_finite_differences(rng):
    layer = build(nn.MultiHeadAttention(C, 3))
    x, mem = x3(rng), x3(rng, (B, 7, C))
    mask = np.ones((B, 7), bool)
    mask[1, 4:] = False
    fd_check(lambda: layer.forward(x, mem, mask), layer.backward, [x, mem], params_of(layer), rng)


def test_decoder_block_with_cross_attention_backward(rng):
    layer = build(nn.DecoderBlock(C, 3, 20, cross=True, activation="gelu_exact", norm="post"))  # (ReLU kinks defeat finite differences; the Transformer test checks ReLU blocks against torch)
    x, mem = x3(rng), x3(rng, (B, 6, C))
    fd_check(lambda: layer.forward(x, mem), layer.backward, [x, mem], params_of(layer), rng)


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
