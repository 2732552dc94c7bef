"""Training: exact resume, divergence handling, checkpoints written atomically, the CLI main job."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pytransformer.checkpoint import load_checkpoint, save_checkpoint
from pytransformer.models import GPT, GPTConfig
from pytransformer.optim import AdamW, cosine_lr
from pytransformer.tokenizers import CharTokenizer
from pytransformer.train import TrainConfig, TrainingDiverged, train_lm

CFG = GPTConfig(vocab_size=20, max_positions=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)


def data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 3, n)) % 20).astype(np.int64)  # learnable structure


def quiet(msg):
    pass


def test_resume_continues_with_exactly_the_same_losses(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup=2, eval_every=0, log_every=1,
                      checkpoint=str(tmp_path / "full.st"), checkpoint_every=5, seed=3)
    full = train_lm(GPT(CFG, seed=1), data(), None, cfg, log=quiet)

    def interrupt_at_step_7(msg):  # killed during step 7, after the checkpoint of step 5
        if msg.startswith("step     7/"):
            raise KeyboardInterrupt

    cfg.checkpoint = str(tmp_path / "cut.st")
    with pytest.raises(KeyboardInterrupt):
        train_lm(GPT(CFG, seed=1), data(), None, cfg, log=interrupt_at_step_7)
    resumed = train_lm(GPT(CFG, seed=99), data(), None, cfg, resume=True, log=quiet)
    assert resumed.step == list(range(1, 13))  # the history spans the whole run (steps 1-5 from the checkpoint)
    assert resumed.loss[5:] == full.loss[5:]  # bit-identical, dropout included
    assert resumed.loss == full.loss


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    ckpt = tmp_path / "c.st"
    model = GPT(CFG, seed=1)
    cfg = TrainConfig(steps=4, batch_size=2, eval_every=0, checkpoint=str(ckpt), checkpoint_every=1, log_every=1)
    train_lm(model, data(), None, cfg, log=quiet)
    before = ckpt.read_bytes()
    model.wte.weight.data[3, 0] = np.nan
    # a new run that diverges before its first checkpoint names none (the file on disk is another run's) and
    # leaves it alone
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 1: loss is nan.*wrote no checkpoint yet"):
        train_lm(model, data(), None, TrainConfig(**{**cfg.__dict__, "steps": 8}), log=quiet)
    assert ckpt.read_bytes() == before


def test_divergence_names_the_checkpoint_this_run_last_wrote(tmp_path):
    ckpt = tmp_path / "c.st"
    model = GPT(CFG, seed=1)

    def poison_after_step_3(msg):
        if msg.startswith("step     3/"):
            model.wte.weight.data[:, 0] = np.nan

    cfg = TrainConfig(steps=8, batch_size=2, eval_every=0, checkpoint=str(ckpt), checkpoint_every=2, log_every=1)
    with pytest.raises(TrainingDiverged, match=rf"step 4: loss is nan.*last good checkpoint is {ckpt}"):
        train_lm(model, data(), None, cfg, log=poison_after_step_3)
    from pytransformer.io.safetensors import read_metadata
    assert read_metadata(ckpt)["step"] == "2"  # written before the poison; never after a bad step


def test_checkpoint_round_trip_restores_model_optimizer_and_tokenizer(tmp_path):
    model = GPT(CFG, seed=2)
    opt = AdamW(model.params, lr=1e-3)
    model.loss(data()[:32].reshape(2, 16), data()[1:33].reshape(2, 16))
    model.backward()
    opt.step()
    tok = CharTokenizer("abcdefghijklmnopqrst")
    save_checkpoint(tmp_path / "x.st", model, opt, 7, {"data": np.random.default_rng(5)}, tok)
    loaded = load_checkpoint(tmp_path / "x.st", lambda m: AdamW(m.params, lr=1e-3))
    np.testing.assert_array_equal(loaded["model"].params.data, model.params.data)
    np.testing.assert_array_equal(loaded["optimizer"].m, opt.m)
    assert loaded["step"] == 7 and loaded["optimizer"].step_count == 1
    assert CharTokenizer.from_json(loaded["tokenizer"]).chars == tok.chars
    assert loaded["rngs"]["data"].integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = GPT(CFG, seed=2)
    path = tmp_path / "x.st"
    save_checkpoint(path, model)
    before = path.read_bytes()
    import pytransformer.io.safetensors as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, GPT(CFG, seed=3))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.st"]  # no temporary file left behind


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 1.0, 10, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1 - 1e-9


def test_gradient_accumulation_equals_one_large_batch():
    cfg = GPTConfig(vocab_size=20, max_positions=8, n_layer=1, n_head=2, n_embd=16)
    x = data()[:64].reshape(8, 8)
    y = data()[1:65].reshape(8, 8)
    a, b = GPT(cfg, seed=4), GPT(cfg, seed=4)
    a.zero_grad()
    a.loss(x, y)
    a.backward()
    b.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        b.loss(x[half], y[half])
        b.backward(0.5)
    np.testing.assert_allclose(a.params.grad, b.params.grad, rtol=1e-4, atol=1e-6)


def test_cli_train_then_sample(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 200)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pytransformer", "train", "--data", str(corpus), "--out", str(out),
                        "--steps", "30", "--layers", "1", "--embd", "32", "--heads", "2", "--context", "32",
                        "--eval-every", "15", "--sample-tokens", "20"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "final validation loss" in r.stdout and "sample:" in r.stdout
    assert os.path.exists(out / "ckpt.safetensors")
    r = subprocess.run([sys.executable, "-m", "pytransformer", "sample", str(out / "ckpt.safetensors"),
                        "--prompt", "to be", "--tokens", "10"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "to be" in r.stdout


@pytest.mark.skipif(not __import__("pytransformer").cpu_info()["amx_bf16"], reason="no usable AMX-BF16 here")
def test_bfloat16_training_tracks_float32_and_restores_the_setting():
    import pytransformer

    losses = {}
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=4, eval_every=0, log_every=100, seed=2,
                          precision=precision)
        losses[precision] = train_lm(GPT(CFG, seed=1), data(), None, cfg, log=quiet).loss
        assert pytransformer.get_matmul_precision() == "float32"
    f32, bf16 = np.array(losses["float32"]), np.array(losses["bfloat16"])
    assert f32[-5:].mean() < 0.8 * f32[:5].mean()  # it learns
    assert abs(bf16[-5:].mean() - f32[-5:].mean()) < 0.03 * f32[-5:].mean(), (f32[-5:], bf16[-5:])
    assert not np.array_equal(f32, bf16)  # the bf16 path really ran


def test_context_trains_on_shorter_windows_than_the_model_holds(monkeypatch):
    seen = []
    model = GPT(CFG, seed=1)
    loss = model.loss
    monkeypatch.setattr(model, "loss", lambda x, y: seen.append(x.shape) or loss(x, y))
    cfg = TrainConfig(steps=2, batch_size=3, warmup=1, eval_every=0, context=8)
    train_lm(model, data(), None, cfg, log=quiet)
    assert seen == [(3, 8), (3, 8)]
    with pytest.raises(ValueError, match="context 17 exceeds the model's 16 positions"):
        train_lm(GPT(CFG, seed=1), data(), None, TrainConfig(steps=1, eval_every=0, context=17), log=quiet)


def test_a_checkpoint_keeps_a_gpt2_bpe_tokenizer_whole(tmp_path):
    from pytransformer.checkpoint import load_trained
    from pytransformer.tokenizers import GPT2Tokenizer

    byte = {chr(c): i for i, c in enumerate(range(ord("a"), ord("z") + 1))}
    tok = GPT2Tokenizer({**byte, "th": 26, "the": 27, "Ġ": 28, "Ġthe": 29}, [("t", "h"), ("th", "e"), ("Ġ", "the")])
    cfg = GPTConfig(vocab_size=30, max_positions=8, n_layer=1, n_head=2, n_embd=8)
    save_checkpoint(tmp_path / "c.st", GPT(cfg, seed=0), tokenizer=tok)
    back = load_trained(tmp_path / "c.st").tokenizer
    assert type(back) is GPT2Tokenizer and back.encoder == tok.encoder and back.ranks == tok.ranks
    assert back.encode("the theme") == tok.encode("the theme") == [27, 29, 12, 4]
