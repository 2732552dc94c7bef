"""A decoder's training loss in blocks of rows (models/base.py ChunkedCrossEntropy): the loss, every gradient and the
hidden rows' gradient equal the same model's loss over its whole (N, V) logits (one block), whatever the block size,
with blocks of ignored targets and Gemma's soft-capping; and it never holds the (N, V) logits."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from pytransformer import reference
from pytransformer.models import Decoder, DecoderConfig, Gemma3, Llama, LlamaConfig, gemma3_config
from pytransformer.models.base import ChunkedCrossEntropy

EPS = float(np.finfo(np.float32).eps)
B, T = 3, 10  # 30 rows: blocks of 4 leave a short last block

MODELS = {
    "llama-tied": lambda: Llama(LlamaConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, n_kv_head=2,
                                            intermediate_size=48), seed=1),
    "llama-untied": lambda: Llama(LlamaConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, intermediate_size=48,
                                              tie_word_embeddings=False), seed=2),
    "gemma3-softcap": lambda: Gemma3(gemma3_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                                   head_dim=16, intermediate_size=48, max_positions=64,
                                                   final_logit_softcapping=3.0), seed=3),
}


def _step(model, idx, targets, rows, dloss):
    """(loss, every gradient) with the head in blocks of `rows` rows."""
    model.head.ROWS = rows
    model.zero_grad()
    loss = model.loss(idx, targets)
    model.backward(dloss)
    return loss, model.params.grad.copy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_blocks_of_rows_give_the_whole_logits_loss_and_gradients(rng, name):
    model = MODELS[name]().train()
    V = model.description.vocab_size
    idx = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    targets[0, 2:8] = -100  # (rows 2-7: block 4-7 of blocks of 4 has no target at all)
    targets[2, 9] = -100
    whole_loss, whole = _step(model, idx, targets, B * T, 0.5)
    with model.evaluating():  # the float64 loss of the model's own float32 logits
        logits = model.forward(idx).reshape(B * T, V)
    expected = reference.crossentropy_forward(logits, targets.reshape(-1))[0]
    # a sum of 30 row losses in float32, each ~ log V with its log-sum-exp rounded in V terms
    assert abs(whole_loss - expected) <= 4 * math.sqrt(V) * EPS * abs(expected)
    for rows in (1, 4, 7):
        loss, grads = _step(model, idx, targets, rows, 0.5)
        # each block's share dloss * count / total rounds once; the head's weight gradient sums its N rows in
        # another order: N * eps relative at worst
        assert abs(loss - whole_loss) <= 4 * B * T * EPS * abs(whole_loss)
        assert np.abs(grads - whole).max() <= 4 * B * T * EPS * np.abs(whole).max()
        assert np.abs(grads).max() > 0


def test_the_whole_logits_are_never_held(rng):
    """8 blocks of rows through a 4,096-token head: the loss and backward allocate a block's logits, never the
    (N, V) array."""
    V, N = 4096, 2 * 1024
    model = Decoder(DecoderConfig(vocab_size=V, n_layer=1, n_embd=8, n_head=2, intermediate_size=8), seed=0).train()
    idx = rng.integers(0, V, (2, N // 2))
    assert model.head.ROWS * 4 <= N
    tracemalloc.start()
    try:
        model.loss(idx, idx)
        model.backward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < N * V * 4 / 2, f"peak {peak / 2**20:.1f} MiB; the (N, V) logits are {N * V * 4 / 2**20:.0f} MiB"


def test_a_loss_with_every_target_ignored_says_so(rng):
    model = MODELS["llama-tied"]().train()
    with pytest.raises(FloatingPointError, match="every target is ignore_index"):
        model.loss(rng.integers(0, 64, (B, T)), np.full((B, T), -100))


def test_targets_of_the_wrong_shape_are_a_value_error(rng):
    model = MODELS["llama-tied"]().train()
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 10\)"):
        model.loss(rng.integers(0, 64, (B, T)), np.zeros((B, T + 1), np.int64))
    assert isinstance(model.head, ChunkedCrossEntropy)


def _adapter_step(model, idx, targets, dloss):
    """(loss, the adapter's gradients, the head products run) for one loss + backward."""
    calls = []
    forward = model.lm_head.forward
    model.lm_head.forward = lambda x: calls.append(len(x)) or forward(x)
    try:
        model.zero_grad()
        loss = model.loss(idx, targets)
        model.backward(dloss)
    finally:
        del model.lm_head.forward
    return loss, model.trainable.grad.copy(), len(calls)


@pytest.mark.parametrize("name", ["llama-tied", "gemma3-softcap"])
def test_a_frozen_head_runs_each_block_once_with_the_recomputing_gradients(rng, name, monkeypatch):
    """Under an adapter the head takes no gradient: the forward takes each block through the backward at once
    (one head product per block, not two) and the adapter's gradients are the recomputing path's."""
    model = MODELS[name]().add_adapter(rank=2, alpha=4).train()
    model.trainable.data[...] = rng.normal(0.0, 0.1, model.trainable.size)  # (B nonzero: every gradient flows)
    model.head.ROWS = 4
    V = model.description.vocab_size
    idx, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    targets[0, 2:8] = -100  # (a block with no target: no product at all)
    loss, grads, products = _adapter_step(model, idx, targets, 0.5)
    monkeypatch.setattr("pytransformer.models.base.takes_no_gradient", lambda layer: False)
    again_loss, recomputed, again = _adapter_step(model, idx, targets, 0.5)
    blocks = math.ceil(B * T / 4) - 1
    assert (products, again) == (blocks, 2 * blocks)
    assert loss == again_loss
    # the same products in the same order; dloss = 0.5 scales dx after the blocks (exact for a power of two)
    # instead of inside them: a few roundings of each sum at most
    assert np.abs(grads - recomputed).max() <= 8 * EPS * np.abs(recomputed).max()
    assert np.abs(grads).max() > 0


def test_a_trainable_head_keeps_its_gradient_for_backward(rng):
    """Without an adapter the head's weight gradient accumulates in backward(), for the dloss it is given: a loss
    alone leaves every gradient at zero."""
    model = MODELS["llama-tied"]().train()
    model.zero_grad()
    model.loss(rng.integers(0, 64, (B, T)), rng.integers(0, 64, (B, T)))
    assert not model.params.grad.any()
