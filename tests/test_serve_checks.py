"""serve.checks on its own (no model, no HTTP): a body's bytes to checked values, every mistake a RequestError
naming the field."""

from __future__ import annotations

import json

import pytest

from pytransformer.serve import checks
from pytransformer.serve.checks import RequestError


def parse(text):
    return checks.parse(text.encode())


def test_brackets_inside_strings_do_not_count_as_nesting():
    body = {"prompt": "[[[[{{{{" * 1000 + '\\" ]] [[', "user": "x"}
    assert parse(json.dumps(body)) == body
    assert checks._depth(b'{"a": [[1], {"b": ["\\"[[["]}]}') == 4


def test_nesting_beyond_the_limit_is_refused_unparsed():
    deep = "[" * (checks.MAX_DEPTH + 1) + "]" * (checks.MAX_DEPTH + 1)
    with pytest.raises(RequestError, match="deep"):
        parse('{"metadata": ' + deep + "}")
    assert parse('{"metadata": ' + "[" * (checks.MAX_DEPTH - 1) + "]" * (checks.MAX_DEPTH - 1) + "}")


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', "\xff\xfe"])
def test_what_is_not_a_json_object_is_refused(raw):
    with pytest.raises(RequestError) as e:
        checks.parse(raw.encode("latin-1"))
    assert e.value.status == 400


def test_a_lone_surrogate_anywhere_names_its_top_level_field():
    with pytest.raises(RequestError) as e:
        parse('{"messages": [{"role": "user", "content": "ok"}, {"role": "x", "content": "\\udc00"}]}')
    assert e.value.param == "messages"
    assert parse('{"prompt": "\\ud83d\\ude00"}')["prompt"] == "\U0001F600"  # (a pair is a character)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**400, 2.5, True, "3", [3]])
def test_an_integer_field_takes_finite_integers_only(value):
    with pytest.raises(RequestError) as e:
        checks.number({"n": value}, "n", 1, 8, 1, int)
    assert e.value.param == "n" and e.value.status == 400


def test_numbers_in_range_and_defaults():
    assert checks.number({"n": 3.0}, "n", 1, 8, 1, int) == 3
    assert checks.number({}, "n", 1, 8, 1, int) == 1
    assert checks.number({"n": None}, "n", 1, 8, 1, int) == 1
    with pytest.raises(RequestError, match=r"\(0.0, 1.0\]"):
        checks.number({"top_p": 0}, "top_p", 0.0, 1.0, 1.0, above_lo=True)


def test_sampling_checks_every_field_before_the_prompt_is_known():
    s = checks.sampling({"max_tokens": 10, "n": 2, "temperature": 0, "top_p": 0.5, "seed": 7, "logprobs": True,
                         "top_logprobs": 3, "stop": "\n"}, context=2048)
    assert (s.max_tokens, s.n, s.temperature, s.top_p, s.seed, s.logprobs, s.stop) == (10, 2, 0.0, 0.5, 7, 3, ["\n"])
    with pytest.raises(RequestError) as e:
        checks.sampling({"max_tokens": 2048}, context=2048)
    assert e.value.param == "max_tokens"


def test_max_tokens_is_bounded_by_the_room_the_prompt_leaves():
    s = checks.sampling({"max_tokens": 100}, context=128)
    with pytest.raises(RequestError) as e:
        checks.max_tokens_for(s, 50, 128, "prompt")
    assert e.value.param == "max_tokens"
    assert checks.max_tokens_for(checks.sampling({}, context=2048), 2000, 2048, "prompt") == 48
    for tokens in (0, 128):
        with pytest.raises(RequestError) as e:
            checks.max_tokens_for(s, tokens, 128, "messages")
        assert e.value.param == "messages"


@pytest.mark.parametrize("stop", [5, [""], ["a"] * 5, ["x" * (checks.MAX_STOP_CHARS + 1)]])
def test_bad_stop_strings_are_refused(stop):
    with pytest.raises(RequestError) as e:
        checks.stops({"stop": stop})
    assert e.value.param == "stop"


def test_prompts_and_conversations_are_bounded_in_characters():
    with pytest.raises(RequestError) as e:
        checks.prompt_text({"prompt": "x" * 11}, max_chars=10)
    assert e.value.param == "prompt"
    with pytest.raises(RequestError) as e:
        checks.chat_messages({"messages": [{"role": "user", "content": "x" * 7}]}, max_chars=10)
    assert e.value.param == "messages"
    with pytest.raises(RequestError) as e:
        checks.embedding_inputs({"input": ["a"] * 5}, max_chars=100, max_inputs=4)
    assert e.value.param == "input"


def test_the_apis_sampling_defaults_are_openais():
    s = checks.sampling({}, context=2048)
    assert (s.temperature, s.top_p, s.n, s.max_tokens, s.logprobs, s.seed, s.stop) == (1.0, 1.0, 1, None, None, None, [])


@pytest.mark.parametrize("body", [{"top_logprobs": 3}, {"logprobs": False, "top_logprobs": 3}])
def test_top_logprobs_without_logprobs_is_refused_not_ignored(body):
    with pytest.raises(RequestError) as e:
        checks.sampling(body, context=2048)
    assert e.value.param == "top_logprobs" and "logprobs" in str(e.value)
