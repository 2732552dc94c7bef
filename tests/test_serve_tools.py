"""serve/structured.py without a model: tool_choice and response_format checked field by field, and tools offered
through a template's own tool syntax or else the documented prompt format (replies read back: test_serve_calls.py)."""

from __future__ import annotations

import pytest

from pytransformer.serve import structured
from pytransformer.serve.checks import RequestError, chat_messages

pytest.importorskip("jinja2")
ADD = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "adds", "parameters": ADD}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
CONVERSATION = [{"role": "user", "content": "add 1"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "1"}]


class Tok:
    """A tokenizer's chat template and nothing else."""

    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, messages, add_generation_prompt=True, **extra):
        from pytransformer.tokenizers.chat import render_chat

        return render_chat(self.chat_template, messages, add_generation_prompt, **extra)


PLAIN = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
WITH_TOOLS = ("{% if tools %}TOOLS {{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
              "{% for m in messages %}[{{ m.role }}] {{ m.content }}"
              "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments }}{% endfor %}"
              "{{ '\\n' }}"
              "{% endfor %}")


@pytest.mark.parametrize("body, param", [
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "subtract"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
    ({"tools": TOOLS * 2}, "tools"),
    ({"tools": []}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),
    ({"response_format": {"type": "json_object", "extra": 1}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "required"}, "response_format"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_forms_are_refused_by_name(body, param):
    with pytest.raises(RequestError) as e:
        structured.plan(body)
    assert e.value.param == param and e.value.status == 400


def test_required_constrains_to_a_call_of_any_tool_and_none_offers_nothing():
    required = structured.plan({"tools": TOOLS, "tool_choice": "required"})
    assert required.offered and '"const": "add"' in required.constraint["grammar"]
    none = structured.plan({"tools": TOOLS, "tool_choice": "none"})
    assert not none.offered and not none.constraint
    assert structured.plan({"response_format": {"type": "json_object"}}).constraint == {
        "json_schema": {"type": "object"}}


def test_a_template_without_tool_syntax_gets_the_documented_format():
    text = structured.render(Tok(PLAIN), chat_messages({"messages": CONVERSATION}, 10_000),
                             structured.plan({"tools": TOOLS}))
    assert text.startswith("[system] " + structured.TOOL_PROMPT.split("{tools}")[0])
    assert '[assistant] <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>' in text
    assert "[user] <tool_response>\n1\n</tool_response>" in text


def test_a_template_with_tool_syntax_gets_the_tools_and_calls_as_they_came():
    text = structured.render(Tok(WITH_TOOLS), chat_messages({"messages": CONVERSATION}, 10_000),
                             structured.plan({"tools": TOOLS}))
    assert text.splitlines() == ["TOOLS add", "[user] add 1", '[assistant] CALL add {"a": 1}', "[tool] 1"]


def test_a_tool_message_needs_a_call_before_it():
    with pytest.raises(RequestError, match="must follow an assistant message with tool_calls"):
        chat_messages({"messages": CONVERSATION[-1:]}, 10_000)
