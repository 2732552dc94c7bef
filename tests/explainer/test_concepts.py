"""Concepts the transformer explainers teach, checked: the GPT-3 size table computed from the configs, sampling
temperature, positions as the only source of order, the two layouts of the sinusoidal table."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.generate import Sampler
from pytransformer.models import GPT_PRESETS, gpt3_table
from pytransformer.nn import EncoderBlock, FeedForward, LayerNorm, MultiHeadAttention, SinusoidalPositions
from pytransformer.nn.layers import sinusoidal_table


def test_gpt3_table_from_the_configs():
    rows = {r["name"]: r for r in gpt3_table()}
    assert list(rows) == [n for n in GPT_PRESETS if n.startswith("gpt3")]
    for r in rows.values():  # every count within 2% of the paper's (embeddings and rounding in the paper's table)
        assert abs(r["parameters"] / r["paper_parameters"] - 1) < 0.02, r
        assert r["n_head"] * r["head_dim"] == r["n_embd"]
    assert rows["gpt3-13b"]["n_embd"] == 5120 and rows["gpt3-175b"]["batch_tokens"] == 3.2e6
    assert rows["gpt3-small"]["learning_rate"] == 6.0e-4 and rows["gpt3-175b"]["learning_rate"] == 0.6e-4


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_softmax_of_logits_over_temperature(T):
    """200k draws at temperature T: each token's frequency within 4 standard errors of softmax(logits / T)."""
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    p = np.exp(logits[0] / T) / np.exp(logits[0] / T).sum()
    rng = np.random.default_rng(0)
    n = 200_000
    sampler = Sampler(temperature=T)
    draws = sampler(np.repeat(logits, n, 0), np.zeros((n, 6), bool), rng)
    freq = np.bincount(draws, minlength=6) / n
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) <= 4 * se + 1e-9).all(), (freq, p)
    assert T != 2.0 or freq[-1] > 0.01  # a high temperature flattens: the least likely token shows up


def test_without_positions_an_encoder_is_order_blind(rng):
    """Self-attention and the feed-forward treat positions alike: permuting the input rows permutes the output
    rows. Adding positions is what makes order visible."""
    C = 32
    block = EncoderBlock(MultiHeadAttention(C, 4), FeedForward(C, 64, "relu"), lambda: LayerNorm(C), "post")
    from pytransformer.nn import FlatParameters

    FlatParameters(block, np.random.default_rng(0))
    x = rng.standard_normal((1, 9, C)).astype(np.float32)
    perm = rng.permutation(9)
    with block.evaluating():
        y, y_perm = block.forward(x), block.forward(np.ascontiguousarray(x[:, perm]))
        np.testing.assert_allclose(y_perm, y[:, perm], rtol=1e-5, atol=1e-5)
        pos = SinusoidalPositions(16, C)
        z, z_perm = block.forward(pos.forward(x)), block.forward(pos.forward(np.ascontiguousarray(x[:, perm])))
    assert np.abs(z_perm - z[:, perm]).max() > 1e-2  # with positions, order matters


def test_sinusoidal_layouts_are_one_permutation_apart():
    inter, halves = sinusoidal_table(50, 16), sinusoidal_table(50, 16, layout="halves")
    perm = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])  # sines first, then cosines
    np.testing.assert_array_equal(inter[:, perm], halves)
    assert inter[0, 0] == 0.0 and inter[0, 1] == 1.0  # sin(0), cos(0): the paper's interleaving
