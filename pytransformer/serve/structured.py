"""Structured chat output: `response_format` (JSON, or JSON of a schema) and `tools` (function calls), checked,
turned into the grammar the engine constrains a reply with (pytransformer.constrain), and the prompt that offers the
tools; serve/calls.py reads a reply back as content and `tool_calls`, whole or as it streams.

Tool calls are written `<tool_call>{"name": NAME, "arguments": {...}}</tool_call>` (the Hermes / Qwen format).
A chat template with its own tool syntax (one that reads `tools`) gets the tools, the assistant's tool_calls and the
tool results as they came; otherwise the documented prompt format below is used: a system message listing the
tools (their JSON) and how to call one, an assistant's calls written in the format above, and each tool result a
user message `<tool_response>\\n{content}\\n</tool_response>`.

tool_choice: "none" (the tools are not offered, the reply is text), "auto" (the default with tools: offered; the
reply is free text, or text and then calls: once it writes `<tool_call>` the grammar holds it to calls of offered
tools, their arguments valid against each tool's parameters schema), "required" or {"type": "function",
"function": {"name": NAME}} (the reply is one call of any tool / of that tool). parallel_tool_calls (true by
default) lets an auto reply make several calls; false, one at most."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .checks import RequestError

TOOL_PROMPT = ("You can call these functions (each with its JSON schema of arguments):\n{tools}\n"
               "To call one, reply with nothing but <tool_call>{{\"name\": NAME, \"arguments\": {{...}}}}</tool_call>.")
# text free of <tool_call>; text up to its first <tool_call> (llguidance's regex & and ~)
_FREE = r"/(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/"
_LEAD = r"/(?s:.*)<tool_call>/ & ~/(?s:.*)<tool_call>(?s:.+)/"
MAX_TOOLS = 64


@dataclass
class Plan:
    """What a chat request asks of its reply's form."""

    constraint: dict = field(default_factory=dict)  # keyword arguments of constrain.Grammar.of ({} for none)
    param: str | None = None                        # the field the constraint came from (errors name it)
    tools: list = field(default_factory=list)       # [{"name", "description", "parameters"}]
    offered: bool = False                           # the tools are in the prompt and a reply may call them


def plan(body) -> Plan:
    """The checked response_format, tools and tool_choice of a chat request."""
    fmt, tools, choice = body.get("response_format"), body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    parallel = True if parallel is None else parallel
    if not isinstance(parallel, bool):
        raise RequestError(f"'parallel_tool_calls' must be true or false, got {json.dumps(parallel)[:40]}",
                           "parallel_tool_calls")
    out = Plan(tools=_tools(tools))
    if choice is not None and not out.tools:
        raise RequestError("'tool_choice' needs 'tools'", "tool_choice")
    choice = "auto" if choice is None else choice
    if fmt is not None:
        out.constraint, out.param = _response_format(fmt), "response_format"
    if choice == "none" or not out.tools:
        return out
    if fmt is not None and fmt.get("type") != "text":
        raise RequestError("'response_format' and 'tools' with tool_choice other than 'none' cannot be combined",
                           "response_format")
    out.offered = True
    names = [t["name"] for t in out.tools]
    if choice in ("auto", "required"):
        chosen = out.tools
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and choice["function"].get("name") in names:
        chosen = [t for t in out.tools if t["name"] == choice["function"]["name"]]
    else:
        raise RequestError(f"'tool_choice' must be 'none', 'auto', 'required' or {{\"type\": \"function\", "
                           f"\"function\": {{\"name\": one of {names}}}}}, got {json.dumps(choice)[:80]}",
                           "tool_choice")
    out.constraint = {"grammar": _calls_grammar(chosen, free=choice == "auto", parallel=parallel)}
    out.param = "tools"
    return out


def _calls_grammar(tools, free, parallel):
    """Lark (llguidance's) for a reply of calls of the tools: free text, or text then calls (free), else one call."""
    schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                          "arguments": t["parameters"]},
                         "required": ["name", "arguments"], "additionalProperties": False} for t in tools]}
    calls = 'call (WS? "<tool_call>" call)* WS?' if parallel else "call WS?"
    start = f"FREE | LEAD {calls}" if free else '"<tool_call>" call'
    return (f"start: {start}\ncall: %json {json.dumps(schema)} \"</tool_call>\"\n"
            f"FREE: {_FREE}\nLEAD: {_LEAD}\nWS: /[ \\t\\n]+/\n")


def _response_format(fmt) -> dict:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text" and set(fmt) == {"type"}:
        return {}
    if kind == "json_object" and set(fmt) == {"type"}:
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema" and set(fmt) == {"type", "json_schema"} and isinstance(fmt["json_schema"], dict):
        spec = fmt["json_schema"]
        unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
        if unknown:
            raise RequestError(f"'response_format.json_schema.{unknown[0]}' is not supported", "response_format")
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema", {}), dict) or \
                not isinstance(spec.get("strict", False), (bool, type(None))):
            raise RequestError("'response_format.json_schema' needs a string 'name', a 'schema' object and "
                               "'strict' true or false", "response_format")
        return {"json_schema": spec.get("schema", {})}
    raise RequestError("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                       "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                       "response_format")


def _tools(tools) -> list:
    if tools is None:
        return []
    if not isinstance(tools, list) or not 0 < len(tools) <= MAX_TOOLS:
        raise RequestError(f"'tools' must be a list of 1 to {MAX_TOOLS} functions", "tools")
    out = []
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) and t.get("type") == "function" and set(t) <= {
            "type", "function"} else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not re.fullmatch(
                r"[A-Za-z0-9_-]{1,64}", f["name"]) or set(f) - {"name", "description", "parameters", "strict"} \
                or not isinstance(f.get("parameters", {}), dict) or not isinstance(f.get("description", ""), str):
            raise RequestError(f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\" (letters, "
                               "digits, _ and -), \"description\", \"parameters\" (a JSON schema)}}}}", "tools")
        out.append({"name": f["name"], "description": f.get("description", ""),
                    "parameters": f.get("parameters") or {"type": "object", "properties": {}}})
    if len({t["name"] for t in out}) != len(out):
        raise RequestError("'tools' has two functions of one name", "tools")
    return out


def uses_tools(template) -> bool:
    """Whether a chat template has its own tool syntax (it reads the `tools` variable)."""
    return isinstance(template, str) and re.search(r"\btools\b", template) is not None


def render(tokenizer, messages, p: Plan) -> str:
    """The conversation through the tokenizer's chat template, the tools offered as the plan says."""
    if uses_tools(getattr(tokenizer, "chat_template", None)):
        tools = [{"type": "function", "function": t} for t in p.tools] if p.offered else None
        return tokenizer.apply_chat_template(messages, tools=tools) if tools else \
            tokenizer.apply_chat_template(messages)
    messages = [_plain(m) for m in messages]
    if p.offered:
        listing = TOOL_PROMPT.format(tools=json.dumps(p.tools))
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + listing}
        else:
            messages.insert(0, {"role": "system", "content": listing})
    return tokenizer.apply_chat_template(messages)


def _plain(m):
    """A message in the documented prompt format: {role, content} strings."""
    if m["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
    calls = "".join(f"<tool_call>{json.dumps({'name': c['function']['name'], 'arguments': _loads(c)})}</tool_call>"
                    for c in m.get("tool_calls", ()))
    return {"role": m["role"], "content": m["content"] + calls}


def _loads(call):
    try:
        return json.loads(call["function"]["arguments"])
    except ValueError:
        return call["function"]["arguments"]


def grammar(tokenizer, p: Plan):
    """The plan's constraint compiled for the tokenizer (a constrain.Grammar; None without one); a 400 naming the
    field and the library's complaint when it cannot be."""
    if not p.constraint:
        return None
    from ..constrain import Grammar

    try:
        return Grammar.of(tokenizer, **p.constraint)
    except ImportError as e:
        raise RequestError(f"'{p.param}' is not supported by this server: {e}", p.param) from None
    except (ValueError, TypeError) as e:
        raise RequestError(f"'{p.param}': {e}", p.param) from None
