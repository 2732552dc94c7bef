"""Chat templates: the conversation rendered as the model was trained to see it.

A GGUF file (or tokenizer_config.json) carries the template as Jinja. transformers renders it with jinja2's
ImmutableSandboxedEnvironment (trim_blocks, lstrip_blocks) and a raise_exception helper; so does this module when
jinja2 is installed. Without jinja2, or without a template, the conversation is written as ChatML
(<|im_start|>role\ncontent<|im_end|>\n ..., then <|im_start|>assistant\n), which is what SmolLM2's template
produces apart from its default system line.
"""

from __future__ import annotations


def chatml(messages, add_generation_prompt=True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def check_messages(messages) -> list:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be a dict with string 'role' and 'content', got {m!r}")
    return list(messages)


def render_chat(template, messages, add_generation_prompt=True, **extra) -> str:
    messages = check_messages(messages)
    if not template:
        return chatml(messages, add_generation_prompt)
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return chatml(messages, add_generation_prompt)

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **extra)
    except TemplateError as e:
        raise ValueError(f"the chat template failed: {e}") from None
