"""A request body, checked: HTTP bodies are hostile, so every field is checked before any work starts and any
mistake is a RequestError (a 4xx with an OpenAI-style error object naming the field), never an exception that
becomes a 500. No Starlette here: bytes in, checked values out."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from ..generate import DEFAULTS


class RequestError(Exception):
    """A client's mistake: an HTTP status and an OpenAI-style error object."""

    def __init__(self, message, param=None, status=400, kind="invalid_request_error", code=None):
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code

    def body(self):
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


# the fields each endpoint takes: any other is a 400 naming it (nothing a client asks for is silently ignored)
FIELDS = {
    "chat": {"model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
             "max_completion_tokens", "stop", "seed", "logprobs", "top_logprobs", "user", "response_format", "tools",
             "tool_choice", "parallel_tool_calls", "presence_penalty", "frequency_penalty", "logit_bias", "ignore_eos"},
    "completion": {"model", "prompt", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "stop",
                   "seed", "logprobs", "user", "echo", "presence_penalty", "frequency_penalty", "logit_bias",
                   "ignore_eos"},
}


def known_fields(body, endpoint) -> None:
    """A 400 naming the first field this endpoint does not take."""
    unknown = sorted(set(body) - FIELDS[endpoint])
    if unknown:
        raise RequestError(f"'{unknown[0]}' is not supported by this server", unknown[0])
    options = body.get("stream_options")
    if options is not None and set(options) - {"include_usage"}:
        name = sorted(set(options) - {"include_usage"})[0]
        raise RequestError(f"'stream_options.{name}' is not supported (only include_usage)", "stream_options")
    if options is not None and not body.get("stream"):
        raise RequestError("'stream_options' needs 'stream': true", "stream_options")
    if not isinstance((options or {}).get("include_usage", False), bool):
        raise RequestError("'stream_options.include_usage' must be true or false", "stream_options")


def model(body, names) -> None:
    """A 404 model_not_found unless body's model (when given) is one of the served names."""
    name = body.get("model")
    if name is not None and name not in names:
        raise RequestError(f"the model '{name:.100}' does not exist; this server has {', '.join(names)} "
                           "(GET /v1/models)", "model", status=404, code="model_not_found")


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


ROLES = ("system", "developer", "user", "assistant", "tool")
_ABSENT = (None, [], "")  # (what a client echoing an assistant message back sends for fields it does not use)


def _text(content, where):
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        for p in content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str) or set(p) - {"type", "text"}:
                raise RequestError(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                   f"supported, got {json.dumps(p)[:80]}", "messages")
        return "".join(p["text"] for p in content)
    raise RequestError(f"{where}.content must be a string or a list of text parts", "messages")


def _tool_calls(calls, where):
    """An assistant message's tool_calls: [{id, type: function, function: {name, arguments (JSON text)}}]."""
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and c.get("type", "function") == "function" and isinstance(c.get("id"), str)
            and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments"), str) for c in calls):
        raise RequestError(f"{where}.tool_calls must be a list of {{id, type: 'function', function: {{name, "
                           "arguments}}}}", "messages")
    return [{"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}} for c in calls]


def chat_messages(body, max_chars) -> list[dict]:
    """The conversation: [{role, content (a string)}] (developer is system), an assistant message's tool_calls and a
    tool message's tool_call_id kept; max_chars characters in all at most."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out, called = [], False
    for i, m in enumerate(messages):
        where, role = f"messages[{i}]", m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}", "messages")
        extra = sorted(k for k, v in m.items() if k not in ("role", "content", "tool_calls", "tool_call_id")
                       and v not in _ABSENT)
        if extra:
            raise RequestError(f"{where}.{extra[0]} is not supported", "messages")
        message = {"role": "system" if role == "developer" else role}
        calls = m.get("tool_calls")
        if role == "assistant" and calls not in _ABSENT:
            message["tool_calls"], called = _tool_calls(calls, where), True
            message["content"] = "" if m.get("content") is None else _text(m["content"], where)
        else:
            message["content"] = _text(m.get("content"), where)
        if role == "tool":
            if not called:
                raise RequestError(f"{where}: a tool message must follow an assistant message with tool_calls",
                                   "messages")
            if not isinstance(m.get("tool_call_id", ""), str):
                raise RequestError(f"{where}.tool_call_id must be a string", "messages")
            message["tool_call_id"] = m.get("tool_call_id", "")
        elif m.get("tool_call_id") not in _ABSENT:
            raise RequestError(f"{where}.tool_call_id belongs to tool messages only", "messages")
        out.append(message)
    chars = sum(len(m["role"]) + len(m["content"]) + len(json.dumps(m.get("tool_calls", ""))) for m in out)
    if chars > max_chars:
        raise RequestError(f"'messages' has {chars} characters; this server takes {max_chars} at most", "messages")
    return out


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
    ignore_eos: bool = False  # (vLLM's and llama.cpp's server's: the end-of-turn token ends nothing; for benchmarks)


def sampling(body, context) -> Sampling:
    """The settings of a request to a server of this context (in tokens), checked before its prompt is tokenised:
    max_tokens is checked again against the room the prompt leaves (max_tokens_for)."""
    logprobs = body.get("logprobs")
    if body.get("top_logprobs") is not None and logprobs is not True:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    if isinstance(logprobs, bool):  # chat: logprobs true + top_logprobs k
        logprobs = number(body, "top_logprobs", 0, 20, 0, int) if logprobs else None
    elif logprobs is not None:
        logprobs = number(body, "logprobs", 0, 20, 0, int)
    limit = number(body, "max_tokens", 1, context - 1, None, int)
    completion_limit = number(body, "max_completion_tokens", 1, context - 1, None, int)
    if limit is not None and completion_limit is not None and limit != completion_limit:
        raise RequestError(f"'max_tokens' ({limit}) and 'max_completion_tokens' ({completion_limit}) differ: give "
                           "one", "max_completion_tokens")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError("'ignore_eos' must be true or false", "ignore_eos")
    if ignore_eos and (body.get("response_format") or body.get("tools")):
        raise RequestError("'ignore_eos' cannot go with 'response_format' or 'tools': a constrained reply ends where "
                           "its grammar does", "ignore_eos")
    return Sampling(max_tokens=limit if completion_limit is None else completion_limit,
                    n=number(body, "n", 1, 8, 1, int),
                    temperature=number(body, "temperature", 0.0, 2.0, DEFAULTS["api"]["temperature"]),
                    top_p=number(body, "top_p", 0.0, 1.0, DEFAULTS["api"]["top_p"], above_lo=True),
                    seed=number(body, "seed", 0, 2**63 - 9, None, int),
                    logprobs=logprobs, stop=stops(body), ignore_eos=ignore_eos)


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
