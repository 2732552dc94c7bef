"""Chat templates from files are untrusted: rendered in a limited sandbox, every failure one ValueError naming the
template's source, and a template without jinja2 an error with the install command (never another format)."""

from __future__ import annotations

import sys
import time

import pytest

from pytransformer.tokenizers.chat import Limits, render_chat

pytest.importorskip("jinja2")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <there> é"}]
QWEN_LIKE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_template_renders_like_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    template = QWEN_LIKE + "{{ {'k': 'é<'}|tojson }}{% for m in messages %}{% if loop.last %}{% break %}{% endif %}" \
                           "{{ m.role|upper }}{% endfor %}"
    want = render_jinja_template(conversations=[MESSAGES], chat_template=template, add_generation_prompt=True)[0][0]
    assert transformers and render_chat(template, MESSAGES, True, source="t.json") == want


def test_no_template_is_chatml():
    assert render_chat(None, MESSAGES[1:]) == "<|im_start|>user\nHi <there> é<|im_end|>\n<|im_start|>assistant\n"


HOSTILE = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string times 10**9": "{{ 'a' * 10**9 }}",
    "list times 10**8": "{{ [1] * 100000000 }}",
    "huge power": "{{ 10 ** (10 ** 9) }}",
    "doubling by ~": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                     "{% endfor %}{{ ns.s }}",
    "doubling by +": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                     "{% endfor %}{{ ns.s }}",
    "center(10**9)": "{{ 'a'|center(1000000000) }}",
    "ljust(10**9)": "{{ 'a'.ljust(1000000000) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "long output": "{% for i in range(100000) %}{{ 'abcdefghij' * 100 }}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "division by zero": "{{ 1 / 0 }}",
    "type error": "{{ 1 + 'a' }}",
    "overflow": "{{ 1e308 * 10 ** 400 }}",
    "syntax error": "{% if %}",
    "raise_exception": "{{ raise_exception('only user and assistant roles') }}",
    "missing item": "{{ messages[7].content }}",
    "sandbox escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_is_one_value_error_naming_its_source_in_bounded_time(name):
    limits = Limits(seconds=1.0)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"^models/x\.gguf \(tokenizer\.chat_template\): the chat template") as e:
        render_chat(HOSTILE[name], MESSAGES, source="models/x.gguf (tokenizer.chat_template)", limits=limits)
    assert time.perf_counter() - t < 5.0
    assert "\n" not in str(e.value)


def test_the_deadline_does_not_leak_into_later_code():
    limits = Limits(seconds=0.05)
    for _ in range(20):
        render_chat(QWEN_LIKE, MESSAGES, limits=limits)
    time.sleep(0.2)  # a watchdog that outlived its render would raise here


def test_a_template_without_jinja2_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match="pip install jinja2"):
        render_chat(QWEN_LIKE, MESSAGES, source="tokenizer_config.json")
