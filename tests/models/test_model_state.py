"""A training step's saved state belongs to that step. Gradients after loss(); backward() are the same whatever
inference ran in between under evaluating() (any thread); a forward that keeps state in between, or a second
backward(), raises RuntimeError instead of giving wrong gradients; threads running inference on a model while
another thread trains it change nothing that the training computes; a training step belongs to the thread that
started it, and another thread's forward or backward while it is open raises before touching anything."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from pytransformer.models import BERT, GPT, BertConfig, GPTConfig, Transformer, TransformerConfig, ViT, ViTConfig

CFG = GPTConfig(vocab_size=37, max_positions=24, n_layer=2, n_head=3, n_embd=24, dropout=0.1)


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


def serial_steps(batches, seed=5):
    """Losses and the last gradient of training a fresh GPT alone on these batches, one step each."""
    model = GPT(CFG, seed=seed)
    losses = []
    for x, y in batches:
        model.zero_grad()
        losses.append(model.loss(x, y))
        model.backward()
    return losses, model.params.grad.copy()


def test_a_plain_forward_from_another_thread_during_a_step_raises_and_changes_nothing(rng):
    batches = [batch(rng) for _ in range(4)]
    want_losses, want_grad = serial_steps(batches)
    model = GPT(CFG, seed=5)
    other = rng.integers(0, 37, (2, 11))
    step_open, refused = threading.Barrier(2, timeout=30), []

    def intruder():
        for _ in batches:
            step_open.wait()  # the main thread's loss() is done, its backward() not yet
            try:
                model(other)  # not under evaluating(): a forward that keeps state (and draws dropout)
            except RuntimeError as e:
                refused.append(str(e))
            step_open.wait()

    thread = threading.Thread(target=intruder, name="intruder")
    thread.start()
    losses = []
    for x, y in batches:
        model.zero_grad()
        losses.append(model.loss(x, y))
        step_open.wait()
        step_open.wait()
        model.backward()
    thread.join()
    assert len(refused) == len(batches)
    assert all("thread 'intruder'" in e and "thread 'MainThread' has a training step open" in e for e in refused)
    assert losses == want_losses  # the dropout RNG was not touched either
    np.testing.assert_array_equal(model.params.grad, want_grad)


def test_a_forward_from_another_thread_during_backward_raises(rng):
    batches = [batch(rng)]
    _, want_grad = serial_steps(batches)
    model = GPT(CFG, seed=5)
    midway, refused = threading.Barrier(2, timeout=30), []

    def pause(i):
        if i == CFG.n_layer - 1:  # backward has finished the last block; the first still reads its saved state
            midway.wait()
            midway.wait()

    def intruder():
        midway.wait()
        try:
            model.loss(*batch(np.random.default_rng(0)))
        except RuntimeError as e:
            refused.append(e)
        midway.wait()

    model.on_block_done = pause
    thread = threading.Thread(target=intruder)
    thread.start()
    model.zero_grad()
    model.loss(*batches[0])
    model.backward()
    thread.join()
    assert len(refused) == 1 and "has a training step open" in str(refused[0])
    np.testing.assert_array_equal(model.params.grad, want_grad)


def test_two_threads_training_one_model_raise_and_a_step_ends_with_its_backward(rng):
    (x, y), (x2, y2) = batch(rng), batch(rng)
    want = clean_grads(x, y)[1]
    model = GPT(CFG, seed=3)
    opened, tried, errors = threading.Event(), threading.Event(), []

    def second_trainer():
        opened.wait(30)
        for call in (lambda: model.loss(x2, y2), model.backward):
            try:
                call()
            except RuntimeError as e:
                errors.append(e)
        tried.set()

    thread = threading.Thread(target=second_trainer)
    thread.start()
    model.zero_grad()
    model.loss(x, y)
    opened.set()
    assert tried.wait(30)
    model.backward()
    thread.join()
    assert len(errors) == 2 and all("has a training step open" in str(e) for e in errors)
    np.testing.assert_array_equal(model.params.grad, want)
    # the step ended with its backward(): another thread may train the model now (the same loss, a fresh dropout
    # draw, so a different gradient)
    losses = []
    thread = threading.Thread(target=lambda: (model.zero_grad(), losses.append(model.loss(x, y)), model.backward()))
    thread.start()
    thread.join()
    assert len(losses) == 1 and np.isfinite(losses[0]) and np.abs(model.params.grad).sum() > 0


def test_a_step_left_open_by_a_finished_thread_does_not_block_training(rng):
    x, y = batch(rng)
    model = GPT(CFG, seed=3)
    before = model.dropout_rng.bit_generator.state
    thread = threading.Thread(target=lambda: model(x))  # a forward that keeps state, never followed by backward
    thread.start()
    thread.join()
    model.dropout_rng.bit_generator.state = before  # (the thread drew dropout masks)
    model.zero_grad()
    model.loss(x, y)
    model.backward()
    np.testing.assert_array_equal(model.params.grad, clean_grads(x, y)[1])


def test_a_free_running_intruder_never_makes_training_silently_wrong(rng):
    """No synchronisation: a thread calling a plain forward in a loop while the main thread trains. Whatever the
    interleaving, each training step either raises RuntimeError or computes exactly what it computes alone."""
    batches = [batch(rng) for _ in range(8)]
    want_losses, _ = serial_steps(batches)
    model = GPT(CFG, seed=5)
    other = rng.integers(0, 37, (2, 11))
    stop, counts = threading.Event(), {"refused": 0, "ran": 0}

    def intruder():
        while not stop.is_set():
            try:
                model(other)
                counts["ran"] += 1
            except RuntimeError:
                counts["refused"] += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads finely
    thread = threading.Thread(target=intruder)
    thread.start()
    losses, failure = [], None
    try:
        for x, y in batches:
            model.zero_grad()
            losses.append(model.loss(x, y))
            model.backward()
    except RuntimeError as e:
        failure = e
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert counts["refused"] + counts["ran"] > 0
    if failure is not None:  # the intruder took the model between two steps: the next step refused to start
        assert "has a training step open" in str(failure)
    assert losses == want_losses[:len(losses)]


def test_generate_is_inference_in_its_own_thread_only(rng):
    model = GPT(CFG, seed=1)
    model.generate(batch(rng)[0][:, :4], 2, temperature=0.0)
    assert model.training and all(getattr(m, "_x", None) is None for m in model.modules())  # nothing kept


@pytest.mark.parametrize("make,args", [
    (lambda: BERT(BertConfig(vocab_size=30, n_embd=16, n_layer=1, n_head=2,
                             intermediate_size=20, max_positions=12, num_labels=3, mlm=False)),
     lambda rng: (rng.integers(0, 30, (2, 7)), rng.integers(0, 3, 2))),
    (lambda: ViT(ViTConfig(image_size=8, patch_size=4, n_embd=16, n_layer=1, n_head=2,
                           intermediate_size=20, num_labels=3)),
     lambda rng: (rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, 2))),
    (lambda: Transformer(TransformerConfig(11, 13, n_embd=16, n_head=2, n_encoder_layer=1, n_decoder_layer=1,
                                           intermediate_size=20, max_positions=10)),
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
