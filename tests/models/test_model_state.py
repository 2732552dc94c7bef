"""A training step's saved state belongs to that step. Gradients after loss(); backward() are the same whatever
inference ran in between under evaluating() (any thread); a forward that keeps state in between, or a second
backward(), raises RuntimeError instead of giving wrong gradients; threads running inference on a model while
another thread trains it change nothing that the training computes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pytransformer.models import BERT, GPT, BertConfig, GPTConfig, Transformer, TransformerConfig, ViT, ViTConfig

CFG = GPTConfig(vocab_size=37, block_size=24, n_layer=2, n_head=3, n_embd=24, dropout=0.1)


def batch(rng, B=3, T=17):
    idx = rng.integers(0, 37, (B, T))
    return idx, np.roll(idx, -1, axis=1)


def clean_grads(idx, targets, seed=3):
    model = GPT(CFG, seed=seed)
    model.zero_grad()
    loss = model.loss(idx, targets)
    model.backward()
    return loss, model.params.grad.copy()


def test_inference_under_evaluating_between_loss_and_backward_changes_nothing(rng):
    idx, targets = batch(rng)
    want_loss, want = clean_grads(idx, targets)
    model = GPT(CFG, seed=3)
    model.zero_grad()
    assert model.loss(idx, targets) == want_loss
    other, _ = batch(rng, B=2, T=9)
    with model.evaluating():
        model.forward(other)
        model.generate(other[:, :3], 4, temperature=0.0)
        model.loss(other, np.roll(other, -1, 1))  # an evaluation loss
    assert model.training  # the model's own flag is untouched
    model.backward()
    np.testing.assert_array_equal(model.params.grad, want)


def test_a_forward_that_keeps_state_between_loss_and_backward_is_refused(rng):
    idx, targets = batch(rng)
    model = GPT(CFG, seed=3)
    model.loss(idx, targets)
    model.forward(batch(rng, B=2, T=9)[0])
    with pytest.raises(RuntimeError, match="another forward ran between loss"):
        model.backward()


def test_a_second_backward_is_refused_and_a_new_loss_starts_afresh(rng):
    idx, targets = batch(rng)
    want_loss, want = clean_grads(idx, targets)
    model = GPT(CFG, seed=3)
    model.zero_grad()
    model.loss(idx, targets)
    model.backward()
    with pytest.raises(RuntimeError, match="once per backward"):
        model.backward()
    with pytest.raises(RuntimeError, match="needs a loss"):
        GPT(CFG).backward()
    model.zero_grad()
    model.dropout_rng = np.random.default_rng(0)  # (fresh dropout draws do not matter below: compare shapes)
    model.loss(idx, targets)
    model.backward()
    assert np.isfinite(model.params.grad).all()


def test_gradients_of_an_eval_mode_model_still_work(rng):
    """eval() only turns dropout off (as in torch): loss() + backward() in eval mode give gradients."""
    idx, targets = batch(rng)
    model = GPT(CFG, seed=3).eval()
    model.zero_grad()
    model.loss(idx, targets)
    model.backward()
    assert np.abs(model.params.grad).sum() > 0


def test_inference_threads_do_not_disturb_a_training_thread(rng):
    idx = [batch(rng) for _ in range(6)]
    serial = GPT(CFG, seed=5)
    want = []
    for x, y in idx:
        serial.zero_grad()
        want.append(serial.loss(x, y))
        serial.backward()
    model = GPT(CFG, seed=5)
    stop = threading.Event()
    errors = []

    def infer():
        other = rng.integers(0, 37, (2, 11))
        try:
            while not stop.is_set():
                with model.evaluating():
                    model.generate(other, 3, temperature=0.0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=infer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        got = []
        for x, y in idx:
            model.zero_grad()
            got.append(model.loss(x, y))
            model.backward()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert got == want  # same losses (same dropout draws: inference never touched the RNG)
    np.testing.assert_array_equal(model.params.grad, serial.params.grad)


def test_generate_is_inference_in_its_own_thread_only(rng):
    model = GPT(CFG, seed=1)
    model.generate(batch(rng)[0][:, :4], 2, temperature=0.0)
    assert model.training and all(getattr(m, "_x", None) is None for m in model.modules())  # nothing kept


@pytest.mark.parametrize("make,args", [
    (lambda: BERT(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=20, max_position_embeddings=12, num_labels=3, mlm=False)),
     lambda rng: (rng.integers(0, 30, (2, 7)), rng.integers(0, 3, 2))),
    (lambda: ViT(ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=20, num_labels=3)),
     lambda rng: (rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, 2))),
    (lambda: Transformer(TransformerConfig(11, 13, d_model=16, n_head=2, n_encoder_layers=1, n_decoder_layers=1,
                                           d_ff=20, max_len=10)),
     lambda rng: (rng.integers(0, 11, (2, 5)), rng.integers(0, 13, (2, 4)), rng.integers(0, 13, (2, 4)))),
], ids=["bert", "vit", "transformer"])
def test_every_family_guards_its_step(rng, make, args):
    model = make()
    a = args(rng)
    model.zero_grad()
    model.loss(*a)
    with model.evaluating():
        model.loss(*args(rng))  # evaluation between: fine
    model.backward()
    g = model.params.grad.copy()
    model.zero_grad()
    model.loss(*a)
    model.loss(*args(rng))  # a second training-mode loss replaces the first one's state: its backward is the new one
    model.backward()
    with pytest.raises(RuntimeError):
        model.backward()
    assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_loss_targets_must_match_the_positions_and_be_integers(rng):
    model = GPT(CFG)
    idx, targets = batch(rng)
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 17\)"):
        model.loss(idx, targets[:, :-1])
    with pytest.raises(ValueError, match="targets must have shape"):
        model.loss(idx, targets.T.copy())
    with pytest.raises(TypeError, match="targets must be an integer"):
        model.loss(idx, targets.astype(np.float32))
    with pytest.raises(TypeError, match="labels must be an integer"):
        model.loss(idx, labels=idx.astype(np.float64))
