"""What every command shares: the one-line usage error, argparse with one-line errors and defaults in --help, the
number types, the options every command takes (--threads), bounded reads of the user's files, loading a model by
any name, and the memory check before a large allocation."""

from __future__ import annotations

import argparse
import os
import stat
import sys


class UsageError(Exception):
    """A mistake in what the user asked for: one line on stderr, exit status 1, no traceback."""


MAX_TEXT_BYTES = 1 << 30  # a text file the commands read whole (training data, a perplexity text, lines to embed)


def read_text(path, what="the file"):
    """The UTF-8 text of a user's file, or UsageError saying why it cannot be one: missing, a folder, not a regular
    file (a FIFO would block, /dev/zero never ends), over MAX_TEXT_BYTES, empty, binary or not UTF-8. The size is
    checked before anything is read."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path} is a folder; {what} must be a text file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path} is not a regular file (a device, pipe or socket); {what} must be a text file")
    if info.st_size > MAX_TEXT_BYTES:
        raise UsageError(f"{path} is {info.st_size / 2**30:.1f} GiB: over the {MAX_TEXT_BYTES >> 30} GiB a text "
                         f"file may hold here (it is read whole into memory); give a smaller file")
    with open(path, "rb") as f:
        raw = f.read(MAX_TEXT_BYTES + 1)
    if len(raw) > MAX_TEXT_BYTES:
        raise UsageError(f"{path} grew past {MAX_TEXT_BYTES >> 30} GiB while being read; give a smaller file")
    if not raw.strip():
        raise UsageError(f"{path} is empty")
    if b"\0" in raw[:1 << 20]:
        raise UsageError(f"{path} looks like a binary file (it has NUL bytes); {what} must be UTF-8 text")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(10, len(text) // 100):
        raise UsageError(f"{path} is not UTF-8 text ({bad:,} undecodable bytes); convert it to UTF-8 first")
    return text


def available_memory():
    """Bytes this process may still allocate: MemAvailable (Linux), else the physical memory; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need, what, advice):
    """UsageError when `need` bytes exceed what this machine has available, before anything is allocated."""
    have = available_memory()
    if have is not None and need > have:
        raise UsageError(f"{what} needs about {need / 2**30:,.1f} GiB of memory and {have / 2**30:,.1f} GiB is "
                         f"available; {advice}")


def run_settings(args, ckpt, defaults, kept, key, command):
    """A training run's settings and the steps it has done: the command line over the defaults (0 done), or with
    --resume the checkpoint's (its metadata's extra[key]); options given again must agree with them (those in kept),
    except --steps."""
    import json

    from ..io.safetensors import read_metadata

    given = {k: getattr(args, k) for k in defaults if getattr(args, k) is not None}
    if not args.resume:
        return {**defaults, **given}, 0
    if not os.path.exists(ckpt):
        raise UsageError(f"--resume: there is no checkpoint at {ckpt}; start the run without --resume")
    meta = read_metadata(ckpt)
    saved = (json.loads(meta.get("extra", "null")) or {}).get(key)
    if not saved:
        raise UsageError(f"--resume: {ckpt} was not written by `pytransformer {command}`; it carries no run settings")
    settings = {**defaults, **saved}  # (a run begun before a setting existed has its default)
    for name in kept:
        if name in given and given[name] != settings[name]:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {given[name]} differs from the run's {settings[name]}; leave it out to resume, "
                             f"or start a new run (--force, or another --out)")
    if "steps" in given:
        settings["steps"] = given["steps"]
    return settings, int(meta.get("step", 0))


def load_model(name, need_tokenizer=True, activations=None, adapter=None, kv_cache=None):
    """pytransformer.from_pretrained(name) for a command: a path, a packaged name or a cached Hugging Face repo id;
    UsageError when it is not a language model that generates text, or has no tokenizer (need_tokenizer).
    activations: the GGUF products' activation dtype (--activations; None: the library's default); adapter: a LoRA
    adapter's folder (--adapter); kv_cache: its KV caches' dtype (--kv-cache; None: model.cache_dtype's default)."""
    from .. import from_pretrained

    model = from_pretrained(name, activation_dtype=activations, adapter=adapter)
    if not hasattr(model, "stream"):
        raise UsageError(f"{name}: a {type(model).__name__}, not a language model that generates text")
    if kv_cache is not None:
        if not hasattr(model, "set_kv_cache_dtype"):
            raise UsageError(f"{name}: a {type(model).__name__} keeps a float32 KV cache (--kv-cache is for "
                             "decoder-only language models)")
        model.set_kv_cache_dtype(kv_cache)
    if need_tokenizer and getattr(model, "tokenizer", None) is None:
        why = getattr(model, "tokenizer_error", "the folder has no tokenizer pytransformer reads")
        raise UsageError(f"{name}: no tokenizer ({why})")
    return model


def number(kind, lo=None, lo_open=False, hi=None, hi_open=False):
    """An argparse type: kind(text) within [lo, hi] (open ends when asked), or a one-line error saying so."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value != value or (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            low = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            high = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (low, high) if x)}, got {text}")
        return value
    return parse


POSITIVE, COUNT = number(int, 1), number(int, 0)
TEMPERATURE = number(float, 0.0)
TOP_P = number(float, 0.0, lo_open=True, hi=1.0)


class ShowDefaults(argparse.HelpFormatter):
    """--help says every option's default (once: options whose default depends on --resume say it themselves)."""

    def _get_help_string(self, action):
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or quiet or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


class CommandList(ShowDefaults):
    """The top-level --help: each command and what it does on one line (argparse sizes the help column without the
    extra indent of the command names, so a name as long as `perplexity` would push its help to the next line)."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(len(name) for name in action.choices) + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`pytransformer train: error: argument --batch: must be >= 1, got 0`) and the
    defaults shown in --help."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", ShowDefaults)
        super().__init__(*a, **kw)

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_adapter(p):
    """--adapter: a LoRA adapter's folder (peft's files, or `pytransformer finetune --out`)."""
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter for the model: a folder with adapter_config.json "
                   "and adapter_model.safetensors (peft's, or `pytransformer finetune`'s --out)")


def add_activations(p):
    """--activations: what a GGUF model's quantised products round their input to."""
    p.add_argument("--activations", choices=("int8", "float32"),
                   help="int8: activations quantised per block and integer dot products; float32: the exact "
                        "path (default: the library's, nn.weights.default_activations)")


def add_kv_cache(p):
    """--kv-cache: the element type of a language model's KV caches while it generates."""
    p.add_argument("--kv-cache", dest="kv_cache", choices=("float16", "float32"),
                   help="the KV cache's values: float16 (half the memory and the bytes each token reads of it) or "
                        "float32 (default: float16 with int8 activations, float32 with float32 ones)")


def every_command():
    """The options every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=POSITIVE, metavar="N",
                   help="threads the kernels use (default: OMP_NUM_THREADS, else every core)")
    return p
