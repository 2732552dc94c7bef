"""Chat templates: the conversation rendered as the model was trained to see it.

A GGUF file (or tokenizer_config.json) carries the template as Jinja, and a file is untrusted: its template is
rendered in jinja2's ImmutableSandboxedEnvironment (trim_blocks, lstrip_blocks, loop controls, raise_exception,
strftime_now and a JSON tojson, as transformers renders it) with limits on what it may cost:

- wall time (LIMITS.seconds): a watchdog raises in the rendering thread, which stops any Python-level loop;
- size (LIMITS.chars): every string or list a template makes by *, +, ~ or %, every integer argument of a call or
  filter (center(10**9)), every width in a format string and the output itself stay under it, checked before the
  thing is built; ** may not make an integer of more than LIMITS.int_bits bits.

Any failure (a syntax error, raise_exception, a limit, or OverflowError, RecursionError, ZeroDivisionError,
TypeError... from the template's own code) is one ValueError naming the template's source. Without a template the
conversation is written in the turns the vocabulary's special tokens name: Gemma's (<start_of_turn> and
<end_of_turn>: a GGUF file of Gemma 3 may carry no template, and its model answers ChatML with more ChatML), else
ChatML (<|im_start|>role\\ncontent<|im_end|>\\n ..., then <|im_start|>assistant\\n); a template without jinja2
installed is an ImportError saying how to install it, never another prompt format.
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Limits:
    """What rendering one chat template may cost."""
    seconds: float = 2.0
    chars: int = 1 << 24       # 16M characters: output, any string or list built on the way, any size argument
    int_bits: int = 1 << 16    # the largest integer ** may make


LIMITS = Limits()
_WIDTH = re.compile(r"\d{8,}")  # a run of digits in a format string: a width or precision of 10**7 or more


def chatml(messages, add_generation_prompt=True, bos_token="") -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def gemma_turns(messages, add_generation_prompt=True, bos_token="") -> str:
    """Gemma 3's chat template (its tokenizer_config.json's), written out: BOS, a system message's text and a blank
    line opening the first turn, the assistant's turns as "model", each turn's text stripped."""
    system = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    text = bos_token + "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n"
                               f"{system if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n"
                               for i, m in enumerate(turns))
    return text + ("<start_of_turn>model\n" if add_generation_prompt else "")


def untemplated(has_token):
    """The turns a vocabulary without a chat template is written in (has_token: str -> bool): Gemma's where it has
    Gemma's turn tokens, else ChatML."""
    return gemma_turns if has_token("<start_of_turn>") and has_token("<end_of_turn>") else chatml


def check_messages(messages) -> list:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be a dict with string 'role' and 'content', got {m!r}")
    return list(messages)


def render_chat(template, messages, add_generation_prompt=True, source="the chat template", limits=LIMITS,
                untemplated=chatml, **extra) -> str:
    """The conversation through `template` (Jinja text; None: untemplated, chatml or gemma_turns, with
    extra's bos_token). source names where the template came from (a file and key) in errors."""
    messages = check_messages(messages)
    if not template:
        return untemplated(messages, add_generation_prompt, extra.get("bos_token") or "")
    if not isinstance(template, str):
        raise ValueError(f"{source}: a chat template must be a string, got {type(template).__name__}")
    try:
        env = _environment(limits)
    except ImportError:
        raise ImportError(f"{source}: rendering a Jinja chat template needs jinja2: pip install jinja2") from None

    def render():
        out, size = [], 0
        for chunk in env.from_string(template).generate(messages=messages,
                                                        add_generation_prompt=add_generation_prompt, **extra):
            size += len(chunk)
            if size > limits.chars:
                raise _LimitError(f"the output passed {limits.chars:,} characters")
            out.append(chunk)
        return "".join(out)

    try:
        return _with_deadline(render, limits.seconds)
    except _Timeout:
        raise ValueError(f"{source}: the chat template ran past {limits.seconds} s") from None
    except _LimitError as e:
        raise ValueError(f"{source}: the chat template passed a limit: {e}") from None
    except Exception as e:  # the template's own failure, whatever its kind: one line naming the source
        raise ValueError(f"{source}: the chat template failed: {type(e).__name__}: {e}") from None


# --- the limited sandbox ------------------------------------------------------------------------------------------

class _LimitError(Exception):
    pass


class _Timeout(BaseException):
    """Raised asynchronously in the rendering thread; a BaseException so that no `except Exception` in a template's
    helpers swallows it."""


def _with_deadline(fn, seconds):
    """fn() in this thread, interrupted by _Timeout after `seconds` (delivered at the next Python instruction)."""
    tid = ctypes.c_ulong(threading.get_ident())
    lock, state = threading.Lock(), {"done": False}

    def fire():
        with lock:
            if not state["done"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, None)  # one that fired just as fn returned: cleared


def _check_size(n, limits, what):
    if n > limits.chars:
        raise _LimitError(f"{what} of {n:,} passes the limit of {limits.chars:,}")


def _check_format(fmt, limits):
    if isinstance(fmt, str) and _WIDTH.search(fmt):
        raise _LimitError(f"a width or precision in the format string passes the limit of {limits.chars:,}")


def _check_args(args, kwargs, limits):
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > limits.chars:
            raise _LimitError(f"an argument of {v} passes the limit of {limits.chars:,}")


def _sized(v):
    return isinstance(v, (str, list, tuple))


def _environment(limits):
    import jinja2.ext
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedCodeGenerator(CodeGenerator):
        """`a ~ b` through environment.concat, so that its size is checked before the string is built."""

        def visit_Concat(self, node, frame):
            self.write("environment.concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = LimitedCodeGenerator
        intercepted_binops = frozenset(["*", "+", "%", "**"])

        def concat(self, parts):
            parts = [str(p) for p in parts]
            _check_size(sum(map(len, parts)), limits, "a ~ string")
            return "".join(parts)

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _sized(seq) and isinstance(n, int):
                        _check_size(len(seq) * max(n, 0), limits, "a repeated string or list")
            elif operator == "+" and _sized(left) and _sized(right):
                _check_size(len(left) + len(right), limits, "a joined string or list")
            elif operator == "%":
                _check_format(left, limits)
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * abs(left).bit_length() > limits.int_bits:
                    raise _LimitError(f"{left} ** {right} passes {limits.int_bits:,} bits")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            _check_args(args, kwargs, limits)
            method = getattr(__obj, "__wrapped__", __obj)  # the sandbox hands str.format out wrapped
            if isinstance(getattr(method, "__self__", None), str) and method.__name__ in ("format", "format_map"):
                _check_format(method.__self__, limits)
            return super().call(__context, __obj, *args, **kwargs)

    def limited_filter(name, f):
        def checked(*args, **kwargs):
            _check_args(args[1:], kwargs, limits)
            if name == "format" and args:
                _check_format(args[0], limits)
            return f(*args, **kwargs)
        if hasattr(f, "jinja_pass_arg"):  # the pass_context / pass_environment marker travels with the filter
            checked.jinja_pass_arg = f.jinja_pass_arg
        return checked

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: limited_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env

