"""`pytransformer finetune` on a tiny Llama made here (a byte-level BPE trained here, ChatML template): chat JSONL
trains the adapter on the assistant's tokens only, the loss falls, --resume continues exactly, `generate --adapter`
uses what it wrote; every bad option or file is a one-line error."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_cli import cli, one_line_error

import pytransformer as pt
from pytransformer.cli.finetune import IGNORE, conversation
from pytransformer.io import load_file

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "olive", "coral"]


def chats(n):
    """Made-up facts: the code of a colour is a fixed number."""
    return [{"messages": [{"role": "user", "content": f"code of {c}?"},
                          {"role": "assistant", "content": f"{c} is {100 + 7 * (i % len(COLOURS))}"}]}
            for i, c in enumerate(COLOURS[i % len(COLOURS)] for i in range(n))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with a tokenizer.json, tokenizer_config.json (ChatML) and random weights."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([json.dumps(c) for c in chats(64)] * 4, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, tie_word_embeddings=True, eos_token_id=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in chats(40)) + "\n")
    return path


def test_the_loss_is_on_the_assistant_tokens_only(model_dir):
    tok = pt.from_pretrained(model_dir).tokenizer
    messages = chats(1)[0]["messages"]
    ids, labels = conversation(tok, messages, "chat")
    assert tok.decode(ids.tolist(), skip_special_tokens=False) == tok.apply_chat_template(messages, False)
    learned = labels[labels != IGNORE]
    assert tok.decode(learned.tolist(), skip_special_tokens=False) == "red is 100<|im_end|>\n"
    np.testing.assert_array_equal(ids[labels != IGNORE], learned)


def _losses(log):
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


ARGS = ["--batch", "4", "--context", "48", "--lora-rank", "4", "--eval-every", "5", "--lr", "1e-2"]


def test_finetune_trains_an_adapter_that_generate_uses(model_dir, data, tmp_path):
    out = tmp_path / "adapter"
    r = cli("finetune", model_dir, "--data", data, "--out", out, "--steps", "15", "--log", tmp_path / "log.jsonl",
            *ARGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "ckpt.safetensors"} <= {p.name for p in out.iterdir()}
    losses = _losses(tmp_path / "log.jsonl")
    assert len(losses) == 15 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses  # (it learns)
    assert "val loss" in r.stdout + r.stderr and "tok/s" in r.stdout + r.stderr
    model = pt.from_pretrained(model_dir, adapter=out)
    tok = model.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "code of red?"}]))
    want = tok.decode(model.generate(np.array([prompt]), 8, temperature=0.0, stop=tok.stop_ids)[0, len(prompt):])
    g = cli("generate", model_dir, "--adapter", out, "--chat", "-p", "code of red?", "-n", "8", "--temperature", "0",
            cwd=tmp_path)
    assert g.returncode == 0, g.stderr
    assert g.stdout.strip() == want.strip()


def test_ctrl_c_saves_and_resume_continues_exactly(model_dir, data, tmp_path):
    """Interrupted (SIGINT) whenever it is, then resumed: the adapter equals an uninterrupted run's."""
    args = ["finetune", model_dir, "--data", data, "--steps", "30", *ARGS]
    whole, parts, log = tmp_path / "whole", tmp_path / "parts", tmp_path / "log.jsonl"
    assert cli(*args, "--out", whole, cwd=tmp_path).returncode == 0
    run = subprocess.Popen([sys.executable, "-m", "pytransformer", *map(str, args), "--out", parts, "--log", log],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "--resume" in err, err
    stopped = len(log.read_text().splitlines())
    assert 2 <= stopped < 30
    r = cli("finetune", model_dir, "--out", parts, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = (load_file(p / "adapter_model.safetensors") for p in (whole, parts))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.fixture
def bad_lines(tmp_path):
    def write(*lines):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path
    return write


@pytest.mark.parametrize("case", ["no data", "missing file", "not json", "not a chat", "no reply", "unknown target",
                                  "rank 0", "long context", "resume nothing", "bad adapter"])
def test_every_bad_option_or_file_is_one_line(model_dir, data, tmp_path, bad_lines, case):
    good = json.dumps(chats(1)[0])
    run = {
        "no data": (lambda: ["finetune", model_dir], "--data FILE is required"),
        "missing file": (lambda: ["finetune", model_dir, "--data", tmp_path / "nope.jsonl"],
                         "nope.jsonl: no such file"),
        "not json": (lambda: ["finetune", model_dir, "--data", bad_lines(good, "{oops")], "bad.jsonl line 2: not JSON"),
        "not a chat": (lambda: ["finetune", model_dir, "--data", bad_lines(good, '{"text": "hi"}')],
                       "bad.jsonl line 2: expected {\"messages\""),
        "no reply": (lambda: ["finetune", model_dir, "--data", bad_lines(good, json.dumps(
            {"messages": [{"role": "user", "content": "hi"}]}))], "bad.jsonl line 2: no assistant message"),
        "unknown target": (lambda: ["finetune", model_dir, "--data", data, "--targets", "q_proj,qkv", *ARGS[:4]],
                           "unknown target 'qkv'"),
        "rank 0": (lambda: ["finetune", model_dir, "--data", data, "--lora-rank", "0"], "--lora-rank"),
        "long context": (lambda: ["finetune", model_dir, "--data", data, "--context", "4096"],
                         "--context 4096 exceeds"),
        "resume nothing": (lambda: ["finetune", model_dir, "--resume", "--out", tmp_path / "none"], "no checkpoint"),
        "bad adapter": (lambda: ["generate", model_dir, "--adapter", tmp_path / "none", "-p", "hi"],
                        "not an adapter folder"),
    }[case]
    r = cli(*run[0](), cwd=tmp_path)
    one_line_error(r, 2 if case == "rank 0" else 1, run[1])


def test_an_existing_run_is_kept_without_force(model_dir, data, tmp_path):
    out = tmp_path / "adapter"
    assert cli("finetune", model_dir, "--data", data, "--out", out, "--steps", "1", *ARGS, cwd=tmp_path).returncode == 0
    r = cli("finetune", model_dir, "--data", data, "--out", out, "--steps", "1", *ARGS, cwd=tmp_path)
    one_line_error(r, 1, "already holds a run", "--resume", "--force")
