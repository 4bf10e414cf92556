"""InferLog-layout chat messages → icl requests (engine.pair.render.icl_from_messages): recognised exactly, and
the icl request renders to the same tokens as the chat template applied to the messages."""
from __future__ import annotations

import pytest

from engine.pair.render import icl_from_messages, render_icl, render_messages

ICL = {"instruction": "Turn each log message into its template.",
       "examples": [{"input": "disk `7` failed", "output": "disk <*> failed"},
                    {"input": "user bob logged in", "output": "user <*> logged in"}],
       "query": "disk `9` failed", "refine": None}


def test_round_trip_with_backticks_inside():
    assert icl_from_messages(render_messages(ICL)) == ICL


def test_recognised_chat_renders_to_the_chat_templates_tokens(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    msgs = render_messages(ICL)
    icl = icl_from_messages(msgs)
    prompt = render_icl(tok, icl)
    chat_ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)
    assert prompt.assemble(prompt.examples)[0] == chat_ids


@pytest.mark.parametrize("change", [
    lambda m: m[:3],
    lambda m: [m[0], m[1], {"role": "assistant", "content": "OK."}, m[3]],
    lambda m: [m[0], {"role": "user", "content": m[1]["content"] + "extra"}, m[2], m[3]],
    lambda m: [m[0], m[1], m[2], {"role": "user", "content": "What is this log?"}],
    lambda m: [m[0], {"role": "user", "content": "Here are example log messages with their templates:\n"}, m[2], m[3]],
    lambda m: [{"role": "user", "content": "x"}, m[1], m[2], m[3]],
    lambda m: [m[0], m[1], m[2], {"role": "user", "content": "Log message: ``"}],
])
def test_anything_else_stays_a_plain_chat(change):
    msgs = change(render_messages(ICL))
    assert icl_from_messages(msgs) is None
