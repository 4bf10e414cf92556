"""Penalties, logprobs, structured output and priority through the HTTP routes, with the official `openai`
client (sync, async, streaming) and SGLang's /generate request shapes, against a real server subprocess. (The
values themselves are checked against HF in tests/test_logprobs.py and tests/test_logit_processor.py.)"""
from __future__ import annotations

import asyncio
import json

import openai
import pytest

API_KEY = "test-key"  # the `server` fixture's key
# (no maxLength: xgrammar 0.2.9 compiles a bounded string to a character class that lets control characters
# through, which JSON forbids; docs/sampling.md)
# No free-form string either: the random tiny model would fill one until max_tokens (the demo model's test in
# tests/test_structured_output.py has them).
SCHEMA = {"type": "object", "properties": {"name": {"enum": ["ann", "bob"]},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "pet": {"enum": ["cat", "dog"]}},
          "required": ["name", "age", "pet"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=120.0, max_retries=0) as c:
        yield c


def _generate(server, body: dict) -> dict:
    with server.client(timeout=120.0) as c:
        r = c.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_logprobs_shape(client, server):
    r = client.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the top token
        assert isinstance(entry.bytes, list) and entry.top_logprobs[0].token == entry.token
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in content) == r.choices[0].message.content


def test_completion_logprobs_shape_and_native_equality(client, server):
    r = client.completions.create(model=server.model_name, prompt="The quick brown", max_tokens=5,
                                  temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs,
                                                                                           lp.token_logprobs))
    native = _generate(server, {"text": "The quick brown", "sampling_params": {"max_new_tokens": 5,
                                "temperature": 0, "ignore_eos": True}, "return_logprob": True,
                                "top_logprobs_num": 2, "logprob_start_len": 0, "return_text_in_logprobs": True})
    meta = native["meta_info"]
    assert [v for v, _, _ in meta["output_token_logprobs"]] == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert [t for _, _, t in meta["output_token_logprobs"]] == lp.tokens
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"] and meta["input_token_logprobs"][0][0] is None
    assert all(len(top) == 2 for top in meta["input_top_logprobs"][1:])


def test_streaming_chat_logprobs(client, server):
    stream = client.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "Yo"}],
                                            max_tokens=5, temperature=0, logprobs=True, top_logprobs=1,
                                            stream=True, extra_body={"ignore_eos": True})
    entries = [e for chunk in stream for ch in chunk.choices if ch.logprobs for e in ch.logprobs.content]
    assert len(entries) == 5 and all(len(e.top_logprobs) == 1 for e in entries)


def test_native_stream_carries_logprobs_so_far(server):
    with server.client(timeout=120.0) as c:
        with c.stream("POST", "/generate", json={"text": "abc", "stream": True, "return_logprob": True,
                                                 "sampling_params": {"max_new_tokens": 4, "ignore_eos": True,
                                                                     "temperature": 0}}) as r:
            frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    counts = [len(f["meta_info"]["output_token_logprobs"]) for f in frames]
    assert counts == sorted(counts) and counts[-1] == 4
    assert frames[-1]["meta_info"]["output_token_logprobs"][0][2] is None  # no text unless asked


def test_json_schema_outputs_parse_and_validate(server):
    """The tiny model's random weights would never write JSON unaided; constrained, every output parses."""
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=120.0,
                                      max_retries=0) as ac:
            fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
            return await asyncio.gather(*[
                ac.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": f"{i}"}],
                                           max_tokens=400, temperature=1.0, seed=i, response_format=fmt)
                for i in range(4)])

    for r in asyncio.run(run()):
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        obj = json.loads(r.choices[0].message.content)
        assert set(obj) == {"name", "age", "pet"} and obj["name"] in ("ann", "bob")
        assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 150 and obj["pet"] in ("cat", "dog")


def test_regex_and_json_object_and_native_constraints(client, server):
    r = client.completions.create(model=server.model_name, prompt="Phone:", max_tokens=30, temperature=0.8,
                                  extra_body={"regex": r"\(\d{3}\) \d{3}-\d{4}"})
    import re

    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.choices[0].text) and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=60, temperature=0.7, seed=3,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # ran out of tokens inside the object: what is there must still be a JSON object's prefix
        assert r.choices[0].message.content.lstrip().startswith("{")
    out = _generate(server, {"text": "Answer:", "sampling_params": {"max_new_tokens": 20, "temperature": 0.5,
                                                                     "ebnf": 'root ::= ("yes" | "no") "."'}})
    assert out["text"] in ("yes.", "no.")


def test_penalties_and_bias_change_greedy_output(client, server):
    base = dict(model=server.model_name, prompt="a a a a", max_tokens=12, temperature=0)
    plain = client.completions.create(**base, extra_body={"ignore_eos": True}).choices[0].text
    pen = client.completions.create(**base, frequency_penalty=2.0, presence_penalty=1.0,
                                    extra_body={"ignore_eos": True, "repetition_penalty": 1.5}).choices[0].text
    assert pen != plain
    native = _generate(server, {"text": "a a a a", "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "ignore_eos": True, "frequency_penalty": 2.0,
        "presence_penalty": 1.0, "repetition_penalty": 1.5}})
    assert native["text"] == pen
    ids = native["output_ids"]
    biased = _generate(server, {"text": "a a a a", "sampling_params": {"max_new_tokens": 4, "temperature": 0,
                                                                        "ignore_eos": True,
                                                                        "logit_bias": {str(ids[0]): -100}}})
    assert ids[0] not in biased["output_ids"]
    forced = client.completions.create(**{**base, "max_tokens": 3}, logit_bias={str(ids[0]): 100},
                                       extra_body={"ignore_eos": True, "min_tokens": 3})
    assert forced.usage.completion_tokens == 3


def test_priority_with_priority_scheduling_on(start_server):
    """--enable-priority-scheduling (generated from ServerArgs) lets both routes take `priority`."""
    srv = start_server("--enable-priority-scheduling", "--priority-aging-seconds", "2")
    assert srv.info()["server_args"]["enable_priority_scheduling"] is True
    with srv.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                                 "priority": 7})
        assert r.status_code == 200, r.text
        r = c.post("/generate", json={"text": ["a", "b"], "priority": [1, -1], "sampling_params": {"max_new_tokens": 2}})
        assert r.status_code == 200 and len(r.json()) == 2
        r = c.post("/generate", json={"text": "a", "priority": "high"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority"
