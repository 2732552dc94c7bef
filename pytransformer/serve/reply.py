"""A completion request's reply in OpenAI's shapes, from its jobs' items ("token", text, logprob info),
("done", finish_reason, usage) and ("error", message, status): the whole object, or server-sent chunks while
streaming. A chat reply that was offered tools is read by serve/calls.py into content and tool_calls, whole or as
it streams (content deltas, then each call's id and name, then its arguments fragment by fragment)."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from .calls import CallReader, gather
from .checks import RequestError


class Reply:
    def __init__(self, kind, model, prompt_tokens, form=None, metrics=None):
        self.kind, self.model, self.prompt_tokens, self.form, self.metrics = kind, model, prompt_tokens, form, metrics
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.start, self.first = time.perf_counter(), None

    def token(self):
        """A token arrived (the first one's delay is the time to first token)."""
        if self.first is None:
            self.first = time.perf_counter()
            if self.metrics:
                self.metrics.ttft.observe(self.first - self.start)

    def done(self, usage):
        if self.metrics:
            self.metrics.usage(usage)

    def reader(self) -> CallReader | None:
        """A reader of tool calls for one choice (None: the reply is text alone)."""
        if self.kind == "chat" and self.form is not None and self.form.offered:
            return CallReader(t["name"] for t in self.form.tools)
        return None

    def constraint_error(self, message) -> RequestError:
        """The request's constraint could not go on: a 400 naming the field it came from."""
        param = self.form.param if self.form is not None else None
        return RequestError(f"'{param}': the reply's constraint failed: {message}", param)

    def error(self, message, status):
        """A failed job's error object and status: 400 for its constraint, else a server error."""
        return (self.constraint_error(message).body(), 400) if status == 400 else (server_error(message), 500)

    def usage(self, usages):
        completion = sum(u["completion_tokens"] for u in usages)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def chunk(self, index, delta=None, finish=None, usage=None, logprobs=None):
        """One server-sent event: a choice's delta ({"content": text}, chat's first one with its role), or with
        index None no choice (the usage chunk)."""
        if index is None:
            choice = None
        elif self.kind == "chat":
            choice = {"index": index, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": (delta or {}).get("content", ""), "finish_reason": finish,
                      "logprobs": logprobs}
        obj = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
               "created": int(time.time()), "model": self.model, "choices": [] if choice is None else [choice]}
        if usage:
            obj["usage"] = usage
        return "data: " + json.dumps(obj) + "\n\n"

    def message(self, pieces, finish):
        """A chat choice's message and finish reason from its (text, info) pieces."""
        text, reader = "".join(t for t, _ in pieces), self.reader()
        if reader is None:
            return {"role": "assistant", "content": text}, finish
        content, calls = gather(reader.feed(text) + reader.end())
        if not calls:
            return {"role": "assistant", "content": content}, finish
        return {"role": "assistant", "content": content or None, "tool_calls": calls}, finish_reason(finish, reader)

    def logprobs(self, pieces, job):
        if job.logprobs is None:
            return None
        return chat_logprobs(pieces) if self.kind == "chat" else completion_logprobs(pieces)

    def whole(self, pieces, finishes, usages, jobs):
        choices = []
        for i, job in enumerate(jobs):
            if self.kind == "chat":
                message, finish = self.message(pieces[i], finishes[i])
                choices.append({"index": i, "message": message, "finish_reason": finish,
                                "logprobs": self.logprobs(pieces[i], job)})
            else:
                choices.append({"index": i, "text": "".join(t for t, _ in pieces[i]), "finish_reason": finishes[i],
                                "logprobs": self.logprobs(pieces[i], job)})
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.model, "choices": choices, "usage": self.usage(usages)}


def completion_logprobs(pieces):
    """A completion choice's logprobs object from its (text, (logprob, [(token, logprob)])) items."""
    offsets = np.cumsum([0] + [len(t) for t, _ in pieces[:-1]]).tolist() if pieces else []
    return {"tokens": [t for t, _ in pieces], "token_logprobs": [info[0] for _, info in pieces],
            "top_logprobs": [dict(info[1]) for _, info in pieces], "text_offset": offsets}


def chat_logprobs(pieces):
    """A chat choice's logprobs object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(token, logprob):
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
    return {"content": [dict(entry(t, info[0]), top_logprobs=[entry(s, lp) for s, lp in info[1]])
                        for t, info in pieces]}


def finish_reason(finish, reader):
    """A choice's finish reason: a reply that made calls and ended by itself ends in "tool_calls"."""
    return "tool_calls" if finish == "stop" and reader is not None and reader.calls else finish


def server_error(message):
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


async def collect(jobs, out, reply):
    """The whole reply's object, or (a job failed) its error's, and its status."""
    pieces = [[] for _ in jobs]
    finishes, usages, left = [None] * len(jobs), [], len(jobs)
    while left:
        index, item = await out.get()
        if item[0] == "token":
            reply.token()
            pieces[index].append((item[1], item[2]))
        elif item[0] == "done":
            finishes[index] = item[1]
            usages.append(item[2])
            reply.done(item[2])
            left -= 1
        else:
            return reply.error(item[1], item[2])
    return reply.whole(pieces, finishes, usages, jobs), 200


async def events(engine, jobs, out, reply, first, include_usage=False):
    """The reply's server-sent events from its first item on, ending in [DONE] (or an error event: the stream
    ends there); include_usage (stream_options): a last chunk of no choices with the usage, as OpenAI sends it."""
    try:
        if reply.kind == "chat":
            for i in range(len(jobs)):
                yield reply.chunk(i, {"role": "assistant", "content": ""})
        readers = [reply.reader() for _ in jobs]
        usages, left, item = [], len(jobs), first
        while left:
            index, item = item or await out.get()
            reader = readers[index]
            if item[0] == "token":
                reply.token()
                logprobs = reply.logprobs([(item[1], item[2])], jobs[index])
                deltas = reader.feed(item[1]) if reader else [{"content": item[1]}] if item[1] else []
                for k, delta in enumerate(deltas or ([{"content": ""}] if logprobs else [])):
                    yield reply.chunk(index, delta, logprobs=None if k else logprobs)
            elif item[0] == "done":
                usages.append(item[2])
                reply.done(item[2])
                left -= 1
                for delta in reader.end() if reader else ():
                    yield reply.chunk(index, delta)
                yield reply.chunk(index, finish=finish_reason(item[1], reader))
            else:
                yield "data: " + json.dumps(reply.error(item[1], item[2])[0]) + "\n\n"
                return
            item = None
        if include_usage:
            yield reply.chunk(None, usage=reply.usage(usages))
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(jobs)  # (a client gone mid-stream frees its places at the next round)
