"""The 2017 paper's training recipe: the inverse-square-root warmup schedule, label smoothing in the loss (against
torch), embeddings scaled by sqrt(d_model) and one table shared by source, target and the output layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytransformer.models import Transformer, TransformerConfig
from pytransformer.optim import inverse_sqrt_lr


def test_inverse_sqrt_schedule_is_the_papers_formula():
    d, warmup = 512, 4000
    for step in (1, 10, 3999, 4000, 4001, 100000):
        assert inverse_sqrt_lr(step, d, warmup) == pytest.approx(d ** -0.5 * min(step ** -0.5, step * warmup ** -1.5))
    peak = inverse_sqrt_lr(warmup, d, warmup)
    assert inverse_sqrt_lr(warmup - 1, d, warmup) < peak and inverse_sqrt_lr(warmup + 1, d, warmup) < peak
    assert inverse_sqrt_lr(4 * warmup, d, warmup) == pytest.approx(peak / 2)  # 1/sqrt(step) after the peak
    with pytest.raises(ValueError):
        inverse_sqrt_lr(1, 0, warmup)


def test_label_smoothed_loss_and_gradient_match_torch(rng):
    torch = pytest.importorskip("torch")
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, n_embd=32, n_head=4, n_encoder_layer=1,
                            n_decoder_layer=1, intermediate_size=64, dropout=0.0, share_embeddings=True, label_smoothing=0.1)
    model = Transformer(cfg, seed=1)
    src, tgt = rng.integers(0, 20, (2, 7)), rng.integers(0, 20, (2, 6))
    with model.evaluating():
        logits = model(src, tgt[:, :-1])
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits.reshape(-1, 20)).double(),
                                             torch.from_numpy(tgt[:, 1:].reshape(-1)), label_smoothing=0.1).item()
    loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
    assert abs(loss - want) < 1e-5 * want
    model.zero_grad()
    model.backward()
    assert np.isfinite(model.params.grad).all() and np.abs(model.params.grad).sum() > 0


def test_embeddings_are_scaled_and_shared():
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, n_embd=36, n_head=4, n_encoder_layer=1,
                            n_decoder_layer=1, intermediate_size=64, dropout=0.0, share_embeddings=True)
    model = Transformer(cfg, seed=2)
    assert model.src_emb.weight is model.tgt_emb.weight is model.out.weight  # one table, three uses
    assert model.num_parameters() == cfg.num_params()
    table = model.src_emb.weight.data
    # initialised with std d_model^-0.5, so that table * sqrt(d_model) has unit scale (section 3.4)
    assert abs(table.std() * math.sqrt(36) - 1.0) < 0.1
