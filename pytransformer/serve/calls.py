"""A chat reply that was offered tools, read as it is generated: its text split into content and the tool calls
written `<tool_call>{"name": NAME, "arguments": {...}}</tool_call>` (serve/structured.py), each part told as soon as
it is known -- content as it comes (white space at its end held until more text follows: dropped before a call), a
call's id and name once its name is complete, then its arguments' text fragment by fragment as they are generated
(OpenAI's `delta.tool_calls` chunks). A whole reply is the same reader fed at once, so a stream's deltas add up to
the whole reply's message exactly, whatever the pieces the text came in.

The request's grammar holds a reply to this format; the reader still takes any text: a `<tool_call>` that does not
go on as a call of an offered tool is content, and a call cut short (max_tokens, a stop string) ends where it was."""

from __future__ import annotations

import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MORE = "more"  # (a head or a tail still being written)
_NAME = re.compile(r"[A-Za-z0-9_-]*")
_SPACE = " \t\n\r"


def _literals(text, i, literals):
    """Past the literals at text[i:], JSON white space allowed before each -> where they end; MORE when text ends
    inside them; None when it departs from them."""
    for lit in literals:
        while i < len(text) and text[i] in _SPACE:
            i += 1
        got = text[i:i + len(lit)]
        if not lit.startswith(got):
            return None
        if len(got) < len(lit):
            return MORE
        i += len(lit)
    return i


def _head(text):
    """A call's head `{"name": "NAME", "arguments": ` at the start of text -> (NAME, where its arguments' `{` is);
    MORE when text may still become one; None when it cannot."""
    i = _literals(text, 0, ('{', '"name"', ':', '"'))
    if not isinstance(i, int):
        return i
    j = _NAME.match(text, i).end()
    if j == len(text):
        return MORE if j - i <= 64 else None
    if text[j] != '"' or j == i:
        return None
    k = _literals(text, j + 1, (',', '"arguments"', ':', '{'))
    return (text[i:j], k - 1) if isinstance(k, int) else k


class CallReader:
    """Feed it a reply's text in pieces; each feed (and end) returns the deltas the piece completes, each
    {"content": text} or {"tool_calls": [{"index", "id", "type": "function", "function": {"name", "arguments": ""}}]}
    (a call begins) or {"tool_calls": [{"index", "function": {"arguments": fragment}}]}."""

    def __init__(self, names):
        self.names = frozenset(names)
        self.buffer = ""    # text not yet told
        self.space = ""     # white space at the end of the content told so far, held
        self.state = "text"  # text | head | arguments | tail
        self.depth, self.quoted, self.escaped = 0, False, False  # (inside the arguments)
        self.calls = 0      # calls begun

    def feed(self, text: str) -> list[dict]:
        self.buffer += text
        out = []
        while getattr(self, "_" + self.state)(out):
            pass
        return out

    def end(self) -> list[dict]:
        """The deltas of what was held back, once the reply is whole."""
        out = []
        if self.state == "head":  # (a call that never formed: its text is content)
            self.state, self.buffer = "text", OPEN + self.buffer
        if self.state == "text":
            self._content(self.buffer, out)
            if self.space and not self.calls:
                out.append({"content": self.space})
        self.buffer = self.space = ""
        return out

    def _content(self, text, out):
        text = self.space + text
        told = text.rstrip(_SPACE)
        if told:
            out.append({"content": told})
        self.space = text[len(told):]

    def _text(self, out):
        at = self.buffer.find(OPEN)
        if at < 0:  # (keep back an end that may begin OPEN)
            keep = next((k for k in range(min(len(OPEN) - 1, len(self.buffer)), 0, -1)
                         if self.buffer.endswith(OPEN[:k])), 0)
            self._content(self.buffer[:len(self.buffer) - keep], out)
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return False
        self._content(self.buffer[:at], out)
        self.buffer, self.state = self.buffer[at + len(OPEN):], "head"
        return True

    def _head(self, out):
        head = _head(self.buffer)
        if head == MORE:
            return False
        if head is None or head[0] not in self.names:
            self._content(OPEN, out)
            self.state = "text"
            return True
        name, start = head
        self.space = ""  # (white space before a call is no content)
        out.append({"tool_calls": [{"index": self.calls, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                    "function": {"name": name, "arguments": ""}}]})
        self.buffer, self.state, self.depth = self.buffer[start:], "arguments", 0
        self.calls += 1
        return True

    def _arguments(self, out):
        end = None
        for i, c in enumerate(self.buffer):
            if self.escaped:
                self.escaped = False
            elif self.quoted:
                self.escaped, self.quoted = c == "\\", c != '"'
            elif c == '"':
                self.quoted = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    end = i + 1
                    break
        fragment = self.buffer[:end]
        if fragment:
            out.append({"tool_calls": [{"index": self.calls - 1, "function": {"arguments": fragment}}]})
        self.buffer = self.buffer[len(fragment):]
        if end is None:
            return False
        self.state = "tail"
        return True

    def _tail(self, out):
        end = _literals(self.buffer, 0, ("}", CLOSE))
        if end == MORE:
            return False
        self.buffer, self.state = self.buffer[end or 0:], "text"  # (a tail gone wrong: what follows is content)
        return True


def gather(deltas) -> tuple[str, list]:
    """The content and the tool calls [{id, type, function: {name, arguments}}] the deltas add up to."""
    content, calls = "", []
    for d in deltas:
        content += d.get("content", "")
        for part in d.get("tool_calls", ()):
            if "id" in part:
                calls.append({"id": part["id"], "type": "function", "function": dict(part["function"])})
            else:
                calls[part["index"]]["function"]["arguments"] += part["function"]["arguments"]
    return content, calls

