"""The OpenAI-compatible routes through the official `openai` client (sync and async), and /metrics, against a
real server subprocess."""
from __future__ import annotations

import asyncio

import openai
import pytest

API_KEY = "test-key"  # the `server` fixture's key
LONG_PROMPT = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(30))


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=60.0, max_retries=0) as c:
        yield c


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model_name]


def test_completion(client, server):
    r = client.completions.create(model=server.model_name, prompt="Hello there", max_tokens=5, temperature=0.7)
    assert r.object == "text_completion" and r.model == server.model_name and r.id
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 5
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_default_max_tokens_is_16(client, server):
    r = client.completions.create(model=server.model_name, prompt="Count:", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_completion_stream_with_usage(client, server):
    chunks = list(client.completions.create(model=server.model_name, prompt="Once upon a time", max_tokens=6,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    finals = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert finals == ["length"]
    assert len({c.id for c in chunks}) == 1


def test_chat(client, server):
    r = client.chat.completions.create(model=server.model_name, max_tokens=4, seed=3,
                                       messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi!"}])
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert 1 <= r.usage.completion_tokens <= 4


def test_chat_stream(client, server):
    stream = client.chat.completions.create(model=server.model_name, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Tell me a story"}],
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)


def test_n_choices(client, server):
    r = client.completions.create(model=server.model_name, prompt=["a b c", "x y z"], max_tokens=3, n=2, seed=7,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 12


def test_repeated_long_prefix_reports_cached_tokens(client, server):
    first = client.completions.create(model=server.model_name, prompt=LONG_PROMPT, max_tokens=2)
    second = client.completions.create(model=server.model_name, prompt=LONG_PROMPT + " And then", max_tokens=2)
    assert first.usage.prompt_tokens > 200
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens // 2 < cached < second.usage.prompt_tokens


def test_async_client_concurrent(server):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=60.0,
                                      max_retries=0) as ac:
            chats = [ac.chat.completions.create(model=server.model_name, max_tokens=3,
                                                messages=[{"role": "user", "content": f"question {i}"}])
                     for i in range(4)]
            comps = [ac.completions.create(model=server.model_name, prompt=f"prompt {i}", max_tokens=3)
                     for i in range(4)]
            stream = await ac.completions.create(model=server.model_name, prompt="streaming", max_tokens=3,
                                                 stream=True, extra_body={"ignore_eos": True})
            streamed = [c async for c in stream]
            return await asyncio.gather(*chats, *comps), streamed

    results, streamed = asyncio.run(asyncio.wait_for(run(), 120))
    assert len(results) == 8 and all(1 <= r.usage.completion_tokens <= 3 for r in results)
    assert [c.choices[0].finish_reason for c in streamed][-1] == "length"


def test_stop_string_cuts_the_text(server):
    """Same uncached greedy run twice: the second, with a stop string taken from the first's text, ends there."""
    body = {"model": server.model_name, "prompt": "stop test prompt", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True}
    with server.client() as c:
        assert c.post("/flush_cache").json() == {"success": True}
        full = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert len(full) >= 4, full
        stop = full[len(full) // 2:len(full) // 2 + 2]
        assert c.post("/flush_cache").json() == {"success": True}
        cut = c.post("/v1/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[:full.index(stop)]


def test_metrics_exposes_vllm_style_names(client, server):
    client.completions.create(model=server.model_name, prompt="metrics please", max_tokens=2)
    with server.client() as c:
        text = c.get("/metrics").text
    samples = {line.split(" ")[0].split("{")[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    for name in ("pairserve:prefix_cache_queries_total", "pairserve:prefix_cache_hits_total",
                 "pairserve:num_requests_running", "pairserve:num_requests_waiting", "pairserve:kv_cache_usage_perc",
                 "pairserve:inter_token_latency_seconds_count", "pairserve:e2e_request_latency_seconds_count"):
        assert name in samples, name
    assert samples["pairserve:time_to_first_token_seconds_count"] >= 1
    assert samples["pairserve:e2e_request_latency_seconds_count"] >= 1
