"""Tool calling (server/tools.py): Hermes/Qwen2.5 `<tool_call>` blocks parsed into OpenAI tool_calls, streamed
as OpenAI streams them (checked by the official client's own stream accumulator against the non-streamed
parse), tools rendered by the chat template of a real server."""
from __future__ import annotations

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from server.errors import APIError
from server.tools import ToolRequest, ToolStreamParser, assistant_message, split_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
OUTPUT = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
# A Hermes-style template of our own (tools listed in the system turn, calls and results as tags).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t.function | tojson }}\n{% endfor %}"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _names():
    return ("get_weather", "get_time")


def test_calls_are_split_from_the_content():
    content, calls = split_tool_calls(OUTPUT, _names())
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize("text", ["plain answer", "<tool_call>{not json}</tool_call>",
                                  '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                                  '<tool_call>{"name": "get_time", "arguments": {}}'])
def test_what_is_not_a_valid_call_stays_content(text):
    assert split_tool_calls(text, _names()) == (text, [])
    message, reason = assistant_message(text, "stop", ToolRequest.parse({"tools": [WEATHER, TIME]}))
    assert message == {"role": "assistant", "content": text} and reason == "stop"


def test_forced_output_is_one_call_object():
    content, calls = split_tool_calls(' {"name": "get_weather", "arguments": {"city": "Rome"}} ', _names(), True)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}


def test_tool_request_validation():
    assert ToolRequest.parse({}) is None and ToolRequest.parse({"tools": [WEATHER], "tool_choice": "none"}) is None
    named = ToolRequest.parse({"tools": [WEATHER, TIME], "tool_choice": {"type": "function",
                                                                         "function": {"name": "get_time"}}})
    assert named.choice == "get_time" and named.forced
    assert named.call_schema()["properties"]["name"] == {"const": "get_time"}
    assert len(ToolRequest.parse({"tools": [WEATHER, TIME], "tool_choice": "required"}).call_schema()["anyOf"]) == 2
    for body, param in [({"tools": "x"}, "tools"), ({"tools": [{"type": "function"}]}, "tools"),
                        ({"tools": [WEATHER, WEATHER]}, "tools"), ({"tool_choice": "required"}, "tool_choice"),
                        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
                         "tool_choice"),
                        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
                        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls")]:
        with pytest.raises(APIError) as e:
            ToolRequest.parse(body)
        assert e.value.status == 400 and e.value.param == param


def _stream_through_openai_accumulator(pieces: list[str], parser: ToolStreamParser) -> dict:
    state = ChatCompletionStreamState()
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m"}

    def feed(delta: dict, reason=None) -> None:
        state.handle_chunk(ChatCompletionChunk.model_validate(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}))

    feed({"role": "assistant", "content": ""})
    for i, piece in enumerate(pieces):
        deltas = parser.feed(piece) + (parser.finish() if i == len(pieces) - 1 else [])
        for d in deltas:
            feed(d)
    feed({}, "tool_calls" if parser.num_calls else "stop")
    return state.get_final_completion().choices[0].message.model_dump()


@pytest.mark.parametrize("step", [1, 3, 7, len(OUTPUT)])
def test_stream_matches_the_non_streamed_parse(step):
    pieces = [OUTPUT[i:i + step] for i in range(0, len(OUTPUT), step)]
    msg = _stream_through_openai_accumulator(pieces, ToolStreamParser(_names()))
    content, calls = split_tool_calls(OUTPUT, _names())
    assert msg["content"].strip() == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls]
    one = _stream_through_openai_accumulator(pieces, ToolStreamParser(_names(), max_calls=1))
    assert [c["function"]["name"] for c in one["tool_calls"]] == ["get_weather"]


def test_stream_without_calls_passes_text_through():
    text = "a < b and <tool is not a call"
    msg = _stream_through_openai_accumulator([text[i:i + 2] for i in range(0, len(text), 2)],
                                             ToolStreamParser(_names()))
    assert msg["content"] == text and not msg["tool_calls"]


@pytest.fixture(scope="module")
def tool_server(start_module_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "hermes.jinja"
    path.write_text(TOOL_TEMPLATE)
    return start_module_server("--chat-template", str(path))


def test_tools_are_rendered_by_the_chat_template(tool_server, tiny_model_dir):
    import openai
    from engine.models.loader import load_tokenizer

    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client = openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="none", max_retries=0)
    r = client.chat.completions.create(model=tool_server.model_name, messages=msgs, tools=[WEATHER, TIME],
                                       tool_choice="auto", max_tokens=3, temperature=0)
    tok = load_tokenizer(tiny_model_dir, None)
    tok.chat_template = TOOL_TEMPLATE
    decoded = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": {"city": "Paris"}}}
                                    for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in msgs]
    decoded[1]["content"] = ""
    text = tok.apply_chat_template(decoded, tools=[WEATHER, TIME], add_generation_prompt=True, tokenize=False)
    assert '"name": "get_weather"' in text and "<tool_call>" in text
    assert r.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))
    assert r.choices[0].finish_reason in ("stop", "length")
    with tool_server.client() as c:
        none = c.post("/v1/chat/completions", json={"messages": msgs[:1], "tools": [WEATHER], "tool_choice": "none",
                                                    "max_tokens": 1}).json()
        plain = c.post("/v1/chat/completions", json={"messages": msgs[:1], "max_tokens": 1}).json()
        forced = c.post("/v1/chat/completions", json={"messages": msgs[:1], "tools": [WEATHER],
                                                      "tool_choice": "required", "max_tokens": 48, "temperature": 0})
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]  # "none": tools not rendered
    # "required" runs under the call's JSON schema: whatever the (random) model prefers, the output is a call of
    # the one tool there is, so its name comes out first (the schema fixes the key order).
    assert forced.status_code == 200, forced.text
    message = forced.json()["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    assert (calls and calls[0]["function"]["name"] == WEATHER["function"]["name"]) or \
        WEATHER["function"]["name"] in (message.get("content") or ""), message


def test_tools_with_a_template_that_ignores_them_are_refused(server):
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                 "tools": [WEATHER], "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 1}).status_code == 200
