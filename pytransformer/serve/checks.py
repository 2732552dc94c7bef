"""A request body, checked: HTTP bodies are hostile, so every field is checked before any work starts and any
mistake is a RequestError (a 4xx with an OpenAI-style error object naming the field), never an exception that
becomes a 500. No Starlette here: bytes in, checked values out."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np


class RequestError(Exception):
    """A client's mistake: an HTTP status and an OpenAI-style error object."""

    def __init__(self, message, param=None, status=400, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self):
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


MAX_DEPTH = 32  # JSON nesting a body may have (an OpenAI request needs 4 or so)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # (a JSON string: 20 ms a MB, 160 with escapes)


def _depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped), without parsing it: Python's
    parser recurses once per level, so a body nested 50,000 deep must be refused before it is parsed."""
    a = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    steps = np.isin(a, (ord("["), ord("{"))).astype(np.int32) - np.isin(a, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _surrogate_field(body: dict):
    """The first field whose value holds a lone surrogate (a \\ud800 escape: no UTF-8 for it), or None."""
    def bad(x):
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
            return False
        if isinstance(x, list):
            return any(bad(v) for v in x)
        if isinstance(x, dict):
            return any(bad(k) or bad(v) for k, v in x.items())
        return False
    return next((k for k, v in body.items() if bad(k) or bad(v)), None)


def parse(raw: bytes) -> dict:
    """The body's JSON object, its strings valid Unicode and its common fields of the right type."""
    if _depth(raw) > MAX_DEPTH:
        raise RequestError(f"the body nests arrays and objects more than {MAX_DEPTH} deep")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    field = _surrogate_field(body)
    if field is not None:
        raise RequestError(f"'{field}' holds a lone surrogate (\\ud800-\\udfff): not a Unicode string", field)
    _check_types(body)
    return body


# fields a client may send with the type each must have (values are checked where they are used)
_FIELD_TYPES = {"model": str, "stream": bool, "user": str, "echo": bool, "stream_options": dict,
                "presence_penalty": (int, float), "frequency_penalty": (int, float), "logit_bias": dict}


def _check_types(body):
    for name, kind in _FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        wrong = isinstance(value, bool) and kind == (int, float) or not isinstance(value, kind)
        if wrong:
            raise RequestError(f"'{name}' must be {getattr(kind, '__name__', 'a number')}, got {value!r:.80}", name)
    for name in ("presence_penalty", "frequency_penalty"):  # accepted at 0 (the default) only: not implemented
        if body.get(name) not in (None, 0, 0.0):
            raise RequestError(f"'{name}' is not supported (use 0)", name)
    if body.get("logit_bias"):
        raise RequestError("'logit_bias' is not supported", "logit_bias")
    if body.get("echo"):
        raise RequestError("'echo' is not supported", "echo")


def number(body, name, lo, hi, default, kind=float, above_lo=False):
    """body[name] (default when absent or null): a finite number (an integer when kind is int) in [lo, hi]
    ((lo, hi] with above_lo)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, float) and (
            not math.isfinite(value) or kind is int and not value.is_integer()):
        raise RequestError(f"'{name}' must be {'an integer' if kind is int else 'a finite number'}, got "
                           f"{value!r:.40}", name)
    if not (lo < value if above_lo else lo <= value) or not value <= hi:
        raise RequestError(f"'{name}' must be in {'(' if above_lo else '['}{lo}, {hi}], got {value!r:.40}", name)
    return kind(value)


MAX_STOPS, MAX_STOP_CHARS = 4, 128


def stops(body) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop):
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them, each at "
                           f"most {MAX_STOP_CHARS} characters", "stop")
    return stop


def chat_messages(body, max_chars) -> list[dict]:
    """The conversation: [{role, content}] strings, max_chars characters in all at most."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("'messages' must be a non-empty list of {role, content} strings", "messages")
    chars = sum(len(m["role"]) + len(m["content"]) for m in messages)
    if chars > max_chars:
        raise RequestError(f"'messages' has {chars} characters; this server takes {max_chars} at most", "messages")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def prompt_text(body, max_chars) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", "prompt")
    if len(prompt) > max_chars:
        raise RequestError(f"'prompt' has {len(prompt)} characters; this server takes {max_chars} at most", "prompt")
    return prompt


def embedding_inputs(body, max_chars, max_inputs) -> list[str]:
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or len(texts) > max_inputs or not all(
            isinstance(t, str) for t in texts):
        raise RequestError(f"'input' must be a string or a non-empty list of at most {max_inputs} strings", "input")
    if sum(map(len, texts)) > max_chars:
        raise RequestError(f"'input' has more than {max_chars} characters", "input")
    return texts


@dataclass
class Sampling:
    """A completion request's generation settings."""

    max_tokens: int | None  # (None: as many as the prompt leaves room for, 256 at most)
    n: int
    temperature: float
    top_p: float
    seed: int | None
    logprobs: int | None  # top log-probabilities per token (None: none asked)
    stop: list[str]


def sampling(body, context) -> Sampling:
    """The settings of a request to a server of this context (in tokens), checked before its prompt is tokenised:
    max_tokens is checked again against the room the prompt leaves (max_tokens_for)."""
    logprobs = body.get("logprobs")
    if isinstance(logprobs, bool):  # chat: logprobs true + top_logprobs k
        logprobs = number(body, "top_logprobs", 0, 20, 0, int) if logprobs else None
    elif logprobs is not None:
        logprobs = number(body, "logprobs", 0, 20, 0, int)
    return Sampling(max_tokens=number(body, "max_tokens", 1, context - 1, None, int),
                    n=number(body, "n", 1, 8, 1, int),
                    temperature=number(body, "temperature", 0.0, 2.0, 1.0),
                    top_p=number(body, "top_p", 0.0, 1.0, 1.0, above_lo=True),
                    seed=number(body, "seed", 0, 2**63 - 9, None, int),
                    logprobs=logprobs, stop=stops(body))


def max_tokens_for(s: Sampling, prompt_tokens, context, prompt_field) -> int:
    """The tokens a request may generate once its prompt is known to be prompt_tokens long."""
    room = context - prompt_tokens
    if prompt_tokens == 0:
        raise RequestError("the prompt is empty", prompt_field)
    if room < 1:
        raise RequestError(f"the prompt has {prompt_tokens} tokens; this server's context is {context}", prompt_field)
    if s.max_tokens is None:
        return min(256, room)
    if s.max_tokens > room:
        raise RequestError(f"'max_tokens' is {s.max_tokens} but the prompt ({prompt_tokens} tokens) leaves room for "
                           f"{room} in this server's context of {context}", "max_tokens")
    return s.max_tokens
