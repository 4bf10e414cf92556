"""Jinja chat templates written into the checkpoints we generate.

Contract: each template renders `messages` (a list of {"role", "content"} dicts) in ChatML:
`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, a default system turn first when the conversation
does not open with one, and `<|im_start|>assistant\\n` at the end when `add_generation_prompt` is true. The
special strings must exist as special tokens in the tokenizer the template ships with.
"""
from __future__ import annotations

CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def chatml_template(default_system: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """A ChatML template that injects `default_system` when the first message is not a system turn."""
    if "'" in default_system or "\n" in default_system:
        raise ValueError("default_system: must not contain quotes or newlines (it is inlined into Jinja)")
    # Built by concatenation so the Jinja source stays one line, like the templates shipped on the Hub.
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        "{{- '" + CHATML_START + "system\\n" + default_system + CHATML_END + "\\n' -}}"
        "{%- endif -%}"
        "{%- for message in messages -%}"
        "{{- '" + CHATML_START + "' + message['role'] + '\\n' + message['content'] + '" + CHATML_END + "\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{- '" + CHATML_START + "assistant\\n' -}}"
        "{%- endif -%}"
    )
